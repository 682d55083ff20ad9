//! Tiers that mean something: model allow-lists, requests per minute, requests in
//! flight and tokens per day, enforced by the real `aigate serve` per key (and per user
//! for JWT callers); usage counted from the stream and flushed to SQLite; metrics on
//! their own address.
mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};
use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, Reply, eventually, get, open, post, send};

/// What the fake reports for every reply.
const PROMPT: u64 = 26;
const COMPLETION: u64 = 42;

fn chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn chat(gate: &Gate, cred: &str, model: &str) -> Reply {
    post(&gate.url("/api/chat"), cred, &chat_body(model)).await
}

/// Logs `user` in and returns the access token.
async fn login(gate: &Gate, user: &str, password: &str) -> String {
    let body = json!({"username": user, "password": password}).to_string();
    let r = send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "login: {}", r.text());
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// The `Retry-After` of a 429, as whole seconds.
fn retry_after(r: &Reply) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers));
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not an integer: {v:?}"))
}

/// `aigate usage --json ARGS`, rows sorted by who and what.
fn usage(db: &Db, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["usage", "--json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&db.cli(&all)).expect("usage --json");
    sorted(v.as_array().expect("an array").clone())
}

fn row(
    key_id: Option<i64>,
    user: Option<&str>,
    model: Option<&str>,
    n: u64,
    p: u64,
    c: u64,
) -> Value {
    json!({
        "key_id": key_id,
        "user": user,
        "model": model,
        "requests": n,
        "prompt_tokens": p,
        "completion_tokens": c,
    })
}

/// Rows in a stable order: by key, user and model.
fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| format!("{}|{}|{}", r["key_id"], r["user"], r["model"]));
    rows
}

/// Waits up to 2 s (the spec's bound) for `aigate usage ARGS` to show exactly `want`.
async fn usage_becomes(db: &Db, args: &[&str], want: Vec<Value>) {
    let want = sorted(want);
    let shown = eventually(Duration::from_secs(2), || async { usage(db, args) == want }).await;
    assert!(
        shown.is_some(),
        "usage {args:?} within 2 s:\n got  {:?}\n want {want:?}",
        usage(db, args)
    );
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_allow_list_refuses_filters_and_lets_modelless_requests_pass() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, key) = db.key(&["--tier", "llamas"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let r = chat(&gate, &key, "qwen2.5:7b").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let detail = r.detail();
    assert!(detail.contains("qwen2.5:7b"), "names the model: {detail}");
    assert!(detail.contains("llamas"), "names the tier: {detail}");
    let openai = json!({"model": "qwen2.5:7b", "messages": []}).to_string();
    let r = post(&gate.url("/v1/chat/completions"), &key, &openai).await;
    assert_eq!(r.status, 403, "OpenAI route too: {}", r.text());
    assert!(
        fake.requests()
            .iter()
            .all(|q| !String::from_utf8_lossy(&q.body).contains("qwen")),
        "a refused model never reaches the upstream"
    );

    let r = chat(&gate, &key, "llama3.2:latest").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().lines().count(), 6);

    // No model field: nothing to refuse, the request goes through.
    let r = post(&gate.url("/api/show"), &key, r#"{"verbose":false}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "success");
    // A route the gate does not know could name its model some other way: with an
    // allow-list it is refused, not guessed at.
    let r = get(&gate.url("/echo"), &key).await;
    assert_eq!(r.status, 403, "{}", r.text());

    let r = get(&gate.url("/api/tags"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let names: Vec<&str> = doc["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["llama3.2:latest"]);

    let r = get(&gate.url("/v1/models"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let ids: Vec<&str> = doc["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["llama3.2:latest"]);

    // A tier without a list sees every model.
    let (_, pro) = db.key(&["--tier", "pro"]);
    let r = get(&gate.url("/api/tags"), &pro).await;
    assert_eq!(r.json()["models"].as_array().expect("models").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_allow_list_reads_the_model_as_ollama_will() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, key) = db.key(&["--tier", "llamas"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    // Ollama decodes with Go's encoding/json: the last duplicate wins, keys match
    // case-insensitively, trailing data after the object is ignored, lone surrogates
    // become U+FFFD, and nesting goes far deeper than serde_json's default limit.
    let tricks = [
        r#"{"model":"llama3.2:latest","model":"qwen2.5:7b","messages":[]}"#.to_string(),
        r#"{"Model":"qwen2.5:7b","messages":[]}"#.to_string(),
        r#"{"model":"llama3.2:latest","MODEL":"qwen2.5:7b","messages":[]}"#.to_string(),
        r#"{"model":"qwen2.5:7b","messages":[]} trailing"#.to_string(),
        r#"{"model":"qwen2.5:7b","messages":[{"role":"user","content":"\ud800"}]}"#.to_string(),
        format!(r#"{{"model":"qwen2.5:7b","messages":[],"options":{{"x":{deep}}}}}"#),
    ];
    for body in &tricks {
        let r = post(&gate.url("/api/chat"), &key, body).await;
        assert!(
            r.status == 403 || r.status == 400,
            "{body:.80}: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(
        fake.requests()
            .iter()
            .all(|q| !String::from_utf8_lossy(&q.body).contains("qwen")),
        "a refused model reached the upstream"
    );
    // The same shapes naming an allowed model still go through.
    for body in [r#"{"Model":"llama3.2:latest","messages":[]}"#] {
        let r = post(&gate.url("/api/chat"), &key, body).await;
        assert_ne!(r.status, 403, "{body}: {}", r.text());
        assert!(
            fake.requests().iter().any(|q| q.body == body.as_bytes()),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------
// Requests per minute
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_is_per_key_and_answers_with_retry_after() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "three", "--rpm", "3"]);
    let (_, a) = db.key(&["--tier", "three"]);
    let (_, b) = db.key(&["--tier", "three"]);
    let (_, one) = db.key(&["--tier", "three", "--rpm", "1"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    for i in 0..3 {
        let r = get(&gate.url("/echo"), &a).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = get(&gate.url("/echo"), &a).await;
    let wait = retry_after(&r);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        r.detail().contains("3 requests per minute"),
        "{}",
        r.detail()
    );
    let upstream_before = fake.requests().len();

    // Another key on the same tier has its own budget.
    for i in 0..3 {
        let r = get(&gate.url("/echo"), &b).await;
        assert_eq!(r.status, 200, "other key, request {i}: {}", r.text());
    }
    assert_eq!(fake.requests().len(), upstream_before + 3);
    assert_eq!(get(&gate.url("/echo"), &b).await.status, 429);

    // A per-key override wins over the tier.
    assert_eq!(get(&gate.url("/echo"), &one).await.status, 200);
    retry_after(&get(&gate.url("/echo"), &one).await);
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

async fn open_chat(gate: &Gate, key: &str) -> hyper::Response<hyper::body::Incoming> {
    open(
        Method::POST,
        &gate.url("/api/chat"),
        &[("x-api-key", key), ("content-type", "application/json")],
        &chat_body("llama3.2:latest"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slot_comes_back_when_the_stream_completes() {
    let fake = FakeOllama::start(FakeOptions {
        chunk_delay: Duration::from_millis(100),
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    db.cli(&[
        "tier",
        "set",
        "single",
        "--concurrency",
        "1",
        "--max-queued",
        "0",
    ]);
    let (_, key) = db.key(&["--tier", "single"]);
    let (_, other) = db.key(&["--tier", "single"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let stream = open_chat(&gate, &key).await;
    assert_eq!(stream.status(), 200);
    let r = get(&gate.url("/echo"), &key).await;
    assert!(retry_after(&r) >= 1);
    assert!(r.detail().contains("at most 1"), "{}", r.detail());
    // Limits are per key.
    assert_eq!(get(&gate.url("/echo"), &other).await.status, 200);

    let body = stream
        .into_body()
        .collect()
        .await
        .expect("stream")
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).lines().count(), 6);
    let r = get(&gate.url("/echo"), &key).await;
    assert_eq!(r.status, 200, "slot back after the stream: {}", r.text());
    // And again: the finished request did not leak a slot.
    assert_eq!(get(&gate.url("/echo"), &key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slot_comes_back_when_the_client_leaves() {
    // A stream of 10 s: the slot must come back long before it would end.
    let fake = FakeOllama::start(FakeOptions {
        chunks: 100,
        chunk_delay: Duration::from_millis(100),
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    db.cli(&[
        "tier",
        "set",
        "single",
        "--concurrency",
        "1",
        "--max-queued",
        "0",
    ]);
    let (_, key) = db.key(&["--tier", "single"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let mut stream = open_chat(&gate, &key).await;
    assert_eq!(stream.status(), 200);
    let first = stream
        .body_mut()
        .frame()
        .await
        .expect("a first chunk")
        .expect("chunk");
    assert!(first.is_data());
    retry_after(&get(&gate.url("/echo"), &key).await);

    drop(stream);
    let back = eventually(Duration::from_secs(5), || async {
        get(&gate.url("/echo"), &key).await.status == 200
    })
    .await;
    assert!(back.is_some(), "slot never came back after the client left");
    assert!(
        eventually(Duration::from_secs(2), || async { fake.cancelled() == 1 })
            .await
            .is_some(),
        "the upstream stream was not dropped"
    );
    assert_eq!(fake.completed(), 0);
}

// ---------------------------------------------------------------------------
// Tokens per day
// ---------------------------------------------------------------------------

/// 68 tokens, 136 (crossing 100, allowed to finish), then refused.
async fn quota_of_100_runs_out_on_the_third(gate: &Gate, cred: &str) {
    for i in 0..2 {
        let r = chat(gate, cred, "llama3.2:latest").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text().lines().count(), 6, "request {i} finished");
    }
    let r = chat(gate, cred, "llama3.2:latest").await;
    let wait = retry_after(&r);
    assert!((1..=86_400).contains(&wait), "Retry-After {wait}");
    assert!(r.detail().contains("100 tokens"), "{}", r.detail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_tokens_per_key_from_tier_and_from_override() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "small", "--tokens-per-day", "100"]);
    let (_, a) = db.key(&["--tier", "small"]);
    let (_, b) = db.key(&["--tier", "small"]);
    let (c_id, c) = db.key(&["--tier", "pro", "--tokens-per-day", "100"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    quota_of_100_runs_out_on_the_third(&gate, &a).await;
    // Per key: the other key of the tier still has its 100.
    assert_eq!(chat(&gate, &b, "llama3.2:latest").await.status, 200);
    // Refused requests never reached the upstream: 3 chats went through.
    let chats = || {
        fake.requests()
            .iter()
            .filter(|q| q.path_and_query == "/api/chat")
            .count()
    };
    assert_eq!(chats(), 3);

    quota_of_100_runs_out_on_the_third(&gate, &c).await;
    assert_eq!(chats(), 5);
    // Raising the override from the CLI reaches the gate within a second.
    db.cli(&["key", "set", &c_id.to_string(), "--tokens-per-day", "1000"]);
    let lifted = eventually(Duration::from_secs(1), || async {
        chat(&gate, &c, "llama3.2:latest").await.status == 200
    })
    .await;
    assert!(
        lifted.is_some(),
        "key set --tokens-per-day not applied within 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_share_one_quota_per_user() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "small", "--tokens-per-day", "100"]);
    db.user("dana", "correct horse battery", "small");
    let (_, dana_key) = db.key(&["--user", "dana", "--tier", "small"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let t1 = login(&gate, "dana", "correct horse battery").await;
    let t2 = login(&gate, "dana", "correct horse battery").await;
    for (i, t) in [&t1, &t2].into_iter().enumerate() {
        let r = chat(&gate, t, "llama3.2:latest").await;
        assert_eq!(r.status, 200, "token {i}: {}", r.text());
    }
    // 136 tokens used by the user, whichever token carried them.
    retry_after(&chat(&gate, &t1, "llama3.2:latest").await);
    retry_after(&chat(&gate, &t2, "llama3.2:latest").await);
    // The user's key spends the same budget (SPEC §4, Budgets): refused too…
    retry_after(&chat(&gate, &dana_key, "llama3.2:latest").await);
    // …while a key without a user has its own.
    let (_, lone) = db.key(&["--tier", "small"]);
    assert_eq!(chat(&gate, &lone, "llama3.2:latest").await.status, 200);
}

/// A user's keys and tokens share one rate: two keys and a token of one user get the
/// tier's 3 requests per minute between them, not 3 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_keys_and_tokens_share_one_rate() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "slow", "--rpm", "3"]);
    db.user("erin", "correct horse battery", "slow");
    let (_, k1) = db.key(&["--user", "erin", "--tier", "slow"]);
    let (_, k2) = db.key(&["--user", "erin", "--tier", "slow"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let token = login(&gate, "erin", "correct horse battery").await;
    for cred in [&k1, &k2, &token] {
        assert_eq!(chat(&gate, cred, "llama3.2:latest").await.status, 200);
    }
    for cred in [&k1, &k2, &token] {
        retry_after(&chat(&gate, cred, "llama3.2:latest").await);
    }
    let (_, lone) = db.key(&["--tier", "slow"]);
    assert_eq!(chat(&gate, &lone, "llama3.2:latest").await.status, 200);
}

// ---------------------------------------------------------------------------
// Live tier changes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_change_reaches_the_running_gate_within_a_second() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "live", "--rpm", "100"]);
    let (_, key) = db.key(&["--tier", "live"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    assert_eq!(chat(&gate, &key, "llama3.2:latest").await.status, 200);

    db.cli(&["tier", "set", "live", "--models", "qwen*"]);
    let narrowed = eventually(Duration::from_secs(1), || async {
        chat(&gate, &key, "llama3.2:latest").await.status == 403
    })
    .await;
    assert!(narrowed.is_some(), "--models change not applied within 1 s");
    assert_eq!(chat(&gate, &key, "qwen2.5:7b").await.status, 200);

    // At least 3 requests were counted this minute; 2 per minute refuses the next.
    db.cli(&["tier", "set", "live", "--rpm", "2"]);
    let lowered = eventually(Duration::from_secs(1), || async {
        chat(&gate, &key, "qwen2.5:7b").await.status == 429
    })
    .await;
    assert!(lowered.is_some(), "--rpm change not applied within 1 s");
}

// ---------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_match_the_upstream_for_every_api_shape() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.user("erin", "correct horse battery", "pro");
    let (chat_id, chat_key) = db.key(&["--tier", "pro"]);
    let (gen_id, gen_key) = db.key(&["--tier", "pro"]);
    let (sse_id, sse_key) = db.key(&["--tier", "pro"]);
    let (oai_id, oai_key) = db.key(&["--tier", "pro"]);
    let (emb_id, emb_key) = db.key(&["--tier", "pro"]);
    let (erin_id, erin_key) = db.key(&["--tier", "pro", "--user", "erin"]);
    // An old row, outside `--since 1d`.
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        / 86_400;
    db.conn()
        .execute(
            "INSERT INTO usage (day, key_id, user, model, requests, prompt_tokens, completion_tokens)
             VALUES (?1, ?2, '', 'old:model', 7, 70, 700)",
            rusqlite::params![today - 10, chat_id],
        )
        .expect("old usage row");
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    // NDJSON stream.
    let r = chat(&gate, &chat_key, "llama3.2:latest").await;
    assert_eq!(r.status, 200);
    // Non-streamed generate.
    let body = json!({"model": "llama3.2:latest", "prompt": "hi", "stream": false}).to_string();
    let r = post(&gate.url("/api/generate"), &gen_key, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["eval_count"], COMPLETION);
    // OpenAI SSE with the usage chunk.
    let body = json!({
        "model": "qwen2.5:7b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let r = post(&gate.url("/v1/chat/completions"), &sse_key, &body).await;
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    // OpenAI, not streamed.
    let body =
        json!({"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = post(&gate.url("/v1/chat/completions"), &oai_key, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], COMPLETION);
    // Embeddings: prompt tokens only.
    let body = json!({"model": "nomic-embed-text:latest", "input": ["a", "b"]}).to_string();
    let r = post(&gate.url("/api/embed"), &emb_key, &body).await;
    assert_eq!(r.status, 200);
    // A logged-in user (no key), and the same user's key.
    let token = login(&gate, "erin", "correct horse battery").await;
    for _ in 0..2 {
        assert_eq!(chat(&gate, &token, "llama3.2:latest").await.status, 200);
    }
    assert_eq!(chat(&gate, &erin_key, "qwen2.5:7b").await.status, 200);

    let (p, c) = (PROMPT, COMPLETION);
    let llama = Some("llama3.2:latest");
    let qwen = Some("qwen2.5:7b");
    let nomic = Some("nomic-embed-text:latest");
    usage_becomes(
        &db,
        &["--since", "1d"],
        vec![
            row(Some(chat_id), None, llama, 1, p, c),
            row(Some(gen_id), None, llama, 1, p, c),
            row(Some(sse_id), None, qwen, 1, p, c),
            row(Some(oai_id), None, qwen, 1, p, c),
            row(Some(emb_id), None, nomic, 1, p, 0),
            row(None, Some("erin"), llama, 2, 2 * p, 2 * c),
            row(Some(erin_id), Some("erin"), qwen, 1, p, c),
        ],
    )
    .await;

    // Without --since the old row is there too.
    assert!(
        usage(&db, &[]).contains(&row(Some(chat_id), None, Some("old:model"), 7, 70, 700)),
        "{:?}",
        usage(&db, &[])
    );
    assert_eq!(
        usage(&db, &["--since", "1d", "--by", "key"]),
        sorted(vec![
            row(Some(chat_id), None, None, 1, p, c),
            row(Some(gen_id), None, None, 1, p, c),
            row(Some(sse_id), None, None, 1, p, c),
            row(Some(oai_id), None, None, 1, p, c),
            row(Some(emb_id), None, None, 1, p, 0),
            row(None, None, None, 2, 2 * p, 2 * c),
            row(Some(erin_id), None, None, 1, p, c),
        ])
    );
    assert_eq!(
        usage(&db, &["--since", "1d", "--by", "user"]),
        sorted(vec![
            row(None, None, None, 5, 5 * p, 4 * c),
            row(None, Some("erin"), None, 3, 3 * p, 3 * c),
        ])
    );
    assert_eq!(
        usage(&db, &["--since", "1d", "--by", "model"]),
        sorted(vec![
            row(None, None, llama, 4, 4 * p, 4 * c),
            row(None, None, qwen, 3, 3 * p, 3 * c),
            row(None, None, nomic, 1, p, 0),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_survive_lines_split_mid_number() {
    let fake = FakeOllama::start(FakeOptions {
        split_mid_line: true,
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    let (ndjson_id, ndjson_key) = db.key(&["--tier", "pro"]);
    let (sse_id, sse_key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let r = chat(&gate, &ndjson_key, "llama3.2:latest").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains(&format!("\"eval_count\":{COMPLETION}")));
    let body = json!({
        "model": "qwen2.5:7b",
        "messages": [],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let r = post(&gate.url("/v1/chat/completions"), &sse_key, &body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains(&format!("\"completion_tokens\":{COMPLETION}"))
    );

    usage_becomes(
        &db,
        &[],
        vec![
            row(
                Some(ndjson_id),
                None,
                Some("llama3.2:latest"),
                1,
                PROMPT,
                COMPLETION,
            ),
            row(
                Some(sse_id),
                None,
                Some("qwen2.5:7b"),
                1,
                PROMPT,
                COMPLETION,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_quota_survive_a_restart() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "small", "--tokens-per-day", "100"]);
    db.user("finn", "correct horse battery", "small");
    let (key_id, key) = db.key(&["--tier", "small"]);
    let mut gate = Gate::start(&db.path, &fake.url(), &[]);
    let token = login(&gate, "finn", "correct horse battery").await;

    for cred in [&key, &key, &token, &token] {
        let r = chat(&gate, cred, "llama3.2:latest").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // At once: before the next periodic flush.
    gate.sigterm();
    assert_eq!(
        gate.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        gate.logs()
    );
    let llama = Some("llama3.2:latest");
    assert_eq!(
        usage(&db, &[]),
        sorted(vec![
            row(Some(key_id), None, llama, 2, 2 * PROMPT, 2 * COMPLETION),
            row(None, Some("finn"), llama, 2, 2 * PROMPT, 2 * COMPLETION),
        ]),
        "{}",
        gate.logs()
    );

    // A new gate seeds today's tokens from the table: both are still over 100.
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    retry_after(&chat(&gate, &key, "llama3.2:latest").await);
    retry_after(&chat(&gate, &token, "llama3.2:latest").await);
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|q| q.path_and_query == "/api/chat")
            .count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_set_within_two_seconds() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (id, key) = db.key(&["--tier", "pro"]);
    let (unused_id, _) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let last_used = |want: i64| {
        let list: Value = serde_json::from_str(&db.cli(&["key", "list", "--json"])).expect("json");
        list.as_array()
            .expect("array")
            .iter()
            .find(|k| k["id"] == want)
            .expect("key listed")["last_used_at"]
            .clone()
    };
    assert_eq!(last_used(id), Value::Null);

    assert_eq!(get(&gate.url("/echo"), &key).await.status, 200);
    let set = eventually(Duration::from_secs(2), || async {
        last_used(id).is_string()
    })
    .await;
    assert!(set.is_some(), "last_used_at still {:?}", last_used(id));
    let at = last_used(id);
    assert!(
        at.as_str().is_some_and(|s| s.ends_with('Z')),
        "RFC 3339 UTC: {at}"
    );
    assert_eq!(last_used(unused_id), Value::Null);
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",k2="v2"`, checked and split.
fn parse_labels(mut s: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in {line:?}"));
        assert!(is_name(k), "label name {k:?} in {line:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.push(
                    chars
                        .next()
                        .unwrap_or_else(|| panic!("escape in {line:?}"))
                        .1,
                ),
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        out.push((k.to_string(), value));
        s = &rest[end + 1..];
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else {
            assert!(s.is_empty(), "after a label in {line:?}");
        }
    }
    out
}

/// Parses Prometheus/OpenMetrics text, asserting its shape.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF:\n{text}");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or("");
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels of {line:?}"));
                (name, parse_labels(inner, line))
            }
            None => (series, Vec::new()),
        };
        assert!(is_name(name), "metric name in {line:?}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

/// The sum of `name` over samples whose labels include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(gate: &Gate) -> Vec<Sample> {
    let addr = gate.metrics.expect("metrics address in the start line");
    assert!(addr.ip().is_loopback());
    let r = send(Method::GET, &format!("http://{addr}/metrics"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    parse_metrics(&r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_stay_off_the_public_port() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "once", "--rpm", "1"]);
    let (_, key) = db.key(&["--tier", "pro"]);
    let (_, once) = db.key(&["--tier", "once"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--metrics-listen", "127.0.0.1:0"]);

    let before = scrape(&gate).await;
    let counters = [
        "aigate_requests_total",
        "aigate_auth_failures_total",
        "aigate_limit_rejections_total",
        "aigate_tokens_total",
    ];
    for name in counters {
        assert_eq!(total(&before, name, &[]), 0.0, "{name} before any traffic");
    }

    assert_eq!(get(&gate.url("/echo"), "").await.status, 401);
    let forged = "aig_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_xxxxxx";
    assert_eq!(get(&gate.url("/echo"), forged).await.status, 401);
    assert_eq!(chat(&gate, &key, "llama3.2:latest").await.status, 200);
    assert_eq!(get(&gate.url("/echo"), &once).await.status, 200);
    retry_after(&get(&gate.url("/echo"), &once).await);

    // /metrics is not a route of the public port: unauthenticated it is a 401, and
    // with a key it is just forwarded (the fake has no such page).
    let r = send(Method::GET, &gate.url("/metrics"), &[], "").await;
    assert_eq!(r.status, 401);
    let r = get(&gate.url("/metrics"), &key).await;
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("aigate_"), "{}", r.text());

    let after = scrape(&gate).await;
    for name in counters {
        assert!(
            total(&after, name, &[]) > total(&before, name, &[]),
            "{name} did not move"
        );
    }
    assert!(total(&after, "aigate_auth_failures_total", &[]) >= 3.0);
    assert_eq!(
        total(&after, "aigate_limit_rejections_total", &[("kind", "rate")]),
        1.0
    );
    assert_eq!(
        total(
            &after,
            "aigate_tokens_total",
            &[("tier", "pro"), ("kind", "prompt")]
        ),
        PROMPT as f64
    );
    assert_eq!(
        total(
            &after,
            "aigate_tokens_total",
            &[("tier", "pro"), ("kind", "completion")]
        ),
        COMPLETION as f64
    );
    assert!(total(&after, "aigate_requests_total", &[("status", "429")]) >= 1.0);
    assert_eq!(
        total(&after, "aigate_requests_total", &[("status", "200")]),
        2.0
    );

    let r = send(
        Method::GET,
        &format!("http://{}/other", gate.metrics.expect("metrics")),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
}
