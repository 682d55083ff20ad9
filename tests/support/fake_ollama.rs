//! A fake Ollama server (Ollama's NDJSON, OpenAI SSE and JSON wire formats) for the gate's
//! integration tests, the benchmark and the README walkthrough.
//!
//! It records every request, streams responses frame by frame through a channel-backed
//! body (never collected), counts streams that completed or whose client went away, and
//! answers 403 to a foreign `Host` like Ollama does on loopback. `stop()` aborts every
//! live connection so the same port can be bound again with [`FakeOllama::start_on`].
//!
//! It can also stand in for a GPU host (all of it off by default): a number of slots
//! with Ollama's first-come queue behind them and its 503 when that is full, models
//! that must be loaded (taking `load_time`, evicting the least recently used one at
//! `max_loaded`), generation paced in tokens per second and bounded by the request's
//! `num_predict` / `max_tokens`, `/api/ps`, and counters at `GET /fake/stats`.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// The body type of every response: a full body or a channel-backed stream.
type RespBody = BoxBody<Bytes, Infallible>;

/// Timestamp used in every `created_at` / `modified_at` field.
const CREATED_AT: &str = "2024-01-01T00:00:00Z";
/// Digest reported by `/api/tags` for every model.
const DIGEST: &str = "6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa";
/// Pause between the two halves of a split line, so they leave as separate writes.
const SPLIT_PAUSE: Duration = Duration::from_millis(5);
/// Length of each fake embedding vector.
const EMBEDDING_DIMS: usize = 8;
/// Ollama's answer when its queue is full (`ErrMaxQueue` in its scheduler), with its two spaces.
pub const BUSY: &str = "server busy, please try again.  maximum pending requests exceeded";
/// The context length a model is loaded with when the request sets no `options.num_ctx`.
const DEFAULT_NUM_CTX: i64 = 4096;
/// `expires_at` reported by `/api/ps`: loaded models never expire in the fake.
const EXPIRES_AT: &str = "2099-01-01T00:00:00Z";

/// How the fake behaves; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Content chunks per streamed response before the final one.
    pub chunks: usize,
    /// Delay before each chunk after the first (content chunks and the final `done` chunk).
    pub chunk_delay: Duration,
    /// Delay before the first chunk; the response head leaves with the first chunk, as
    /// with Ollama while it loads a model.
    pub first_chunk_delay: Duration,
    /// `prompt_eval_count` / `prompt_tokens` reported.
    pub prompt_tokens: u64,
    /// `eval_count` / `completion_tokens` reported.
    pub completion_tokens: u64,
    /// Models known to the fake (`/api/tags`, `/v1/models`, and the model check) unless
    /// `installed` is set.
    pub models: Vec<String>,
    /// Write each NDJSON/SSE line as two body frames split in the middle of the line; the
    /// line carrying the token counts is split inside the completion-token number.
    pub split_mid_line: bool,
    /// Answer 403 when `Host` is not `127.0.0.1:PORT` or `localhost:PORT`.
    pub check_host: bool,
    /// Requests that generate at once (Ollama's `OLLAMA_NUM_PARALLEL`, counted here for
    /// the whole host); the others wait in arrival order with no byte sent. `Some(0)`
    /// counts as 1. `None`: no limit.
    pub slots: Option<usize>,
    /// Requests that may wait for a slot (Ollama's `OLLAMA_MAX_QUEUE`): one beyond
    /// `slots + max_queue` is answered 503 [`BUSY`] at once. `None`: no limit.
    pub max_queue: Option<usize>,
    /// Models installed on the host (listed, and the only ones that can be loaded; any
    /// other answers 404). `None`: `models`.
    pub installed: Option<Vec<String>>,
    /// Models loaded at once (Ollama's `OLLAMA_MAX_LOADED_MODELS`): loading one more
    /// first unloads the least recently used idle one, and waits while all are busy.
    /// `Some(0)` counts as 1. `None`: no limit.
    pub max_loaded: Option<usize>,
    /// How long loading a model takes, before its first token.
    pub load_time: Duration,
    /// Pace of generation, one token per content chunk, instead of `chunk_delay` (the
    /// final chunk then follows the last token at once); the reported completion count
    /// is then the number of tokens generated rather than `completion_tokens`.
    pub tokens_per_second: Option<f64>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            chunks: 5,
            chunk_delay: Duration::ZERO,
            first_chunk_delay: Duration::ZERO,
            prompt_tokens: 26,
            completion_tokens: 42,
            models: vec![
                "llama3.2:latest".to_owned(),
                "qwen2.5:7b".to_owned(),
                "nomic-embed-text:latest".to_owned(),
            ],
            split_mid_line: false,
            check_host: true,
            slots: None,
            max_queue: None,
            installed: None,
            max_loaded: None,
            load_time: Duration::ZERO,
            tokens_per_second: None,
        }
    }
}

impl FakeOptions {
    /// The installed models: `installed`, or else `models`.
    pub fn installed_models(&self) -> &[String] {
        self.installed.as_deref().unwrap_or(&self.models)
    }

    /// The time one token takes, when generation is paced in tokens per second.
    fn token_time(&self) -> Option<Duration> {
        self.tokens_per_second
            .filter(|tps| tps.is_finite() && *tps > 0.0)
            .map(|tps| Duration::from_secs_f64(1.0 / tps))
    }
}

/// What the simulated GPU host did so far; also served as JSON at `GET /fake/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeStats {
    /// Model loads, reloads included.
    pub loads: u64,
    /// Models loaded now (loading included), most recently used first, as `/api/ps`.
    pub loaded: Vec<String>,
    /// Requests holding a slot (loading their model or generating).
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// The most requests that held a slot at the same time.
    pub max_in_flight_seen: usize,
    /// Requests that ran to their end (streams to their last frame).
    pub completed: u64,
    /// Requests whose client left (or whose connection `stop()` cut) before their end.
    pub cancelled: u64,
    /// Requests answered 503 because the queue was full.
    pub rejected: u64,
    /// Requests admitted, per installed model (chat, generate, OpenAI chat and embed).
    pub requests: BTreeMap<String, u64>,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// Path and query exactly as sent on the wire.
    pub path_and_query: String,
    /// The request target as sent: `/path?query` in origin form, or the whole URL when
    /// a client sent it in absolute form (as to a proxy).
    pub target: String,
    /// Headers in arrival order (repeats of a name grouped), names lower-cased, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The full request body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// State shared by the accept loop, every connection and the handle.
struct Shared {
    opts: FakeOptions,
    addr: SocketAddr,
    requests: Mutex<Vec<Recorded>>,
    /// Requests from the gate's prober.
    probes: AtomicUsize,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    gpu: Mutex<Gpu>,
}

/// A running fake Ollama; dropping it aborts the server, `stop()` also waits for it.
pub struct FakeOllama {
    shared: Arc<Shared>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FakeOllama {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start(opts: FakeOptions) -> FakeOllama {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        FakeOllama::start_on(addr, opts)
            .await
            .expect("bind the fake Ollama on 127.0.0.1:0")
    }

    /// A free port on 127.0.0.1 below the kernel's ephemeral range (32768 and up on
    /// Linux), for a test that stops a fake and starts it again on the same port: no
    /// other test's bind to port 0 can take such a port in between.
    pub fn restartable_addr() -> SocketAddr {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        for i in 0..2000u64 {
            let port = 20_000 + ((seed.wrapping_mul(2_654_435_761) + i * 7919) % 12_000) as u16;
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            if std::net::TcpListener::bind(addr).is_ok() {
                return addr;
            }
        }
        panic!("no free port between 20000 and 32000");
    }

    /// Starts the fake on `addr` (with `SO_REUSEADDR`, so a stopped fake's port can be reused).
    pub async fn start_on(addr: SocketAddr, opts: FakeOptions) -> std::io::Result<FakeOllama> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let shared = Arc::new(Shared {
            opts,
            addr: listener.local_addr()?,
            requests: Mutex::new(Vec::new()),
            probes: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            gpu: Mutex::new(Gpu::default()),
        });
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(FakeOllama {
            shared,
            shutdown: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (loopback when bound to an unspecified address).
    pub fn url(&self) -> String {
        let mut addr = self.shared.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        format!("http://{addr}")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Requests the gate's prober sent (not in [`FakeOllama::requests`]).
    pub fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::SeqCst)
    }

    /// Streamed responses whose body was dropped before the last frame was produced.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Streamed responses whose every frame was produced.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// What the simulated GPU host did so far.
    pub fn stats(&self) -> FakeStats {
        lock(&self.shared.gpu).stats()
    }

    /// Kills the host: stops accepting, cuts every open connection at once (queued and
    /// streaming requests included) and waits until the port is released. The handle
    /// stays usable for `requests()` and `stats()`; a second call does nothing.
    pub async fn stop(&self) {
        let tx = lock(&self.shutdown).take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            // Dropping the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.to_string());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // `/fake/*` is the harness asking the fake, and the gate's probes (which say so in
    // their User-Agent) are its own; neither is traffic to record.
    let probe = parts
        .headers
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("aigate/") && ua.ends_with("(probe)"));
    if probe {
        shared.probes.fetch_add(1, Ordering::SeqCst);
    } else if !parts.uri.path().starts_with("/fake/") {
        lock(&shared.requests).push(Recorded {
            method: parts.method.to_string(),
            path_and_query: path_and_query.clone(),
            target: parts.uri.to_string(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
    }

    if shared.opts.check_host && !host_allowed(&shared, parts.headers.get(HOST)) {
        return Ok(text(StatusCode::FORBIDDEN, "Forbidden"));
    }

    let path = parts.uri.path();
    let method = &parts.method;
    let resp = match (method.clone(), path) {
        (Method::GET | Method::HEAD, "/") => text(StatusCode::OK, "Ollama is running"),
        (Method::GET | Method::HEAD, "/api/version") => {
            json(StatusCode::OK, r#"{"version":"0.12.0"}"#)
        }
        (Method::GET | Method::HEAD, "/api/tags") => tags(&shared.opts),
        (Method::GET, "/api/ps") => ps(&shared),
        (Method::GET, "/v1/models") => openai_models(&shared.opts),
        (Method::POST, "/api/chat") => ollama_generate(&shared, &body, Kind::Chat).await,
        (Method::POST, "/api/generate") => ollama_generate(&shared, &body, Kind::Generate).await,
        (Method::POST, "/api/embed") => embed(&shared, &body).await,
        (Method::POST, "/v1/chat/completions") => openai_chat(&shared, &body).await,
        (Method::GET, "/fake/stats") => json(StatusCode::OK, to_json(&lock(&shared.gpu).stats())),
        (_, "/echo") => echo(&path_and_query, &headers),
        (
            _,
            "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" | "/api/show",
        ) => json(StatusCode::OK, r#"{"status":"success"}"#),
        (_, p) if p.starts_with("/api/blobs/") => json(StatusCode::OK, r#"{"status":"success"}"#),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    Ok(resp)
}

fn host_allowed(shared: &Shared, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let port = shared.addr.port();
    let Some((name, host_port)) = host.rsplit_once(':') else {
        return false;
    };
    if host_port != port.to_string() {
        return false;
    }
    name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost") || host == shared.addr.to_string()
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    response(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    response(status, "application/json; charset=utf-8", body)
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialize a fake Ollama response")
}

fn ollama_error(status: StatusCode, message: &str) -> Response<RespBody> {
    json(status, to_json(&serde_json::json!({ "error": message })))
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response<RespBody> {
    #[derive(Serialize)]
    struct Inner<'a> {
        message: &'a str,
        r#type: &'a str,
        param: Option<()>,
        code: Option<()>,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    let body = Outer {
        error: Inner {
            message,
            r#type: kind,
            param: None,
            code: None,
        },
    };
    json(status, to_json(&body))
}

/// Parses a JSON object body the way Ollama rejects bad ones.
fn parse_body(body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Err("missing request body".to_owned());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("json: cannot unmarshal into request object".to_owned());
    }
    Ok(value)
}

/// A request's model: the name as sent (echoed in answers) and the installed name it
/// matched (`name` matches `name:latest`), under which it is loaded and counted.
struct ModelRef {
    sent: String,
    installed: String,
}

/// Checks the body's `model` against the installed models.
fn check_model(opts: &FakeOptions, body: &Value) -> Result<ModelRef, (StatusCode, String)> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "model is required".to_owned()));
    }
    let found = opts
        .installed_models()
        .iter()
        .find(|m| *m == model || m.strip_suffix(":latest") == Some(model));
    match found {
        Some(installed) => Ok(ModelRef {
            sent: model.to_owned(),
            installed: installed.clone(),
        }),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("model \"{model}\" not found, try pulling it first"),
        )),
    }
}

/// What the model needs loaded for a request: Ollama reloads a model whose context
/// length differs, and `keep_alive: 0` unloads it once idle.
fn want(model: &ModelRef, body: &Value) -> Want {
    let num_ctx = body
        .pointer("/options/num_ctx")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_NUM_CTX);
    let unload_after = match body.get("keep_alive") {
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<f64>()
            .is_ok_and(|n| n == 0.0),
        _ => false,
    };
    Want {
        model: model.installed.clone(),
        num_ctx,
        unload_after,
    }
}

fn token(i: usize) -> String {
    format!("tok{} ", i + 1)
}

fn all_tokens(n: usize) -> String {
    (0..n).map(token).collect()
}

/// How much one request generates: `chunks`, or fewer when the request caps it.
#[derive(Clone, Copy)]
struct Plan {
    /// Content chunks (tokens) to send.
    tokens: usize,
    /// Whether the request's limit cut the generation short (`done_reason` "length").
    cut: bool,
}

impl Plan {
    /// `limit` is the request's positive `num_predict` / `max_tokens`, if any (Ollama
    /// reads zero and negative values as no limit).
    fn new(opts: &FakeOptions, limit: Option<i64>) -> Plan {
        let limit = limit
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        match limit {
            Some(n) if n < opts.chunks => Plan {
                tokens: n,
                cut: true,
            },
            _ => Plan {
                tokens: opts.chunks,
                cut: false,
            },
        }
    }

    fn reason(self) -> &'static str {
        if self.cut { "length" } else { "stop" }
    }

    /// The completion count reported: the configured one, or the tokens generated when
    /// the fake paces real tokens.
    fn completion_tokens(self, opts: &FakeOptions) -> u64 {
        if opts.token_time().is_some() {
            self.tokens as u64
        } else {
            opts.completion_tokens
        }
    }
}

/// The delay a non-streamed answer takes: the whole stream's generation time.
fn generation_time(opts: &FakeOptions, plan: Plan) -> Duration {
    let steps = u32::try_from(plan.tokens).unwrap_or(u32::MAX);
    match opts.token_time() {
        Some(per_token) => opts.first_chunk_delay + per_token.saturating_mul(steps),
        None => opts.first_chunk_delay + opts.chunk_delay.saturating_mul(steps),
    }
}

// ---------------------------------------------------------------------------
// Ollama native API
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Generate,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// Field order follows Ollama's `ChatResponse` / `GenerateResponse` structs.
#[derive(Serialize)]
struct OllamaChunk<'a> {
    model: &'a str,
    created_at: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    done: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
}

#[derive(Serialize)]
struct Metrics {
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u64,
    prompt_eval_duration: u64,
    eval_count: u64,
    eval_duration: u64,
}

/// One NDJSON line; `done` carries the plan whose end it reports.
fn ollama_line(
    kind: Kind,
    model: &str,
    content: &str,
    done: Option<Plan>,
    opts: &FakeOptions,
) -> String {
    let chunk = OllamaChunk {
        model,
        created_at: CREATED_AT,
        message: (kind == Kind::Chat).then_some(Message {
            role: "assistant",
            content,
        }),
        response: (kind == Kind::Generate).then_some(content),
        done_reason: done.map(Plan::reason),
        done: done.is_some(),
        metrics: done.map(|plan| Metrics {
            total_duration: 1,
            load_duration: 1,
            prompt_eval_count: opts.prompt_tokens,
            prompt_eval_duration: 1,
            eval_count: plan.completion_tokens(opts),
            eval_duration: 1,
        }),
    };
    to_json(&chunk)
}

async fn ollama_generate(shared: &Arc<Shared>, body: &[u8], kind: Kind) -> Response<RespBody> {
    let opts = &shared.opts;
    let req = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, &e),
    };
    let model = match check_model(opts, &req) {
        Ok(m) => m,
        Err((status, e)) => return ollama_error(status, &e),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let limit = req.pointer("/options/num_predict").and_then(Value::as_i64);
    let plan = Plan::new(opts, limit);
    let Ok(slot) = acquire(shared, want(&model, &req)).await else {
        return ollama_error(StatusCode::SERVICE_UNAVAILABLE, BUSY);
    };
    let model = model.sent;
    if !stream {
        tokio::time::sleep(generation_time(opts, plan)).await;
        let line = ollama_line(kind, &model, &all_tokens(plan.tokens), Some(plan), opts);
        slot.finish();
        return json(StatusCode::OK, line);
    }
    let mut lines: Vec<Line> = (0..plan.tokens)
        .map(|i| {
            Line::token(format!(
                "{}\n",
                ollama_line(kind, &model, &token(i), None, opts)
            ))
        })
        .collect();
    let last = format!("{}\n", ollama_line(kind, &model, "", Some(plan), opts));
    lines.push(Line::last(last).split_in_number("\"eval_count\":"));
    stream_response(shared, "application/x-ndjson", lines, slot).await
}

async fn embed(shared: &Arc<Shared>, body: &[u8]) -> Response<RespBody> {
    #[derive(Serialize)]
    struct EmbedResponse<'a> {
        model: &'a str,
        embeddings: Vec<Vec<f64>>,
        total_duration: u64,
        load_duration: u64,
        prompt_eval_count: u64,
    }
    let opts = &shared.opts;
    let req = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, &e),
    };
    let model = match check_model(opts, &req) {
        Ok(m) => m,
        Err((status, e)) => return ollama_error(status, &e),
    };
    let Ok(slot) = acquire(shared, want(&model, &req)).await else {
        return ollama_error(StatusCode::SERVICE_UNAVAILABLE, BUSY);
    };
    let inputs = match req.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => 0,
    };
    let vector: Vec<f64> = (1..=EMBEDDING_DIMS).map(|i| i as f64 / 10.0).collect();
    let resp = EmbedResponse {
        model: &model.sent,
        embeddings: vec![vector; inputs],
        total_duration: 1,
        load_duration: 1,
        prompt_eval_count: opts.prompt_tokens,
    };
    slot.finish();
    json(StatusCode::OK, to_json(&resp))
}

fn tags(opts: &FakeOptions) -> Response<RespBody> {
    /// Field order follows Ollama's `ListModelResponse`.
    #[derive(Serialize)]
    struct Model<'a> {
        name: &'a str,
        model: &'a str,
        modified_at: &'static str,
        size: u64,
        digest: &'static str,
        details: serde_json::Map<String, Value>,
    }
    #[derive(Serialize)]
    struct Tags<'a> {
        models: Vec<Model<'a>>,
    }
    let models = opts
        .installed_models()
        .iter()
        .map(|name| Model {
            name,
            model: name,
            modified_at: CREATED_AT,
            size: 1,
            digest: DIGEST,
            details: serde_json::Map::new(),
        })
        .collect();
    json(StatusCode::OK, to_json(&Tags { models }))
}

/// `/api/ps`: the loaded models, most recently used first (Ollama sorts by expiry).
fn ps(shared: &Shared) -> Response<RespBody> {
    /// Field order follows Ollama's `ProcessModelResponse`.
    #[derive(Serialize)]
    struct Model {
        name: String,
        model: String,
        size: u64,
        digest: &'static str,
        details: serde_json::Map<String, Value>,
        expires_at: &'static str,
        size_vram: u64,
        context_length: i64,
    }
    #[derive(Serialize)]
    struct Ps {
        models: Vec<Model>,
    }
    let models = lock(&shared.gpu)
        .by_recent_use()
        .into_iter()
        .map(|r| Model {
            name: r.model.clone(),
            model: r.model.clone(),
            size: 1,
            digest: DIGEST,
            details: serde_json::Map::new(),
            expires_at: EXPIRES_AT,
            size_vram: 1,
            context_length: r.num_ctx,
        })
        .collect();
    json(StatusCode::OK, to_json(&Ps { models }))
}

// ---------------------------------------------------------------------------
// OpenAI-compatible API
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

fn usage(opts: &FakeOptions, plan: Plan) -> Usage {
    let completion_tokens = plan.completion_tokens(opts);
    Usage {
        prompt_tokens: opts.prompt_tokens,
        completion_tokens,
        total_tokens: opts.prompt_tokens + completion_tokens,
    }
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Message<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct CompletionChunk<'a> {
    id: &'static str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

fn sse_event<T: Serialize>(value: &T) -> String {
    format!("data: {}\n\n", to_json(value))
}

fn choice<'a>(content: &'a str, finish_reason: Option<&'static str>) -> ChunkChoice<'a> {
    ChunkChoice {
        index: 0,
        delta: Message {
            role: "assistant",
            content,
        },
        finish_reason,
    }
}

fn openai_chunk<'a>(model: &'a str, choices: Vec<ChunkChoice<'a>>, usage: Option<Usage>) -> String {
    sse_event(&CompletionChunk {
        id: "chatcmpl-1",
        object: "chat.completion.chunk",
        created: 1,
        model,
        choices,
        usage,
    })
}

/// The smaller of `max_tokens` and `max_completion_tokens`, as positive numbers.
fn openai_limit(req: &Value) -> Option<i64> {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|key| req.get(*key).and_then(Value::as_i64))
        .filter(|n| *n > 0)
        .min()
}

async fn openai_chat(shared: &Arc<Shared>, body: &[u8]) -> Response<RespBody> {
    let opts = &shared.opts;
    let req = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, &e, "invalid_request_error"),
    };
    let model = match check_model(opts, &req) {
        Ok(m) => m,
        Err((status, e)) => return openai_error(status, &e, "api_error"),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let plan = Plan::new(opts, openai_limit(&req));
    let Ok(slot) = acquire(shared, want(&model, &req)).await else {
        return openai_error(StatusCode::SERVICE_UNAVAILABLE, BUSY, "api_error");
    };
    let model = model.sent;
    if !stream {
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            message: Message<'a>,
            finish_reason: &'static str,
        }
        #[derive(Serialize)]
        struct Completion<'a> {
            id: &'static str,
            object: &'static str,
            created: u64,
            model: &'a str,
            choices: Vec<Choice<'a>>,
            usage: Usage,
        }
        tokio::time::sleep(generation_time(opts, plan)).await;
        let content = all_tokens(plan.tokens);
        let resp = Completion {
            id: "chatcmpl-1",
            object: "chat.completion",
            created: 1,
            model: &model,
            choices: vec![Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: &content,
                },
                finish_reason: plan.reason(),
            }],
            usage: usage(opts, plan),
        };
        slot.finish();
        return json(StatusCode::OK, to_json(&resp));
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut lines: Vec<Line> = (0..plan.tokens)
        .map(|i| Line::token(openai_chunk(&model, vec![choice(&token(i), None)], None)))
        .collect();
    lines.push(Line::last(openai_chunk(
        &model,
        vec![choice("", Some(plan.reason()))],
        None,
    )));
    if include_usage {
        let line = openai_chunk(&model, Vec::new(), Some(usage(opts, plan)));
        lines.push(Line::trailer(line).split_in_number("\"completion_tokens\":"));
    }
    lines.push(Line::trailer("data: [DONE]\n\n".to_owned()));
    stream_response(shared, "text/event-stream", lines, slot).await
}

fn openai_models(opts: &FakeOptions) -> Response<RespBody> {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let data = opts
        .installed_models()
        .iter()
        .map(|id| Model {
            id,
            object: "model",
            created: 1,
            owned_by: "library",
        })
        .collect();
    json(
        StatusCode::OK,
        to_json(&List {
            object: "list",
            data,
        }),
    )
}

fn echo(path_and_query: &str, headers: &[(String, String)]) -> Response<RespBody> {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        match map.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                map.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    let body = serde_json::json!({ "path_and_query": path_and_query, "headers": map });
    json(StatusCode::OK, to_json(&body))
}

// ---------------------------------------------------------------------------
// The simulated GPU: slots, the first-come queue, loaded models
// ---------------------------------------------------------------------------

/// What a request needs from the host.
struct Want {
    /// The installed model name.
    model: String,
    /// The context length it must be loaded with.
    num_ctx: i64,
    /// `keep_alive: 0`: unload the model once no request uses it.
    unload_after: bool,
}

/// A request waiting for a slot; `grant` receives the instant its model is ready.
struct Waiter {
    id: u64,
    model: String,
    num_ctx: i64,
    grant: oneshot::Sender<Instant>,
}

/// A model in memory.
struct Resident {
    model: String,
    num_ctx: i64,
    /// Requests holding a slot on it; it is unloaded only at zero, as in Ollama.
    users: usize,
    /// The use clock at its last grant or release, for least-recently-used eviction.
    last_used: u64,
    /// When its load ends (in the past once loaded).
    ready_at: Instant,
}

/// The host's scheduler state, behind one mutex.
#[derive(Default)]
struct Gpu {
    clock: u64,
    next_id: u64,
    /// Arrival order; the head blocks those behind it, as in Ollama's scheduler.
    waiting: VecDeque<Waiter>,
    running: usize,
    resident: Vec<Resident>,
    loads: u64,
    max_in_flight_seen: usize,
    completed: u64,
    cancelled: u64,
    rejected: u64,
    requests: BTreeMap<String, u64>,
}

/// The queue was full: the request is answered 503 [`BUSY`].
struct Busy;

fn limit(n: Option<usize>) -> usize {
    n.map_or(usize::MAX, |n| n.max(1))
}

impl Gpu {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn by_recent_use(&self) -> Vec<&Resident> {
        let mut models: Vec<&Resident> = self.resident.iter().collect();
        models.sort_by_key(|r| std::cmp::Reverse(r.last_used));
        models
    }

    fn stats(&self) -> FakeStats {
        FakeStats {
            loads: self.loads,
            loaded: self
                .by_recent_use()
                .into_iter()
                .map(|r| r.model.clone())
                .collect(),
            in_flight: self.running,
            queued: self.waiting.len(),
            max_in_flight_seen: self.max_in_flight_seen,
            completed: self.completed,
            cancelled: self.cancelled,
            rejected: self.rejected,
            requests: self.requests.clone(),
        }
    }

    /// Gives the model to one more request if it is loaded (or loading) with the right
    /// context, or can be loaded now (reloading it idle, or evicting the least recently
    /// used idle model at `max_loaded`); returns when it will be ready. `None`: wait.
    fn place(&mut self, opts: &FakeOptions, model: &str, num_ctx: i64) -> Option<Instant> {
        let now = Instant::now();
        let clock = self.tick();
        if let Some(r) = self.resident.iter_mut().find(|r| r.model == model) {
            if r.num_ctx != num_ctx {
                if r.users > 0 {
                    return None;
                }
                r.num_ctx = num_ctx;
                r.ready_at = now + opts.load_time;
                self.loads += 1;
            }
            r.users += 1;
            r.last_used = clock;
            return Some(r.ready_at);
        }
        if self.resident.len() >= limit(opts.max_loaded) {
            let (victim, _) = self
                .resident
                .iter()
                .enumerate()
                .filter(|(_, r)| r.users == 0)
                .min_by_key(|(_, r)| r.last_used)?;
            self.resident.remove(victim);
        }
        let ready_at = now + opts.load_time;
        self.resident.push(Resident {
            model: model.to_owned(),
            num_ctx,
            users: 1,
            last_used: clock,
            ready_at,
        });
        self.loads += 1;
        Some(ready_at)
    }

    /// Grants slots to the head of the queue while there are slots and it can be placed.
    fn dispatch(&mut self, opts: &FakeOptions) {
        while self.running < limit(opts.slots) {
            let Some(head) = self.waiting.front() else {
                break;
            };
            let (model, num_ctx) = (head.model.clone(), head.num_ctx);
            let Some(ready_at) = self.place(opts, &model, num_ctx) else {
                break;
            };
            let Some(waiter) = self.waiting.pop_front() else {
                break;
            };
            self.running += 1;
            self.max_in_flight_seen = self.max_in_flight_seen.max(self.running);
            // A waiter that left meanwhile is released by its `Slot`'s drop.
            let _ = waiter.grant.send(ready_at);
        }
    }
}

/// A request's place on the host, from admission to its end: waiting, then holding a
/// slot. Dropping it (the client left, or `stop()` cut the connection) gives the place
/// up; `finish` counts the request as completed.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
    model: String,
    unload_after: bool,
    finished: bool,
}

impl Slot {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut gpu = lock(&self.shared.gpu);
        if let Some(pos) = gpu.waiting.iter().position(|w| w.id == self.id) {
            gpu.waiting.remove(pos);
            gpu.cancelled += 1;
        } else {
            gpu.running = gpu.running.saturating_sub(1);
            let clock = gpu.tick();
            if let Some(i) = gpu.resident.iter().position(|r| r.model == self.model) {
                let r = &mut gpu.resident[i];
                r.users = r.users.saturating_sub(1);
                r.last_used = clock;
                if self.unload_after && r.users == 0 {
                    gpu.resident.remove(i);
                }
            }
            if self.finished {
                gpu.completed += 1;
            } else {
                gpu.cancelled += 1;
            }
        }
        gpu.dispatch(&self.shared.opts);
    }
}

/// Admits a request (or refuses it when `slots + max_queue` are taken), waits for its
/// slot in arrival order, then for its model to be loaded.
async fn acquire(shared: &Arc<Shared>, want: Want) -> Result<Slot, Busy> {
    let opts = &shared.opts;
    let (tx, rx) = oneshot::channel();
    let slot = {
        let mut gpu = lock(&shared.gpu);
        let capacity = limit(opts.slots).saturating_add(opts.max_queue.unwrap_or(usize::MAX));
        if gpu.running + gpu.waiting.len() >= capacity {
            gpu.rejected += 1;
            return Err(Busy);
        }
        match gpu.requests.get_mut(&want.model) {
            Some(n) => *n += 1,
            None => {
                gpu.requests.insert(want.model.clone(), 1);
            }
        }
        gpu.next_id += 1;
        let id = gpu.next_id;
        gpu.waiting.push_back(Waiter {
            id,
            model: want.model.clone(),
            num_ctx: want.num_ctx,
            grant: tx,
        });
        gpu.dispatch(opts);
        Slot {
            shared: shared.clone(),
            id,
            model: want.model,
            unload_after: want.unload_after,
            finished: false,
        }
    };
    // The sender is dropped unsent only if the waiter was removed, which only the
    // slot's own drop does: unreachable while `slot` lives.
    let ready_at = rx.await.map_err(|_| Busy)?;
    if ready_at > Instant::now() {
        tokio::time::sleep_until(ready_at.into()).await;
    }
    Ok(slot)
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

/// What a line of a stream is, which decides the pause before it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// A generated token: `chunk_delay`, or one token's time.
    Token,
    /// The final generation step (`done`, or OpenAI's stop chunk): `chunk_delay`, or
    /// nothing when pacing tokens.
    Last,
    /// Trailers (usage, `[DONE]`): never delayed.
    Trailer,
}

/// One line of a streamed response and how it is written.
struct Line {
    text: String,
    pace: Pace,
    /// Byte offset where `split_mid_line` cuts it.
    split_at: usize,
}

impl Line {
    fn new(text: String, pace: Pace) -> Line {
        let split_at = text.len() / 2;
        Line {
            text,
            pace,
            split_at,
        }
    }

    fn token(text: String) -> Line {
        Line::new(text, Pace::Token)
    }

    fn last(text: String) -> Line {
        Line::new(text, Pace::Last)
    }

    fn trailer(text: String) -> Line {
        Line::new(text, Pace::Trailer)
    }

    /// Moves the cut inside the number following `key` (before its only digit if it has one).
    fn split_in_number(mut self, key: &str) -> Line {
        if let Some(pos) = self.text.find(key) {
            let start = pos + key.len();
            let digits = self.text[start..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            self.split_at = start + digits / 2;
        }
        self
    }

    /// The pause before line `index`; the first waits `first_chunk_delay` (plus its
    /// token's time when pacing tokens).
    fn delay(&self, index: usize, opts: &FakeOptions) -> Duration {
        match (opts.token_time(), index, self.pace) {
            (None, 0, _) => opts.first_chunk_delay,
            (None, _, Pace::Token | Pace::Last) => opts.chunk_delay,
            (Some(per_token), 0, Pace::Token) => opts.first_chunk_delay + per_token,
            (Some(_), 0, _) => opts.first_chunk_delay,
            (Some(per_token), _, Pace::Token) => per_token,
            _ => Duration::ZERO,
        }
    }
}

/// A response body fed by a channel: each message is one frame, handed to hyper as
/// soon as it is produced.
struct ChannelBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rx
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

/// Spawns the producer and answers once the first frame exists, so the head leaves
/// together with the first chunk (as Ollama's does after loading a model).
async fn stream_response(
    shared: &Arc<Shared>,
    content_type: &'static str,
    lines: Vec<Line>,
    slot: Slot,
) -> Response<RespBody> {
    // Capacity 1: the producer runs at most one frame ahead of the client.
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(produce(shared.clone(), tx, lines, slot));
    let first = rx.recv().await;
    let mut resp = Response::new(ChannelBody { first, rx }.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Writes the lines; the slot is held until the last frame is out or the body dropped.
async fn produce(shared: Arc<Shared>, tx: mpsc::Sender<Bytes>, lines: Vec<Line>, slot: Slot) {
    let opts = &shared.opts;
    let mut finished = true;
    'lines: for (i, line) in lines.into_iter().enumerate() {
        if !pause(&tx, line.delay(i, opts)).await {
            finished = false;
            break;
        }
        let bytes = Bytes::from(line.text);
        let frames = if opts.split_mid_line && line.split_at > 0 && line.split_at < bytes.len() {
            vec![bytes.slice(..line.split_at), bytes.slice(line.split_at..)]
        } else {
            vec![bytes]
        };
        for (j, frame) in frames.into_iter().enumerate() {
            if j > 0 && !pause(&tx, SPLIT_PAUSE).await {
                finished = false;
                break 'lines;
            }
            if tx.send(frame).await.is_err() {
                finished = false;
                break 'lines;
            }
        }
    }
    let counter = if finished {
        slot.finish();
        &shared.completed
    } else {
        drop(slot);
        &shared.cancelled
    };
    counter.fetch_add(1, Ordering::SeqCst);
}

/// Sleeps for `delay`; false when the body was dropped meanwhile.
async fn pause(tx: &mpsc::Sender<Bytes>, delay: Duration) -> bool {
    if tx.is_closed() {
        return false;
    }
    if delay.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = tx.closed() => false,
    }
}
