//! `POST /auth/login` against hostile clients (SPEC §4): a flood of failed logins stays
//! within bounded memory and threads and leaves API keys fast; per-address limits treat
//! an IPv6 /64 as one address and count only failures; failures from elsewhere never
//! lock a user out; a JSON body is read whatever its `Content-Type`; a username that
//! names no user never reaches the audit table or the log.
//! Each test runs its own fake Ollama, `aigate serve` and database.
mod support;

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, Reply, eventually, get, send};

const PASSWORD: &str = "correct horse battery";
/// The test runs the gate behind this "proxy", so `X-Forwarded-For` names the client.
const PROXY: &[&str] = &["--trusted-proxy", "127.0.0.1/32"];

async fn fake() -> FakeOllama {
    FakeOllama::start(FakeOptions::default()).await
}

/// `POST /auth/login` with a JSON body from `from` (an `X-Forwarded-For` address, or
/// the test's own address when empty).
async fn login_from(gate: &Gate, from: &str, user: &str, password: &str) -> Reply {
    let body = json!({ "username": user, "password": password }).to_string();
    login_raw(gate, from, Some("application/json"), &body).await
}

/// `POST /auth/login` with `body` as is, labelled `content_type`.
async fn login_raw(gate: &Gate, from: &str, content_type: Option<&str>, body: &str) -> Reply {
    let mut headers = Vec::new();
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    if !from.is_empty() {
        headers.push(("x-forwarded-for", from));
    }
    send(Method::POST, &gate.url("/auth/login"), &headers, body).await
}

/// Asserts a 200 with a bearer token that the gate accepts.
#[track_caller]
fn assert_token(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "bearer");
    assert!(
        r.json()["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

/// Asserts a refusal with `status`, a JSON `detail` and a `Retry-After` of 1 to `max`
/// seconds.
#[track_caller]
fn assert_retry(r: &Reply, status: u16, max: u64) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(!r.detail().is_empty(), "{}", r.text());
    let retry: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=max).contains(&retry), "Retry-After {retry}");
}

/// A field of /proc/PID/status (its first number: kB for sizes).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_logins_keeps_memory_threads_and_keys_in_bounds() {
    const FLOOD: usize = 100;
    const MAX_HWM_KIB: u64 = 300 * 1024;
    const MAX_THREADS: u64 = 64;
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    // The admin tier has no rate limit to reach while the key is polled.
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), PROXY);
    let pid = gate.pid();
    let tags = gate.url("/api/tags");
    assert_eq!(get(&tags, &key).await.status, 200);

    for wave in 0..2 {
        let mut logins = tokio::task::JoinSet::new();
        for i in 0..FLOOD {
            let url = gate.url("/auth/login");
            let from = format!("10.{wave}.{}.{}", i / 250, i % 250 + 1);
            logins.spawn(async move {
                let body = json!({ "username": "ana", "password": format!("guess {i}") });
                let headers = [
                    ("content-type", "application/json"),
                    ("x-forwarded-for", from.as_str()),
                ];
                send(Method::POST, &url, &headers, &body.to_string()).await
            });
        }
        let flood = tokio::spawn(async move {
            let mut replies = Vec::with_capacity(FLOOD);
            while let Some(r) = logins.join_next().await {
                replies.push(r.expect("login task"));
            }
            replies
        });
        // A key's requests keep working while the flood runs.
        let mut max_threads = 0;
        let mut during = 0;
        while during == 0 || !flood.is_finished() {
            max_threads = max_threads.max(proc_status(pid, "Threads"));
            let r = get(&tags, &key).await;
            assert_eq!(r.status, 200, "a key during the flood: {}", r.text());
            during += 1;
        }
        let replies = flood.await.expect("flood");
        let mut checked = 0;
        for r in &replies {
            match r.status.as_u16() {
                401 => checked += 1,
                503 => assert_retry(r, 503, 5),
                other => panic!("a flooded login answered {other}: {}", r.text()),
            }
        }
        assert!(checked >= 1, "no password was checked at all");
        assert!(
            max_threads < MAX_THREADS,
            "wave {wave}: {max_threads} threads"
        );
    }
    assert_eq!(get(&tags, &key).await.status, 200);
    let hwm = proc_status(pid, "VmHWM");
    assert!(hwm < MAX_HWM_KIB, "peak RSS {} MiB", hwm / 1024);
    assert!(proc_status(pid, "Threads") < MAX_THREADS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_slash_64_is_one_address_and_ipv4_is_not_grouped() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), PROXY);

    // Eight addresses of one /64 share its five tries.
    for i in 1..=8 {
        let from = format!("2001:db8:7:8::{i:x}");
        let r = login_from(&gate, &from, "ana", "wrong").await;
        if i <= 5 {
            assert_eq!(r.status, 401, "{from}: {}", r.text());
        } else {
            assert_retry(&r, 429, 60);
        }
    }
    let other = "2001:db8:7:8:ffff:ffff:ffff:ffff";
    assert_retry(&login_from(&gate, other, "ana", PASSWORD).await, 429, 60);
    // The next /64 is another address.
    let next = login_from(&gate, "2001:db8:7:9::1", "ana", PASSWORD).await;
    assert_token(&next);

    // IPv4 neighbours are not grouped.
    for _ in 0..5 {
        let r = login_from(&gate, "192.0.2.1", "ana", "wrong").await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert_retry(
        &login_from(&gate, "192.0.2.1", "ana", "wrong").await,
        429,
        60,
    );
    let neighbour = login_from(&gate, "192.0.2.2", "ana", "wrong").await;
    assert_eq!(neighbour.status, 401, "{}", neighbour.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_other_addresses_do_not_lock_a_user_out() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), PROXY);

    // Fifteen failures for ana, more than the ten an account allows, from three
    // addresses, each until it is refused.
    for from in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for _ in 0..5 {
            let r = login_from(&gate, from, "ana", "wrong").await;
            assert_eq!(r.status, 401, "{from}: {}", r.text());
        }
        assert_retry(&login_from(&gate, from, "ana", "wrong").await, 429, 60);
    }
    // Ana logs in from her own address; the attackers' stay refused.
    let r = login_from(&gate, "203.0.113.9", "ana", PASSWORD).await;
    assert_token(&r);
    let token = r.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let tags = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(tags.status, 200, "{}", tags.text());
    assert_retry(
        &login_from(&gate, "198.51.100.1", "ana", PASSWORD).await,
        429,
        60,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_towards_the_address_limit() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    for i in 0..8 {
        assert_token(&login_from(&gate, "", "ana", PASSWORD).await);
        // Malformed attempts check no password and do not count either.
        let body = if i % 2 == 0 {
            "{"
        } else {
            r#"{"username":"ana"}"#
        };
        let r = login_raw(&gate, "", Some("application/json"), body).await;
        assert_eq!(r.status, 422, "{}", r.text());
    }
    for _ in 0..5 {
        let r = login_from(&gate, "", "ana", "wrong").await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // The sixth attempt after five failures is refused, even with the right password.
    assert_retry(&login_from(&gate, "", "ana", PASSWORD).await, 429, 60);
    let r = login_raw(&gate, "", Some("application/json"), "{").await;
    assert_retry(&r, 429, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_is_read_whatever_the_content_type_says() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let json = json!({ "username": "ana", "password": PASSWORD }).to_string();

    // What `curl -d '{…}'` sends.
    let curl = Some("application/x-www-form-urlencoded");
    assert_token(&login_raw(&gate, "", curl, &json).await);
    let padded = format!(" \r\n\t{json}\n");
    assert_token(&login_raw(&gate, "", Some("text/plain"), &padded).await);
    assert_token(&login_raw(&gate, "", None, &json).await);
    // And a form is a form, even labelled JSON.
    let form = format!("username=ana&password={}", PASSWORD.replace(' ', "+"));
    assert_token(&login_raw(&gate, "", Some("application/json"), &form).await);
    assert_token(&login_raw(&gate, "", curl, &form).await);
    let r = login_raw(&gate, "", curl, r#"{"username":"ana","password":"wrong"}"#).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_that_names_no_user_is_neither_audited_nor_logged() {
    const TYPED: &str = "hunter2-secret-typed-here";
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let r = login_from(&gate, "", TYPED, "ana").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = login_from(&gate, "", "ana", "wrong").await;
    assert_eq!(r.status, 401, "{}", r.text());

    let users = || {
        let conn = db.conn();
        let mut stmt = conn
            .prepare("SELECT user FROM audit WHERE kind = 'auth_failure' ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| r.get::<_, Option<String>>(0))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
    };
    let flushed = eventually(Duration::from_secs(5), || {
        let n = users().len();
        async move { n >= 2 }
    })
    .await;
    assert!(flushed.is_some(), "audit rows: {:?}", users());
    assert_eq!(users(), vec![None, Some("ana".to_string())]);

    let conn = db.conn();
    let mut stmt = conn
        .prepare(
            "SELECT count(*) FROM audit WHERE instr(coalesce(kind, '') || coalesce(ip, '') || \
             coalesce(reason, '') || coalesce(key_prefix, '') || coalesce(user, '') || \
             coalesce(detail, ''), ?1) > 0",
        )
        .expect("prepare");
    let rows: i64 = stmt.query_row([TYPED], |r| r.get(0)).expect("count");
    assert_eq!(rows, 0, "the typed username was stored");
    assert!(!gate.logs().contains(TYPED), "{}", gate.logs());
}
