//! `aigate top` against the real `aigate serve` on port 0 in front of a fake Ollama: a
//! host with one slot, held by one user's request while a key's request waits; what
//! `--json` and the tables show of it. Without a terminal top prints once and exits; a
//! gate it cannot reach is one `error:` line, and no address at all a usage error.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, bin, eventually, open, send};
use support::queue::{chat_body, headers, slow, status};

/// Long enough for anything the gate does in the background.
const PATIENCE: Duration = Duration::from_secs(10);

/// A gate in the middle of its work: host `gpu` (one slot) is generating for alice
/// (tier `gold`, priority 7) while a request of a key without a user (tier `basic`,
/// priority 0) waits for the slot, and the host has reported the model loaded.
struct Busy {
    gate: Gate,
    /// The key without a user's display prefix (`aig_` and 8 characters).
    prefix: String,
    _held: hyper::Response<hyper::body::Incoming>,
    _waiting: tokio::task::JoinHandle<support::gate::Reply>,
    _db: Db,
    _fake: FakeOllama,
}

impl Busy {
    fn metrics(&self) -> SocketAddr {
        self.gate.metrics.expect("metrics listener")
    }
}

async fn busy() -> Busy {
    let fake = FakeOllama::start(slow()).await;
    let db = Db::new();
    db.cli(&["host", "add", &fake.url(), "--name", "gpu", "--slots", "1"]);
    db.cli(&["tier", "set", "gold", "--priority", "7"]);
    db.cli(&["tier", "set", "basic", "--priority", "0"]);
    db.user("alice", "correct horse battery", "gold");
    let (_, alice) = db.key(&["--user", "alice"]);
    let (anon_id, anon) = db.key(&["--tier", "basic"]);
    let shown: Value =
        serde_json::from_str(&db.cli(&["key", "show", &anon_id.to_string(), "--json"]))
            .expect("json");
    let prefix = shown["prefix"].as_str().expect("prefix").to_string();
    let gate = Gate::start(
        &db.path,
        "",
        &[
            "--no-login",
            "--probe-interval",
            "200ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let up = eventually(PATIENCE, || async {
        status(&gate).await["hosts"][0]["state"] == "up"
    })
    .await;
    assert!(up.is_some(), "host not up: {}", status(&gate).await);

    // Alice's stream holds the one slot.
    let mut held = open(
        Method::POST,
        &gate.url("/api/chat"),
        &headers(&alice),
        &chat_body("hold", true),
    )
    .await;
    assert_eq!(held.status(), 200);
    let first = held
        .body_mut()
        .frame()
        .await
        .expect("a chunk")
        .expect("chunk");
    assert!(first.is_data());
    // The key's request waits for it.
    let (url, body) = (gate.url("/api/chat"), chat_body("waits", false));
    let waiting =
        tokio::spawn(async move { send(Method::POST, &url, &headers(&anon), &body).await });
    let ready = eventually(PATIENCE, || async {
        let s = status(&gate).await;
        s["waiting"] == 1 && s["hosts"][0]["loaded"] == json!(["llama3.2:latest"])
    })
    .await;
    assert!(ready.is_some(), "not busy yet: {}", status(&gate).await);
    Busy {
        gate,
        prefix,
        _held: held,
        _waiting: waiting,
        _db: db,
        _fake: fake,
    }
}

/// What a finished `aigate top` left behind.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `aigate top ARGS` off the runtime, with no terminal, no metrics address from the
/// environment unless `env` gives one, and a `--db` that does not exist (top reads none).
async fn top(args: &[&str], env: &[(&str, &str)]) -> Out {
    let (args, env): (Vec<String>, Vec<(String, String)>) = (
        args.iter().map(|a| a.to_string()).collect(),
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    tokio::task::spawn_blocking(move || {
        let mut cmd = assert_cmd::Command::new(bin());
        cmd.env_remove("AIGATE_METRICS_LISTEN")
            .env_remove("AIGATE_DB")
            .env("NO_COLOR", "1")
            .args(["--db", "/nonexistent/aigate-top/aigate.db", "top"])
            .args(&args)
            .timeout(Duration::from_secs(20));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run aigate top");
        Out {
            code: o.status.code(),
            stdout: String::from_utf8(o.stdout).expect("utf-8"),
            stderr: String::from_utf8(o.stderr).expect("utf-8"),
        }
    })
    .await
    .expect("task")
}

/// The line of `text` whose first word is `first`, its cells joined by single spaces.
fn row(text: &str, first: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|l| l.split(' ').next() == Some(first))
        .unwrap_or_else(|| panic!("no {first} row in:\n{text}"))
}

/// `--json` (here with the address from `AIGATE_METRICS_LISTEN`, as serve reads it)
/// prints the gate's status document: the host with its slot in use and its loaded
/// model, the waiting request and the one in flight by tier and by user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_json_shows_the_host_the_waiting_request_and_the_one_in_flight() {
    let busy = busy().await;
    let addr = busy.metrics().to_string();
    let out = top(&["--json"], &[("AIGATE_METRICS_LISTEN", &addr)]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.is_empty(), "{out:#?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (&v["waiting"], &v["in_flight"]),
        (&json!(1), &json!(1)),
        "{v}"
    );
    let host = &v["hosts"][0];
    assert_eq!(
        (
            &host["name"],
            &host["state"],
            &host["slots"],
            &host["queued"],
            &host["in_flight"],
            &host["loaded"],
        ),
        (
            &json!("gpu"),
            &json!("up"),
            &json!(1),
            &json!(true),
            &json!(1),
            &json!(["llama3.2:latest"]),
        ),
        "{v}"
    );
    let tiers: Vec<(Value, Value, Value, Value)> = v["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .map(|t| {
            (
                t["tier"].clone(),
                t["priority"].clone(),
                t["waiting"].clone(),
                t["in_flight"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (json!("gold"), json!(7), json!(0), json!(1)),
            (json!("basic"), json!(0), json!(1), json!(0)),
        ],
        "{v}"
    );
    let users: Vec<(Value, Value, Value, Value)> = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                u["user"].clone(),
                u["tier"].clone(),
                u["waiting"].clone(),
                u["in_flight"].clone(),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            (json!("alice"), json!("gold"), json!(0), json!(1)),
            (
                json!(format!("key {}", busy.prefix)),
                json!("basic"),
                json!(1),
                json!(0)
            ),
        ],
        "{v}"
    );
    // Pretty, as every --json of aigate.
    assert!(out.stdout.lines().count() > 10, "{}", out.stdout);
}

/// Without a terminal (and with `--once`) top prints the header line and the three
/// tables once, and exits 0; `--db` does not matter, as top reads no database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_without_a_terminal_prints_the_tables_once() {
    let busy = busy().await;
    let addr = busy.metrics().to_string();
    for args in [&["--metrics", &addr][..], &["--once", "--metrics", &addr]] {
        let out = top(args, &[]).await;
        assert_eq!(out.code, Some(0), "{args:?}: {out:#?}");
        assert!(out.stderr.is_empty(), "{out:#?}");
        let text = &out.stdout;
        let header = text.lines().next().expect("a header line");
        assert!(
            header.starts_with(&format!(
                "aigate {} at {addr} · up ",
                env!("CARGO_PKG_VERSION")
            )),
            "{header}"
        );
        assert!(header.contains(" · 1 waiting · 1 in flight · "), "{header}");
        assert!(header.ends_with(" UTC"), "{header}");
        assert_eq!(row(text, "HOST"), "HOST STATE SLOTS LOADED");
        assert_eq!(row(text, "gpu"), "gpu up 1/1 llama3.2:latest");
        assert_eq!(row(text, "TIER"), "TIER PRIORITY WAITING IN FLIGHT TOK/S");
        assert_eq!(row(text, "gold"), "gold 7 0 1 0.0");
        assert_eq!(row(text, "basic"), "basic 0 1 0 0.0");
        assert_eq!(row(text, "USER"), "USER TIER WAITING IN FLIGHT TOK/S");
        assert_eq!(row(text, "alice"), "alice gold 0 1 0.0");
        assert_eq!(
            row(text, "key"),
            format!("key {} basic 1 0 0.0", busy.prefix)
        );
        // Tiers and users in the gate's order: higher priority first, then the busiest.
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} in:\n{text}"));
        assert!(at("HOST") < at("TIER") && at("TIER") < at("USER"), "{text}");
        assert!(at(" gold ") < at(" basic "), "{text}");
        assert!(at(" alice ") < at(" key aig_"), "{text}");
        // No screen control for a pipe.
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
    assert!(!std::path::Path::new("/nonexistent/aigate-top").exists());
}

/// A gate that does not answer is one `error:` line naming the address, and exit 1,
/// for the tables and for `--json`; an address that answers but is not a metrics
/// listener says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gate_is_one_error_line_and_exit_1() {
    // A port that was just free: nothing listens on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    for args in [
        &["--once", "--metrics", &closed][..],
        &["--json", "--metrics", &closed],
        &["--metrics", &closed],
    ] {
        let out = top(args, &[]).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{out:#?}");
        assert_eq!(
            out.stderr,
            format!(
                "error: cannot reach the gate's metrics listener at {closed} (connection refused)\n"
            ),
            "{args:?}"
        );
    }

    // Something else on that port: here, Ollama itself.
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let wrong = fake.url().trim_start_matches("http://").to_string();
    let out = top(&["--once", "--metrics", &wrong], &[]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: http://{wrong}/status answered 404 Not Found: is {wrong} the address of \
             `aigate serve --metrics-listen`?"
        )),
        "{out:#?}"
    );
}

/// With neither `--metrics` nor `AIGATE_METRICS_LISTEN`, top says to give one, as a
/// usage error (exit 2); so is an interval it cannot keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_address_is_a_usage_error_naming_the_flag_and_the_variable() {
    for args in [&[][..], &["--once"], &["--json"]] {
        let out = top(args, &[]).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{out:#?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "error: no address for the gate's metrics listener: pass --metrics ADDR or set \
             AIGATE_METRICS_LISTEN (what `aigate serve --metrics-listen` was given)",
            "{out:#?}"
        );
        assert!(out.stderr.contains("Usage: aigate top"), "{out:#?}");
    }
    for interval in ["0s", "50ms", "2h", "soon"] {
        let out = top(&["--metrics", "127.0.0.1:9", "--interval", interval], &[]).await;
        assert_eq!(out.code, Some(2), "{interval}: {out:#?}");
        assert!(out.stderr.contains("--interval"), "{out:#?}");
    }
}
