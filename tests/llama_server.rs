//! Facts about a real OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`
//! with a tiny random-weight model) that the gate relies on, checked straight against
//! the server; then the gate in front of it, counting and capping the tokens of a
//! server that never reports usage in a stream, and registered as a host of kind `openai`
//! beside an Ollama host. Each test starts its own server; the first one installs the packages into
//! `target/llama` (see `support::llama`).

mod support;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use support::gate::{Db, Gate, Reply, eventually, send};
use support::llama::{LlamaServer, MODEL, N_CTX};

/// Starts a server off the async runtime (it blocks while it installs and loads).
async fn server() -> LlamaServer {
    tokio::task::spawn_blocking(LlamaServer::start)
        .await
        .expect("start llama_cpp.server")
}

/// `POST {server}{path}` with a JSON body.
async fn post_json(server: &LlamaServer, path: &str, body: &Value) -> Reply {
    send(
        Method::POST,
        &format!("{}{path}", server.url()),
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
}

/// A server-sent event stream as received.
#[derive(Debug)]
struct Sse {
    /// The JSON of every `data:` line but the last `[DONE]`.
    chunks: Vec<Value>,
    /// The stream's last `data:` line was `[DONE]`.
    done: bool,
    /// Lines that were neither `data:` nor blank (comments, `event:`, ...).
    other: Vec<String>,
}

impl Sse {
    /// Parses a whole SSE body; panics on a `data:` line that is not JSON or `[DONE]`,
    /// or on anything after `[DONE]`.
    fn parse(body: &str) -> Sse {
        let mut sse = Sse {
            chunks: Vec::new(),
            done: false,
            other: Vec::new(),
        };
        for line in body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
            if line.is_empty() {
                continue;
            }
            assert!(!sse.done, "{line:?} after data: [DONE] in\n{body}");
            match line.strip_prefix("data:").map(str::trim_start) {
                Some("[DONE]") => sse.done = true,
                Some(data) => sse.chunks.push(
                    serde_json::from_str(data)
                        .unwrap_or_else(|e| panic!("data line not JSON ({e}): {line:?}")),
                ),
                None => sse.other.push(line.to_owned()),
            }
        }
        sse
    }

    /// The chunks that carry a `usage` member that is not null.
    fn with_usage(&self) -> Vec<&Value> {
        self.chunks
            .iter()
            .filter(|c| c.get("usage").is_some_and(|u| !u.is_null()))
            .collect()
    }

    /// The non-empty `choices[0].delta.content` strings, in order.
    fn contents(&self) -> Vec<&str> {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The last non-null `choices[0].finish_reason`.
    fn finish_reason(&self) -> Option<&str> {
        self.chunks
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
    }
}

/// A chat request for `max_tokens` tokens, greedy and seeded so it is repeatable.
fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 7,
        "stream": stream,
    })
}

/// A streamed reply: checks the head and returns the parsed body.
async fn stream(server: &LlamaServer, path: &str, body: &Value) -> Sse {
    let reply = post_json(server, path, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let ctype = reply.headers["content-type"]
        .to_str()
        .expect("content-type");
    assert!(
        ctype.starts_with("text/event-stream"),
        "content-type {ctype}"
    );
    Sse::parse(&reply.text())
}

#[tokio::test]
async fn models_lists_the_alias() {
    let server = server().await;
    let reply = send(Method::GET, &format!("{}/v1/models", server.url()), &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [server.model()], "{v}");
    eprintln!("started and answered in {:?}", server.startup);
}

#[tokio::test]
async fn streamed_chat_is_sse_of_deltas_without_usage() {
    let server = server().await;
    let plain = stream(&server, "/v1/chat/completions", &chat(6, true)).await;
    let mut asked = chat(6, true);
    asked["stream_options"] = json!({"include_usage": true});
    let with_option = stream(&server, "/v1/chat/completions", &asked).await;

    for sse in [&plain, &with_option] {
        assert!(sse.done, "no data: [DONE]: {sse:?}");
        assert!(sse.other.is_empty(), "{:?}", sse.other);
        assert!(sse.chunks.len() >= 3, "{sse:?}");
        for c in &sse.chunks {
            assert_eq!(c["object"], "chat.completion.chunk", "{c}");
            assert_eq!(c["model"], MODEL, "{c}");
            assert!(c["choices"][0]["delta"].is_object(), "no delta: {c}");
        }
        assert_eq!(sse.chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(sse.finish_reason(), Some("length"));
        assert!(!sse.contents().is_empty(), "no content: {sse:?}");
    }
    // llama-cpp-python sends no token counts in a stream, asked or not.
    assert!(plain.with_usage().is_empty(), "{:?}", plain.with_usage());
    assert!(
        with_option.with_usage().is_empty(),
        "{:?}",
        with_option.with_usage()
    );
}

#[tokio::test]
async fn unstreamed_chat_reports_usage() {
    let server = server().await;
    let reply = post_json(&server, "/v1/chat/completions", &chat(5, false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("content-type")
            .starts_with("application/json")
    );
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let usage = &v["usage"];
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let completion = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    assert!(prompt > 0, "{usage}");
    assert_eq!(completion, 5, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
}

#[tokio::test]
async fn max_tokens_bounds_the_deltas_one_token_each() {
    let server = server().await;
    for n in [1, 9] {
        let whole = post_json(&server, "/v1/chat/completions", &chat(n, false))
            .await
            .json();
        assert_eq!(whole["choices"][0]["finish_reason"], "length", "{whole}");
        assert_eq!(whole["usage"]["completion_tokens"].as_u64(), Some(n));

        let sse = stream(&server, "/v1/chat/completions", &chat(n, true)).await;
        let contents = sse.contents();
        // One content delta per generated token (whole ASCII tokens, no held-back stop
        // prefix: see make_model.py), and the same text as the unstreamed reply.
        assert_eq!(contents.len() as u64, n, "{contents:?}");
        assert_eq!(
            contents.concat(),
            whole["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
        );
    }
}

#[tokio::test]
async fn text_completions_stream_and_count() {
    let server = server().await;
    let body = json!({"model": MODEL, "prompt": "The sea", "max_tokens": 4, "temperature": 0});
    let whole = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["usage"]["completion_tokens"].as_u64(), Some(4));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let sse = stream(&server, "/v1/completions", &streamed).await;
    assert!(sse.done);
    let texts: Vec<&str> = sse
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(texts.len(), 4, "{sse:?}");
    assert_eq!(
        texts.concat(),
        whole["choices"][0]["text"].as_str().expect("text")
    );
    assert!(sse.with_usage().is_empty(), "{:?}", sse.with_usage());
}

#[tokio::test]
async fn without_max_tokens_the_reply_fills_the_context() {
    let server = server().await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let v = post_json(&server, "/v1/chat/completions", &body)
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(u64::from(N_CTX)),
        "{usage}"
    );
}

#[tokio::test]
async fn bad_requests() {
    let server = server().await;
    let chat_url = format!("{}/v1/chat/completions", server.url());

    // An unknown model name is not an error: the server answers with its only model,
    // and echoes the name it was asked for.
    let mut other = chat(2, false);
    other["model"] = json!("no-such-model");
    let reply = post_json(&server, "/v1/chat/completions", &other).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["model"], "no-such-model");

    // A prompt longer than the context: 400 with an OpenAI-style error object...
    let long = "sea ".repeat(N_CTX as usize + 100);
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": long}]});
    let reply = post_json(&server, "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    assert_eq!(error["param"], "messages", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum context length is 512 tokens")),
        "{error}"
    );
    // ...but streamed, a 200 event stream that ends at once: no event, no [DONE].
    body["stream"] = json!(true);
    let reply = post_json(&server, "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("content-type")
            .starts_with("text/event-stream")
    );
    assert_eq!(reply.text().trim(), "", "{}", reply.text());

    // A body that fails validation: 500 (not 422), the same error object.
    let bad = json!({"model": MODEL, "messages": "x", "max_tokens": "many"});
    let reply = post_json(&server, "/v1/chat/completions", &bad).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "internal_server_error", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("validation error")),
        "{error}"
    );

    // A body that is not JSON: 500 with a plain-text body.
    let reply = send(
        Method::POST,
        &chat_url,
        &[("content-type", "application/json")],
        "{\"model\":",
    )
    .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "Internal Server Error");

    // An unknown path: FastAPI's 404.
    let reply = send(Method::GET, &format!("{}/api/tags", server.url()), &[], "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json(), json!({"detail": "Not Found"}));
}

/// `POST {gate}{path}` with a JSON body and `key`.
async fn gate_post(gate: &Gate, key: &str, path: &str, body: &Value) -> Reply {
    send(
        Method::POST,
        &gate.url(path),
        &[("content-type", "application/json"), ("x-api-key", key)],
        &body.to_string(),
    )
    .await
}

/// Tokens the gate has recorded for key `id`: (prompt, completion).
fn recorded(db: &Db, id: i64) -> (u64, u64) {
    let rows: Vec<Value> =
        serde_json::from_str(&db.cli(&["usage", "--json", "--by", "key"])).expect("usage json");
    rows.iter()
        .filter(|r| r["key_id"] == id)
        .fold((0, 0), |(p, c), r| {
            (
                p + r["prompt_tokens"].as_u64().unwrap_or(0),
                c + r["completion_tokens"].as_u64().unwrap_or(0),
            )
        })
}

/// Through the gate: a stream from llama.cpp, which never reports usage, is charged one
/// token per delivered chunk (its role and finish chunks included: a margin of two) and
/// the prompt by its size; a non-streamed answer is charged the server's own counts;
/// generation is capped to what is left of the day's quota; then the quota refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_counts_and_caps_the_tokens_of_a_server_without_stream_usage() {
    let server = server().await;
    let db = Db::new();
    db.cli(&["tier", "set", "metered", "--tokens-per-day", "120"]);
    let (id, key) = db.key(&["--tier", "metered"]);
    let gate = Gate::start(&db.path, &server.url(), &["--no-login"]);

    // 1. Streamed, no usage asked for: none is sent, and the deltas are counted.
    let body = chat(10, true);
    let r = gate_post(&gate, &key, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sse = Sse::parse(&r.text());
    assert!(sse.with_usage().is_empty());
    assert_eq!(sse.contents().len(), 10);
    let prompt = body.to_string().len().div_ceil(4) as u64;
    let first = eventually(std::time::Duration::from_secs(3), || async {
        let (p, c) = recorded(&db, id);
        p == prompt && (10..=12).contains(&c)
    })
    .await;
    assert!(first.is_some(), "recorded {:?}", recorded(&db, id));
    let after_stream = recorded(&db, id);

    // 2. Not streamed: the server's own usage is what counts.
    let r = gate_post(&gate, &key, "/v1/chat/completions", &chat(5, false)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let usage = r.json()["usage"].clone();
    assert_eq!(usage["completion_tokens"], 5, "{usage}");
    let want = (
        after_stream.0 + usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        after_stream.1 + 5,
    );
    let second = eventually(std::time::Duration::from_secs(3), || async {
        recorded(&db, id) == want
    })
    .await;
    assert!(
        second.is_some(),
        "recorded {:?}, want {want:?}",
        recorded(&db, id)
    );

    // 3. Asking for 400 tokens gets at most what is left of the 120.
    let left = 120 - (want.0 + want.1);
    let r = gate_post(&gate, &key, "/v1/chat/completions", &chat(400, true)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let deltas = Sse::parse(&r.text()).contents().len() as u64;
    assert!(
        deltas >= 1 && deltas <= left,
        "{deltas} deltas with {left} tokens left"
    );

    // 4. The quota is now spent: refused, in OpenAI's words.
    let spent = eventually(std::time::Duration::from_secs(3), || async {
        let (p, c) = recorded(&db, id);
        p + c >= 120
    })
    .await;
    assert!(spent.is_some(), "recorded {:?}", recorded(&db, id));
    let r = gate_post(&gate, &key, "/v1/chat/completions", &chat(10, true)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
}

/// The server registered as a host of kind `openai` beside a (fake) Ollama host: the
/// gate discovers its model from `/v1/models`, routes OpenAI requests for it there and
/// Ollama's routes never, and lists both hosts' models as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_cpp_host_of_kind_openai_beside_ollama() {
    use support::fake_ollama::{FakeOllama, FakeOptions};
    let server = server().await;
    let ollama = FakeOllama::start(FakeOptions {
        installed: Some(vec!["qwen2.5:0.5b".into()]),
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    db.cli(&[
        "host",
        "add",
        &server.url(),
        "--name",
        "llama",
        "--kind",
        "openai",
    ]);
    db.cli(&["host", "add", &ollama.url(), "--name", "ollama"]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, "", &["--no-login", "--probe-interval", "200ms"]);
    let hosts = || -> Vec<Value> {
        serde_json::from_str(&db.cli(&["host", "list", "--json"])).expect("host list json")
    };
    let seen = eventually(std::time::Duration::from_secs(20), || async {
        hosts().iter().all(|h| h["state"] == "up")
    })
    .await;
    assert!(seen.is_some(), "{:?}", hosts());
    let llama = hosts()
        .into_iter()
        .find(|h| h["name"] == "llama")
        .expect("llama");
    assert_eq!(llama["kind"], "openai");
    assert_eq!(llama["loaded_models"], json!([MODEL]));

    let r = send(
        Method::GET,
        &gate.url("/v1/models"),
        &[("x-api-key", key.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    assert_eq!(ids, ["qwen2.5:0.5b", MODEL]);

    let r = gate_post(&gate, &key, "/v1/chat/completions", &chat(4, true)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(Sse::parse(&r.text()).contents().len(), 4);
    let r = gate_post(&gate, &key, "/v1/chat/completions", &chat(3, false)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    assert!(
        ollama
            .requests()
            .iter()
            .all(|r| !r.path_and_query.starts_with("/v1/chat")),
        "the Ollama host has no {MODEL}"
    );
    // Ollama's own routes are not served by an OpenAI-compatible host: the one Ollama
    // host answers for itself.
    let body = json!({"model": MODEL, "messages": [], "stream": false});
    let r = gate_post(&gate, &key, "/api/chat", &body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("model \"{MODEL}\" not found"))),
        "{}",
        r.text()
    );
    assert!(
        ollama
            .requests()
            .iter()
            .any(|r| r.path_and_query == "/api/chat")
    );
}
