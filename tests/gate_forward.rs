//! The gate's forwarding and operations, end to end against the real binary: streaming,
//! byte-exact paths, header hygiene, upstream failures and timeouts, request limits,
//! slowloris, bad paths, graceful shutdown, TLS, CORS and the start line.
mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use support::fake_ollama::{FakeOllama, FakeOptions};
use support::gate::{Db, Gate, Reply, eventually, get, open, post, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CHAT: &str = r#"{"model":"llama3.2:latest","messages":[{"role":"user","content":"hi"}]}"#;
const SSE_CHAT: &str =
    r#"{"model":"llama3.2:latest","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A fake with `chunk_delay` between chunks (5 chunks), a database with an admin key,
/// and a gate in front of the fake started with `args` (plus `--no-login`).
async fn setup(chunk_delay: Duration, args: &[&str]) -> (FakeOllama, Db, String, Gate) {
    let fake = FakeOllama::start(FakeOptions {
        chunk_delay,
        ..FakeOptions::default()
    })
    .await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let mut all = vec!["--no-login"];
    all.extend_from_slice(args);
    let gate = Gate::start(&db.path, &fake.url(), &all);
    (fake, db, key, gate)
}

/// Reads one frame of data from a streaming response; `None` at the end.
async fn next_data(body: &mut hyper::body::Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(f) => match f.into_data() {
                Ok(d) => return Some(Ok(d)),
                Err(_) => continue,
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP helpers, for what a client library would not send
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` verbatim (it should say `Connection: close`) and reads the response.
async fn raw(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no complete response within 10 s"),
        }
    }
    parse_raw(&buf)
}

fn parse_raw(buf: &[u8]) -> RawReply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let rest = &buf[end + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawReply { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// A body of several frames with no declared size, so hyper sends it chunked.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// An HTTP/1 connection over `io`, its driver spawned.
async fn handshake<I, B>(io: I) -> http1::SendRequest<B>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends `req` on `sender` and reads the whole response.
async fn roundtrip<B>(sender: &mut http1::SendRequest<B>, req: Request<B>) -> Reply
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    sender.ready().await.expect("connection ready");
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

// ---------------------------------------------------------------------------
// Scripted upstreams
// ---------------------------------------------------------------------------

/// A raw upstream on 127.0.0.1:0: on each connection it reads the request head, then
/// writes each part after its delay and keeps the socket open. Aborted on drop.
struct Scripted {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Scripted {
    /// Writes `parts` (`None`: close the socket at once after reading the head).
    async fn start(parts: Option<Vec<(Duration, Vec<u8>)>>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let parts = parts.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let Some(parts) = parts else { return };
                    for (delay, bytes) in parts {
                        tokio::time::sleep(delay).await;
                        if s.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
        });
        Scripted { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chunk of a chunked body.
fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ndjson_streams_chunk_by_chunk() {
    let (fake, _db, key, gate) = setup(Duration::from_millis(200), &[]).await;
    let auth = format!("Bearer {key}");
    let resp = open(
        Method::POST,
        &gate.url("/api/chat"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        CHAT,
    )
    .await;
    let head_at = Instant::now();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let first = next_data(&mut body)
        .await
        .expect("a first frame")
        .expect("frame");
    let first_after = head_at.elapsed();
    assert!(
        first_after < Duration::from_millis(150),
        "first line took {first_after:?}"
    );
    let line = std::str::from_utf8(&first).expect("utf-8");
    let line = line.lines().next().expect("a line");
    let v: serde_json::Value = serde_json::from_str(line).expect("first line is JSON");
    assert_eq!(v["done"], false);
    let mut all = first.to_vec();
    while let Some(d) = next_data(&mut body).await {
        all.extend_from_slice(&d.expect("frame"));
    }
    let total = head_at.elapsed();
    assert!(
        total > Duration::from_millis(800),
        "whole stream in {total:?}"
    );
    let text = String::from_utf8(all).expect("utf-8");
    assert_eq!(text.lines().count(), 6, "{text}");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("last")).expect("json");
    assert_eq!(last["done"], true);
    assert_eq!(fake.completed(), 1);
}

#[tokio::test]
async fn openai_sse_streams_chunk_by_chunk() {
    let (_fake, _db, key, gate) = setup(Duration::from_millis(200), &[]).await;
    let auth = format!("Bearer {key}");
    let resp = open(
        Method::POST,
        &gate.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        SSE_CHAT,
    )
    .await;
    let head_at = Instant::now();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = next_data(&mut body)
        .await
        .expect("a first frame")
        .expect("frame");
    let first_after = head_at.elapsed();
    assert!(
        first_after < Duration::from_millis(150),
        "first event took {first_after:?}"
    );
    assert!(first.starts_with(b"data: {"), "{first:?}");
    assert!(first.ends_with(b"\n\n"), "{first:?}");
    let mut all = first.to_vec();
    while let Some(d) = next_data(&mut body).await {
        all.extend_from_slice(&d.expect("frame"));
    }
    let total = head_at.elapsed();
    assert!(
        total > Duration::from_millis(800),
        "whole stream in {total:?}"
    );
    let text = String::from_utf8(all).expect("utf-8");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 7, "{text}");
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let (_fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    // Non-2xx from Ollama's native API and from the OpenAI one.
    let r = post(
        &gate.url("/api/chat"),
        &key,
        r#"{"model":"nope","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":"model \"nope\" not found, try pulling it first"}"#
    );
    assert!(
        r.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    let r = post(
        &gate.url("/v1/chat/completions"),
        &key,
        r#"{"model":"nope","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        r#"model "nope" not found, try pulling it first"#
    );

    // An in-band error line in a 200 stream, as Ollama sends when a model fails mid-way;
    // the upstream's hop-by-hop response headers do not reach the client.
    let ok_line =
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n";
    let err_line = "{\"error\":\"an error was encountered while running the model\"}\n";
    let mut script = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
        Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Up-Private\r\n\
        X-Up-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Up-Public: 2\r\n\r\n"
        .to_vec();
    script.extend(chunk(ok_line));
    script.extend(chunk(err_line));
    script.extend(b"0\r\n\r\n");
    let up = Scripted::start(Some(vec![(Duration::ZERO, script)])).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &up.url(), &["--no-login"]);
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("{ok_line}{err_line}"));
    assert_eq!(r.headers["x-up-public"], "2");
    assert!(r.headers.get("x-up-private").is_none(), "{:?}", r.headers);
    assert!(r.headers.get("keep-alive").is_none(), "{:?}", r.headers);
}

// ---------------------------------------------------------------------------
// What reaches the upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn path_and_query_are_forwarded_byte_exact() {
    let (fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    for pq in [
        "/api/tags?x=%20a&y=1",
        "/echo?b=2&a=1&a=%3D&sp=%20+&e=&%7e=%7E",
        "/v1/models/llama3.2%3Alatest?q=a%2Fb",
        "/api/show?",
    ] {
        let before = fake.requests().len();
        let r = get(&gate.url(pq), &key).await;
        assert_ne!(r.status, 403, "{pq}: Host refused by the upstream");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), before + 1, "{pq}");
        assert_eq!(reqs[before].path_and_query, pq);
        // Origin form, as a client sends to a server (absolute form is for proxies).
        assert_eq!(reqs[before].target, pq);
    }
    let r = get(&gate.url("/echo?x=%20a&y=1"), &key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path_and_query"], "/echo?x=%20a&y=1");
}

#[tokio::test]
async fn headers_are_cleaned_and_host_rewritten() {
    let (fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    let r = send(
        Method::POST,
        &gate.url("/echo"),
        &[
            ("host", "evil.example"),
            ("x-api-key", &key),
            ("connection", "keep-alive, X-Drop-Me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "gopher"),
            ("forwarded", "for=6.6.6.6"),
            ("x-keep-me", "yes"),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    // The fake answers 403 to a foreign Host: 200 proves the gate set its own.
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    let fake_authority = fake.url().trim_start_matches("http://").to_string();
    assert_eq!(h["host"], fake_authority.as_str());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-keep-me"], "yes");
    assert_eq!(h["content-type"], "application/json");
    for gone in [
        "x-api-key",
        "authorization",
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    if let Some(c) = h.get("connection") {
        assert!(!c.to_string().to_ascii_lowercase().contains("x-drop-me"));
    }

    // A bearer credential is stripped too.
    let r = post(&gate.url("/echo"), &key, "{}").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("authorization").is_none());
    // And nothing recorded by the fake carries the key.
    for rec in fake.requests() {
        for (n, v) in &rec.headers {
            assert!(!v.contains(&key), "key leaked upstream in {n}");
        }
    }
}

// ---------------------------------------------------------------------------
// Client disconnects
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (fake, _db, key, gate) = setup(Duration::from_millis(200), &[]).await;
    let mut s = TcpStream::connect(gate.addr).await.expect("connect");
    let req = format!(
        "POST /api/chat HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{CHAT}",
        gate.addr,
        CHAT.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("first chunk in time")
            .expect("read");
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&b[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let took = eventually(Duration::from_secs(1), || async { fake.cancelled() == 1 }).await;
    assert!(
        took.is_some(),
        "upstream stream still running 1 s after the client left"
    );
    assert_eq!(fake.completed(), 0);
}

// ---------------------------------------------------------------------------
// Upstream failures and timeouts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_down_then_up_without_restart() {
    // A port no other test's bind to port 0 can take while nothing listens on it.
    let addr = FakeOllama::restartable_addr();
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &format!("http://{addr}"), &["--no-login"]);
    // The start says so, once, before any request.
    let said = support::gate::eventually(Duration::from_secs(2), || async {
        gate.logs().contains(&format!(
            "host {addr} (http://{addr}) did not answer its first probe"
        ))
    })
    .await;
    assert!(said.is_some(), "{}", gate.logs());
    let r = get(&gate.url("/api/tags"), &key).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"detail":"Upstream unavailable","error":"Upstream unavailable"})
    );
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.detail(), "Upstream unavailable");

    let _fake = FakeOllama::start_on(addr, FakeOptions::default())
        .await
        .expect("start the fake on the freed port");
    // The host is down until a probe answers (every 2 s): no request pays for trying.
    let back = support::gate::eventually(Duration::from_secs(5), || async {
        get(&gate.url("/api/tags"), &key).await.status == 200
    })
    .await;
    assert!(back.is_some(), "{}", gate.logs());
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().lines().count(), 6);
}

#[tokio::test]
async fn upstream_that_resets_is_unavailable() {
    let up = Scripted::start(None).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &up.url(), &["--no-login"]);
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"detail":"Upstream unavailable","error":"Upstream unavailable"})
    );
}

#[tokio::test]
async fn silent_upstream_times_out() {
    let up = Scripted::start(Some(Vec::new())).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(
        &db.path,
        &up.url(),
        &["--no-login", "--response-timeout", "1s"],
    );
    let started = Instant::now();
    let r = post(&gate.url("/api/chat"), &key, CHAT).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(
        r.json(),
        serde_json::json!({"detail":"Upstream timeout","error":"Upstream timeout"})
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "504 after {took:?}"
    );
}

#[tokio::test]
async fn idle_upstream_ends_the_response() {
    let first =
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n";
    let mut script = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    script.extend(chunk(first));
    let up = Scripted::start(Some(vec![(Duration::ZERO, script)])).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let gate = Gate::start(&db.path, &up.url(), &["--no-login", "--idle-timeout", "1s"]);
    let auth = format!("Bearer {key}");
    let resp = open(
        Method::POST,
        &gate.url("/api/chat"),
        &[("authorization", &auth)],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let got = next_data(&mut body).await.expect("first").expect("frame");
    assert_eq!(got, first.as_bytes());
    let started = Instant::now();
    // After the silence: one error record in the stream's own framing, then the end.
    let record = tokio::time::timeout(Duration::from_secs(5), next_data(&mut body))
        .await
        .expect("the response ends after the idle timeout");
    let took = started.elapsed();
    let record = record.expect("an error record").expect("frame");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("a JSON line");
    assert!(
        record["error"]
            .as_str()
            .is_some_and(|e| e.contains("sent nothing for 1s")),
        "{record}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), next_data(&mut body))
        .await
        .expect("the end");
    assert!(end.is_none(), "nothing after the error record");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "ended after {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Request limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let (fake, _db, key, gate) = setup(Duration::ZERO, &["--max-body", "1K"]).await;
    let big = format!(
        r#"{{"model":"llama3.2:latest","prompt":"{}"}}"#,
        "a".repeat(2000)
    );
    // With Content-Length.
    let r = post(&gate.url("/api/generate"), &key, &big).await;
    assert_eq!(r.status, 413);
    assert!(!r.detail().is_empty(), "{}", r.text());
    // Chunked: no length declared.
    let stream = TcpStream::connect(gate.addr).await.expect("connect");
    let mut sender = handshake::<_, Chunked>(stream).await;
    let frames: VecDeque<Bytes> = big
        .as_bytes()
        .chunks(300)
        .map(Bytes::copy_from_slice)
        .collect();
    let req = Request::post("/api/generate")
        .header("host", gate.addr.to_string())
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(Chunked(frames))
        .expect("request");
    let r = roundtrip(&mut sender, req).await;
    assert_eq!(r.status, 413);
    assert!(!r.detail().is_empty(), "{}", r.text());
    // Neither reached the upstream; a body under the limit does, chunked or not.
    assert!(fake.requests().is_empty());
    let small = r#"{"model":"llama3.2:latest","prompt":"hi","stream":false}"#;
    let r = post(&gate.url("/api/generate"), &key, small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stream = TcpStream::connect(gate.addr).await.expect("connect");
    let mut sender = handshake::<_, Chunked>(stream).await;
    let req = Request::post("/api/generate")
        .header("host", gate.addr.to_string())
        .header("x-api-key", &key)
        .body(Chunked(
            [&small[..10], &small[10..]]
                .into_iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        ))
        .expect("request");
    let r = roundtrip(&mut sender, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        fake.requests().last().expect("recorded").body,
        small.as_bytes()
    );
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    let big = "a".repeat(60 * 1024);
    let r = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("x-api-key", &key), ("x-big", &big)],
        "",
    )
    .await;
    assert_eq!(r.status, 431);
    assert!(!r.detail().is_empty(), "{}", r.text());

    let names: Vec<String> = (0..200).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    headers.push(("x-api-key", &key));
    let r = send(Method::GET, &gate.url("/api/tags"), &headers, "").await;
    assert_eq!(r.status, 431);
    assert!(!r.detail().is_empty(), "{}", r.text());
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_head_is_dropped() {
    let (_fake, _db, _key, gate) = setup(Duration::ZERO, &["--header-timeout", "2s"]).await;
    let s = TcpStream::connect(gate.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Meanwhile the gate serves others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get(&gate.url("/healthz"), "").await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));

    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    writer.abort();
    assert!(closed.is_ok(), "the slow connection is still open");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "the slow request was served: {}",
        String::from_utf8_lossy(&got)
    );
}

// ---------------------------------------------------------------------------
// Paths a client library would normalise
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ambiguous_paths_are_400() {
    let (fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    for (method, path) in [
        ("GET", "//admin/keys"),
        ("GET", "/api/../admin/keys"),
        ("POST", "/api/%2e%2e/pull"),
        ("POST", "/api/%2E%2E/pull"),
        ("GET", "/api/./tags"),
    ] {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            gate.addr
        );
        let r = raw(gate.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.head);
        assert!(
            r.json()["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}"
        );
    }
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_stream_finish_and_refuses_new_connections() {
    let (fake, _db, key, mut gate) = setup(Duration::from_millis(300), &[]).await;
    let auth = format!("Bearer {key}");
    let resp = open(
        Method::POST,
        &gate.url("/api/chat"),
        &[("authorization", &auth)],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut all = next_data(&mut body)
        .await
        .expect("first")
        .expect("frame")
        .to_vec();

    gate.sigterm();
    let addr = gate.addr;
    let refused = eventually(Duration::from_secs(1), || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused.is_some(), "new connections still accepted");

    while let Some(d) = next_data(&mut body).await {
        all.extend_from_slice(&d.expect("the stream is not cut"));
    }
    let text = String::from_utf8(all).expect("utf-8");
    assert_eq!(text.lines().count(), 6, "{text}");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("last")).expect("json");
    assert_eq!(last["done"], true);
    assert_eq!(fake.completed(), 1);
    assert_eq!(fake.cancelled(), 0);
    let code = tokio::task::block_in_place(|| gate.wait(Duration::from_secs(10)));
    assert_eq!(code, Some(0), "{}", gate.logs());
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn https_round_trip() {
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let (_, key) = db.key(&["--tier", "admin"]);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert_path = db.dir.path().join("cert.pem");
    let key_path = db.dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).expect("write key");
    let gate = Gate::start(
        &db.path,
        &fake.url(),
        &[
            "--no-login",
            "--tls-cert",
            cert_path.to_str().expect("utf-8 path"),
            "--tls-key",
            key_path.to_str().expect("utf-8 path"),
        ],
    );
    let line = start_line(&gate);
    assert!(line.contains("https://"), "{line}");
    assert!(line.contains("tls=on"), "{line}");

    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));

    for name in ["localhost", "127.0.0.1"] {
        let tcp = TcpStream::connect(gate.addr).await.expect("connect");
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let tls = connector
            .connect(server_name, tcp)
            .await
            .expect("TLS handshake");
        let mut sender = handshake::<_, Full<Bytes>>(tls).await;
        let host = format!("{name}:{}", gate.addr.port());
        let req = Request::get("/api/tags")
            .header("host", &host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let r = roundtrip(&mut sender, req).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.detail(), "Not authenticated");
        // Same connection, with a key.
        let req = Request::get("/api/tags")
            .header("host", &host)
            .header("x-api-key", &key)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let r = roundtrip(&mut sender, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["models"].is_array());
    }
    let last = fake.requests().pop().expect("recorded");
    assert_eq!(last.header("x-forwarded-proto"), Some("https"));

    // Plain HTTP to the TLS port gets no answer in the clear.
    let mut s = TcpStream::connect(gate.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(!b[..n].starts_with(b"HTTP/1.1 200"));
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

/// The gate's start line (the harness hands it over before storing it in the logs).
fn start_line(gate: &Gate) -> String {
    let started = Instant::now();
    loop {
        let logs = gate.logs();
        if let Some(l) = logs.lines().find(|l| l.contains(" listening on ")) {
            return l.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no start line: {logs}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn has_cors(r: &Reply) -> bool {
    r.headers
        .keys()
        .any(|k| k.as_str().starts_with("access-control-"))
}

#[tokio::test]
async fn no_cors_without_an_origin_configured() {
    let (_fake, _db, key, gate) = setup(Duration::ZERO, &[]).await;
    let r = send(
        Method::OPTIONS,
        &gate.url("/api/chat"),
        &[
            ("origin", "http://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.detail(), "Not authenticated");
    assert!(!has_cors(&r), "{:?}", r.headers);
    let r = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("origin", "http://app.example"), ("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!has_cors(&r), "{:?}", r.headers);
}

#[tokio::test]
async fn cors_for_the_configured_origin_only() {
    let (fake, _db, key, gate) =
        setup(Duration::ZERO, &["--cors-origin", "http://app.example"]).await;
    let preflight = |origin: &'static str| {
        let url = gate.url("/api/chat");
        async move {
            send(
                Method::OPTIONS,
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
                "",
            )
            .await
        }
    };
    let r = preflight("http://app.example").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://app.example"
    );
    let methods = r.headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii");
    assert!(methods.contains("POST"), "{methods}");
    let allowed = r.headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    let r = preflight("http://evil.example").await;
    assert_ne!(r.status, 204);
    assert!(!has_cors(&r), "{:?}", r.headers);

    let r = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("origin", "http://app.example"), ("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://app.example"
    );
    let r = send(
        Method::GET,
        &gate.url("/api/tags"),
        &[("origin", "http://evil.example"), ("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!has_cors(&r), "{:?}", r.headers);
    // Preflights never reach the upstream.
    assert!(fake.requests().iter().all(|r| r.method != "OPTIONS"));
}

// ---------------------------------------------------------------------------
// The start line
// ---------------------------------------------------------------------------

#[tokio::test]
async fn start_line_states_the_starting_state() {
    let fake = FakeOllama::start(FakeOptions::default()).await;
    let db = Db::new();
    let gate = Gate::start(&db.path, &fake.url(), &["--no-login"]);
    let line = start_line(&gate);
    assert!(
        line.contains(&format!("aigate {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(&db.path.display().to_string()), "{line}");
    assert!(line.contains(&format!("http://{}", gate.addr)), "{line}");
    assert!(line.contains(&fake.url()), "{line}");
    assert!(line.contains("tls=off"), "{line}");
    assert!(line.contains("login=off"), "{line}");
    drop(gate);

    // With the JWT secret in the environment, login is on.
    let gate = Gate::start(&db.path, &fake.url(), &[]);
    let line = start_line(&gate);
    assert!(line.contains("login=on"), "{line}");
    assert!(line.contains("tls=off"), "{line}");
}
