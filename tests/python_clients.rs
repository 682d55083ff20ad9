//! The official Python clients (`ollama`, `openai` from PyPI) through the real gate.
//! When they are not importable, they are installed from PyPI into `target/pyclients`
//! first, so `cargo test` alone runs this on a fresh machine.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate};

/// A PYTHONPATH under which `import ollama, openai` works.
fn python_path() -> String {
    let importable = |path: &str| {
        Command::new("python3")
            .args(["-c", "import ollama, openai"])
            .env("PYTHONPATH", path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyclients");
    let local = local.to_string_lossy().into_owned();
    if importable("") {
        return String::new();
    }
    if !importable(&local) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--root-user-action=ignore"])
            .args(["--target", &local, "ollama>=0.6", "openai>=1.40"])
            .status()
            .expect("python3 -m pip");
        assert!(status.success(), "pip could not install ollama and openai");
    }
    local
}

#[tokio::test]
async fn official_clients_work_through_the_gate() {
    let path = tokio::task::spawn_blocking(python_path).await.expect("pip");
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, limited) = db.key(&["--tier", "llamas"]);
    let (_, rated) = db.key(&["--tier", "pro", "--rpm", "1"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let out = tokio::task::spawn_blocking({
        let host = format!("http://{}", gate.addr);
        move || {
            Command::new("python3")
                .arg(script)
                .env("PYTHONPATH", path)
                .env("OLLAMA_HOST", host)
                .env("OLLAMA_API_KEY", key)
                .env("LIMITED_KEY", limited)
                .env("RATED_KEY", rated)
                .output()
                .expect("python3")
        }
    })
    .await
    .expect("python");
    assert!(
        out.status.success(),
        "python clients failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python clients ok"));
    // Every request reached the fake without the client's credential.
    let seen = fake.requests();
    assert!(seen.len() >= 5, "{} requests", seen.len());
    for r in seen {
        assert!(
            r.headers
                .iter()
                .all(|(k, _)| k != "authorization" && k != "x-api-key")
        );
    }
}
