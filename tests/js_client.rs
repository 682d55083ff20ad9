//! The official JavaScript client (`ollama` on npm) through the real gate. When it is
//! not installed, it is installed from the npm registry into `target/jsclients` first,
//! so `cargo test` alone runs this on a fresh machine with Node.js.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate};

/// The client's version, pinned so that a new release cannot change the test.
const CLIENT: &str = "ollama@0.6.4";

/// The path of the installed client's ES module.
fn client_module() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/jsclients");
    let module = dir.join("node_modules/ollama/dist/index.mjs");
    if !module.exists() {
        std::fs::create_dir_all(&dir).expect("target/jsclients");
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .arg("--prefix")
            .arg(&dir)
            .arg(CLIENT)
            .status()
            .expect("npm (Node.js is needed for this test)");
        assert!(status.success(), "npm could not install {CLIENT}");
    }
    module
}

#[tokio::test]
async fn official_javascript_client_works_through_the_gate() {
    let module = tokio::task::spawn_blocking(client_module)
        .await
        .expect("npm");
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, limited) = db.key(&["--tier", "llamas"]);
    let (_, rated) = db.key(&["--tier", "pro", "--rpm", "1"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients.mjs");
    let host = format!("http://{}", gate.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("OLLAMA_HOST", host)
            .env("OLLAMA_API_KEY", key)
            .env("LIMITED_KEY", limited)
            .env("RATED_KEY", rated)
            .env("OLLAMA_JS", module)
            .output()
            .expect("node")
    })
    .await
    .expect("node");
    assert!(
        out.status.success(),
        "javascript client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("javascript client ok"));
    // Every request reached the fake without the client's credential.
    for r in fake.requests() {
        assert!(
            r.headers
                .iter()
                .all(|(k, _)| k != "authorization" && k != "x-api-key")
        );
    }
}
