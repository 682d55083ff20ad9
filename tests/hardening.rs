//! Hardening: what attackers and bad days do to the real `aigate serve`. Hostile HTTP
//! over raw TCP (malformed request lines, bad and conflicting `Content-Length`,
//! `Content-Length` with `Transfer-Encoding`, non-UTF-8 credentials, 1,000 idle
//! connections); hostile credentials and a flood of 10,000 of them; faults (upstream
//! killed mid-stream, the database locked, unreadable, a failed usage flush, kill -9 of
//! the CLI mid-write); load while the CLI creates and revokes keys, after which no
//! secret may be found in the database files, the log or any error body.
//!
//! Oversized heads, slowloris, ambiguous paths and upstream down/up are covered by
//! `gate_forward.rs` and not repeated here.
mod support;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, Reply, SECRET, bin, eventually, get, open, post, send};

const PASSWORD: &str = "correct horse battery staple";
const CHAT: &str =
    r#"{"model":"llama3.2:latest","messages":[{"role":"user","content":"hi"}],"stream":false}"#;
const STREAM_CHAT: &str =
    r#"{"model":"llama3.2:latest","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
/// The most audit entries the gate writes in one flush (`recorder::AUDIT_QUEUE`).
const AUDIT_PER_FLUSH: i64 = 4096;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fake Ollama with `opts`, a database with an admin-tier key, and a gate started
/// with `args` (the test JWT secret is in its environment).
async fn setup(opts: FakeOptions, args: &[&str]) -> (FakeOllama, Db, String, Gate) {
    let fake = FakeOllama::start(opts).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), args);
    (fake, db, key, gate)
}

/// A small xorshift generator: no `rand` in the dev-dependencies. The seed is printed
/// so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn seeded(what: &str) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let seed = nanos ^ u64::from(std::process::id()).rotate_left(32);
        eprintln!("{what}: rng seed {seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `len` bytes a header value may carry: visible ASCII and obs-text, no controls.
    fn header_bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                loop {
                    let b = (self.next() >> 24) as u8;
                    if b > 0x20 && b != 0x7f {
                        break b;
                    }
                }
            })
            .collect()
    }

    /// `len` printable ASCII characters (a header value the hyper client accepts).
    fn printable(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(0x21 + self.below(0x7e - 0x21) as u8))
            .collect()
    }
}

/// A fresh, well-formed key that no database holds.
fn unknown_key() -> String {
    aigate::auth::key::generate()
        .expect("OS random source")
        .key
        .expose()
        .to_string()
}

/// A well-formed key with its last (checksum) character changed.
fn bad_checksum(key: &str) -> String {
    let mut b = key.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii")
}

fn epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// HMAC-SHA256 (RFC 2104), written out so that the test can sign any header it likes.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A JWT with any `header` and `claims`, signed with HMAC-SHA256 under `secret`.
fn jwt(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = B64.encode(hmac_sha256(secret, signing.as_bytes()));
    format!("{signing}.{sig}")
}

/// Writes `request` on a fresh connection (the gate may close before taking all of
/// it) and reads until the gate closes the connection or 3 s pass.
async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    read_until_closed(&mut s, Duration::from_secs(3)).await
}

async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The status codes of the responses on the wire, in order.
/// Sends each request on its own connection: hyper answers what it cannot parse with
/// a bare 400, or closes.
async fn assert_unparsable_refused(addr: SocketAddr, cases: &[(&str, Vec<u8>)]) {
    for (what, req) in cases {
        let wire = raw(addr, req).await;
        let st = statuses(&wire);
        assert!(
            st.is_empty() || st == [400],
            "{what}: {st:?} {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
}

fn statuses(wire: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(wire);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, m)| text.get(i + m.len()..i + m.len() + 3)?.parse().ok())
        .collect()
}

/// The JSON body of the only response on the wire.
fn raw_json(wire: &[u8]) -> Value {
    let text = String::from_utf8_lossy(wire);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// A request head (and body) for the raw tests: `lines` are joined with CRLF.
fn head(lines: &[&str], body: &str) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// `Authorization: Bearer credential`.
async fn bearer(url: &str, credential: &str) -> Reply {
    let auth = format!("Bearer {credential}");
    send(Method::GET, url, &[("authorization", &auth)], "").await
}

/// Asserts one of the spec's 401s for a credential that was given.
#[track_caller]
fn assert_refused(r: &Reply, details: &[&str], what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let detail = r.detail();
    assert!(
        details.contains(&detail.as_str()),
        "{what}: detail {detail:?}"
    );
    let challenge = r
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        challenge, r#"Bearer realm="aigate", error="invalid_token""#,
        "{what}"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// The soft limit on open files of this process (the gate inherits it).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// A counter from the gate's metrics endpoint.
async fn metric(gate: &Gate, name: &str) -> f64 {
    let addr = gate.metrics.expect("--metrics-listen");
    let r = send(Method::GET, &format!("http://{addr}/metrics"), &[], "").await;
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", r.text()))
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Hostile HTTP over raw TCP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_lines_are_refused_and_reach_nothing() {
    let (fake, _db, key, gate) = setup(FakeOptions::default(), &["--no-login"]).await;
    let key_line = format!("X-API-Key: {key}");
    let long_method = format!("{} /api/tags HTTP/1.1", "A".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GARBAGE\r\n\r\n".to_vec()),
        ("method only", b"GET\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /api/tags\r\n\r\n".to_vec()),
        (
            "unknown version",
            head(&["GET /api/tags HTTP/9.9", "Host: x"], ""),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "extra token",
            head(&["GET /api/tags HTTP/1.1 x", "Host: x"], ""),
        ),
        (
            "double space",
            head(&["GET  /api/tags HTTP/1.1", "Host: x"], ""),
        ),
        (
            "tab separator",
            head(&["GET\t/api/tags\tHTTP/1.1", "Host: x"], ""),
        ),
        (
            "NUL in method",
            b"G\0T /api/tags HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "obs-text in target",
            b"GET /api/t\xffgs HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "space in target",
            head(&["GET /api/ tags HTTP/1.1", "Host: x"], ""),
        ),
        (
            "obs-fold",
            head(
                &["GET /api/tags HTTP/1.1", "Host: x", &key_line, " folded"],
                "",
            ),
        ),
        (
            "space in a header name",
            head(&["GET / HTTP/1.1", "Bad Name: x"], ""),
        ),
        ("empty header name", head(&["GET / HTTP/1.1", ": x"], "")),
        ("no colon", head(&["GET / HTTP/1.1", "Host x"], "")),
        (
            "bare CR",
            b"GET /api/tags HTTP/1.1\rX-API-Key: x\r\n\r\n".to_vec(),
        ),
    ];
    assert_unparsable_refused(gate.addr, &cases).await;

    // Parsable but not a path any Ollama client sends, even with a valid key.
    for (what, line) in [
        ("authority form", "CONNECT 127.0.0.1:22 HTTP/1.1"),
        ("asterisk form", "OPTIONS * HTTP/1.1"),
    ] {
        let wire = raw(
            gate.addr,
            &head(&[line, "Host: x", &key_line, "Connection: close"], ""),
        )
        .await;
        assert_eq!(statuses(&wire), [400], "{what}");
        assert_eq!(raw_json(&wire)["detail"], "Bad path", "{what}");
    }
    // A 10 KB method is a token hyper accepts; without a credential it is a 401.
    let wire = raw(
        gate.addr,
        &head(&[&long_method, "Host: x", "Connection: close"], ""),
    )
    .await;
    assert_eq!(statuses(&wire), [401]);
    assert!(
        fake.requests().is_empty(),
        "reached the upstream: {:?}",
        fake.requests()
    );

    // Absolute form names a foreign host: only the path goes upstream, with the
    // upstream's own Host (the fake answers 403 to any other).
    let wire = raw(
        gate.addr,
        &head(
            &[
                "GET http://evil.example:9/api/version?x=1 HTTP/1.1",
                "Host: evil.example:9",
                &key_line,
                "Connection: close",
            ],
            "",
        ),
    )
    .await;
    assert_eq!(statuses(&wire), [200], "{}", String::from_utf8_lossy(&wire));
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/api/version?x=1");
    assert_eq!(
        seen[0].header("host"),
        Some(fake.addr().to_string().as_str())
    );

    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_length_and_smuggling_never_desync_the_upstream() {
    let (fake, _db, key, gate) = setup(FakeOptions::default(), &["--no-login"]).await;
    let k = format!("X-API-Key: {key}");
    let post = "POST /echo HTTP/1.1";
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

    // Refused by the parser: 400 (or a closed connection), nothing forwarded.
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "letters",
            head(&[post, "Host: x", &k, "Content-Length: abc"], "hello"),
        ),
        (
            "negative",
            head(&[post, "Host: x", &k, "Content-Length: -1"], "hello"),
        ),
        (
            "plus sign",
            head(&[post, "Host: x", &k, "Content-Length: +5"], "hello"),
        ),
        (
            "hex",
            head(&[post, "Host: x", &k, "Content-Length: 0x5"], "hello"),
        ),
        (
            "list",
            head(&[post, "Host: x", &k, "Content-Length: 5, 6"], "hello!"),
        ),
        (
            "overflow",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Content-Length: 99999999999999999999999",
                ],
                "hello",
            ),
        ),
        (
            "conflicting duplicates",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Content-Length: 5",
                    "Content-Length: 6",
                ],
                "hello!",
            ),
        ),
        (
            "TE not chunked",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Transfer-Encoding: identity",
                    "Content-Length: 5",
                ],
                "hello",
            ),
        ),
        (
            "TE chunked then identity",
            head(
                &[post, "Host: x", &k, "Transfer-Encoding: chunked, identity"],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "two TE lines, last not chunked",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Transfer-Encoding: chunked",
                    "Transfer-Encoding: identity",
                ],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "xchunked",
            head(
                &[post, "Host: x", &k, "Transfer-Encoding: xchunked"],
                "hello",
            ),
        ),
        (
            "space before colon",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Transfer-Encoding : chunked",
                    "Content-Length: 5",
                ],
                "hello",
            ),
        ),
        (
            "TE on HTTP/1.0",
            head(
                &[
                    "POST /echo HTTP/1.0",
                    "Host: x",
                    &k,
                    "Transfer-Encoding: chunked",
                ],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk size overflow",
            head(
                &[post, "Host: x", &k, "Transfer-Encoding: chunked"],
                "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk size not hex",
            head(
                &[post, "Host: x", &k, "Transfer-Encoding: chunked"],
                "zz\r\nhello\r\n0\r\n\r\n",
            ),
        ),
    ];
    assert_unparsable_refused(gate.addr, &refused).await;
    assert!(
        fake.requests().is_empty(),
        "a refused request reached the upstream: {:?}",
        fake.requests()
    );

    // Accepted, with one unambiguous framing; a request hidden after the body must not
    // reach the upstream, riding on the first request's credential or otherwise.
    let accepted: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "equal duplicates",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Content-Length: 5",
                    "Content-Length: 5",
                    "Connection: close",
                ],
                "hello",
            ),
            "hello",
        ),
        (
            "CL.TE",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Content-Length: 6",
                    "Transfer-Encoding: chunked",
                ],
                &format!("0\r\n\r\n{smuggled}"),
            ),
            "",
        ),
        (
            "TE.CL",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Transfer-Encoding: chunked",
                    "Content-Length: 3",
                ],
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            "hello",
        ),
        (
            "TE with a tab and odd case",
            head(
                &[
                    post,
                    "Host: x",
                    &k,
                    "Content-Length: 40",
                    "Transfer-Encoding:\tChunked",
                ],
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            "hello",
        ),
        (
            "pipelined after a Content-Length body",
            head(
                &[post, "Host: x", &k, "Content-Length: 5"],
                &format!("hello{smuggled}"),
            ),
            "hello",
        ),
    ];
    for (what, req, body) in &accepted {
        let before = fake.requests().len();
        let wire = raw(gate.addr, req).await;
        let st = statuses(&wire);
        // The echo (200), then for the pipelined case the hidden request's own 401.
        assert_eq!(
            st.first(),
            Some(&200),
            "{what}: {}",
            String::from_utf8_lossy(&wire)
        );
        assert!(st[1..].iter().all(|s| *s == 401), "{what}: {st:?}");
        let seen = fake.requests();
        assert_eq!(seen.len(), before + 1, "{what}: {seen:?}");
        let last = &seen[before];
        assert_eq!(last.path_and_query, "/echo", "{what}");
        assert_eq!(last.body, body.as_bytes(), "{what}");
        assert!(
            !(last.header("content-length").is_some()
                && last.header("transfer-encoding").is_some()),
            "{what}: both framings forwarded: {:?}",
            last.headers
        );
        if let Some(cl) = last.header("content-length") {
            assert_eq!(cl, body.len().to_string(), "{what}");
        }
    }
    let seen = fake.requests();
    assert!(
        seen.iter().all(|r| !r.path_and_query.contains("smuggled")),
        "smuggled: {seen:?}"
    );

    // A declared size over the limit is refused before any of it is read.
    let wire = raw(
        gate.addr,
        &head(
            &[
                post,
                "Host: x",
                &k,
                "Content-Length: 1000000000000",
                "Connection: close",
            ],
            "",
        ),
    )
    .await;
    assert_eq!(statuses(&wire), [413], "{}", String::from_utf8_lossy(&wire));
    assert!(raw_json(&wire)["detail"].is_string());
    assert_eq!(fake.requests().len(), seen.len());
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_credentials_are_invalid_and_other_headers_pass() {
    let (fake, _db, key, gate) = setup(FakeOptions::default(), &["--no-login"]).await;
    let get_line = "GET /api/tags HTTP/1.1";
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let with = |name: &str, value: &[u8]| {
        let mut r = format!("{get_line}\r\nHost: x\r\nConnection: close\r\n{name}: ").into_bytes();
        r.extend_from_slice(value);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let mut valid_then_ff = key.clone().into_bytes();
    valid_then_ff.push(0xff);
    let mut latin1_inside = key.clone().into_bytes();
    latin1_inside[10] = 0xe9;
    cases.push(("x-api-key obs-text", with("X-API-Key", b"aig_\xff\xfe\xfd")));
    cases.push(("x-api-key valid + 0xff", with("X-API-Key", &valid_then_ff)));
    cases.push((
        "x-api-key latin-1 inside",
        with("X-API-Key", &latin1_inside),
    ));
    let mut bearer_latin1 = b"Bearer ".to_vec();
    bearer_latin1.extend_from_slice(&latin1_inside);
    cases.push(("bearer latin-1 key", with("Authorization", &bearer_latin1)));
    cases.push((
        "bearer broken UTF-8",
        with(
            "Authorization",
            b"Bearer \xc3\x28\xa0\xa1.\xe2\x82.\xf0\x28",
        ),
    ));
    for (what, req) in &cases {
        let wire = raw(gate.addr, req).await;
        assert_eq!(statuses(&wire), [401], "{what}");
        let text = String::from_utf8_lossy(&wire);
        assert!(
            text.contains(r#"www-authenticate: Bearer realm="aigate", error="invalid_token""#),
            "{what}: {text}"
        );
        let detail = raw_json(&wire)["detail"].clone();
        assert!(
            detail == "Invalid API key" || detail == "Invalid token",
            "{what}: {detail}"
        );
    }
    assert!(fake.requests().is_empty());

    // A non-UTF-8 byte elsewhere does not stop a valid request.
    let mut req =
        format!("{get_line}\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n").into_bytes();
    req.extend_from_slice(b"X-Note: caf\xe9\r\n\r\n");
    let wire = raw(gate.addr, &req).await;
    assert_eq!(statuses(&wire), [200]);
    assert_eq!(fake.requests().len(), 1);
    // The log names no raw credential bytes: only a sanitized display prefix.
    let logs = gate.logs();
    assert!(!logs.contains(&key[..20]), "{logs}");
    assert!(logs.contains("auth_failure"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_starve_a_client() {
    // All from 127.0.0.1, the client's address too: caps above the default per-address
    // one (`floods.rs` tests the caps themselves) and above the total one a low
    // open-files limit would give.
    let args = [
        "--no-login",
        "--max-conns-per-ip",
        "1100",
        "--max-conns",
        "1100",
    ];
    let (_fake, _db, key, gate) = setup(FakeOptions::default(), &args).await;
    let limit = open_files_limit();
    let n = 1000.min(limit.saturating_sub(100));
    eprintln!("open files limit {limit}: {n} idle connections");
    assert!(n >= 100, "RLIMIT_NOFILE {limit} is too low for this test");
    let pid = gate.pid();
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
    let rss_before = rss_kib(pid);

    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(gate.addr).await.expect("connect");
        // Half say nothing at all, half start a request head and stop.
        if i % 2 == 1 {
            s.write_all(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        idle.push(s);
    }
    // The gate holds every one of them (not just the kernel's backlog).
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let held = eventually(Duration::from_secs(5), || async { fds() >= n }).await;
    assert!(held.is_some(), "the gate holds only {} fds", fds());

    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let r = get(&gate.url("/api/tags"), &key).await;
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200);
    }
    assert!(worst < Duration::from_secs(1), "served in {worst:?}");

    // A half-sent head is still alive and finishes normally.
    let s = &mut idle[1];
    let rest = format!(
        "X-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{CHAT}",
        CHAT.len()
    );
    s.write_all(rest.as_bytes()).await.expect("write");
    let wire = read_until_closed(s, Duration::from_secs(5)).await;
    assert_eq!(statuses(&wire), [200], "{}", String::from_utf8_lossy(&wire));

    let grown = rss_kib(pid).saturating_sub(rss_before);
    eprintln!("RSS grew by {grown} KiB with {n} idle connections");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    drop(idle);
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
}

// ---------------------------------------------------------------------------
// Hostile credentials
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_get_the_spec_401s() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    db.user("ana", PASSWORD, "admin");
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let url = gate.url("/api/tags");
    let now = epoch();
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    // The fingerprint of ana's stored password hash, as the gate puts it in its tokens.
    let stored: String = db
        .conn()
        .query_row(
            "SELECT password_hash FROM users WHERE username = 'ana'",
            [],
            |r| r.get(0),
        )
        .expect("ana");
    let fp: String = Sha256::digest(stored.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let valid = json!({"sub": "ana", "iat": now, "exp": now + 600, "ver": 0, "fp": fp});
    let secret = SECRET.as_bytes();

    // The hand-made signer is right: this token is accepted.
    let good = jwt(&hs, &valid, secret);
    assert_eq!(bearer(&url, &good).await.status, 200);
    assert_eq!(get(&url, &key).await.status, 200);

    // Random bytes, in both headers, over raw TCP (a client library would refuse them).
    let mut rng = Rng::seeded("random credentials");
    for i in 0..40 {
        let len = 1 + rng.below(300) as usize;
        let junk = rng.header_bytes(len);
        let (name, prefix): (&str, &[u8]) = if i % 2 == 0 {
            ("X-API-Key", b"")
        } else {
            ("Authorization", b"Bearer ")
        };
        let mut req = format!("GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{name}: ")
            .into_bytes();
        req.extend_from_slice(prefix);
        req.extend_from_slice(&junk);
        req.extend_from_slice(b"\r\n\r\n");
        let wire = raw(gate.addr, &req).await;
        assert_eq!(statuses(&wire), [401], "{name}: {junk:?}");
        let detail = raw_json(&wire)["detail"].clone();
        assert!(
            detail == "Invalid API key" || detail == "Invalid token",
            "{junk:?}: {detail}"
        );
    }

    let unknown = unknown_key();
    let keys = [
        ("bad checksum", bad_checksum(&key)),
        ("well-formed unknown", unknown.clone()),
        ("prefix only", "aig_".to_string()),
        ("valid plus a character", format!("{key}A")),
        ("truncated", key[..key.len() - 1].to_string()),
        ("lowercase prefix", key.replacen("aig_", "AIG_", 1)),
    ];
    for (what, k) in &keys {
        assert_refused(&get(&url, k).await, &["Invalid API key"], what);
        assert_refused(&bearer(&url, k).await, &["Invalid API key"], what);
    }

    let rs = json!({"alg": "RS256", "typ": "JWT"});
    let none = json!({"alg": "none", "typ": "JWT"});
    let unsigned = |h: &Value, c: &Value| {
        format!(
            "{}.{}.",
            B64.encode(h.to_string()),
            B64.encode(c.to_string())
        )
    };
    let with_claims = |f: &dyn Fn(&mut Value)| {
        let mut c = valid.clone();
        f(&mut c);
        c
    };
    let big_pad = |n: usize| with_claims(&|c| c["pad"] = json!("x".repeat(n)));
    let rs_fake_sig = format!(
        "{}.{}.{}",
        B64.encode(rs.to_string()),
        B64.encode(valid.to_string()),
        B64.encode([7u8; 256])
    );
    let tokens: Vec<(&str, String)> = vec![
        ("alg none", unsigned(&none, &valid)),
        (
            "alg none with a signature",
            format!(
                "{}{}",
                unsigned(&none, &valid),
                good.rsplit('.').next().unwrap_or("")
            ),
        ),
        ("alg None", unsigned(&json!({"alg": "None"}), &valid)),
        ("RS256 header, HMAC signature", jwt(&rs, &valid, secret)),
        ("RS256 header, RSA-sized signature", rs_fake_sig),
        (
            "HS384 header, HS256 signature",
            jwt(&json!({"alg": "HS384"}), &valid, secret),
        ),
        ("no alg", jwt(&json!({"typ": "JWT"}), &valid, secret)),
        (
            "string exp",
            jwt(
                &hs,
                &with_claims(&|c| c["exp"] = json!((now + 600).to_string())),
                secret,
            ),
        ),
        (
            "float exp",
            jwt(&hs, &with_claims(&|c| c["exp"] = json!(1e300)), secret),
        ),
        (
            "negative exp",
            jwt(&hs, &with_claims(&|c| c["exp"] = json!(-1)), secret),
        ),
        (
            "no exp",
            jwt(
                &hs,
                &with_claims(&|c| {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("exp");
                    }
                }),
                secret,
            ),
        ),
        (
            "future nbf",
            jwt(&hs, &with_claims(&|c| c["nbf"] = json!(now + 3600)), secret),
        ),
        (
            "sub not a string",
            jwt(&hs, &with_claims(&|c| c["sub"] = json!(1)), secret),
        ),
        (
            "another secret",
            jwt(&hs, &valid, b"another-secret-another-secret-0123456789"),
        ),
        ("empty secret", jwt(&hs, &valid, b"")),
        (
            "20 KB, correctly signed",
            jwt(&hs, &big_pad(20_000), secret),
        ),
        (
            "header not JSON",
            format!("{}.{}.x", B64.encode("{"), B64.encode("{}")),
        ),
        ("not base64", "%%%.%%%.%%%".to_string()),
    ];
    for (what, t) in &tokens {
        assert_refused(&bearer(&url, t).await, &["Invalid token"], what);
    }
    let expired = jwt(
        &hs,
        &with_claims(&|c| {
            c["iat"] = json!(now - 7200);
            c["exp"] = json!(now - 3600);
        }),
        secret,
    );
    assert_refused(&bearer(&url, &expired).await, &["Token expired"], "expired");

    // A 100 KB token or key is over the 32 KiB header limit: the spec's 431 comes first.
    let huge = jwt(&hs, &big_pad(100_000), secret);
    for r in [
        bearer(&url, &huge).await,
        get(&url, &format!("aig_{}", "A".repeat(100_000))).await,
    ] {
        assert_eq!(r.status, 431, "{}", r.text());
        assert!(!r.detail().is_empty());
    }

    // Still fine for the real ones, and the upstream saw only those.
    assert_eq!(bearer(&url, &good).await.status, 200);
    assert_eq!(get(&url, &key).await.status, 200);
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_keys_costs_no_write_each_and_bounded_memory() {
    const ATTEMPTS: usize = 10_000;
    const CONNECTIONS: usize = 8;
    let (_fake, db, key, mut gate) = setup(
        FakeOptions::default(),
        &["--no-login", "--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let pid = gate.pid();
    let url = gate.url("/api/tags");
    // Warm up: the runtime, the reader pool and the allocator have their working set.
    const WARM_UP_FAILURES: i64 = 100;
    for i in 0..200 {
        let k = if i % 2 == 0 {
            key.clone()
        } else {
            unknown_key()
        };
        get(&url, &k).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rss_before = rss_kib(pid);

    // Half well-formed but unknown (each a database lookup), a quarter with a bad
    // checksum, a quarter random junk.
    let mut rng = Rng::seeded("flood");
    let creds: Vec<String> = (0..ATTEMPTS)
        .map(|i| match i % 4 {
            0 | 2 => unknown_key(),
            1 => bad_checksum(&unknown_key()),
            _ => {
                let len = 1 + rng.below(120) as usize;
                if rng.below(2) == 0 {
                    format!("aig_{}", rng.printable(len))
                } else {
                    rng.printable(len)
                }
            }
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    // Every commit of another connection bumps `data_version`: polling it counts the
    // gate's write transactions, and the audit rows each one added.
    let watcher = {
        let stop = stop.clone();
        let path = db.path.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(path).expect("open");
            let version = |c: &rusqlite::Connection| count(c, "PRAGMA data_version");
            let audit = |c: &rusqlite::Connection| {
                count(c, "SELECT count(*) FROM audit WHERE kind = 'auth_failure'")
            };
            let mut last = version(&conn);
            let mut rows = audit(&conn);
            let (mut polls, mut commits, mut biggest) = (0u32, 0u32, 0i64);
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
                polls += 1;
                let v = version(&conn);
                if v != last {
                    last = v;
                    commits += 1;
                    let now = audit(&conn);
                    biggest = biggest.max(now - rows);
                    rows = now;
                }
            }
            (polls, commits, biggest)
        })
    };
    // A valid client keeps being served throughout.
    let prober = {
        let stop = stop.clone();
        let (url, key) = (url.clone(), key.clone());
        tokio::spawn(async move {
            let (mut n, mut worst, mut failed) = (0, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::Acquire) {
                let t = Instant::now();
                let r = get(&url, &key).await;
                worst = worst.max(t.elapsed());
                n += 1;
                if r.status != 200 {
                    failed.push(r.status);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, worst, failed)
        })
    };

    let started = Instant::now();
    let mut tasks = Vec::new();
    for part in creds.chunks(ATTEMPTS / CONNECTIONS) {
        let part = part.to_vec();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // One client per task: its requests share a keep-alive connection.
            let client = support::gate::client();
            let mut wrong = Vec::new();
            for cred in part {
                let req = Request::builder()
                    .uri(&url)
                    .header("x-api-key", &cred)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let resp = client.request(req).await.expect("flood request");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                // Junk with two dots has a JWT's shape: the spec's bad-token body.
                let spec = [
                    &br#"{"detail":"Invalid API key","error":"Invalid API key"}"#[..],
                    br#"{"detail":"Invalid token","error":"Invalid token"}"#,
                ];
                if status != 401 || !spec.contains(&body.as_ref()) {
                    wrong.push((cred, status, body));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.expect("flood task"));
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Release);
    let (probes, worst, failed) = prober.await.expect("prober");
    let (polls, commits, biggest) = watcher.join().expect("watcher");
    let rss_after = rss_kib(pid);
    eprintln!(
        "{ATTEMPTS} bad keys in {took:?}; {probes} probes (worst {worst:?}); {commits} commits \
         seen in {polls} polls (largest audit batch {biggest}); RSS {rss_before} -> {rss_after} KiB"
    );

    assert!(wrong.is_empty(), "not the spec's 401: {:?}", &wrong[..1]);
    assert!(
        probes > 0 && failed.is_empty(),
        "valid key refused: {failed:?}"
    );
    assert!(worst < Duration::from_secs(2), "valid key waited {worst:?}");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(growth < 64 * 1024, "RSS grew by {growth} KiB");
    // No write per attempt: the gate committed about once a second, each commit
    // adding at most one audit batch.
    assert!(
        polls as u64 > took.as_millis() as u64 / 40,
        "the watcher polled only {polls} times"
    );
    assert!(
        u64::from(commits) <= took.as_secs() + 3,
        "{commits} commits in {took:?}"
    );
    assert!(biggest <= AUDIT_PER_FLUSH, "one flush wrote {biggest} rows");

    // Every failure is accounted for: a row of its own (at most 10 per address and
    // minute), or in the count of its window's `suppressed` row (written at shutdown at
    // the latest), or counted as dropped.
    assert_eq!(get(&url, &key).await.status, 200);
    let dropped = metric(&gate, "aigate_audit_dropped_total").await as i64;
    gate.sigterm();
    assert_eq!(gate.wait(Duration::from_secs(15)), Some(0));
    let conn = db.conn();
    let rows = count(
        &conn,
        "SELECT count(*) FROM audit WHERE kind = 'auth_failure' AND reason != 'suppressed'",
    );
    let suppressed = count(
        &conn,
        "SELECT COALESCE(sum(CAST(substr(detail, 7) AS INTEGER)), 0) FROM audit
         WHERE reason = 'suppressed'",
    );
    assert_eq!(
        rows + suppressed + dropped,
        ATTEMPTS as i64 + WARM_UP_FAILURES,
        "{rows} rows, {suppressed} suppressed, {dropped} dropped"
    );
    // The audit keeps display prefixes only.
    let longest = count(
        &conn,
        "SELECT COALESCE(max(length(key_prefix)), 0) FROM audit",
    );
    assert!(longest <= 12, "an audit prefix of {longest} characters");
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_stream_ends_the_response_and_the_gate_lives() {
    let opts = FakeOptions {
        chunks: 20,
        chunk_delay: Duration::from_millis(200),
        ..FakeOptions::default()
    };
    // On a port that no other test can be given while this fake is down.
    let addr = FakeOllama::restartable_addr();
    let fake = FakeOllama::start_on(addr, opts.clone())
        .await
        .expect("start the fake");
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    // Pooled connections to the upstream exist, and will die with it.
    for _ in 0..3 {
        assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
    }
    let resp = open(
        Method::POST,
        &gate.url("/api/chat"),
        &[("x-api-key", &key), ("content-type", "application/json")],
        STREAM_CHAT,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));

    fake.stop().await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        rest.extend_from_slice(&d);
                    }
                }
            }
        }
    })
    .await
    .expect("the client is left hanging");
    let text = String::from_utf8_lossy(&rest);
    eprintln!("stream after the kill: {ended:?}, {} bytes", rest.len());
    // Cut short: whatever arrived, the final line did not.
    assert!(!text.contains(r#""done":true"#), "{text}");
    let logged = eventually(Duration::from_secs(2), || async {
        gate.logs().contains("ended a response early")
    })
    .await;
    assert!(logged.is_some(), "no log line: {}", gate.logs());

    assert_eq!(get(&gate.url("/healthz"), "").await.status, 200);
    let _fake = FakeOllama::start_on(addr, opts)
        .await
        .expect("restart the fake on its port");
    // The very next request succeeds: no stale pooled connection is used.
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);
    let logs = gate.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_locked_for_3s_answers_from_cache_and_never_fails_open() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (cached_id, cached) = db.key(&["--tier", "admin"]);
    let (_, uncached) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let url = gate.url("/api/tags");
    assert_eq!(get(&url, &cached).await.status, 200);

    // Another process holds the write lock for 3 s, as a forgotten `BEGIN EXCLUSIVE` in
    // a sqlite3 shell would. (In WAL mode nobody can lock readers out while the gate
    // has the file open: exclusive locking mode cannot be entered then.)
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let path = db.path.clone();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        conn.execute_batch("BEGIN EXCLUSIVE; UPDATE tiers SET updated_at = updated_at;")
            .expect("lock the database");
        let _ = locked_tx.send(Instant::now());
        std::thread::sleep(Duration::from_secs(3));
        conn.execute_batch("COMMIT").expect("commit");
        Instant::now()
    });
    let locked_at = locked_rx.await.expect("locked");
    // The lock is real: no other writer gets in.
    let probe = rusqlite::Connection::open(&db.path).expect("open");
    probe.busy_timeout(Duration::ZERO).expect("busy timeout");
    assert!(
        probe.execute_batch("BEGIN IMMEDIATE").is_err(),
        "the database is not locked"
    );
    drop(probe);

    // A CLI write started now waits for the lock, then succeeds.
    let path = db.path.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let out = Command::new(bin())
            .arg("--db")
            .arg(path)
            .args(["key", "create", "--tier", "admin", "--quiet"])
            .output()
            .expect("aigate key create");
        (out, Instant::now())
    });
    let spawn = |k: String| {
        let url = url.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = get(&url, &k).await;
            (r, t.elapsed())
        })
    };
    let uncached_task = spawn(uncached.clone());
    let unknown_task = spawn(unknown_key());
    let bad_task = spawn(bad_checksum(&uncached));
    for _ in 0..3 {
        let t = Instant::now();
        let r = get(&url, &cached).await;
        assert_eq!(r.status, 200, "cached key during the lock: {}", r.text());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let (bad, bad_took) = bad_task.await.expect("task");
    assert_eq!(bad.status, 401);
    assert!(
        bad_took < Duration::from_secs(1),
        "checksum needs no database"
    );
    let (r, took) = uncached_task.await.expect("task");
    eprintln!(
        "uncached valid key during the lock: {} in {took:?}",
        r.status
    );
    assert!(
        r.status == 200 || r.status == 503,
        "uncached valid key: {} {}",
        r.status,
        r.text()
    );
    let (r, took) = unknown_task.await.expect("task");
    eprintln!("unknown key during the lock: {} in {took:?}", r.status);
    assert!(
        r.status == 401 || r.status == 503,
        "unknown key: {} {}",
        r.status,
        r.text()
    );
    let released_at = holder.join().expect("holder");
    assert!(released_at - locked_at >= Duration::from_secs(3));
    let (out, cli_done) = cli.await.expect("cli");
    assert!(
        out.status.success(),
        "the CLI failed on a locked database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cli_done >= locked_at + Duration::from_secs(3),
        "the CLI wrote through the lock"
    );
    let fresh = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();

    // After the lock: back to normal, the CLI's key included, and the usage recorded
    // meanwhile was written, not lost.
    let works = eventually(Duration::from_secs(1), || async {
        get(&url, &fresh).await.status == 200
    })
    .await;
    assert!(
        works.is_some(),
        "the key created during the lock does not work"
    );
    assert_eq!(get(&url, &uncached).await.status, 200);
    assert_eq!(get(&url, &unknown_key()).await.status, 401);
    let conn = db.conn();
    let written = eventually(Duration::from_secs(4), || async {
        conn.query_row(
            "SELECT COALESCE(sum(requests), 0) FROM usage WHERE key_id = ?1",
            [cached_id],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 4)
    })
    .await;
    assert!(written.is_some(), "usage lost: {}", gate.logs());
    let logs = gate.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[test]
fn cli_gives_up_on_a_database_locked_past_the_busy_timeout() {
    // Locked for good against readers too (exclusive locking mode, taken while nobody
    // else has the file open): the CLI waits its busy timeout (10 s), then fails with
    // one error line, rather than hanging for as long as the lock is held.
    let db = Db::new();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let path = db.path.clone();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;
             UPDATE tiers SET updated_at = updated_at;",
        )
        .expect("lock the database");
        locked_tx.send(()).expect("send");
        let _ = release_rx.recv_timeout(Duration::from_secs(40));
        conn.execute_batch("COMMIT").expect("commit");
    });
    locked_rx.recv().expect("locked");
    let started = Instant::now();
    let out = db.cli_raw(&["key", "list", "--json"], None);
    let took = started.elapsed();
    let _ = release_tx.send(());
    holder.join().expect("holder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the CLI gave up after {took:?}: {stderr}");
    assert!(took < Duration::from_secs(20), "the CLI waited {took:?}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    assert!(stderr.contains("locked"), "{stderr}");
    // Released: the same command works.
    let listed: Vec<Value> =
        serde_json::from_str(&db.cli(&["key", "list", "--json"])).expect("json");
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_database_fails_closed() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, cached) = db.key(&["--tier", "admin"]);
    let uncached: Vec<String> = (0..6).map(|_| db.key(&["--tier", "admin"]).1).collect();
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let url = gate.url("/api/tags");
    assert_eq!(get(&url, &cached).await.status, 200);
    let mut rng = Rng::seeded("garbage");
    let files = |base: &Path| {
        ["", "-wal", "-shm"].map(|s| std::path::PathBuf::from(format!("{}{s}", base.display())))
    };
    let moved = db.dir.path().join("moved.db");

    // Each phase: unknown keys are never let in, valid uncached ones are served or
    // refused with 503 (a 401 would be wrong, as the key is valid), the gate lives.
    async fn probe(url: &str, valid: &str, phase: &str) -> Vec<u16> {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = get(url, &unknown_key()).await;
            assert!(
                r.status == 401 || r.status == 503,
                "{phase}: unknown key got {} {}",
                r.status,
                r.text()
            );
            seen.push(r.status.as_u16());
        }
        let r = get(url, valid).await;
        assert!(
            r.status == 200 || r.status == 503,
            "{phase}: valid key got {} {}",
            r.status,
            r.text()
        );
        seen.push(r.status.as_u16());
        if r.status == 503 {
            assert_eq!(r.detail(), "Credential store unavailable");
        }
        seen
    }

    // 1. The files are renamed away: open connections still see the old file.
    for (from, to) in files(&db.path).iter().zip(files(&moved).iter()) {
        if from.exists() {
            std::fs::rename(from, to).expect("rename");
        }
    }
    let a = probe(&url, &uncached[0], "renamed away").await;
    // 2. Garbage where the database was: a new connection cannot read it.
    std::fs::write(&db.path, rng.header_bytes(64 * 1024)).expect("garbage");
    let b = probe(&url, &uncached[1], "garbage at the path").await;
    // 3. The file the gate has open is overwritten in place, WAL index included.
    for f in files(&moved) {
        if let Ok(meta) = std::fs::metadata(&f) {
            let len = meta.len().max(4096) as usize;
            std::fs::write(&f, rng.header_bytes(len)).expect("overwrite");
        }
    }
    // The database thread is the first to read it (no request meanwhile): it finds the
    // file unreadable, and from then on every credential, cached or not, fails closed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = probe(&url, &uncached[2], "overwritten in place").await;
    let cached_now = get(&url, &cached).await;
    eprintln!(
        "renamed {a:?}, garbage {b:?}, overwritten {c:?}, cached key {}",
        cached_now.status
    );
    assert_eq!(c, [503; 4], "an unreadable database still answers");
    assert_eq!(cached_now.status, 503, "{}", cached_now.text());
    let logs = gate.logs();
    assert!(
        logs.contains("cannot read the database"),
        "nothing logged: {logs}"
    );
    assert_eq!(get(&gate.url("/healthz"), "").await.status, 200);
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_usage_flush_is_logged_kept_and_written_later() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (id, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let chat = gate.url("/api/chat");
    assert_eq!(post(&chat, &key, CHAT).await.status, 200);
    let conn = db.conn();
    let usage_rows = |c: &rusqlite::Connection| {
        c.query_row(
            "SELECT COALESCE(sum(requests), 0), COALESCE(sum(prompt_tokens), 0),
                    COALESCE(sum(completion_tokens), 0) FROM usage WHERE key_id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
    };
    let flushed = eventually(Duration::from_secs(3), || async {
        usage_rows(&conn).is_ok_and(|u| u.0 == 1)
    })
    .await;
    assert!(flushed.is_some(), "first request not flushed");

    // The table goes away under the gate: its flushes fail.
    conn.execute_batch("DROP TABLE usage").expect("drop usage");
    for _ in 0..3 {
        let r = post(&chat, &key, CHAT).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let logged = eventually(Duration::from_secs(4), || async {
        gate.logs().contains("writing usage failed")
    })
    .await;
    assert!(logged.is_some(), "no error logged: {}", gate.logs());
    assert_eq!(get(&gate.url("/api/tags"), &key).await.status, 200);

    // Back again: what was kept is written, once.
    let ddl = aigate::store::SCHEMA
        .split_once("CREATE TABLE usage")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(body, _)| format!("CREATE TABLE usage{body};"))
        .expect("usage DDL in schema.sql");
    conn.execute_batch(&ddl).expect("recreate usage");
    let written = eventually(Duration::from_secs(4), || async {
        usage_rows(&conn).is_ok_and(|u| u.0 >= 3)
    })
    .await;
    assert!(written.is_some(), "kept usage not written: {}", gate.logs());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Three chats (the fake answers 26 prompt and 42 completion tokens each) and the
    // `/api/tags` call, none counted twice.
    assert_eq!(usage_rows(&conn).expect("usage"), (4, 3 * 26, 3 * 42));
    assert_eq!(get(&gate.url("/healthz"), "").await.status, 200);
}

#[test]
fn kill_9_of_the_cli_mid_write_leaves_no_half_made_key() {
    const ATTEMPTS: usize = 1000;
    const WORKERS: usize = 4;
    let db = Db::new();
    // A long-lived connection, as `serve` would hold: the WAL stays in use.
    let holder = db.conn();
    let started = Instant::now();
    let results: Vec<(usize, usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let path = db.path.clone();
                s.spawn(move || {
                    let mut rng = Rng::seeded(&format!("kill -9 worker {w}"));
                    let (mut ok, mut killed, mut failed) = (0, 0, Vec::new());
                    for _ in 0..ATTEMPTS / WORKERS {
                        let mut child = Command::new(bin())
                            .arg("--db")
                            .arg(&path)
                            .args(["key", "create", "--quiet"])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::piped())
                            .spawn()
                            .expect("spawn");
                        if rng.below(2) == 0 {
                            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
                            let _ = child.kill();
                        }
                        let out = child.wait_with_output().expect("wait");
                        if out.status.signal() == Some(9) {
                            killed += 1;
                        } else if out.status.success() {
                            ok += 1;
                        } else {
                            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
                        }
                    }
                    (ok, killed, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let killed: usize = results.iter().map(|r| r.1).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.2).collect();
    eprintln!(
        "{ATTEMPTS} creates in {:?}: {ok} finished, {killed} killed, {} failed",
        started.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "CLI failures: {failed:?}");
    assert!(killed >= ATTEMPTS / 20, "only {killed} kills landed");

    drop(holder);
    let conn = db.conn();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let rows = count(&conn, "SELECT count(*) FROM api_keys");
    let incomplete = count(
        &conn,
        "SELECT count(*) FROM api_keys WHERE key_hash IS NULL OR length(key_hash) != 64
            OR key_hash GLOB '*[^0-9a-f]*' OR prefix IS NULL OR prefix NOT LIKE 'aig\\_%' ESCAPE '\\'
            OR length(prefix) != 12 OR created_at IS NULL OR created_at <= 0 OR tier IS NULL",
    );
    let audited = count(
        &conn,
        "SELECT count(*) FROM audit WHERE kind = 'key_create'",
    );
    eprintln!("{rows} keys, {audited} key_create audit rows");
    assert_eq!(incomplete, 0, "half-made key rows");
    assert_eq!(rows, audited, "a key without its audit row, or the reverse");
    assert!(
        rows as usize >= ok && rows as usize <= ATTEMPTS,
        "{rows} rows"
    );
    let listed: Vec<Value> =
        serde_json::from_str(&db.cli(&["key", "list", "--all", "--json"])).expect("json");
    assert_eq!(listed.len() as i64, rows);
}

// ---------------------------------------------------------------------------
// Load, then secrets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_cli_churn_then_no_secret_anywhere() {
    const CYCLES: usize = 10;
    const MAX_REQUESTS: usize = 3000;
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Arc::new(Db::new());
    db.user("ana", PASSWORD, "admin");
    let hammer_keys: Vec<String> = (0..3).map(|_| db.key(&["--tier", "admin"]).1).collect();
    let mut gate = Gate::start(&db.path, &fake.url(), &[]);
    let login = send(
        Method::POST,
        &gate.url("/auth/login"),
        &[("content-type", "application/json")],
        &json!({"username": "ana", "password": PASSWORD}).to_string(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut secrets: Vec<String> = hammer_keys.clone();
    secrets.extend([token.clone(), PASSWORD.to_string(), SECRET.to_string()]);
    let mut error_bodies: Vec<Bytes> = Vec::new();

    // 4 clients: three keys and a JWT, as fast as they go.
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    let creds: Vec<String> = hammer_keys.iter().cloned().chain([token.clone()]).collect();
    for cred in creds {
        let stop = stop.clone();
        let (tags, chat) = (gate.url("/api/tags"), gate.url("/api/chat"));
        hammers.push(tokio::spawn(async move {
            let (mut n, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Acquire) && n < MAX_REQUESTS {
                let r = if n % 2 == 0 {
                    bearer(&tags, &cred).await
                } else {
                    post(&chat, &cred, CHAT).await
                };
                if r.status != 200 {
                    failed.push((r.status, r.body));
                }
                n += 1;
            }
            (n, failed)
        }));
    }

    // Meanwhile the CLI creates a key, sees it work, revokes it, and times the refusal.
    let mut cli_failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let tags = gate.url("/api/tags");
    for i in 0..CYCLES {
        let d = db.clone();
        let out = tokio::task::spawn_blocking(move || {
            d.cli_raw(&["key", "create", "--tier", "admin", "--json"], None)
        })
        .await
        .expect("cli");
        if !out.status.success() {
            cli_failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        let (id, k) = (
            v["id"].as_i64().expect("id"),
            v["key"].as_str().expect("key").to_string(),
        );
        secrets.push(k.clone());
        let works = eventually(Duration::from_secs(2), || async {
            get(&tags, &k).await.status == 200
        })
        .await;
        assert!(works.is_some(), "cycle {i}: a new key does not work");
        let d = db.clone();
        let out = tokio::task::spawn_blocking(move || {
            d.cli_raw(&["key", "revoke", &id.to_string(), "--yes"], None)
        })
        .await
        .expect("cli");
        let revoked_at = Instant::now();
        if !out.status.success() {
            cli_failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            continue;
        }
        loop {
            let r = get(&tags, &k).await;
            if r.status == 401 {
                assert_eq!(r.detail(), "Invalid API key");
                error_bodies.push(r.body);
                break;
            }
            assert_eq!(r.status, 200, "cycle {i}: {}", r.text());
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "cycle {i}: a revoked key still works after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest = slowest.max(revoked_at.elapsed());
    }
    stop.store(true, Ordering::Release);
    let mut served = 0;
    for h in hammers {
        let (n, failed) = h.await.expect("hammer");
        served += n;
        assert!(
            failed.is_empty(),
            "{} of {n} valid requests failed: {:?}",
            failed.len(),
            &failed[..1]
        );
    }
    eprintln!("{served} requests served; slowest revocation {slowest:?}");
    assert!(cli_failures.is_empty(), "CLI failures: {cli_failures:?}");
    assert!(served >= 4 * CYCLES, "the clients barely ran: {served}");

    // Failures of every kind, for the log, the audit and error bodies.
    let unknown = unknown_key();
    secrets.push(unknown.clone());
    let tampered = format!("{}x", &token[..token.len() - 1]);
    secrets.push(tampered.clone());
    let wrong_password = "wrong horse battery staple";
    secrets.push(wrong_password.to_string());
    for r in [
        get(&tags, &unknown).await,
        get(&tags, &bad_checksum(&hammer_keys[0])).await,
        bearer(&tags, &unknown).await,
        bearer(&tags, &tampered).await,
        send(
            Method::POST,
            &gate.url("/auth/login"),
            &[("content-type", "application/json")],
            &json!({"username": "ana", "password": wrong_password}).to_string(),
        )
        .await,
        send(
            Method::POST,
            &gate.url("/auth/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("username=ana&password={PASSWORD}x"),
        )
        .await,
        send(
            Method::POST,
            &gate.url("/admin/keys"),
            &[("x-api-key", &unknown)],
            "{}",
        )
        .await,
    ] {
        assert!(r.status.is_client_error(), "{} {}", r.status, r.text());
        error_bodies.push(r.body);
    }

    // Stop the gate so that everything is flushed, then look everywhere.
    gate.sigterm();
    assert!(
        gate.wait(Duration::from_secs(10)).is_some(),
        "gate did not stop"
    );
    let logs = gate.logs();
    assert!(logs.contains("auth_failure"), "{logs}");
    let mut places: Vec<(String, Vec<u8>)> = vec![("the gate's log".into(), logs.into_bytes())];
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", db.path.display());
        if let Ok(bytes) = std::fs::read(&p) {
            places.push((p, bytes));
        }
    }
    assert!(places.len() >= 2, "no database file to scan");
    for (i, b) in error_bodies.iter().enumerate() {
        places.push((format!("error body {i}"), b.to_vec()));
    }
    for (place, bytes) in &places {
        for s in &secrets {
            assert!(
                !contains(bytes, s.as_bytes()),
                "a secret ({}…) is in {place}",
                &s[..6.min(s.len())]
            );
        }
    }
}
