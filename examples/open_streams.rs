//! Many open streams at once, for the benchmark (`bench/run`): opens `--count` streaming
//! requests to `--url`, each on its own connection, waits until every one has its
//! response head and first chunk, then holds them all and reads the resident memory of
//! process `--pid` (the gate) from `/proc/PID/status`, before and while they are open.
//!
//! `cargo run --release --example open_streams -- --url URL --pid PID [--key KEY]
//! [--count N] [--parallel N] [--settle-ms N] [--body JSON]`
//!
//! Prints `open_streams open=N failed=N rss_before_kib=… rss_kib=… hwm_kib=…`; exits
//! non-zero when a stream could not be opened.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const USAGE: &str = "usage: open_streams --url URL --pid PID [--key KEY] [--count N] \
[--parallel N] [--settle-ms N] [--body JSON]";

struct Args {
    url: Uri,
    pid: u32,
    key: Option<String>,
    count: usize,
    parallel: usize,
    settle: Duration,
    body: String,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut url = None;
    let mut pid = None;
    let mut key = None;
    let mut count = 1000;
    let mut parallel = 64;
    let mut settle = Duration::from_millis(500);
    let mut body = r#"{"model":"llama3.2","prompt":"hi"}"#.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        let number = |v: String| -> anyhow::Result<u64> {
            v.parse().with_context(|| format!("bad number {v:?}"))
        };
        match arg.as_str() {
            "--url" => {
                let v = value()?;
                url = Some(v.parse().with_context(|| format!("--url: bad URL {v:?}"))?);
            }
            "--pid" => pid = Some(number(value()?)? as u32),
            "--key" => key = Some(value()?),
            "--count" => count = number(value()?)? as usize,
            "--parallel" => parallel = (number(value()?)? as usize).max(1),
            "--settle-ms" => settle = Duration::from_millis(number(value()?)?),
            "--body" => body = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let (Some(url), Some(pid)) = (url, pid) else {
        bail!("{USAGE}");
    };
    Ok(Some(Args {
        url,
        pid,
        key,
        count,
        parallel,
        settle,
        body,
    }))
}

/// What keeps one stream open: its request sender (the connection) and its body.
struct Held {
    _sender: http1::SendRequest<Full<Bytes>>,
    _body: Incoming,
}

/// Opens one stream and waits for its head and first chunk.
async fn open(args: &Args) -> anyhow::Result<Held> {
    let host = args.url.host().context("the URL has no host")?;
    let port = args.url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = args.url.path_and_query().map_or("/", |p| p.as_str());
    let authority = args.url.authority().map_or("", |a| a.as_str());
    let mut req = Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json");
    if let Some(k) = &args.key {
        req = req.header("x-api-key", k.as_str());
    }
    let req = req.body(Full::new(Bytes::from(args.body.clone())))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("answered {}", resp.status());
    }
    let mut body = resp.into_body();
    loop {
        match body.frame().await {
            Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty()) => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the stream ended at once; use a long chunk delay upstream"),
        }
    }
    Ok(Held {
        _sender: sender,
        _body: body,
    })
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad line {line:?}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("open_streams: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let Some(args) = parse_args()? else {
        return Ok(true);
    };
    let (rss_before, _) = memory(args.pid)?;
    let args = Arc::new(args);
    // Bounded parallel opening: a burst of 1,000 connects could overflow the listen
    // backlog and measure retransmits instead of memory.
    let gate = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let args = args.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            open(&args).await
        }));
    }
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => held.push(h),
            Ok(Err(e)) => {
                if failed == 0 {
                    eprintln!("open_streams: a stream failed: {e:#}");
                }
                failed += 1;
            }
            Err(e) => {
                eprintln!("open_streams: {e}");
                failed += 1;
            }
        }
    }
    tokio::time::sleep(args.settle).await;
    let (rss, hwm) = memory(args.pid)?;
    println!(
        "open_streams open={} failed={failed} rss_before_kib={rss_before} rss_kib={rss} hwm_kib={hwm}",
        held.len()
    );
    drop(held);
    Ok(failed == 0)
}
