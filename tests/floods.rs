//! Floods: what clients without a credential can make the real `aigate serve` keep.
//! Thousands of failed requests with 60 KB paths and whole keys in them leave a small
//! database and log, no key, and one summary of what was left out; old audit rows go
//! at start; one address cannot hold every connection, and an idle keep-alive
//! connection is closed after the head deadline.
mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, eventually, get, send};

/// A fake Ollama, a database with an admin-tier key, and a gate started with `args`.
async fn setup(args: &[&str]) -> (FakeOllama, Db, String, Gate) {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), args);
    (fake, db, key, gate)
}

/// The bytes of the database and its WAL.
fn db_bytes(db: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(db) + size(&db.with_extension("db-wal"))
}

/// The database and its WAL, as they are on disk.
fn db_files(db: &Path) -> Vec<u8> {
    let mut all = std::fs::read(db).unwrap_or_default();
    all.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// A connection to `gate` from the local address `from` (any of 127/8 is loopback).
async fn connect_from(from: IpAddr, gate: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(gate).await.expect("connect")
}

/// Writes `request` and reads until the gate closes the connection or 5 s pass.
async fn exchange(mut s: TcpStream, request: &str) -> String {
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/tags` from `from`, with `key` if given; the status line of the answer.
async fn tags_from(from: IpAddr, gate: SocketAddr, key: Option<&str>) -> String {
    let s = connect_from(from, gate).await;
    let auth = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let wire = exchange(
        s,
        &format!("GET /api/tags HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await;
    wire.lines().next().unwrap_or_default().to_string()
}

/// Whether the gate has closed `s` (end of stream or reset), without waiting for more
/// than `wait`; what it sent first is appended to `seen`.
async fn closed(s: &mut TcpStream, wait: Duration, seen: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------
// The log and the audit table
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_paths_and_keys_leaves_a_small_disk_and_log_and_no_key() {
    const REQUESTS: usize = 2000;
    const TASKS: usize = 8;
    let (_fake, db, key, mut gate) = setup(&[]).await;
    let unknown = aigate::auth::key::generate()
        .expect("rng")
        .key
        .expose()
        .to_string();

    // One failed login whose user name carries a terminal escape, a newline and a key.
    let name = format!("ana\u{1b}[2J\nip=6.6.6.6 {key}");
    let body = serde_json::json!({ "username": name, "password": "not it" }).to_string();
    let r = send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // And one path with the admin's key in it, before the flood.
    let filler = "a".repeat(60_000);
    let keyed = send(
        Method::GET,
        &gate.url(&format!("/api/{key}/{filler}")),
        &[],
        "",
    )
    .await;
    assert_eq!(keyed.status, 401);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (db_before, log_before) = (db_bytes(&db.path), gate.logs().len());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let base = gate.url("/api/");
        let (filler, key, unknown) = (filler.clone(), key.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            let client = support::gate::client();
            let mut wrong = Vec::new();
            for i in 0..REQUESTS / TASKS {
                // Every fifth path holds a whole key: the admin's, or an unknown one.
                let url = match i % 10 {
                    0 => format!("{base}{key}/{filler}"),
                    5 => format!("{base}x{filler}{unknown}"),
                    _ => format!("{base}{t}{filler}"),
                };
                let req = Request::builder()
                    .uri(url)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let resp = client.request(req).await.expect("flood request");
                let status = resp.status();
                let _ = resp.into_body().collect().await.expect("body");
                if status != 401 {
                    wrong.push(status);
                }
            }
            wrong
        }));
    }
    for t in tasks {
        let wrong = t.await.expect("flood task");
        assert!(wrong.is_empty(), "not 401: {wrong:?}");
    }
    let took = started.elapsed();
    // A write of the database thread (every second) has come and gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db_grown = db_bytes(&db.path).saturating_sub(db_before);
    let logs = gate.logs();
    let log_grown = logs.len().saturating_sub(log_before);
    eprintln!(
        "{REQUESTS} requests with 60 KB paths in {took:?}: database +{db_grown} bytes, \
         log +{log_grown} bytes"
    );
    assert!(db_grown < 2 << 20, "the database grew by {db_grown} bytes");
    assert!(log_grown < 200 << 10, "the log grew by {log_grown} bytes");
    // Each record keeps the path's first 200 bytes.
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 600, "a log line of {longest} bytes");
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);

    // The rest of what was left out is summarised at shutdown at the latest.
    gate.sigterm();
    assert_eq!(
        gate.wait(Duration::from_secs(15)),
        Some(0),
        "{}",
        gate.logs()
    );
    let logs = gate.logs();
    let files = db_files(&db.path);
    for secret in [&key, &unknown] {
        // Nothing past the display prefix (`aig_` + 8) is kept anywhere.
        let past_prefix = &secret.as_bytes()[..16];
        assert!(!contains(logs.as_bytes(), past_prefix), "a key in the log");
        assert!(!contains(&files, past_prefix), "a key in the database");
    }
    // The path's key is shown as its display prefix, and the path cut at 200 bytes.
    let shown = format!("/api/{}…/{}…", &key[..12], "a".repeat(179));
    assert!(logs.contains(&format!("path={shown}")), "{logs}");

    let conn = db.conn();
    let recorded = count(
        &conn,
        "SELECT count(*) FROM audit WHERE kind = 'auth_failure' AND reason != 'suppressed'",
    );
    let suppressed: i64 = conn
        .query_row(
            "SELECT COALESCE(sum(CAST(substr(detail, 7) AS INTEGER)), 0) FROM audit
             WHERE reason = 'suppressed' AND detail LIKE 'count=%'",
            [],
            |r| r.get(0),
        )
        .expect("suppressed");
    let summary = logs
        .lines()
        .find(|l| l.contains("auth_failure_suppressed ip=127.0.0.1 count="))
        .unwrap_or_else(|| panic!("no summary line in {logs}"));
    assert!(
        summary.ends_with(&format!("count={suppressed} window=60s")),
        "{summary}"
    );
    // At most 10 records for the one address in its minute; the rest are counted.
    assert!(recorded <= 10, "{recorded} records");
    assert_eq!(recorded + suppressed, REQUESTS as i64 + 2);
    let per_failure = logs
        .lines()
        .filter(|l| l.contains(" auth_failure ip="))
        .count();
    assert_eq!(per_failure as i64, recorded, "one log line per record");

    // The user name, where the login keeps it, is escaped, cut, and without the key.
    let user: Option<String> = conn
        .query_row(
            "SELECT user FROM audit WHERE reason = 'bad_login'",
            [],
            |r| r.get(0),
        )
        .expect("the login failure");
    if let Some(user) = user {
        assert!(
            user.starts_with("ana\\x1b[2J\\nip=6.6.6.6 aig_"),
            "{user:?}"
        );
        assert!(!user.contains(['\n', '\u{1b}']) && !user.contains(&key[..16]));
    }
    let detail: String = conn
        .query_row(
            "SELECT detail FROM audit WHERE detail LIKE 'GET /api/aig_%'",
            [],
            |r| r.get(0),
        )
        .expect("the keyed path's record");
    assert_eq!(detail, format!("GET {shown}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_past_the_retention_are_deleted_at_start() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let now = aigate::store::now();
    let day = 86_400;
    {
        let conn = db.conn();
        for (at, kind) in [
            (now - 100 * day, "auth_failure"),
            (now - 100 * day, "key_create"),
            (now - 91 * day, "auth_failure"),
            (now - 89 * day, "key_revoke"),
            (now - day, "auth_failure"),
        ] {
            conn.execute(
                "INSERT INTO audit (at, kind, ip, reason, detail) VALUES (?1, ?2, '10.0.0.1', 'x', 'old')",
                rusqlite::params![at, kind],
            )
            .expect("insert");
        }
    }
    let old = "SELECT count(*) FROM audit WHERE detail = 'old'";

    // With the retention off, nothing goes, even once the gate has written.
    let gate = Gate::start(&db.path, &fake.url(), &["--audit-retention", "off"]);
    assert_eq!(
        send(Method::GET, &gate.url("/api/tags"), &[], "")
            .await
            .status,
        401
    );
    let written = eventually(Duration::from_secs(5), || async {
        count(
            &db.conn(),
            "SELECT count(*) FROM audit WHERE detail = 'GET /api/tags'",
        ) == 1
    })
    .await;
    assert!(written.is_some(), "the failure was not written");
    assert_eq!(count(&db.conn(), old), 5);
    drop(gate);

    // The default keeps 90 days: the rows older than that are gone soon after start.
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let pruned = eventually(Duration::from_secs(5), || async {
        count(&db.conn(), old) == 2
    })
    .await;
    assert!(pruned.is_some(), "{} old rows left", count(&db.conn(), old));
    let kept = count(
        &db.conn(),
        &format!(
            "SELECT count(*) FROM audit WHERE detail = 'old' AND at >= {}",
            now - 90 * day
        ),
    );
    assert_eq!(kept, 2);
    let logged = eventually(Duration::from_secs(3), || async {
        gate.logs().contains("deleted 3 audit rows older than 90d")
    })
    .await;
    assert!(logged.is_some(), "{}", gate.logs());
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    const CAP: usize = 100;
    const OPENED: usize = 300;
    let (_fake, _db, key, gate) = setup(&[
        "--no-login",
        "--max-conns-per-ip",
        "100",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let here: IpAddr = "127.0.0.1".parse().expect("ip");
    let other: IpAddr = "127.0.0.2".parse().expect("ip");

    let mut idle = Vec::with_capacity(OPENED);
    for _ in 0..OPENED {
        idle.push(connect_from(here, gate.addr).await);
    }
    // Another address is served, with or without a credential.
    assert_eq!(
        tags_from(other, gate.addr, None).await,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        tags_from(other, gate.addr, Some(&key)).await,
        "HTTP/1.1 200 OK"
    );

    // The gate kept the first 100 and closed the rest, after a bare 503.
    let (mut open, mut shut, mut busy) = (0, 0, 0);
    for s in &mut idle {
        let mut seen = Vec::new();
        if closed(s, Duration::from_millis(20), &mut seen).await {
            shut += 1;
            busy += usize::from(seen.starts_with(b"HTTP/1.1 503 "));
        } else {
            open += 1;
        }
    }
    assert_eq!((open, shut), (CAP, OPENED - CAP));
    assert_eq!(busy, OPENED - CAP, "each closed one was told 503");
    // The refusals are logged, once a second at most.
    let logged = eventually(Duration::from_secs(3), || async {
        gate.logs()
            .contains("connections_refused ip=127.0.0.1 count=")
    })
    .await;
    assert!(logged.is_some(), "{}", gate.logs());
    let lines = gate.logs().matches("connections_refused").count();
    assert!(lines <= 3, "{lines} lines for 200 refusals");
    // And counted, every one.
    let addr = gate.metrics.expect("--metrics-listen");
    let text = support::gate::send(
        hyper::Method::GET,
        &format!("http://{addr}/metrics"),
        &[],
        "",
    )
    .await
    .text();
    assert!(
        text.contains(&format!(
            "aigate_connections_refused_total{{kind=\"per_address\"}} {}",
            OPENED - CAP
        )),
        "{text}"
    );

    // Closing them gives their places back.
    drop(idle);
    let served = eventually(Duration::from_secs(3), || async {
        tags_from(here, gate.addr, Some(&key)).await == "HTTP/1.1 200 OK"
    })
    .await;
    assert!(served.is_some(), "127.0.0.1 still refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_refuses_past_it_and_frees_on_close() {
    let (_fake, _db, key, gate) = setup(&["--no-login", "--max-conns", "40"]).await;
    let mut idle = Vec::new();
    for i in 0..50u8 {
        // Five addresses, ten connections each: no one address is over its cap.
        let from = IpAddr::from([127, 0, 1, i % 5 + 1]);
        idle.push(connect_from(from, gate.addr).await);
    }
    let mut shut = 0;
    for s in &mut idle {
        shut += usize::from(closed(s, Duration::from_millis(20), &mut Vec::new()).await);
    }
    assert_eq!(shut, 10);
    // A 503, or a reset if the request crossed the close.
    let line = tags_from("127.0.0.2".parse().expect("ip"), gate.addr, None).await;
    assert!(
        line.is_empty() || line.starts_with("HTTP/1.1 503 "),
        "{line}"
    );
    drop(idle);
    let served = eventually(Duration::from_secs(3), || async {
        tags_from("127.0.0.2".parse().expect("ip"), gate.addr, Some(&key)).await
            == "HTTP/1.1 200 OK"
    })
    .await;
    assert!(served.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let (_fake, _db, _key, gate) = setup(&["--no-login", "--header-timeout", "1s"]).await;
    let mut s = TcpStream::connect(gate.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !contains(&seen, b"{\"status\":\"ok\"}") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the answer");
        seen.extend_from_slice(&buf[..n]);
    }
    // Kept alive after the answer, then closed once idle for the head deadline.
    let answered = Instant::now();
    assert!(!closed(&mut s, Duration::from_millis(500), &mut seen).await);
    // A bound of 20 s only ends the test if it never closes; it measures nothing.
    assert!(
        closed(&mut s, Duration::from_secs(20), &mut seen).await,
        "still open"
    );
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
}
