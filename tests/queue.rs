//! The queue in front of the GPUs (SPEC §7), against the real `aigate serve` and fake
//! Ollamas on port 0: a request waits in the gate until its host has a free slot; the
//! order (priority, then fair among users); `max-queued` and `max-wait` answered in the
//! client's error shape; a client that leaves while waiting never reaching a host; a
//! caller's concurrency limit holding its requests in the queue; shutdown serving the
//! queue; `/status`, the metrics, and `aigate top`.

mod support;

use std::io::Write;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, eventually, get, open, send};
use support::queue::{chat_body, headers, slow, status};

/// Long enough for anything the gate does in the background.
const PATIENCE: Duration = Duration::from_secs(10);

/// `aigate serve` over the stored hosts, with a metrics listener.
fn serve(db: &Db, extra: &[&str]) -> Gate {
    let mut args = vec![
        "--no-login",
        "--probe-interval",
        "200ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Gate::start(&db.path, "", &args)
}

fn openai_body(prompt: &str) -> String {
    json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 2,
    })
    .to_string()
}

/// Opens a streamed chat that holds a slot until it is dropped; returns once the host
/// is streaming it.
async fn hold(gate: &Gate, key: &str) -> hyper::Response<hyper::body::Incoming> {
    let mut r = open(
        Method::POST,
        &gate.url("/api/chat"),
        &headers(key),
        &chat_body("hold", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    let first = r.body_mut().frame().await.expect("a chunk").expect("chunk");
    assert!(first.is_data());
    r
}

/// A non-streamed chat, run on its own task.
fn chat(gate: &Gate, key: &str, prompt: &str) -> tokio::task::JoinHandle<support::gate::Reply> {
    let (url, key, body) = (
        gate.url("/api/chat"),
        key.to_string(),
        chat_body(prompt, false),
    );
    tokio::spawn(async move { send(Method::POST, &url, &headers(&key), &body).await })
}

async fn waiting(gate: &Gate) -> u64 {
    status(gate).await["waiting"].as_u64().unwrap_or_default()
}

/// Waits until `n` requests wait in the gate.
async fn until_waiting(gate: &Gate, n: u64) {
    let ok = eventually(PATIENCE, || async { waiting(gate).await == n }).await;
    assert!(ok.is_some(), "never {n} waiting: {}", status(gate).await);
}

/// One sample of the metrics text, e.g. `aigate_queue_left_total{tier="free"}`.
async fn metric(gate: &Gate, sample: &str) -> f64 {
    let addr = gate.metrics.expect("metrics listener");
    let text = get(&format!("http://{addr}/metrics"), "").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The prompts of the chats the fake host received, in order.
fn prompts(fake: &FakeOllama) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.path_and_query == "/api/chat")
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            Some(v["messages"][0]["content"].as_str()?.to_string())
        })
        .collect()
}

/// One host with `slots` slots, up.
async fn one_host(db: &Db, fake: &FakeOllama, slots: &str) {
    db.cli(&[
        "host",
        "add",
        &fake.url(),
        "--name",
        "gpu",
        "--slots",
        slots,
    ]);
}

async fn wait_up(gate: &Gate) {
    let up = eventually(PATIENCE, || async {
        status(gate).await["hosts"]
            .as_array()
            .is_some_and(|h| !h.is_empty() && h.iter().all(|h| h["state"] == "up"))
    })
    .await;
    assert!(up.is_some(), "hosts not up: {}", status(gate).await);
}

/// With one slot busy, waiting requests go strictly by priority, then fairly among
/// users: a user with three waiting does not delay one with a single request by more
/// than a turn. While the slot is busy, nothing else reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_slot_and_go_by_priority_then_fairly() {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    db.cli(&["tier", "set", "low", "--priority", "0"]);
    db.cli(&["tier", "set", "high", "--priority", "10"]);
    let (_, heavy) = db.key(&["--tier", "low"]);
    let (_, light) = db.key(&["--tier", "low"]);
    let (_, paying) = db.key(&["--tier", "high"]);
    let gate = serve(&db, &[]);
    wait_up(&gate).await;

    let held = hold(&gate, &heavy).await;
    let mut replies = Vec::new();
    for (n, (key, prompt)) in [
        (&heavy, "h1"),
        (&heavy, "h2"),
        (&heavy, "h3"),
        (&light, "l1"),
        (&paying, "p1"),
    ]
    .into_iter()
    .enumerate()
    {
        replies.push(chat(&gate, key, prompt));
        until_waiting(&gate, n as u64 + 1).await;
    }
    let s = status(&gate).await;
    assert_eq!(s["hosts"][0]["in_flight"], 1, "{s}");
    let low = s["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .find(|t| t["tier"] == "low");
    assert_eq!(low.map(|t| t["waiting"].clone()), Some(json!(4)), "{s}");
    assert_eq!(prompts(&fake), ["hold"], "nothing else reached the host");

    drop(held);
    for r in replies {
        let r = r.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(prompts(&fake), ["hold", "p1", "l1", "h1", "h2", "h3"]);
    assert_eq!(
        metric(&gate, r#"aigate_queue_dispatched_total{tier="low"}"#).await,
        5.0
    );
    assert_eq!(waiting(&gate).await, 0);
}

/// `max-queued` refuses at once with 429, `max-wait` gives up with 503, both with
/// `Retry-After` and in the client's error shape; neither reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_answer_429_and_503_in_the_clients_shape() {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    db.cli(&[
        "tier",
        "set",
        "tight",
        "--max-queued",
        "1",
        "--max-wait",
        "1s",
    ]);
    let (_, key) = db.key(&["--tier", "tight"]);
    let gate = serve(&db, &[]);
    wait_up(&gate).await;
    let held = hold(&gate, &key).await;

    // Ollama's routes: one waits, the next is one too many.
    let first = chat(&gate, &key, "waits");
    until_waiting(&gate, 1).await;
    let full = send(
        Method::POST,
        &gate.url("/api/chat"),
        &headers(&key),
        &chat_body("full", false),
    )
    .await;
    assert_eq!(full.status, 429, "{}", full.text());
    assert!(full.headers.contains_key("retry-after"));
    let v = full.json();
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("at most 1")),
        "{v}"
    );
    let expired = first.await.expect("task");
    assert_eq!(expired.status, 503, "{}", expired.text());
    assert_eq!(expired.headers["retry-after"], "1");
    assert!(expired.json()["error"].is_string(), "{}", expired.text());

    // OpenAI's routes get OpenAI's shape.
    let url = gate.url("/v1/chat/completions");
    let (u, k) = (url.clone(), key.clone());
    let first =
        tokio::spawn(async move { send(Method::POST, &u, &headers(&k), &openai_body("w")).await });
    until_waiting(&gate, 1).await;
    let full = send(Method::POST, &url, &headers(&key), &openai_body("f")).await;
    assert_eq!(full.status, 429, "{}", full.text());
    assert_eq!(
        full.json()["error"]["code"],
        "rate_limit_exceeded",
        "{}",
        full.text()
    );
    let expired = first.await.expect("task");
    assert_eq!(expired.status, 503, "{}", expired.text());
    assert_eq!(
        expired.json()["error"]["code"],
        "service_unavailable",
        "{}",
        expired.text()
    );

    assert_eq!(prompts(&fake), ["hold"]);
    assert_eq!(
        metric(&gate, r#"aigate_queue_expired_total{tier="tight"}"#).await,
        2.0
    );
    assert_eq!(
        metric(&gate, r#"aigate_queue_refused_total{tier="tight"}"#).await,
        2.0
    );
    assert_eq!(
        metric(&gate, r#"aigate_queue_wait_seconds_count{tier="tight"}"#).await,
        1.0,
        "only the request that got a slot waited for one"
    );
    drop(held);
}

/// A client that disconnects while its request waits is removed at once, and the
/// request never reaches a host; the queue goes on with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_never_reaches_a_host() {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    let (_, key) = db.key(&["--tier", "pro"]);
    let gate = serve(&db, &[]);
    wait_up(&gate).await;
    let held = hold(&gate, &key).await;

    let body = chat_body("left", false);
    let mut raw = std::net::TcpStream::connect(gate.addr).expect("connect");
    write!(
        raw,
        "POST /api/chat HTTP/1.1\r\nHost: {}\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gate.addr,
        body.len()
    )
    .expect("write");
    until_waiting(&gate, 1).await;
    drop(raw);
    until_waiting(&gate, 0).await;
    assert_eq!(
        metric(&gate, r#"aigate_queue_left_total{tier="pro"}"#).await,
        1.0
    );

    drop(held);
    let next = chat(&gate, &key, "next").await.expect("task");
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(prompts(&fake), ["hold", "next"]);
}

/// A caller over its concurrency limit waits in the queue (here in front of a host given
/// by `--upstream`, which has no declared slots) instead of failing at once; past
/// `max-queued` it is told its limit, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_concurrency_limit_waits_in_the_queue() {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    db.cli(&[
        "tier",
        "set",
        "single",
        "--concurrency",
        "1",
        "--max-queued",
        "1",
    ]);
    let (_, key) = db.key(&["--tier", "single"]);
    let (_, other) = db.key(&["--tier", "single"]);
    let gate = Gate::start(
        &db.path,
        &fake.url(),
        &["--no-login", "--metrics-listen", "127.0.0.1:0"],
    );
    let held = hold(&gate, &key).await;
    let second = chat(&gate, &key, "second");
    until_waiting(&gate, 1).await;
    let third = send(
        Method::POST,
        &gate.url("/api/chat"),
        &headers(&key),
        &chat_body("third", false),
    )
    .await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(
        third.detail().contains("at most 1 at once"),
        "{}",
        third.text()
    );
    // Another key's budget is its own, and the host queues for itself.
    let r = chat(&gate, &other, "other").await.expect("task");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(prompts(&fake), ["hold", "other"]);

    drop(held);
    let second = second.await.expect("task");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(prompts(&fake), ["hold", "other", "second"]);
}

/// On SIGTERM the queue is still served while requests in flight finish (and `/status`
/// still shows it); a request that would still wait near the shutdown timeout is told to
/// retry instead of being cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_serves_the_queue_then_tells_the_rest_to_retry() {
    // Streams of about 1 s.
    let fake = FakeOllama::start(FakeOptions {
        chunks: 10,
        chunk_delay: Duration::from_millis(100),
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    let (_, key) = db.key(&["--tier", "pro"]);
    let mut gate = serve(&db, &[]);
    wait_up(&gate).await;
    let held = hold(&gate, &key).await;
    let waiting_one = chat(&gate, &key, "drained");
    until_waiting(&gate, 1).await;
    gate.sigterm();
    // The metrics listener still answers while the gate drains.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = status(&gate).await;
    assert_eq!(
        (&s["waiting"], &s["in_flight"]),
        (&json!(1), &json!(1)),
        "{s}"
    );
    let body = held.into_body().collect().await.expect("stream").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"done\":true"));
    let r = waiting_one.await.expect("task");
    assert_eq!(r.status, 200, "served while the gate drained: {}", r.text());
    assert!(gate.wait(PATIENCE).is_some(), "the gate did not stop");

    // A slot held past the shutdown timeout: the waiting request is answered 503.
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    let (_, key) = db.key(&["--tier", "pro"]);
    let mut gate = serve(&db, &["--shutdown-timeout", "2s"]);
    wait_up(&gate).await;
    let held = hold(&gate, &key).await;
    let waiting_one = chat(&gate, &key, "too late");
    until_waiting(&gate, 1).await;
    gate.sigterm();
    let r = waiting_one.await.expect("task");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    drop(held);
    assert!(gate.wait(PATIENCE).is_some(), "the gate did not stop");
    assert_eq!(prompts(&fake), ["hold"]);
}

/// `/status` (on the metrics listener only) shows the hosts with their slots and loaded
/// models, and requests waiting and in flight per tier and per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_hosts_tiers_and_users() {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    one_host(&db, &fake, "1").await;
    db.user("alice", "correct horse battery", "pro");
    let (_, alice) = db.key(&["--user", "alice"]);
    let (_, anon) = db.key(&["--tier", "free"]);
    let gate = serve(&db, &[]);
    wait_up(&gate).await;
    let held = hold(&gate, &alice).await;
    let queued = chat(&gate, &anon, "queued");
    until_waiting(&gate, 1).await;

    let s = status(&gate).await;
    let host = &s["hosts"][0];
    assert_eq!(
        (
            &host["name"],
            &host["slots"],
            &host["queued"],
            &host["in_flight"]
        ),
        (&json!("gpu"), &json!(1), &json!(true), &json!(1)),
        "{s}"
    );
    assert_eq!(
        (&s["waiting"], &s["in_flight"]),
        (&json!(1), &json!(1)),
        "{s}"
    );
    let users = s["users"].as_array().expect("users");
    let alice_row = users.iter().find(|u| u["user"] == "alice").expect("alice");
    assert_eq!(
        (&alice_row["tier"], &alice_row["in_flight"]),
        (&json!("pro"), &json!(1))
    );
    let anon_row = users
        .iter()
        .find(|u| {
            u["user"]
                .as_str()
                .is_some_and(|n| n.starts_with("key aig_"))
        })
        .expect("the key without a user");
    assert_eq!(
        (&anon_row["tier"], &anon_row["waiting"]),
        (&json!("free"), &json!(1))
    );
    // Not on the public port.
    let public = get(&gate.url("/status"), &alice).await;
    assert_ne!(public.status, 200);

    drop(held);
    assert_eq!(queued.await.expect("task").status, 200);
    let s = status(&gate).await;
    assert_eq!(
        (&s["waiting"], &s["in_flight"]),
        (&json!(0), &json!(0)),
        "{s}"
    );
}

/// A request waiting for a host that is removed (here, replaced by another) goes to the
/// hosts the fleet has now, not to the one removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_removed_host_goes_to_the_fleets_hosts() {
    let old = FakeOllama::start(slow()).await;
    let new = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["host", "add", &old.url(), "--name", "old", "--slots", "1"]);
    let (_, key) = db.key(&["--tier", "pro"]);
    let gate = serve(&db, &[]);
    wait_up(&gate).await;
    let held = hold(&gate, &key).await;
    let moved = chat(&gate, &key, "moved");
    until_waiting(&gate, 1).await;
    db.cli(&["host", "remove", "old", "--yes"]);
    db.cli(&["host", "add", &new.url(), "--name", "new", "--slots", "1"]);
    let swapped = eventually(PATIENCE, || async {
        let s = status(&gate).await;
        s["hosts"]
            .as_array()
            .is_some_and(|h| h.len() == 1 && h[0]["name"] == "new" && h[0]["state"] == "up")
    })
    .await;
    assert!(swapped.is_some(), "{}", status(&gate).await);
    drop(held);
    let r = moved.await.expect("task");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (prompts(&old), prompts(&new)),
        (vec!["hold".to_string()], vec!["moved".to_string()]),
        "the waiting request went to the host the fleet has now"
    );
}
