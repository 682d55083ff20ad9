//! A fake Ollama server (Ollama's NDJSON, OpenAI SSE and JSON wire formats) for the gate's
//! integration tests, the benchmark and the README walkthrough.
//!
//! It records every request, streams responses frame by frame through a channel-backed
//! body (never collected), counts streams that completed or whose client went away, and
//! answers 403 to a foreign `Host` like Ollama does on loopback. `stop()` aborts every
//! live connection so the same port can be bound again with [`FakeOllama::start_on`].
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
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
    /// Models known to the fake (`/api/tags`, `/v1/models`, and the model check).
    pub models: Vec<String>,
    /// Write each NDJSON/SSE line as two body frames split in the middle of the line; the
    /// line carrying the token counts is split inside the completion-token number.
    pub split_mid_line: bool,
    /// Answer 403 when `Host` is not `127.0.0.1:PORT` or `localhost:PORT`.
    pub check_host: bool,
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
        }
    }
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
    cancelled: AtomicUsize,
    completed: AtomicUsize,
}

/// A running fake Ollama; dropping it aborts the server, `stop()` also waits for it.
pub struct FakeOllama {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeOllama {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start(opts: FakeOptions) -> FakeOllama {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        FakeOllama::start_on(addr, opts)
            .await
            .expect("bind the fake Ollama on 127.0.0.1:0")
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
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
        });
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(FakeOllama {
            shared,
            shutdown: Some(tx),
            task: Some(task),
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

    /// Streamed responses whose body was dropped before the last frame was produced.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Streamed responses whose every frame was produced.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Stops accepting, aborts every live connection and waits until the port is released.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
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
    lock(&shared.requests).push(Recorded {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        target: parts.uri.to_string(),
        headers: headers.clone(),
        body: body.to_vec(),
    });

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
        (Method::GET, "/v1/models") => openai_models(&shared.opts),
        (Method::POST, "/api/chat") => ollama_generate(&shared, &body, Kind::Chat).await,
        (Method::POST, "/api/generate") => ollama_generate(&shared, &body, Kind::Generate).await,
        (Method::POST, "/api/embed") => embed(&shared.opts, &body),
        (Method::POST, "/v1/chat/completions") => openai_chat(&shared, &body).await,
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

/// Checks the body's `model` against the configured models (`name` matches `name:latest`).
fn check_model(opts: &FakeOptions, body: &Value) -> Result<String, (StatusCode, String)> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "model is required".to_owned()));
    }
    let known = opts
        .models
        .iter()
        .any(|m| m == model || *m == format!("{model}:latest"));
    if known {
        Ok(model.to_owned())
    } else {
        Err((
            StatusCode::NOT_FOUND,
            format!("model \"{model}\" not found, try pulling it first"),
        ))
    }
}

fn token(i: usize) -> String {
    format!("tok{} ", i + 1)
}

fn all_tokens(opts: &FakeOptions) -> String {
    (0..opts.chunks).map(token).collect()
}

/// The delay a non-streamed answer takes: the whole stream's generation time.
fn generation_time(opts: &FakeOptions) -> Duration {
    let steps = u32::try_from(opts.chunks).unwrap_or(u32::MAX);
    opts.first_chunk_delay + opts.chunk_delay.saturating_mul(steps)
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

fn ollama_line(kind: Kind, model: &str, content: &str, done: bool, opts: &FakeOptions) -> String {
    let chunk = OllamaChunk {
        model,
        created_at: CREATED_AT,
        message: (kind == Kind::Chat).then_some(Message {
            role: "assistant",
            content,
        }),
        response: (kind == Kind::Generate).then_some(content),
        done_reason: done.then_some("stop"),
        done,
        metrics: done.then_some(Metrics {
            total_duration: 1,
            load_duration: 1,
            prompt_eval_count: opts.prompt_tokens,
            prompt_eval_duration: 1,
            eval_count: opts.completion_tokens,
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
    if !stream {
        tokio::time::sleep(generation_time(opts)).await;
        let line = ollama_line(kind, &model, &all_tokens(opts), true, opts);
        return json(StatusCode::OK, line);
    }
    let mut lines: Vec<Line> = (0..opts.chunks)
        .map(|i| {
            Line::paced(format!(
                "{}\n",
                ollama_line(kind, &model, &token(i), false, opts)
            ))
        })
        .collect();
    let last = format!("{}\n", ollama_line(kind, &model, "", true, opts));
    lines.push(Line::paced(last).split_in_number("\"eval_count\":"));
    stream_response(shared, "application/x-ndjson", lines).await
}

fn embed(opts: &FakeOptions, body: &[u8]) -> Response<RespBody> {
    #[derive(Serialize)]
    struct EmbedResponse<'a> {
        model: &'a str,
        embeddings: Vec<Vec<f64>>,
        total_duration: u64,
        load_duration: u64,
        prompt_eval_count: u64,
    }
    let req = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, &e),
    };
    let model = match check_model(opts, &req) {
        Ok(m) => m,
        Err((status, e)) => return ollama_error(status, &e),
    };
    let inputs = match req.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => 0,
    };
    let vector: Vec<f64> = (1..=EMBEDDING_DIMS).map(|i| i as f64 / 10.0).collect();
    let resp = EmbedResponse {
        model: &model,
        embeddings: vec![vector; inputs],
        total_duration: 1,
        load_duration: 1,
        prompt_eval_count: opts.prompt_tokens,
    };
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
        .models
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

// ---------------------------------------------------------------------------
// OpenAI-compatible API
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

fn usage(opts: &FakeOptions) -> Usage {
    Usage {
        prompt_tokens: opts.prompt_tokens,
        completion_tokens: opts.completion_tokens,
        total_tokens: opts.prompt_tokens + opts.completion_tokens,
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
        tokio::time::sleep(generation_time(opts)).await;
        let content = all_tokens(opts);
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
                finish_reason: "stop",
            }],
            usage: usage(opts),
        };
        return json(StatusCode::OK, to_json(&resp));
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut lines: Vec<Line> = (0..opts.chunks)
        .map(|i| Line::paced(openai_chunk(&model, vec![choice(&token(i), None)], None)))
        .collect();
    lines.push(Line::paced(openai_chunk(
        &model,
        vec![choice("", Some("stop"))],
        None,
    )));
    if include_usage {
        let line = openai_chunk(&model, Vec::new(), Some(usage(opts)));
        lines.push(Line::immediate(line).split_in_number("\"completion_tokens\":"));
    }
    lines.push(Line::immediate("data: [DONE]\n\n".to_owned()));
    stream_response(shared, "text/event-stream", lines).await
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
        .models
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
// Streaming
// ---------------------------------------------------------------------------

/// One line of a streamed response and how it is written.
struct Line {
    text: String,
    /// Whether `chunk_delay` applies before it (generation steps do; trailers do not).
    paced: bool,
    /// Byte offset where `split_mid_line` cuts it.
    split_at: usize,
}

impl Line {
    fn paced(text: String) -> Line {
        let split_at = text.len() / 2;
        Line {
            text,
            paced: true,
            split_at,
        }
    }

    fn immediate(text: String) -> Line {
        Line {
            paced: false,
            ..Line::paced(text)
        }
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
) -> Response<RespBody> {
    // Capacity 1: the producer runs at most one frame ahead of the client.
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(produce(shared.clone(), tx, lines));
    let first = rx.recv().await;
    let mut resp = Response::new(ChannelBody { first, rx }.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn produce(shared: Arc<Shared>, tx: mpsc::Sender<Bytes>, lines: Vec<Line>) {
    let opts = &shared.opts;
    let mut finished = true;
    'lines: for (i, line) in lines.into_iter().enumerate() {
        let delay = match (i, line.paced) {
            (0, _) => opts.first_chunk_delay,
            (_, true) => opts.chunk_delay,
            (_, false) => Duration::ZERO,
        };
        if !pause(&tx, delay).await {
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
        &shared.completed
    } else {
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
