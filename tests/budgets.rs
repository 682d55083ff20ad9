//! Budgets that cannot be slipped and allow-list holes closed, against the real
//! `aigate serve` and the fake Ollama: tokens counted when no count arrives, generation
//! capped to the day's remaining tokens, model lists outside the budget, models named
//! outside the body, routes that act as the server's account, tokens of a re-created
//! user, the admin API's changes in effect before it answers, and request headers the
//! upstream must not trust.

mod support;

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, eventually, get, post, send};

/// `aigate usage --json --by key` rows.
fn usage_rows(db: &Db) -> Vec<Value> {
    serde_json::from_str(&db.cli(&["usage", "--json", "--by", "key"])).expect("usage json")
}

/// An OpenAI stream without `include_usage` reports no count: the gate charges one
/// token per delivered chunk and the prompt by its size, and the quota then refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_usage_is_charged_what_it_delivered() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "metered", "--tokens-per-day", "30"]);
    let (id, key) = db.key(&["--tier", "metered"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let body = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let r = post(&gate.url("/v1/chat/completions"), &key, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.text().contains("\"usage\""),
        "no usage asked for, none sent"
    );
    // Five content chunks and the finish chunk, before `[DONE]`.
    let want = (body.len().div_ceil(4) as u64, 6u64);
    let counted = eventually(Duration::from_secs(3), || async {
        usage_rows(&db).iter().any(|row| {
            row["key_id"] == id
                && (
                    row["prompt_tokens"].as_u64(),
                    row["completion_tokens"].as_u64(),
                ) == (Some(want.0), Some(want.1))
        })
    })
    .await;
    assert!(counted.is_some(), "usage: {:?}", usage_rows(&db));
    // 19 + 6 of 30 used: the next stream is admitted, then the quota is spent.
    assert_eq!(
        post(&gate.url("/v1/chat/completions"), &key, body)
            .await
            .status,
        200
    );
    let r = post(&gate.url("/v1/chat/completions"), &key, body).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
}

/// A client that leaves mid-stream is charged for what reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_is_charged_what_it_got() {
    use http_body_util::BodyExt;
    let fake = FakeOllama::start(FakeOptions {
        chunks: 1000,
        chunk_delay: Duration::from_millis(2),
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    let (id, key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let body = r#"{"model":"llama3.2","prompt":"hi","stream":true}"#;
    let resp = support::gate::open(
        Method::POST,
        &gate.url("/api/generate"),
        &[("x-api-key", &key)],
        body,
    )
    .await;
    let mut stream = resp.into_body();
    let mut lines = 0;
    while lines < 10 {
        let frame = stream.frame().await.expect("a frame").expect("data");
        if let Some(d) = frame.data_ref() {
            lines += d.iter().filter(|b| **b == b'\n').count();
        }
    }
    drop(stream);
    let counted = eventually(Duration::from_secs(3), || async {
        usage_rows(&db).iter().any(|row| {
            row["key_id"] == id
                && row["completion_tokens"]
                    .as_u64()
                    .is_some_and(|n| (9..1000).contains(&n))
        })
    })
    .await;
    assert!(counted.is_some(), "usage: {:?}", usage_rows(&db));
}

/// With a daily quota, generation is capped to what remains, in both APIs, and a
/// smaller limit the client asked for is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_is_capped_to_the_remaining_tokens() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "capped", "--tokens-per-day", "500"]);
    let (_, key) = db.key(&["--tier", "capped"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let last_body = || -> Value {
        let seen = fake.requests();
        serde_json::from_slice(&seen.last().expect("a request").body).expect("json body")
    };
    let r = post(
        &gate.url("/api/chat"),
        &key,
        r#"{"model":"llama3.2","messages":[],"stream":false,"Options":{"num_predict":30000,"temperature":0}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_body();
    assert_eq!(sent["options"]["num_predict"], 500, "{sent}");
    assert_eq!(sent["options"]["temperature"], 0, "{sent}");
    assert!(sent.get("Options").is_none(), "{sent}");
    // 68 tokens are now used (the fake's 26 + 42), once the gate has counted them.
    let r = post(
        &gate.url("/v1/chat/completions"),
        &key,
        r#"{"model":"llama3.2","messages":[],"max_tokens":30000}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_body()["max_tokens"], 500 - 68);
    post(
        &gate.url("/api/generate"),
        &key,
        r#"{"model":"llama3.2","prompt":"x","stream":false,"options":{"num_predict":7}}"#,
    )
    .await;
    assert_eq!(last_body()["options"]["num_predict"], 7);
}

/// Once the day's tokens are spent, chat is refused with the quota's message while the
/// model lists keep answering. This is Open WebUI's pattern (seen with Open WebUI
/// 0.12.4): `GET /api/tags` then `GET /api/ps` on every page load and model refresh,
/// `GET /api/version` when a connection is verified, then `POST /api/chat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lists_neither_spend_nor_wait_for_the_budget() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&[
        "tier",
        "set",
        "tiny",
        "--tokens-per-day",
        "50",
        "--rpm",
        "5",
    ]);
    let (_, key) = db.key(&["--tier", "tiny"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let chat = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}"#;
    assert_eq!(post(&gate.url("/api/chat"), &key, chat).await.status, 200);
    for _ in 0..10 {
        for path in ["/api/version", "/api/tags", "/api/ps", "/v1/models"] {
            let r = get(&gate.url(path), &key).await;
            assert_ne!(r.status, 429, "{path}: {}", r.text());
        }
    }
    let r = post(&gate.url("/api/chat"), &key, chat).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("Daily token quota exceeded")),
        "{}",
        r.text()
    );
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
}

/// A model named outside a JSON body is checked too, the model lookups and listings
/// that would leak names are filtered, and the server's own account routes are
/// admin-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_outside_the_body_and_account_routes_are_checked() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.cli(&["tier", "set", "llamas", "--models", "llama3*"]);
    let (_, key) = db.key(&["--tier", "llamas"]);
    let (_, pro) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let chat = r#"{"model":"llama3.2","messages":[]}"#;
    let before = fake.requests().len();

    let r = post(&gate.url("/api/chat?model=qwen2.5:7b"), &key, chat).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A multipart body: on a route the gate does not know, refused for the route…
    let multipart =
        "--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nqwen2.5:7b\r\n--x--\r\n";
    let form = [
        ("x-api-key", key.as_str()),
        ("content-type", "multipart/form-data; boundary=x"),
    ];
    let r = send(
        Method::POST,
        &gate.url("/v1/audio/transcriptions"),
        &form,
        multipart,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // …and on one it knows, for its body, whose model it cannot read.
    let r = send(Method::POST, &gate.url("/api/chat"), &form, multipart).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Routes Ollama may add later are closed to a tier with an allow-list, and stay
    // open to the others (the upstream answers them).
    let r = post(&gate.url("/api/some-new-route"), &key, "{}").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("cannot be checked"), "{}", r.text());
    let r = get(&gate.url("/v1/models/qwen2.5:7b"), &key).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
    for path in [
        "/api/experimental/web_search",
        "/api/experimental/web_fetch",
    ] {
        let r = post(&gate.url(path), &pro, r#"{"query":"x"}"#).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "nothing refused reached the upstream"
    );

    // POST /api/tags is filtered like GET (the fake answers it 404: nothing leaks).
    let r = send(
        Method::POST,
        &gate.url("/api/tags"),
        &[("x-api-key", &key)],
        "",
    )
    .await;
    assert!(!r.text().contains("qwen"), "{}", r.text());
    let r = get(&gate.url("/api/tags"), &key).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("llama3.2") && !r.text().contains("qwen"),
        "{}",
        r.text()
    );
}

/// `user remove` then `user add` under the same name: the old user's token stays dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_user_does_not_inherit_old_tokens() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.user("bob", "first password is long", "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let login = |password: &'static str| {
        let url = gate.url("/auth/login");
        async move {
            let body = json!({"username": "bob", "password": password}).to_string();
            let r = send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["access_token"]
                .as_str()
                .expect("token")
                .to_string()
        }
    };
    let old = login("first password is long").await;
    let tags = gate.url("/api/tags");
    let bearer = |t: String| {
        let tags = tags.clone();
        async move {
            send(
                Method::GET,
                &tags,
                &[("authorization", &format!("Bearer {t}"))],
                "",
            )
            .await
        }
    };
    assert_eq!(bearer(old.clone()).await.status, 200);
    db.cli(&["user", "remove", "bob", "--yes"]);
    db.user("bob", "second password is long", "pro");
    let refused = eventually(Duration::from_secs(2), || {
        let old = old.clone();
        let bearer = &bearer;
        async move { bearer(old).await.status == 401 }
    })
    .await;
    assert!(refused.is_some(), "the old token still works");
    let new = login("second password is long").await;
    assert_eq!(bearer(new).await.status, 200);
    assert_eq!(bearer(old).await.json()["detail"], "Invalid token");
}

/// A key revoked, rotated away or created through this gate's admin API is refused or
/// accepted by the very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_changes_take_effect_before_it_answers() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, admin) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    for _ in 0..8 {
        let r = post(&gate.url("/admin/keys"), &admin, r#"{"tier":"pro"}"#).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let (id, key) = (
            r.json()["id"].clone(),
            r.json()["key"].as_str().expect("key").to_string(),
        );
        assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
        let r = send(
            Method::DELETE,
            &gate.url(&format!("/admin/keys/{id}")),
            &[("x-api-key", &admin)],
            "",
        )
        .await;
        assert_eq!(r.status, 204);
        assert_eq!(
            get(&gate.url("/api/tags"), &key).await.status,
            401,
            "revoked key still served"
        );
    }
    // Only the canonical spelling of an id names a key.
    for path in ["/admin/keys/01", "/admin/keys/+1", "/admin/keys/1/"] {
        let r = send(
            Method::DELETE,
            &gate.url(path),
            &[("x-api-key", &admin)],
            "",
        )
        .await;
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
    }
}

/// `X-Real-IP` from a client is not passed on: Ollama and what sits behind it must not
/// trust a client's word for its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_headers_are_not_forwarded() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let r = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("x-api-key", &key), ("x-real-ip", "6.6.6.6")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = fake.requests();
    let last = seen.last().expect("forwarded");
    assert_eq!(last.header("x-real-ip"), None);
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
}
