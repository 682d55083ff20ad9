//! What the queue's tests share: a fake host whose streams hold a slot, chat bodies, and
//! the gate's `/status`.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};

use super::fake_ollama::FakeOptions;
use super::gate::{Gate, get};

/// A fake host whose streams last about 20 s unless the client leaves: a request that
/// holds a slot for as long as a test needs.
pub fn slow() -> FakeOptions {
    FakeOptions {
        chunks: 400,
        chunk_delay: Duration::from_millis(50),
        ..FakeOptions::default()
    }
}

/// An API key and a JSON body.
pub fn headers(key: &str) -> [(&str, &str); 2] {
    [("x-api-key", key), ("content-type", "application/json")]
}

/// A chat: streamed ones run to the fake's full length (a slot held), others generate
/// two tokens.
pub fn chat_body(prompt: &str, stream: bool) -> String {
    let mut v = json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    });
    if !stream {
        v["options"] = json!({"num_predict": 2});
    }
    v.to_string()
}

/// `GET /status` from the metrics listener.
pub async fn status(gate: &Gate) -> Value {
    let addr = gate.metrics.expect("metrics listener");
    let r = get(&format!("http://{addr}/status"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}
