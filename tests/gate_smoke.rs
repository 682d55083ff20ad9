//! The gate end to end: a key through to a streamed chat.
mod support;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, get, post};

#[tokio::test]
async fn key_reaches_upstream_and_missing_key_does_not() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let r = get(&gate.url("/api/tags"), "").await;
    assert_eq!(r.status, 401);
    let r = get(&gate.url("/api/tags"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &gate.url("/api/chat"),
        &key,
        r#"{"model":"llama3.2:latest","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().lines().count(), 6);
}
