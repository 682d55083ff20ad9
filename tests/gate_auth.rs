//! Authentication at the gate, against SPEC §4's table: API keys (missing, malformed,
//! unknown, revoked, expired, rotated), JWT logins, the admin API, model management,
//! the audit trail and log line of a failure, and what reaches the upstream.
//! Each test runs its own fake Ollama, `aigate serve` and database.
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, Reply, SECRET, bin, eventually, get, post, send};

/// The challenge of a 401 without a credential.
const CHALLENGE: &str = r#"Bearer realm="aigate""#;
/// The challenge of a 401 for a credential that was given and refused.
const CHALLENGE_INVALID: &str = r#"Bearer realm="aigate", error="invalid_token""#;
/// How fast a change made by the CLI must reach a running gate.
const PROPAGATION: Duration = Duration::from_secs(1);
const PASSWORD: &str = "correct horse battery";
const CHAT: &str = r#"{"model":"llama3.2:latest","messages":[],"stream":false}"#;

/// A fake Ollama with the default options.
async fn fake() -> FakeOllama {
    FakeOllama::start(FakeOptions::default()).await
}

/// Asserts a 401 whose body is `detail` in both shapes (`{"detail", "error"}`: Ollama's
/// string, or OpenAI's object on `/v1/*`) and the RFC 6750 challenge.
#[track_caller]
fn assert_401(r: &Reply, detail: &str, credential_given: bool) {
    assert_eq!(r.status, 401, "body: {}", r.text());
    assert_json_content_type(r);
    let v = r.json();
    assert_eq!(v["detail"], detail, "{v}");
    let error = &v["error"];
    if error.is_object() {
        assert_eq!(error["message"], detail, "{v}");
        assert_eq!(error["type"], "invalid_request_error", "{v}");
    } else {
        assert_eq!(v, json!({ "detail": detail, "error": detail }));
    }
    let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    let want = if credential_given {
        CHALLENGE_INVALID
    } else {
        CHALLENGE
    };
    assert_eq!(challenges, vec![want], "WWW-Authenticate of {detail:?}");
}

/// Asserts a JSON error body `{"detail": "…"}` with `status`.
#[track_caller]
fn assert_error(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_json_content_type(r);
    let v = r.json();
    assert!(
        v["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "no detail in {v}"
    );
}

#[track_caller]
fn assert_json_content_type(r: &Reply) {
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
}

/// `GET url` with `Authorization: Bearer credential`.
async fn get_bearer(url: &str, credential: &str) -> Reply {
    let auth = format!("Bearer {credential}");
    send(Method::GET, url, &[("authorization", &auth)], "").await
}

/// `method url` with an API key and an optional JSON body.
async fn with_key(method: Method, url: &str, key: &str, body: &str) -> Reply {
    send(
        method,
        url,
        &[("x-api-key", key), ("content-type", "application/json")],
        body,
    )
    .await
}

/// `POST /auth/login` with a JSON body.
async fn login(gate: &Gate, user: &str, password: &str) -> Reply {
    let body = json!({ "username": user, "password": password }).to_string();
    send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/json")],
        &body,
    )
    .await
}

/// The access token of a successful login.
#[track_caller]
fn token_of(r: &Reply) -> String {
    assert_eq!(r.status, 200, "login: {}", r.text());
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Seconds since the epoch.
fn epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token signed with `secret`.
fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

/// Claims for `sub` valid for a minute.
fn claims(sub: &str) -> Value {
    let now = epoch();
    json!({ "sub": sub, "iat": now, "exp": now + 60, "ver": 0 })
}

/// `claims(sub)` with the fingerprint of the user's stored password hash, as the gate
/// issues them: what a holder of the secret could mint.
fn minted_claims(db: &Db, sub: &str) -> Value {
    use sha2::{Digest, Sha256};
    let hash: String = db
        .conn()
        .query_row(
            "SELECT password_hash FROM users WHERE username = ?1",
            [sub],
            |r| r.get(0),
        )
        .expect("user");
    let digest = Sha256::digest(hash.as_bytes());
    let fp: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut c = claims(sub);
    c["fp"] = json!(fp);
    c
}

/// `s` with the character at `i` changed to another base64url character.
fn change_char(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii")
}

/// Polls `f` every 20 ms until it is true; asserts it happened within `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // Poll a little past the limit so a late change reports its real delay.
    let took = eventually(limit * 3, f).await;
    match took {
        Some(t) if t < limit => t,
        Some(t) => panic!("{what} took {t:?} (limit {limit:?})"),
        None => panic!("{what} did not happen within {:?}", limit * 3),
    }
}

/// Runs `aigate serve` expecting it to refuse to start; returns its exit code and stderr.
fn serve_refused(db: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("--db")
        .arg(db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--upstream", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("AIGATE_JWT_SECRET")
        .env_remove("AIGATE_JWT_SECRET_FILE")
        .env_remove("AIGATE_NO_LOGIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn aigate serve");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aigate serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("stderr");
    (
        status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `auth_failure` audit rows as (ip, reason, key_prefix, user).
type AuditRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn audit_failures(db: &Db) -> Vec<AuditRow> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare(
            "SELECT ip, reason, key_prefix, user FROM audit WHERE kind = 'auth_failure' ORDER BY id",
        )
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
}

// ---------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_in_both_headers_and_bad_ones_get_the_spec_401s() {
    let fake = fake().await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    let (revoked_id, revoked) = db.key(&["--tier", "pro"]);
    db.cli(&["key", "revoke", &revoked_id.to_string(), "--yes"]);
    // Well-formed (right checksum) but from another database.
    let (_, unknown) = Db::new().key(&[]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let tags = gate.url("/api/tags");

    let r = send(Method::GET, &gate.url("/healthz"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    assert_eq!(get(&tags, &key).await.status, 200);
    assert_eq!(get_bearer(&tags, &key).await.status, 200);
    let lower = format!("bearer {key}");
    let r = send(Method::GET, &tags, &[("authorization", &lower)], "").await;
    assert_eq!(r.status, 200, "the Bearer scheme is case-insensitive");
    assert_eq!(
        post(&gate.url("/api/chat"), &key, CHAT).await.status,
        200,
        "Authorization: Bearer on a POST"
    );

    for (method, path) in [
        (Method::GET, "/api/tags"),
        (Method::POST, "/api/chat"),
        (Method::GET, "/v1/models"),
        (Method::GET, "/admin/keys"),
        (Method::POST, "/api/pull"),
        (Method::GET, "/"),
    ] {
        let r = send(method, &gate.url(path), &[], CHAT).await;
        assert_401(&r, "Not authenticated", false);
    }

    let bad_checksum = change_char(&key, 20);
    assert_ne!(bad_checksum, key);
    let random = "q8Zr7vT2mW0pX4kY9bN1cF6hJ3sL5dG8aE2uI7oP0zR4tV6yB9nM1xC3wQ5eK7jH";
    let invalid = [
        random,
        "hunter2",
        "aig_",
        "aig_tooShort",
        &format!("aig_{random}zzzzzz"),
        &bad_checksum,
        &unknown,
        &revoked,
    ];
    for cred in invalid {
        assert_401(&get(&tags, cred).await, "Invalid API key", true);
        assert_401(&get_bearer(&tags, cred).await, "Invalid API key", true);
    }
    // A second time, now that a negative answer may be cached.
    assert_401(&get(&tags, &unknown).await, "Invalid API key", true);
    assert_401(&get(&tags, &revoked).await, "Invalid API key", true);
    // Non-ASCII bytes in the header.
    let r = send(
        Method::GET,
        &tags,
        &[("authorization", "Bearer aig_\u{e9}\u{e9}")],
        "",
    )
    .await;
    assert_401(&r, "Invalid API key", true);

    // Nothing refused reached the upstream: only the accepted requests did.
    assert_eq!(fake.requests().len(), 4, "{:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_expires_at_is_expired() {
    let fake = fake().await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro", "--expires-in", "1s"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let tags = gate.url("/api/tags");
    let tags = &tags;
    let key = &key;
    let took = eventually(Duration::from_secs(3), || async move {
        get(tags, key).await.status == 401
    })
    .await;
    assert!(took.is_some(), "the key never expired");
    assert_401(&get(tags, key).await, "API key expired", true);
    assert_401(&get_bearer(tags, key).await, "API key expired", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revoke_reaches_the_running_gate_within_a_second() {
    let fake = fake().await;
    let db = Db::new();
    let (id, key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let tags = gate.url("/api/tags");
    // Twice: the second answer comes from the cache.
    assert_eq!(get(&tags, &key).await.status, 200);
    assert_eq!(get(&tags, &key).await.status, 200);

    db.cli(&["key", "revoke", &id.to_string(), "--yes"]);
    let (tags, key) = (&tags, &key);
    let took = within(PROPAGATION, "refusing a revoked key", || async move {
        let r = get(tags, key).await;
        assert!(matches!(r.status.as_u16(), 200 | 401), "{}", r.text());
        r.status == 401
    })
    .await;
    assert_401(&get(tags, key).await, "Invalid API key", true);
    eprintln!("revocation seen after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tier_change_reaches_the_running_gate_within_a_second() {
    let fake = fake().await;
    let db = Db::new();
    db.cli(&["tier", "set", "lab", "--models", "*"]);
    let (_, key) = db.key(&["--tier", "lab"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let chat = gate.url("/api/chat");
    let qwen = r#"{"model":"qwen2.5:7b","messages":[],"stream":false}"#;
    assert_eq!(with_key(Method::POST, &chat, &key, CHAT).await.status, 200);
    assert_eq!(with_key(Method::POST, &chat, &key, qwen).await.status, 200);

    db.cli(&["tier", "set", "lab", "--models", "qwen*"]);
    let (chat_url, k) = (&chat, &key);
    within(PROPAGATION, "applying a tier's new models", || async move {
        with_key(Method::POST, chat_url, k, CHAT).await.status == 403
    })
    .await;
    assert_error(&with_key(Method::POST, &chat, &key, CHAT).await, 403);
    assert_eq!(with_key(Method::POST, &chat, &key, qwen).await.status, 200);
    let tags = get(&gate.url("/api/tags"), &key).await;
    assert_eq!(tags.status, 200);
    let names: Vec<String> = tags.json()["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, vec!["qwen2.5:7b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_key_for_the_grace_period_only() {
    let fake = fake().await;
    let db = Db::new();
    let (id, old) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let tags = gate.url("/api/tags");
    assert_eq!(get(&tags, &old).await.status, 200);

    let out = db.cli(&["key", "rotate", &id.to_string(), "--grace", "2s", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("rotate --json");
    let new = v["key"].as_str().expect("new key").to_string();
    assert_ne!(new, old);
    assert_ne!(v["id"].as_i64(), Some(id));
    assert_eq!(get(&tags, &new).await.status, 200, "the new key at once");
    assert_eq!(get(&tags, &old).await.status, 200, "the old key in grace");

    let (t, o) = (&tags, &old);
    let took = eventually(Duration::from_secs(4), || async move {
        get(t, o).await.status == 401
    })
    .await;
    assert!(took.is_some(), "the old key outlived its grace period");
    assert_401(&get(&tags, &old).await, "API key expired", true);
    assert_eq!(get(&tags, &new).await.status, 200);
}

// ---------------------------------------------------------------------------
// JWT logins
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_by_json_and_form_gives_a_working_bearer_token() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let r = login(&gate, "ana", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let fields: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(fields.len(), 3, "{v}");
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 86_400, "24h by default");
    let token = token_of(&r);

    let data = jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("an HS256 token signed with the secret");
    assert_eq!(data.header.alg, Algorithm::HS256);
    assert_eq!(data.claims["sub"], "ana");
    let (iat, exp) = (
        data.claims["iat"].as_u64().expect("iat"),
        data.claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp - iat, 86_400);

    let tags = gate.url("/api/tags");
    assert_eq!(get_bearer(&tags, &token).await.status, 200);
    assert_eq!(post(&gate.url("/api/chat"), &token, CHAT).await.status, 200);

    let form = format!("username=ana&password={}", PASSWORD.replace(' ', "+"));
    let r = send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    let form_token = token_of(&r);
    assert_eq!(r.json()["token_type"], "bearer");
    assert_eq!(get_bearer(&tags, &form_token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_after_token_ttl() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &["--token-ttl", "1s"]);
    let tags = gate.url("/api/tags");

    // Signed with the right secret but already past `exp`: no leeway.
    let now = epoch();
    let stale = sign(
        &json!({ "sub": "ana", "iat": now - 120, "exp": now - 5, "ver": 0 }),
        SECRET.as_bytes(),
    );
    assert_401(&get_bearer(&tags, &stale).await, "Token expired", true);

    let r = login(&gate, "ana", PASSWORD).await;
    let token = token_of(&r);
    assert_eq!(r.json()["expires_in"], 1);
    assert_eq!(get_bearer(&tags, &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_401(&get_bearer(&tags, &token).await, "Token expired", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_invalid() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let tags = gate.url("/api/tags");

    // The test knows the secret, so it can mint a token the gate accepts…
    let good = sign(&minted_claims(&db, "ana"), SECRET.as_bytes());
    assert_eq!(get_bearer(&tags, &good).await.status, 200);

    // …and every variation of it is refused.
    let (head_body, sig) = good.rsplit_once('.').expect("three parts");
    let tampered = format!("{head_body}.{}", change_char(sig, 0));
    let head = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(claims("ana").to_string());
    let alg_none = format!("{head}.{body}.");
    let alg_none_sig = format!("{head}.{body}.{sig}");
    let other_secret = sign(&claims("ana"), b"another-secret-another-secret-0123456789");
    let tampered_claims = format!(
        "{}.{}.{sig}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(
            json!({ "sub": "ana", "iat": epoch(), "exp": epoch() + 7200, "ver": 0 }).to_string()
        )
    );
    let unknown_user = sign(&claims("nobody"), SECRET.as_bytes());
    let mut old_version = claims("ana");
    old_version["ver"] = json!(7);
    let old_version = sign(&old_version, SECRET.as_bytes());
    let no_sub = sign(
        &json!({ "iat": epoch(), "exp": epoch() + 60, "ver": 0 }),
        SECRET.as_bytes(),
    );
    for (what, token) in [
        ("tampered signature", tampered.as_str()),
        ("alg none", &alg_none),
        ("alg none with a signature", &alg_none_sig),
        ("another secret", &other_secret),
        ("tampered claims", &tampered_claims),
        ("unknown user", &unknown_user),
        ("stale token version", &old_version),
        ("no sub", &no_sub),
        ("garbage", "a.b.c"),
        ("empty parts", ".."),
    ] {
        let r = get_bearer(&tags, token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_401(&r, "Invalid token", true);
    }
    assert_eq!(get_bearer(&tags, &good).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_disable_ends_a_cached_token_within_a_second() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let tags = gate.url("/api/tags");
    let token = token_of(&login(&gate, "ana", PASSWORD).await);
    assert_eq!(get_bearer(&tags, &token).await.status, 200);
    assert_eq!(get_bearer(&tags, &token).await.status, 200);

    db.cli(&["user", "disable", "ana"]);
    let (t, tok) = (&tags, &token);
    within(
        PROPAGATION,
        "refusing a disabled user's token",
        || async move { get_bearer(t, tok).await.status == 401 },
    )
    .await;
    assert_401(&get_bearer(&tags, &token).await, "Invalid token", true);
    // A disabled user cannot log in either, and is told nothing more than a stranger.
    let disabled = login(&gate, "ana", PASSWORD).await;
    let stranger = login(&gate, "nobody", PASSWORD).await;
    assert_eq!(disabled.status, 401);
    assert_eq!(disabled.body, stranger.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_ends_old_tokens_and_the_new_password_works() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let tags = gate.url("/api/tags");
    let old = token_of(&login(&gate, "ana", PASSWORD).await);
    assert_eq!(get_bearer(&tags, &old).await.status, 200);

    let out = db.cli_raw(
        &["user", "passwd", "ana", "--password-stdin"],
        Some("a brand new password"),
    );
    assert!(out.status.success(), "{out:?}");
    let (t, o) = (&tags, &old);
    within(
        PROPAGATION,
        "refusing a token issued before passwd",
        || async move { get_bearer(t, o).await.status == 401 },
    )
    .await;
    assert_401(&get_bearer(&tags, &old).await, "Invalid token", true);

    assert_eq!(login(&gate, "ana", PASSWORD).await.status, 401);
    let new = token_of(&login(&gate, "ana", "a brand new password").await);
    assert_eq!(get_bearer(&tags, &new).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_look_alike_and_the_sixth_attempt_is_throttled() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let gate = Gate::start(&db.path, &fake.url(), &[]);

    let wrong = login(&gate, "ana", "not the password").await;
    let unknown = login(&gate, "nobody", "not the password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_error(&wrong, 401);
    assert_eq!(wrong.body, unknown.body, "same body");
    assert_eq!(unknown.status, 401);
    let challenge = |r: &Reply| r.headers.get("www-authenticate").cloned();
    assert_eq!(challenge(&wrong), challenge(&unknown));
    assert!(
        challenge(&wrong).is_some_and(|c| c.as_bytes().starts_with(CHALLENGE.as_bytes())),
        "{:?}",
        challenge(&wrong)
    );

    // Attempt 3, form-encoded; then two malformed ones, which check no password and
    // do not count.
    let r = send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "username=ana&password=wrong+3",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.body, wrong.body);
    for body in ["{", r#"{"username":"ana"}"#] {
        let r = send(
            Method::POST,
            &gate.url("/auth/login"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert!(
            r.status.is_client_error() && r.status != 429,
            "{}",
            r.status
        );
        assert_error(&r, r.status.as_u16());
    }
    // Failures 4 and 5.
    for password in ["wrong 4", "wrong 5"] {
        let r = login(&gate, "ana", password).await;
        assert_eq!(r.body, wrong.body);
    }
    // The sixth within the minute is refused, even with the right password.
    let r = login(&gate, "ana", PASSWORD).await;
    assert_error(&r, 429);
    let retry: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    // Failures are logged and audited, never with the password.
    let db_ref = &db;
    let audited = eventually(Duration::from_secs(3), || async move {
        audit_failures(db_ref).len() >= 5
    })
    .await;
    assert!(audited.is_some(), "{:?}", audit_failures(&db));
    let rows = audit_failures(&db);
    for (ip, reason, _, _) in &rows {
        assert_eq!(ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(reason.as_deref(), Some("bad_login"));
    }
    let users: Vec<_> = rows.iter().map(|r| r.3.as_deref()).collect();
    // A name that is no user's is not kept: it may be a password typed in the wrong field.
    assert_eq!(
        users,
        vec![Some("ana"), None, Some("ana"), Some("ana"), Some("ana")]
    );
    let logs = gate.logs();
    assert!(logs.contains("auth_failure ip=127.0.0.1 reason="), "{logs}");
    for secret in ["not the password", "wrong+3", "wrong 3", PASSWORD] {
        assert!(!logs.contains(secret), "a password in the log: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_needs_a_long_enough_secret_once_users_exist() {
    let fake = fake().await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "pro"]);
    db.user("ana", PASSWORD, "pro");

    let (code, stderr) = serve_refused(&db.path, &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("JWT secret") && stderr.contains("--no-login"),
        "unclear refusal: {stderr}"
    );
    assert!(!stderr.contains(" listening on "), "{stderr}");

    let short = "x".repeat(31);
    let (code, stderr) = serve_refused(&db.path, &[], &[("AIGATE_JWT_SECRET", &short)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");
    assert!(!stderr.contains(&short), "the secret was echoed: {stderr}");

    let file = db.dir.path().join("short.secret");
    std::fs::write(&file, format!("{short}\n")).expect("write secret");
    let file_arg = file.to_str().expect("utf-8 path");
    let (code, stderr) = serve_refused(&db.path, &["--jwt-secret-file", file_arg], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");

    let gate = Gate::start_with_env(&db.path, &fake.url(), &["--no-login"], &[]);
    assert!(gate.logs().contains("login=off"), "{}", gate.logs());
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
    let r = login(&gate, "ana", PASSWORD).await;
    assert_ne!(r.status, 200, "{}", r.text());
    assert_json_content_type(&r);
    let token = sign(&claims("ana"), SECRET.as_bytes());
    assert_401(
        &get_bearer(&gate.url("/api/tags"), &token).await,
        "Invalid token",
        true,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_secret_file_is_used() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let secret = "file-secret-file-secret-file-secret-4567";
    let file = db.dir.path().join("jwt.secret");
    std::fs::write(&file, format!("{secret}\n")).expect("write secret");
    let file_arg = file.to_str().expect("utf-8 path");
    let gate = Gate::start_with_env(&db.path, &fake.url(), &["--jwt-secret-file", file_arg], &[]);
    assert!(gate.logs().contains("login=on"), "{}", gate.logs());
    let tags = gate.url("/api/tags");

    let token = token_of(&login(&gate, "ana", PASSWORD).await);
    jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("signed with the file's secret (trailing newline trimmed)");
    assert_eq!(get_bearer(&tags, &token).await.status, 200);
    let minted = sign(&minted_claims(&db, "ana"), secret.as_bytes());
    assert_eq!(get_bearer(&tags, &minted).await.status, 200);
    let env_secret = sign(&claims("ana"), SECRET.as_bytes());
    assert_401(&get_bearer(&tags, &env_secret).await, "Invalid token", true);
}

// ---------------------------------------------------------------------------
// Admin API and model management
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_creates_lists_revokes_and_rotates_keys() {
    let fake = fake().await;
    let db = Db::new();
    let (_, admin) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let keys_url = gate.url("/admin/keys");
    let tags = gate.url("/api/tags");

    let r = post(&keys_url, &admin, r#"{"tier":"pro","name":"from-api"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let raw = created["key"].as_str().expect("raw key").to_string();
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["tier"], "pro");
    assert_eq!(created["name"], "from-api");
    assert_eq!(created["prefix"].as_str(), Some(&raw[..12]));
    assert_eq!(get(&tags, &raw).await.status, 200, "the new key works");

    let r = with_key(Method::GET, &keys_url, &admin, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let list = list.as_array().expect("an array");
    assert!(list.iter().any(|k| k["id"] == id), "{list:?}");
    assert!(!r.text().contains(&raw), "a listing shows a raw key");
    assert!(!r.text().contains(&admin), "a listing shows a raw key");
    assert!(list.iter().all(|k| k["key"].is_null()), "{list:?}");

    // Rotation: a new key at once, the old one kept for the default grace.
    let r = post(&gate.url(&format!("/admin/keys/{id}/rotate")), &admin, "").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rotated = r.json();
    let new_raw = rotated["key"].as_str().expect("raw key").to_string();
    let new_id = rotated["id"].as_i64().expect("id");
    assert_ne!(new_raw, raw);
    assert_ne!(new_id, id);
    assert_eq!(get(&tags, &new_raw).await.status, 200);
    assert_eq!(get(&tags, &raw).await.status, 200, "old key in grace");

    // Revocation through the API reaches the cache like the CLI's.
    let r = with_key(
        Method::DELETE,
        &gate.url(&format!("/admin/keys/{new_id}")),
        &admin,
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let (t, k) = (&tags, &new_raw);
    within(
        PROPAGATION,
        "refusing a key revoked by the API",
        || async move { get(t, k).await.status == 401 },
    )
    .await;
    assert_401(&get(&tags, &new_raw).await, "Invalid API key", true);

    let r = with_key(Method::DELETE, &gate.url("/admin/keys/999999"), &admin, "").await;
    assert_error(&r, 404);
    let r = with_key(Method::DELETE, &gate.url("/admin/keys/abc"), &admin, "").await;
    assert_error(&r, 400);
    let r = post(&gate.url("/admin/keys/999999/rotate"), &admin, "").await;
    assert_error(&r, 404);
    let r = post(&gate.url("/admin/keys/abc/rotate"), &admin, "").await;
    assert_error(&r, 400);

    // The admin API never forwarded anything.
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path_and_query.starts_with("/admin")),
        "{:?}",
        fake.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_tier_may_use_admin_and_model_management_routes() {
    let fake = fake().await;
    let db = Db::new();
    let (admin_id, admin) = db.key(&["--tier", "admin"]);
    let (_, pro) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);

    let body = r#"{"model":"llama3.2:latest"}"#;
    let admin_routes = [
        (Method::GET, "/admin/keys".to_string(), ""),
        (Method::POST, "/admin/keys".to_string(), "{}"),
        (Method::DELETE, format!("/admin/keys/{admin_id}"), ""),
        (Method::POST, format!("/admin/keys/{admin_id}/rotate"), ""),
    ];
    for (method, path, b) in &admin_routes {
        let r = with_key(method.clone(), &gate.url(path), &pro, b).await;
        assert_error(&r, 403);
    }
    let management = [
        (Method::POST, "/api/pull"),
        (Method::POST, "/api/push"),
        (Method::POST, "/api/create"),
        (Method::POST, "/api/copy"),
        (Method::DELETE, "/api/delete"),
        (Method::POST, "/api/blobs/sha256:x"),
        (Method::HEAD, "/api/blobs/sha256:x"),
    ];
    for (method, path) in &management {
        let r = with_key(method.clone(), &gate.url(path), &pro, body).await;
        assert_eq!(r.status, 403, "{method} {path}");
        if method != Method::HEAD {
            assert_error(&r, 403);
        }
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // The refused DELETE and rotate did nothing.
    assert_eq!(get(&gate.url("/api/tags"), &admin).await.status, 200);

    for (method, path) in &management {
        let r = with_key(method.clone(), &gate.url(path), &admin, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        if method != Method::HEAD {
            assert_eq!(r.json(), json!({ "status": "success" }), "{path}");
        }
    }
    let forwarded: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    for (method, path) in &management {
        let line = format!("{method} {path}");
        assert!(forwarded.contains(&line), "{line} not in {forwarded:?}");
    }
}

// ---------------------------------------------------------------------------
// Audit, logs, and what the upstream sees
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_and_audited_with_the_prefix_only() {
    let fake = fake().await;
    let db = Db::new();
    let (revoked_id, revoked) = db.key(&["--tier", "pro"]);
    db.cli(&["key", "revoke", &revoked_id.to_string(), "--yes"]);
    let (_, unknown) = Db::new().key(&[]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let tags = gate.url("/api/tags");
    let bad_checksum = change_char(&revoked, 30);

    assert_eq!(get(&tags, "").await.status, 401);
    assert_eq!(send(Method::GET, &tags, &[], "").await.status, 401);
    assert_eq!(get(&tags, &unknown).await.status, 401);
    assert_eq!(get_bearer(&tags, &bad_checksum).await.status, 401);
    assert_eq!(get(&tags, &revoked).await.status, 401);

    let db_ref = &db;
    let took = eventually(Duration::from_millis(2500), || async move {
        audit_failures(db_ref).len() >= 5
    })
    .await;
    assert!(took.is_some(), "audit: {:?}", audit_failures(&db));
    let rows = audit_failures(&db);
    assert_eq!(rows.len(), 5, "{rows:?}");
    let prefix = |k: &str| k[..12].to_string();
    for (ip, _, key_prefix, _) in &rows {
        assert_eq!(ip.as_deref(), Some("127.0.0.1"));
        if let Some(p) = key_prefix {
            assert!(p.len() <= 12, "more than the display prefix: {p}");
        }
    }
    let by_reason = |reason: &str| {
        rows.iter()
            .find(|r| r.1.as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} row in {rows:?}"))
            .2
            .clone()
    };
    assert_eq!(by_reason("unknown_key"), Some(prefix(&unknown)));
    assert_eq!(by_reason("bad_checksum"), Some(prefix(&bad_checksum)));
    assert_eq!(by_reason("revoked_key"), Some(prefix(&revoked)));
    assert_eq!(by_reason("missing"), None);

    let logs = gate.logs();
    for (reason, key) in [
        ("unknown_key", &unknown),
        ("bad_checksum", &bad_checksum),
        ("revoked_key", &revoked),
    ] {
        let line = format!(
            "auth_failure ip=127.0.0.1 reason={reason} key={} ",
            prefix(key)
        );
        assert!(logs.contains(&line), "no {line:?} in\n{logs}");
    }
    assert!(
        logs.contains("auth_failure ip=127.0.0.1 reason=missing key=-"),
        "{logs}"
    );
    for key in [&unknown, &bad_checksum, &revoked] {
        assert!(!logs.contains(key.as_str()), "a full key in the log");
        assert!(!logs.contains(&key[12..]), "a key's secret part in the log");
    }
    let conn = db.conn();
    let dump: String = conn
        .query_row(
            "SELECT group_concat(coalesce(key_prefix,'') || ' ' || coalesce(detail,''), '\n') FROM audit",
            [],
            |r| r.get(0),
        )
        .expect("audit dump");
    for key in [&unknown, &bad_checksum, &revoked] {
        assert!(!dump.contains(&key[12..]), "a key in the audit table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_upstream() {
    let fake = fake().await;
    let db = Db::new();
    db.user("ana", PASSWORD, "pro");
    let (_, key) = db.key(&["--tier", "pro"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let token = token_of(&login(&gate, "ana", PASSWORD).await);
    let bearer_key = format!("Bearer {key}");
    let bearer_jwt = format!("Bearer {token}");
    let spoof: [(&str, &str); 5] = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=6.6.6.6"),
        ("host", "evil.example"),
    ];
    let path = "/echo?q=a%20b&x=1&x=2";
    let creds: [[(&str, &str); 1]; 3] = [
        [("x-api-key", key.as_str())],
        [("authorization", bearer_key.as_str())],
        [("authorization", bearer_jwt.as_str())],
    ];
    for cred in &creds {
        let mut headers: Vec<(&str, &str)> = cred.to_vec();
        headers.extend_from_slice(&spoof);
        let r = send(Method::GET, &gate.url(path), &headers, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        headers.push(("content-type", "application/json"));
        let r = send(Method::POST, &gate.url("/api/chat"), &headers, CHAT).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Both headers at once.
    let r = send(
        Method::GET,
        &gate.url(path),
        &[("x-api-key", &key), ("authorization", &bearer_jwt)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = fake.requests();
    assert_eq!(seen.len(), 7, "{seen:?}");
    let authority = fake.addr().to_string();
    for r in &seen {
        assert_eq!(r.header("x-api-key"), None, "{r:?}");
        assert_eq!(r.header("authorization"), None, "{r:?}");
        assert_eq!(r.header("host"), Some(authority.as_str()), "{r:?}");
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"), "{r:?}");
        assert_eq!(r.header("forwarded"), None, "{r:?}");
        assert_eq!(r.header("x-forwarded-host"), None, "{r:?}");
        assert_ne!(r.header("x-forwarded-proto"), Some("https"), "{r:?}");
        let xff: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .collect();
        assert_eq!(xff.len(), 1, "{r:?}");
        let all = format!("{:?}", r.headers);
        assert!(!all.contains(&key[4..]), "the key reached the upstream");
        assert!(!all.contains(&token), "the token reached the upstream");
        if r.method == "GET" {
            assert_eq!(r.path_and_query, path);
        }
    }
}
