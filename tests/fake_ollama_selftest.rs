//! Self-tests of the fake Ollama used by the gate's integration tests and the benchmark.

#[path = "support/fake_ollama.rs"]
mod fake_ollama;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_ollama::{BUSY, FakeOllama, FakeOptions, FakeStats};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

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

/// Polls the fake's counters until `pred` holds; fails after a generous 10 s.
async fn stats_until(
    fake: &FakeOllama,
    what: &str,
    pred: impl Fn(&FakeStats) -> bool,
) -> FakeStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = fake.stats();
        if pred(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within 10 s: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A streamed `/api/chat` body for `model`, capped at `num_predict` tokens when given.
fn chat(model: &str, num_predict: Option<u64>) -> String {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(n) = num_predict {
        body["options"] = json!({ "num_predict": n });
    }
    body.to_string()
}

/// Sends `body` to `path` in a task; yields the status and the whole body.
fn spawn_post(c: &HttpClient, url: String, body: String) -> JoinHandle<(StatusCode, String)> {
    let c = c.clone();
    tokio::spawn(async move {
        let resp = send(&c, post(url, &body)).await;
        let status = resp.status();
        (status, body_text(resp).await)
    })
}

fn models(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect()
}

/// The names `/api/ps` lists, in its order.
async fn ps_names(c: &HttpClient, fake: &FakeOllama) -> Vec<String> {
    let resp = send(c, get(format!("{}/api/ps", fake.url()))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ps = parse(&body_text(resp).await);
    ps["models"]
        .as_array()
        .expect("a models array")
        .iter()
        .map(|m| m["name"].as_str().expect("a name").to_owned())
        .collect()
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
    // A port no other test's bind to port 0 can take while the fake is stopped.
    let addr = FakeOllama::restartable_addr();
    let fake = FakeOllama::start_on(addr, opts.clone())
        .await
        .expect("start the fake");
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

// ---------------------------------------------------------------------------
// The simulated GPU host
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_run_two_of_six_requests_at_once_and_all_six_finish() {
    let opts = FakeOptions {
        slots: Some(2),
        tokens_per_second: Some(20.0),
        chunks: 10,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    let tasks: Vec<_> = (0..6)
        .map(|_| spawn_post(&c, url.clone(), chat("llama3.2", None)))
        .collect();
    // Each takes half a second: all six have arrived while the first two generate.
    let seen = stats_until(&fake, "2 running and 4 waiting", |s| {
        s.in_flight + s.queued == 6
    })
    .await;
    assert_eq!((seen.in_flight, seen.queued), (2, 4), "{seen:?}");
    for task in tasks {
        let (status, text) = task.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        let last = parse(lines[10]);
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        // Pacing real tokens, the count is the tokens generated.
        assert_eq!(last["eval_count"], 10);
    }
    let stats = stats_until(&fake, "6 completed", |s| s.completed == 6).await;
    assert_eq!(
        stats,
        FakeStats {
            loads: 1,
            loaded: models(&["llama3.2:latest"]),
            in_flight: 0,
            queued: 0,
            max_in_flight_seen: 2,
            completed: 6,
            cancelled: 0,
            rejected: 0,
            requests: counts(&[("llama3.2:latest", 6)]),
        }
    );
}

/// With one slot, waiting requests are served in arrival order: each asks for its own
/// model, so the host's own least-recently-used order shows the order they ran in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_served_first_come_first_served() {
    let opts = FakeOptions {
        slots: Some(1),
        tokens_per_second: Some(50.0),
        chunks: 40,
        installed: Some(models(&[
            "llama3.2:latest",
            "qwen2.5:7b",
            "mistral:latest",
            "gemma2:2b",
        ])),
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    // The first runs 40 tokens (0.8 s) while the others line up behind it.
    let first = spawn_post(&c, url.clone(), chat("llama3.2", None));
    stats_until(&fake, "the first running", |s| s.in_flight == 1).await;
    let mut rest = Vec::new();
    for (i, model) in ["qwen2.5:7b", "mistral", "gemma2:2b"]
        .into_iter()
        .enumerate()
    {
        rest.push(spawn_post(&c, url.clone(), chat(model, Some(2))));
        stats_until(&fake, "one more waiting", |s| s.queued == i + 1).await;
    }
    assert_eq!(fake.stats().in_flight, 1);
    assert_eq!(first.await.expect("first").0, StatusCode::OK);
    for task in rest {
        let (status, text) = task.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text.lines().count(), 3, "capped at 2 tokens: {text}");
    }
    let stats = stats_until(&fake, "4 completed", |s| s.completed == 4).await;
    assert_eq!(
        stats.loaded,
        models(&[
            "gemma2:2b",
            "mistral:latest",
            "qwen2.5:7b",
            "llama3.2:latest"
        ])
    );
    assert_eq!(stats.max_in_flight_seen, 1);
    assert_eq!(stats.loads, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_in_ollamas_words() {
    let opts = FakeOptions {
        slots: Some(1),
        max_queue: Some(1),
        tokens_per_second: Some(50.0),
        chunks: 500,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    // The head arrives with the first token: the slot is taken, for 10 s.
    let running = send(&c, post(url.clone(), &chat("llama3.2", None))).await;
    assert_eq!(running.status(), StatusCode::OK);
    let waiting = spawn_post(&c, url.clone(), chat("llama3.2", Some(1)));
    stats_until(&fake, "one waiting", |s| s.queued == 1).await;

    let resp = send(&c, post(url.clone(), &chat("llama3.2", None))).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body_text(resp).await,
        r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#
    );
    let body = r#"{"model":"llama3.2","messages":[],"stream":true}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err = parse(&body_text(resp).await);
    assert_eq!(err["error"]["message"], BUSY);
    assert_eq!(err["error"]["type"], "api_error");
    // An unknown model is refused before the queue is looked at, as in Ollama.
    let resp = send(&c, post(url.clone(), &chat("gpt-9", None))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // The running client leaves; the waiting one gets the slot and its one token.
    drop(running);
    let (status, text) = waiting.await.expect("waiting request");
    assert_eq!(status, StatusCode::OK, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(parse(lines[0])["message"]["content"], "tok1 ");
    assert_eq!(parse(lines[1])["done_reason"], "length");
    let stats = stats_until(&fake, "the waiting one completed", |s| s.completed == 1).await;
    assert_eq!(stats.rejected, 2);
    assert_eq!(stats.cancelled, 1);
    assert_eq!(stats.max_in_flight_seen, 1);
    assert_eq!(stats.requests, counts(&[("llama3.2:latest", 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_loaded_the_least_recently_used_model_is_unloaded() {
    let load_time = Duration::from_millis(50);
    let opts = FakeOptions {
        installed: Some(models(&["llama3.2:latest", "qwen2.5:7b", "mistral:latest"])),
        max_loaded: Some(2),
        load_time,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let url = format!("{}/api/generate", fake.url());
    let generate = |model: &str| {
        let body = json!({"model": model, "prompt": "hi", "stream": false}).to_string();
        let (c, url) = (c.clone(), url.clone());
        async move {
            let started = Instant::now();
            let resp = send(&c, post(url, &body)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(parse(&body_text(resp).await)["done"], true);
            started.elapsed()
        }
    };
    let took = generate("llama3.2").await;
    assert!(took >= load_time, "a load took only {took:?}");
    generate("qwen2.5:7b").await;
    generate("llama3.2").await;
    assert_eq!(fake.stats().loads, 2, "a loaded model is not loaded again");
    // Full: mistral replaces qwen2.5, used less recently than llama3.2.
    generate("mistral").await;
    let stats = fake.stats();
    assert_eq!(stats.loaded, models(&["mistral:latest", "llama3.2:latest"]));
    assert_eq!(ps_names(&c, &fake).await, stats.loaded);
    assert_eq!(stats.loads, 3);
    generate("qwen2.5:7b").await;
    assert_eq!(
        fake.stats().loaded,
        models(&["qwen2.5:7b", "mistral:latest"])
    );
    generate("llama3.2:latest").await;
    let stats = fake.stats();
    assert_eq!(stats.loaded, models(&["llama3.2:latest", "qwen2.5:7b"]));
    assert_eq!(stats.loads, 5);
    assert_eq!(
        stats.requests,
        counts(&[
            ("llama3.2:latest", 3),
            ("mistral:latest", 1),
            ("qwen2.5:7b", 2)
        ])
    );
}

/// As in Ollama, a model in use is never unloaded: a request for another model waits,
/// and those behind it too, though a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_model_stays_loaded_and_the_queue_waits_for_it() {
    let opts = FakeOptions {
        slots: Some(2),
        max_loaded: Some(1),
        tokens_per_second: Some(50.0),
        chunks: 500,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    let running = send(&c, post(url.clone(), &chat("llama3.2", None))).await;
    assert_eq!(running.status(), StatusCode::OK);
    let other = spawn_post(&c, url.clone(), chat("qwen2.5:7b", Some(2)));
    stats_until(&fake, "one waiting", |s| s.queued == 1).await;
    // Its model is loaded and a slot free, yet it waits behind the head.
    let same = spawn_post(&c, url.clone(), chat("llama3.2", Some(2)));
    let stats = stats_until(&fake, "two waiting", |s| s.queued == 2).await;
    assert_eq!(stats.in_flight, 1);
    assert_eq!(stats.loaded, models(&["llama3.2:latest"]));

    drop(running);
    for task in [other, same] {
        let (status, text) = task.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let stats = stats_until(&fake, "both completed", |s| s.completed == 2).await;
    // llama3.2, then qwen2.5 in its place, then llama3.2 again.
    assert_eq!(stats.loads, 3);
    assert_eq!(stats.loaded, models(&["llama3.2:latest"]));
    assert_eq!(stats.max_in_flight_seen, 1);
}

#[tokio::test]
async fn a_model_not_installed_is_404_and_never_loads() {
    let opts = FakeOptions {
        installed: Some(models(&["llama3.2:latest"])),
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let resp = send(
        &c,
        post(
            format!("{}/api/chat", fake.url()),
            &chat("qwen2.5:7b", None),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body_text(resp).await,
        r#"{"error":"model \"qwen2.5:7b\" not found, try pulling it first"}"#
    );
    let body = r#"{"model":"qwen2.5:7b","messages":[]}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = send(&c, get(format!("{}/api/tags", fake.url()))).await;
    let tags = parse(&body_text(resp).await);
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(1));
    assert_eq!(tags["models"][0]["name"], "llama3.2:latest");
    let resp = send(&c, get(format!("{}/v1/models", fake.url()))).await;
    let list = parse(&body_text(resp).await);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["data"][0]["id"], "llama3.2:latest");

    let stats = fake.stats();
    assert_eq!(stats.loads, 0);
    assert!(stats.requests.is_empty(), "{stats:?}");
}

#[tokio::test]
async fn api_ps_lists_the_loaded_models_in_ollamas_shape() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let resp = send(&c, get(format!("{}/api/ps", fake.url()))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await, r#"{"models":[]}"#);

    let resp = send(
        &c,
        post(format!("{}/api/chat", fake.url()), &chat("llama3.2", None)),
    )
    .await;
    body_text(resp).await;
    let body = r#"{"model":"nomic-embed-text","input":["a","b"]}"#;
    let resp = send(&c, post(format!("{}/api/embed", fake.url()), body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    body_text(resp).await;
    stats_until(&fake, "both completed", |s| s.completed == 2).await;

    let resp = send(&c, get(format!("{}/api/ps", fake.url()))).await;
    let ps = parse(&body_text(resp).await);
    let entry = |name: &str| {
        json!({
            "name": name,
            "model": name,
            "size": 1,
            "digest": "6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa",
            "details": {},
            "expires_at": "2099-01-01T00:00:00Z",
            "size_vram": 1,
            "context_length": 4096,
        })
    };
    assert_eq!(
        ps,
        json!({"models": [entry("nomic-embed-text:latest"), entry("llama3.2:latest")]})
    );
}

#[tokio::test]
async fn num_predict_and_max_tokens_bound_the_content_chunks() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let chat_url = format!("{}/api/chat", fake.url());
    let text = body_text(send(&c, post(chat_url.clone(), &chat("llama3.2", Some(2)))).await).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(parse(lines[1])["message"]["content"], "tok2 ");
    let last = parse(lines[2]);
    assert_eq!(last["done_reason"], "length");
    // Not pacing tokens, the configured counts are reported.
    assert_eq!(last["eval_count"], 42);

    // Ollama reads a negative limit as none; a limit above `chunks` changes nothing.
    for n in [-1, 10] {
        let body = json!({"model": "llama3.2", "messages": [], "options": {"num_predict": n}});
        let text = body_text(send(&c, post(chat_url.clone(), &body.to_string())).await).await;
        assert_eq!(text.lines().count(), 6, "num_predict {n}: {text}");
        assert!(text.contains(r#""done_reason":"stop""#), "{text}");
    }

    let body = r#"{"model":"llama3.2","prompt":"x","stream":false,"options":{"num_predict":3}}"#;
    let resp = send(&c, post(format!("{}/api/generate", fake.url()), body)).await;
    let answer = parse(&body_text(resp).await);
    assert_eq!(answer["response"], "tok1 tok2 tok3 ");
    assert_eq!(answer["done_reason"], "length");

    let body = r#"{"model":"llama3.2","messages":[],"stream":true,"max_tokens":1}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    let text = body_text(resp).await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    // One content chunk, the finish chunk, [DONE].
    assert_eq!(events.len(), 3, "{text}");
    let finish = parse(events[1].strip_prefix("data: ").expect("data: prefix"));
    assert_eq!(finish["choices"][0]["finish_reason"], "length");

    let body = r#"{"model":"llama3.2","messages":[],"max_tokens":9,"max_completion_tokens":4}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    let answer = parse(&body_text(resp).await);
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tok1 tok2 tok3 tok4 "
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn tokens_per_second_paces_the_tokens_and_they_are_counted() {
    let opts = FakeOptions {
        tokens_per_second: Some(40.0),
        chunks: 8,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let started = Instant::now();
    let resp = send(
        &c,
        post(format!("{}/api/chat", fake.url()), &chat("llama3.2", None)),
    )
    .await;
    let text = body_text(resp).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "8 tokens at 40/s in {took:?}"
    );
    assert_eq!(text.lines().count(), 9, "{text}");
    let last = parse(text.lines().last().expect("final line"));
    assert_eq!(last["eval_count"], 8);
    assert_eq!(last["prompt_eval_count"], 26);

    let body = r#"{"model":"llama3.2","messages":[],"stream":true,"max_tokens":3,"stream_options":{"include_usage":true}}"#;
    let resp = send(
        &c,
        post(format!("{}/v1/chat/completions", fake.url()), body),
    )
    .await;
    let text = body_text(resp).await;
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(parse)
        .find(|e| e.get("usage").is_some())
        .expect("a usage chunk");
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29})
    );
}

#[tokio::test]
async fn a_changed_num_ctx_reloads_and_keep_alive_zero_unloads() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    let chat_with = |extra: Value| {
        let mut body = json!({"model": "llama3.2", "messages": [], "stream": false});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = send(&c, post(url, &body.to_string())).await;
            assert_eq!(resp.status(), StatusCode::OK);
            body_text(resp).await;
        }
    };
    chat_with(json!({})).await;
    chat_with(json!({"options": {"num_ctx": 4096}})).await;
    assert_eq!(fake.stats().loads, 1, "the default context is 4096");
    chat_with(json!({"options": {"num_ctx": 8192}})).await;
    chat_with(json!({"options": {"num_ctx": 8192}})).await;
    assert_eq!(fake.stats().loads, 2);
    let resp = send(&c, get(format!("{}/api/ps", fake.url()))).await;
    let ps = parse(&body_text(resp).await);
    assert_eq!(ps["models"][0]["context_length"], 8192);

    chat_with(json!({"options": {"num_ctx": 8192}, "keep_alive": 0})).await;
    let stats = fake.stats();
    assert!(stats.loaded.is_empty(), "{stats:?}");
    assert_eq!(stats.loads, 2);
    chat_with(json!({"keep_alive": "0s"})).await;
    assert_eq!(fake.stats().loads, 3);
    assert!(fake.stats().loaded.is_empty());
    chat_with(json!({"keep_alive": "5m"})).await;
    assert_eq!(fake.stats().loaded, models(&["llama3.2:latest"]));
}

#[tokio::test]
async fn stats_are_served_at_fake_stats_and_not_recorded() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let c = client();
    let resp = send(
        &c,
        post(format!("{}/api/chat", fake.url()), &chat("llama3.2", None)),
    )
    .await;
    body_text(resp).await;
    let expected = stats_until(&fake, "one completed", |s| s.completed == 1).await;

    let resp = send(&c, get(format!("{}/fake/stats", fake.url()))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = body_text(resp).await;
    let served: FakeStats = serde_json::from_str(&text).expect("stats JSON");
    assert_eq!(served, expected);
    assert_eq!(
        parse(&text),
        json!({
            "loads": 1,
            "loaded": ["llama3.2:latest"],
            "in_flight": 0,
            "queued": 0,
            "max_in_flight_seen": 1,
            "completed": 1,
            "cancelled": 0,
            "rejected": 0,
            "requests": {"llama3.2:latest": 1},
        })
    );
    assert_eq!(fake.requests().len(), 1, "only the chat is recorded");
}

/// A client that leaves while waiting for a slot is dropped from the queue, never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_the_queue_gives_up_its_place() {
    let opts = FakeOptions {
        slots: Some(1),
        tokens_per_second: Some(50.0),
        chunks: 500,
        ..FakeOptions::default()
    };
    let fake = FakeOllama::start(opts).await;
    let c = client();
    let running = send(
        &c,
        post(format!("{}/api/chat", fake.url()), &chat("llama3.2", None)),
    )
    .await;
    assert_eq!(running.status(), StatusCode::OK);

    let body = chat("llama3.2", None);
    let mut waiting = tokio::net::TcpStream::connect(fake.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /api/chat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        fake.addr(),
        body.len()
    );
    waiting
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("write the request");
    stats_until(&fake, "one waiting", |s| s.queued == 1).await;
    drop(waiting);
    let stats = stats_until(&fake, "the queue empty", |s| s.queued == 0).await;
    assert_eq!((stats.in_flight, stats.cancelled), (1, 1), "{stats:?}");

    drop(running);
    let stats = stats_until(&fake, "the slot free", |s| s.in_flight == 0).await;
    assert_eq!(stats.cancelled, 2);
    assert_eq!(stats.max_in_flight_seen, 1);
    assert_eq!(stats.requests, counts(&[("llama3.2:latest", 2)]));
}

/// `stop()` kills the host as a failover test needs: running and waiting requests are
/// cut at once, and the handle still answers for what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cuts_running_and_waiting_requests_at_once() {
    let opts = FakeOptions {
        slots: Some(1),
        tokens_per_second: Some(50.0),
        chunks: 500,
        ..FakeOptions::default()
    };
    let fake = Arc::new(FakeOllama::start(opts).await);
    let c = client();
    let url = format!("{}/api/chat", fake.url());
    let running = send(&c, post(url.clone(), &chat("llama3.2", None))).await;
    assert_eq!(running.status(), StatusCode::OK);
    let waiting = {
        let (c, req) = (c.clone(), post(url.clone(), &chat("llama3.2", None)));
        tokio::spawn(async move { c.request(req).await.map(|r| r.status()) })
    };
    stats_until(&fake, "one waiting", |s| s.queued == 1).await;

    let stopped = Instant::now();
    let killer = fake.clone();
    tokio::spawn(async move { killer.stop().await })
        .await
        .expect("stop task");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "stop waited for the requests"
    );
    let cut = tokio::time::timeout(Duration::from_secs(5), running.into_body().collect())
        .await
        .expect("the stream ends soon after stop");
    assert!(cut.is_err(), "the stream is cut, not finished");
    let refused = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting request ends soon after stop")
        .expect("request task");
    assert!(refused.is_err(), "the waiting request got {refused:?}");

    let stats = stats_until(&fake, "nothing left", |s| s.in_flight + s.queued == 0).await;
    assert_eq!((stats.completed, stats.cancelled), (0, 2), "{stats:?}");
    assert_eq!(fake.requests().len(), 2);
    fake.stop().await;
    assert!(
        tokio::net::TcpStream::connect(fake.addr()).await.is_err(),
        "the port is closed"
    );
}
