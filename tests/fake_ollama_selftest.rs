//! Self-tests of the fake Ollama used by the gate's integration tests and the benchmark.

#[path = "support/fake_ollama.rs"]
mod fake_ollama;

use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_ollama::{FakeOllama, FakeOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn post(url: String, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("build request")
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("build request")
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    client.request(req).await.expect("request to the fake")
}

async fn body_text(resp: Response<Incoming>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
}

#[tokio::test]
async fn ndjson_chat_stream_has_chunks_plus_final_with_counts() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let body = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = send(&c, post(format!("{}/api/chat", fake.url()), body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = body_text(resp).await;
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines[0],
        r#"{"model":"llama3.2","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"tok1 "},"done":false}"#
    );
    let last = parse(lines[5]);
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 26);
    assert_eq!(last["eval_count"], 42);
    assert_eq!(fake.completed(), 1);

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path_and_query, "/api/chat");
    assert_eq!(recorded[0].body, body.as_bytes());
}

#[tokio::test]
async fn first_frame_arrives_before_the_stream_ends() {
    let opts = FakeOptions {
        chunk_delay: Duration::from_millis(200),
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let started = Instant::now();
    let body = r#"{"model":"llama3.2:latest","prompt":"hi"}"#;
    let resp = send(&c, post(format!("{}/api/generate", fake.url()), body)).await;
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .expect("frame ok");
    let first_at = started.elapsed();
    let first = first.into_data().expect("data frame");
    assert!(first.starts_with(br#"{"model":"llama3.2:latest""#));
    assert!(
        first_at < Duration::from_millis(150),
        "first frame took {first_at:?}"
    );
    while let Some(frame) = body.frame().await {
        frame.expect("frame ok");
    }
    let total = started.elapsed();
    assert!(
        total > Duration::from_millis(500),
        "whole stream took only {total:?}"
    );
}

#[tokio::test]
async fn sse_with_usage_ends_with_usage_then_done() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let body = r#"{"model":"qwen2.5:7b","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = body_text(resp).await;
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: prefix"))
        .collect();
    // 5 content chunks, the stop chunk, the usage chunk, [DONE].
    assert_eq!(events.len(), 8);
    assert_eq!(
        events[0],
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen2.5:7b","choices":[{"index":0,"delta":{"role":"assistant","content":"tok1 "},"finish_reason":null}]}"#
    );
    assert_eq!(parse(events[5])["choices"][0]["finish_reason"], "stop");
    let usage = parse(events[6]);
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 26);
    assert_eq!(usage["usage"]["completion_tokens"], 42);
    assert_eq!(usage["usage"]["total_tokens"], 68);
    assert_eq!(events[7], "[DONE]");
}

#[tokio::test]
async fn split_mid_line_cuts_the_final_line_inside_the_count() {
    let opts = FakeOptions {
        split_mid_line: true,
        chunks: 2,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let body = r#"{"model":"llama3.2","messages":[]}"#;
    let resp = send(&c, post(format!("{}/api/chat", fake.url()), body)).await;
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame ok").into_data() {
            frames.push(String::from_utf8_lossy(&data).into_owned());
        }
    }
    assert!(frames.iter().all(|f| !f.is_empty()));
    assert!(
        frames.iter().any(|f| f.ends_with("\"eval_count\":4")),
        "{frames:?}"
    );
    let joined: String = frames.concat();
    assert_eq!(joined.lines().count(), 3);
    assert_eq!(
        parse(joined.lines().last().expect("final line"))["eval_count"],
        42
    );
}

#[tokio::test]
async fn foreign_host_is_forbidden_and_echo_reports_forwarded_headers() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let mut req = get(format!("{}/api/tags", fake.url()));
    let foreign = format!("evil.example:{}", fake.addr().port());
    req.headers_mut()
        .insert("host", foreign.parse().expect("header value"));
    let resp = send(&c, req).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let mut req = get(format!("{}/echo?a=1&b=%2F", fake.url()));
    req.headers_mut()
        .insert("x-test", "yes".parse().expect("header value"));
    let resp = send(&c, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = parse(&body_text(resp).await);
    assert_eq!(echoed["path_and_query"], "/echo?a=1&b=%2F");
    assert_eq!(echoed["headers"]["x-test"], "yes");

    let resp = send(&c, get(format!("{}/nope", fake.url()))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_text(resp).await, "404 page not found");

    let resp = send(
        &c,
        post(format!("{}/api/chat", fake.url()), r#"{"model":"gpt-9"}"#),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body_text(resp).await,
        r#"{"error":"model \"gpt-9\" not found, try pulling it first"}"#
    );
}

#[tokio::test]
async fn dropping_the_client_mid_stream_counts_as_cancelled() {
    let opts = FakeOptions {
        chunk_delay: Duration::from_millis(200),
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let body = r#"{"model":"llama3.2","messages":[]}"#;
    let resp = send(&c, post(format!("{}/api/chat", fake.url()), body)).await;
    let mut body = resp.into_body();
    body.frame()
        .await
        .expect("a first frame")
        .expect("frame ok");
    drop(body);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(1);
    while fake.cancelled() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.cancelled(), 1);
    assert_eq!(fake.completed(), 0);
}

#[tokio::test]
async fn stop_aborts_live_streams_and_frees_the_port() {
    let opts = FakeOptions {
        chunk_delay: Duration::from_millis(500),
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts.clone()).await;
    let addr = fake.addr();
    let c = client();
    let body = r#"{"model":"llama3.2","messages":[]}"#;
    let resp = send(&c, post(format!("{}/api/chat", fake.url()), body)).await;
    let mut stream = resp.into_body();
    stream
        .frame()
        .await
        .expect("a first frame")
        .expect("frame ok");

    let stopped = Instant::now();
    fake.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "stop waited for the stream"
    );
    // The live stream is cut rather than finished.
    let rest = tokio::time::timeout(Duration::from_secs(2), stream.collect())
        .await
        .expect("stream ends soon after stop");
    assert!(rest.is_err(), "stream should end with an error after stop");

    let again = FakeOllama::start_on(addr, opts)
        .await
        .expect("rebind the same port");
    let resp = send(&client(), get(format!("{}/api/version", again.url()))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await, r#"{"version":"0.12.0"}"#);
    again.stop().await;
}
