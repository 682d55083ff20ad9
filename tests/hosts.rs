//! Several model hosts behind one gate (SPEC §6), against the real `aigate serve` and
//! several fake Ollamas on port 0: routing by the model a host has (loaded first),
//! unknown models, failover and a host going down and up, management requests sent to
//! the host they name, merged model lists, pinned options, drained hosts, hosts picked
//! up while the gate runs, and the state written back for `aigate host list`.

mod support;

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, eventually, get, post, send};

/// Probes this often in these tests.
const PROBE: &str = "200ms";
/// Long enough for anything the gate does in the background.
const PATIENCE: Duration = Duration::from_secs(10);

fn installed(models: &[&str]) -> FakeOptions {
    FakeOptions {
        installed: Some(models.iter().map(|m| m.to_string()).collect()),
        ..FakeOptions::default()
    }
}

/// `aigate serve` over the stored hosts (no `--upstream`), probing every `probe`,
/// with a metrics listener.
fn serve_hosts(db: &Db, probe: &str) -> Gate {
    Gate::start(
        &db.path,
        "",
        &[
            "--no-login",
            "--probe-interval",
            probe,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

/// `aigate host add` for each `(name, fake)`, with `extra` options.
fn add_hosts(db: &Db, hosts: &[(&str, &FakeOllama)], extra: &[&str]) {
    for (name, fake) in hosts {
        let url = fake.url();
        let mut args = vec!["host", "add", url.as_str(), "--name", name];
        args.extend_from_slice(extra);
        db.cli(&args);
    }
}

/// `aigate host list --json`, by name.
fn host_list(db: &Db) -> Vec<Value> {
    serde_json::from_str(&db.cli(&["host", "list", "--json"])).expect("host list json")
}

fn host_state(db: &Db, name: &str) -> Value {
    host_list(db)
        .into_iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

/// Waits until every host in `names` is up in `host list` (the gate probed them).
async fn wait_up(db: &Db, names: &[&str]) {
    let up = eventually(PATIENCE, || async {
        names.iter().all(|n| host_state(db, n)["state"] == "up")
    })
    .await;
    assert!(up.is_some(), "hosts not up: {:?}", host_list(db));
}

/// The models a fake was asked to generate with.
fn generated(fake: &FakeOllama) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| {
            r.path_and_query.starts_with("/api/generate")
                || r.path_and_query.starts_with("/api/chat")
        })
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["model"].as_str().map(str::to_string))
        .collect()
}

fn generate(model: &str) -> String {
    json!({"model": model, "prompt": "hi", "stream": false}).to_string()
}

async fn metrics(gate: &Gate) -> String {
    let addr = gate.metrics.expect("metrics listener");
    get(&format!("http://{addr}/metrics"), "").await.text()
}

/// A request goes only to a host that has its model; an unknown model is a 404 in the
/// client's own error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_hosts_that_have_the_model() {
    let a = FakeOllama::start(installed(&["alpha"])).await;
    let b = FakeOllama::start(installed(&["beta:1b"])).await;
    let db = Db::new();
    add_hosts(&db, &[("a", &a), ("b", &b)], &[]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, PROBE);
    wait_up(&db, &["a", "b"]).await;
    for _ in 0..3 {
        let r = post(&gate.url("/api/generate"), &key, &generate("alpha")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = post(&gate.url("/api/generate"), &key, &generate("beta:1b")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(generated(&a), vec!["alpha"; 3]);
    assert_eq!(generated(&b), vec!["beta:1b"; 3]);

    let r = post(&gate.url("/api/generate"), &key, &generate("gamma")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "model \"gamma\" not found");
    let chat = json!({"model": "gamma", "messages": []}).to_string();
    let r = post(&gate.url("/v1/chat/completions"), &key, &chat).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(
        generated(&a).len() + generated(&b).len(),
        6,
        "nothing sent for gamma"
    );

    let m = metrics(&gate).await;
    assert!(
        m.contains(r#"aigate_host_requests_total{host="a"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"aigate_host_up{host="b"} 1"#), "{m}");
}

/// A host with the model loaded is chosen over one that would have to load it, and a
/// model new to the hosts goes where it evicts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_the_model_loaded_is_preferred() {
    let opts = || FakeOptions {
        slots: Some(2),
        max_loaded: Some(1),
        load_time: Duration::from_millis(100),
        ..installed(&["m1", "m2"])
    };
    let (a, b) = (
        FakeOllama::start(opts()).await,
        FakeOllama::start(opts()).await,
    );
    let db = Db::new();
    add_hosts(&db, &[("a", &a), ("b", &b)], &["--slots", "2"]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, PROBE);
    wait_up(&db, &["a", "b"]).await;
    let r = post(&gate.url("/api/generate"), &key, &generate("m1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (warm, cold) = if generated(&a).is_empty() {
        (&b, "a")
    } else {
        (&a, "b")
    };
    let warm_name = if cold == "a" { "b" } else { "a" };
    // Once the probe has seen m1 loaded, every m1 request goes there…
    let seen = eventually(PATIENCE, || async {
        // As the host reported it (Ollama itself would say `m1:latest`).
        host_state(&db, warm_name)["loaded_models"] == json!(["m1"])
    })
    .await;
    assert!(seen.is_some(), "{:?}", host_list(&db));
    for _ in 0..5 {
        let r = post(&gate.url("/api/generate"), &key, &generate("m1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(generated(warm), vec!["m1"; 6]);
    // …and m2 to the host with nothing loaded, not over the warm m1.
    let r = post(&gate.url("/api/generate"), &key, &generate("m2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(generated(warm), vec!["m1"; 6]);
    assert_eq!(a.stats().loads + b.stats().loads, 2, "one load per model");
    let loads = eventually(PATIENCE, || async {
        metrics(&gate).await.contains(&format!(
            r#"aigate_host_model_loads_total{{host="{cold}"}} 1"#
        ))
    })
    .await;
    assert!(loads.is_some(), "{}", metrics(&gate).await);
}

/// A dead host: its requests fail over to the next host before any byte went back, it
/// is marked down (the circuit open, no requests sent to it), and up again when it
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_fails_over_and_comes_back() {
    let addr = FakeOllama::restartable_addr();
    let a = FakeOllama::start_on(addr, installed(&["m", "only-a"]))
        .await
        .expect("bind");
    let b = FakeOllama::start(installed(&["m"])).await;
    let db = Db::new();
    add_hosts(&db, &[("a", &a), ("b", &b)], &[]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, "1h");
    // With probes an hour apart, only the start's probe and the requests tell.
    wait_up(&db, &["a", "b"]).await;
    a.stop().await;
    for _ in 0..10 {
        let r = post(&gate.url("/api/generate"), &key, &generate("m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(generated(&b).len(), 10);
    let m = metrics(&gate).await;
    assert!(m.contains(r#"aigate_host_up{host="a"} 0"#), "{m}");
    assert!(
        m.contains(r#"aigate_host_failovers_total{host="a"} 1"#),
        "once down, a gets none: {m}"
    );
    let r = post(&gate.url("/api/generate"), &key, &generate("only-a")).await;
    assert_eq!(
        r.status,
        502,
        "the only host with the model is down: {}",
        r.text()
    );
    let down = eventually(PATIENCE, || async {
        host_state(&db, "a")["state"] == "down"
    })
    .await;
    assert!(down.is_some(), "{:?}", host_list(&db));
    drop(gate);

    // With frequent probes, the host is seen up again once it answers.
    let gate = serve_hosts(&db, PROBE);
    let down = eventually(PATIENCE, || async {
        metrics(&gate)
            .await
            .contains(r#"aigate_host_up{host="a"} 0"#)
    })
    .await;
    assert!(down.is_some(), "{}", metrics(&gate).await);
    let a = FakeOllama::start_on(addr, installed(&["m", "only-a"]))
        .await
        .expect("rebind");
    let up = eventually(PATIENCE, || async {
        metrics(&gate)
            .await
            .contains(r#"aigate_host_up{host="a"} 1"#)
    })
    .await;
    assert!(up.is_some(), "{}", metrics(&gate).await);
    let r = post(&gate.url("/api/generate"), &key, &generate("only-a")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(generated(&a), ["only-a"], "a serves again");

    // Every host down: 502.
    a.stop().await;
    b.stop().await;
    let all_down = eventually(PATIENCE, || async {
        post(&gate.url("/api/generate"), &key, &generate("m"))
            .await
            .status
            == 502
    })
    .await;
    assert!(all_down.is_some());
}

/// A management request goes to the host named by `X-Aigate-Host`, which is required
/// with several hosts and never passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_goes_to_the_named_host() {
    let a = FakeOllama::start(installed(&["m"])).await;
    let b = FakeOllama::start(installed(&["m"])).await;
    let db = Db::new();
    add_hosts(&db, &[("a", &a), ("b", &b)], &[]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, PROBE);
    let pull = r#"{"model":"m2","stream":false}"#;
    let auth = format!("Bearer {key}");
    let r = send(
        Method::POST,
        &gate.url("/api/pull"),
        &[("authorization", &auth)],
        pull,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.detail().contains("X-Aigate-Host"), "{}", r.text());
    let named = |n: &'static str| [("authorization", auth.as_str()), ("x-aigate-host", n)];
    let r = send(Method::POST, &gate.url("/api/pull"), &named("nope"), pull).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = send(Method::POST, &gate.url("/api/pull"), &named("b"), pull).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let pulls = |f: &FakeOllama| {
        f.requests()
            .into_iter()
            .filter(|r| r.path_and_query == "/api/pull")
            .collect::<Vec<_>>()
    };
    assert!(pulls(&a).is_empty());
    let on_b = pulls(&b);
    assert_eq!(on_b.len(), 1);
    assert_eq!(
        on_b[0].header("x-aigate-host"),
        None,
        "the gate's header stays here"
    );
}

/// `/api/tags`, `/v1/models` and `/api/ps` answer the union over the hosts, without
/// duplicates, cut down to the caller's models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lists_are_merged_and_filtered() {
    let a = FakeOllama::start(installed(&["llama3.2", "qwen2.5:0.5b"])).await;
    let b = FakeOllama::start(installed(&["llama3.2:latest", "phi3"])).await;
    let db = Db::new();
    add_hosts(&db, &[("a", &a), ("b", &b)], &[]);
    db.cli(&["tier", "set", "some", "--models", "llama*,phi*"]);
    let (_, admin) = db.key(&["--tier", "admin"]);
    let (_, some) = db.key(&["--tier", "some"]);
    let gate = serve_hosts(&db, PROBE);
    let tags = |v: Value| -> Vec<String> {
        let mut names: Vec<String> = v["models"]
            .as_array()
            .expect("models")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_string())
            .collect();
        names.sort();
        names
    };
    let r = get(&gate.url("/api/tags"), &admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // `llama3.2` and `llama3.2:latest` are one model: the first host's entry is kept.
    assert_eq!(tags(r.json()), ["llama3.2", "phi3", "qwen2.5:0.5b"]);
    let r = get(&gate.url("/api/tags"), &some).await;
    assert_eq!(tags(r.json()), ["llama3.2", "phi3"]);
    let r = get(&gate.url("/v1/models"), &some).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["llama3.2", "phi3"]);
    // Loaded models, from every host.
    post(
        &gate.url("/api/generate"),
        &admin,
        &generate("qwen2.5:0.5b"),
    )
    .await;
    post(&gate.url("/api/generate"), &admin, &generate("phi3")).await;
    let r = get(&gate.url("/api/ps"), &admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tags(r.json()), ["phi3", "qwen2.5:0.5b"]);
}

/// Pinned options replace the client's in every Ollama request for the model, so that
/// clients asking for different contexts do not make the host reload it; a pin made
/// while the gate runs applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_options_stop_reloads() {
    let fake = FakeOllama::start(FakeOptions {
        slots: Some(1),
        load_time: Duration::from_millis(20),
        ..installed(&["llama3.2"])
    })
    .await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let chat = |ctx: u32| {
        json!({"model": "llama3.2", "messages": [], "stream": false,
               "options": {"num_ctx": ctx, "temperature": 0.5}, "keep_alive": "1m"})
        .to_string()
    };
    for ctx in [2048, 4096] {
        let r = post(&gate.url("/api/chat"), &key, &chat(ctx)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        fake.stats().loads,
        2,
        "without a pin, each context is a reload"
    );

    db.cli(&[
        "model",
        "pin",
        "llama3.2",
        "--num-ctx",
        "8192",
        "--keep-alive",
        "30m",
    ]);
    let pinned = eventually(PATIENCE, || async {
        post(&gate.url("/api/chat"), &key, &chat(1024)).await;
        let last = fake
            .requests()
            .last()
            .map(|r| r.body.clone())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&last).unwrap_or_default();
        body["options"]["num_ctx"] == 8192
    })
    .await;
    assert!(pinned.is_some(), "the pin was picked up");
    let loads = fake.stats().loads;
    for ctx in [2048, 4096, 512] {
        let r = post(&gate.url("/api/chat"), &key, &chat(ctx)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let last = fake
            .requests()
            .last()
            .map(|r| r.body.clone())
            .expect("request");
        let body: Value = serde_json::from_slice(&last).expect("json");
        assert_eq!(
            body["options"],
            json!({"num_ctx": 8192, "temperature": 0.5})
        );
        assert_eq!(body["keep_alive"], 1800);
    }
    assert_eq!(fake.stats().loads, loads, "no reload once pinned");
}

/// A drained host gets no new requests; a host added while the gate runs is used, and
/// a removed one no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_change_while_the_gate_runs() {
    let a = FakeOllama::start(installed(&["m"])).await;
    let b = FakeOllama::start(installed(&["m", "only-b"])).await;
    let db = Db::new();
    db.cli(&["host", "add", &a.url(), "--name", "a"]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, PROBE);
    wait_up(&db, &["a"]).await;
    let r = post(&gate.url("/api/generate"), &key, &generate("only-b")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    db.cli(&["host", "add", &b.url(), "--name", "b"]);
    let added = eventually(PATIENCE, || async {
        post(&gate.url("/api/generate"), &key, &generate("only-b"))
            .await
            .status
            == 200
    })
    .await;
    assert!(added.is_some(), "the new host is used");
    wait_up(&db, &["a", "b"]).await;

    db.cli(&["host", "drain", "a"]);
    assert_eq!(host_state(&db, "a")["state"], "draining");
    let drained = eventually(PATIENCE, || async {
        let before = generated(&a).len();
        for _ in 0..4 {
            post(&gate.url("/api/generate"), &key, &generate("m")).await;
        }
        generated(&a).len() == before
    })
    .await;
    assert!(drained.is_some(), "a drained host gets no new requests");
    db.cli(&["host", "undrain", "a"]);
    db.cli(&["host", "remove", "b", "--yes"]);
    let removed = eventually(PATIENCE, || async {
        post(&gate.url("/api/generate"), &key, &generate("only-b"))
            .await
            .status
            == 404
    })
    .await;
    assert!(removed.is_some(), "a removed host is no longer used");
    let before = generated(&a).len();
    for _ in 0..3 {
        assert_eq!(
            post(&gate.url("/api/generate"), &key, &generate("m"))
                .await
                .status,
            200
        );
    }
    assert_eq!(generated(&a).len(), before + 3);
}

/// What the gate sees of its hosts is written back for `aigate host list`: up, the
/// models loaded, the requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_list_shows_what_the_gate_saw() {
    let fake = FakeOllama::start(FakeOptions {
        slots: Some(2),
        chunks: 40,
        chunk_delay: Duration::from_millis(50),
        ..installed(&["m"])
    })
    .await;
    let db = Db::new();
    db.cli(&["host", "add", &fake.url(), "--name", "gpu1", "--slots", "2"]);
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = serve_hosts(&db, PROBE);
    wait_up(&db, &["gpu1"]).await;
    let stream = json!({"model": "m", "prompt": "hi"}).to_string();
    let url = gate.url("/api/generate");
    let running = tokio::spawn(async move { post(&url, &key, &stream).await });
    let seen = eventually(PATIENCE, || async {
        let h = host_state(&db, "gpu1");
        h["in_flight"] == 1 && h["loaded_models"] == json!(["m"])
    })
    .await;
    assert!(seen.is_some(), "{:?}", host_list(&db));
    let table = db.cli(&["host", "list"]);
    assert!(table.contains("gpu1") && table.contains("up"), "{table}");
    assert_eq!(running.await.expect("stream").status, 200);
}

/// A stream running on a host that dies ends with an error record the client's
/// library raises, in Ollama's NDJSON and in OpenAI's SSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_dying_host_ends_with_an_error() {
    for (path, body) in [
        ("/api/generate", json!({"model": "m", "prompt": "hi"})),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": [], "stream": true}),
        ),
    ] {
        let fake = FakeOllama::start(FakeOptions {
            chunks: 1000,
            chunk_delay: Duration::from_millis(20),
            ..installed(&["m"])
        })
        .await;
        let db = Db::new();
        let (_, key) = db.key(&["--tier", "admin"]);
        let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
        let url = gate.url(path);
        let body = body.to_string();
        let reading = tokio::spawn(async move { post(&url, &key, &body).await });
        let started = eventually(PATIENCE, || async { fake.stats().in_flight == 1 }).await;
        assert!(started.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.stop().await;
        let r = reading.await.expect("client");
        assert_eq!(r.status, 200);
        let text = r.text();
        let last = text
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let record: Value = serde_json::from_str(last.trim_start_matches("data: "))
            .unwrap_or_else(|e| panic!("{path}: last record {last:?}: {e}"));
        let message = if path.starts_with("/v1/") {
            record["error"]["message"].as_str()
        } else {
            record["error"].as_str()
        };
        assert!(
            message.is_some_and(|m| m.contains("failed mid-response")),
            "{path}: {last}"
        );
    }
}

/// A client whose request body stalls gets its 408, and the host it was streaming to
/// is not counted as failing: others' requests still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_body_does_not_mark_the_host_down() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeOllama::start(installed(&["m"])).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(
        &db.path,
        &fake.url(),
        &[
            "--no-login",
            "--body-timeout",
            "1s",
            "--probe-interval",
            "1h",
        ],
    );
    let stall = |key: String| {
        let addr = gate.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
            );
            s.write_all(head.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                PATIENCE,
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer),
            )
            .await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let (a, b, c) = tokio::join!(stall(key.clone()), stall(key.clone()), stall(key.clone()));
    for answer in [a, b, c] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let r = post(&gate.url("/api/generate"), &key, &generate("m")).await;
    assert_eq!(r.status, 200, "the host is not down: {}", r.text());
}
