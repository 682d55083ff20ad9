//! A request body that trickles in and then stops is timed out (`--body-timeout`),
//! whether the gate reads it (login, an allow-list) or streams it on to the upstream,
//! so a client cannot hold a connection and a task by sending one byte now and then.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate};

/// Sends a head promising 100 bytes, then 1 byte, then nothing; returns what the gate
/// answered (read until it closes or 20 s pass, a bound far above the 1 s timeout).
async fn stall(gate: &Gate, path: &str, key: Option<&str>) -> String {
    let mut s = TcpStream::connect(gate.addr).await.expect("connect");
    let auth = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_get_408_whether_read_or_streamed() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.user("ana", "correct horse battery staple", "pro");
    let (_, admin) = db.key(&["--tier", "admin"]);
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, limited) = db.key(&["--tier", "llamas"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--body-timeout", "1s"]);
    for (what, path, key) in [
        ("login (read by the gate)", "/auth/login", None),
        (
            "allow-list (read by the gate)",
            "/api/chat",
            Some(limited.as_str()),
        ),
        ("admin key (streamed on)", "/api/chat", Some(admin.as_str())),
    ] {
        let answer = stall(&gate, path, key).await;
        let status = answer.lines().next().unwrap_or_default();
        assert!(status.starts_with("HTTP/1.1 408"), "{what}: {answer:?}");
        assert!(
            answer.contains("Request body timed out"),
            "{what}: {answer:?}"
        );
    }
}
