//! Hostile load for `bench/floods`, from loopback addresses only:
//!
//! - `paths`: unauthenticated requests with huge paths (every fifth holding a whole
//!   key-shaped string), over keep-alive connections; prints the statuses.
//! - `hold`: as many idle connections as it can hold from one local address, each
//!   opened again when the gate closes it; prints how many it holds, once a second.
//! - `probe`: a client from another local address: one request per fresh connection,
//!   one after the other; prints the success rate and latencies.
//!
//! ```text
//! cargo run --example floods -- paths --addr HOST:PORT [--count N] [--conns N] [--path-bytes N]
//! cargo run --example floods -- hold --addr HOST:PORT [--from IP] [--count N] [--retry-ms N] [--seconds N]
//! cargo run --example floods -- probe --addr HOST:PORT [--key KEY] [--from IP] [--count N]
//!     [--interval-ms N] [--timeout-ms N]
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const USAGE: &str = "usage: floods paths --addr HOST:PORT [--count N] [--conns N] [--path-bytes N]
       floods hold --addr HOST:PORT [--from IP] [--count N] [--retry-ms N] [--seconds N]
       floods probe --addr HOST:PORT [--key KEY] [--from IP] [--count N] [--interval-ms N] \
[--timeout-ms N]";

/// Every option of every mode; each mode reads the ones it needs.
struct Args {
    mode: String,
    addr: SocketAddr,
    from: IpAddr,
    key: Option<String>,
    count: usize,
    conns: usize,
    path_bytes: usize,
    retry: Duration,
    seconds: u64,
    interval: Duration,
    timeout: Duration,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = std::env::args().skip(1);
    let Some(mode) = args.next() else {
        bail!("{USAGE}");
    };
    if mode == "-h" || mode == "--help" {
        println!("{USAGE}");
        return Ok(None);
    }
    let mut addr = None;
    let mut out = Args {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        from: IpAddr::from([127, 0, 0, 1]),
        key: None,
        count: 0,
        conns: 8,
        path_bytes: 60_000,
        retry: Duration::from_millis(1000),
        seconds: 30,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(3),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        let number = |v: String| -> anyhow::Result<u64> {
            v.parse().with_context(|| format!("bad number {v:?}"))
        };
        match arg.as_str() {
            "--addr" => addr = Some(value()?.parse().context("--addr: HOST:PORT")?),
            "--from" => out.from = value()?.parse().context("--from: an IP address")?,
            "--key" => out.key = Some(value()?),
            "--count" => out.count = number(value()?)? as usize,
            "--conns" => out.conns = (number(value()?)? as usize).max(1),
            "--path-bytes" => out.path_bytes = number(value()?)? as usize,
            "--retry-ms" => out.retry = Duration::from_millis(number(value()?)?),
            "--seconds" => out.seconds = number(value()?)?,
            "--interval-ms" => out.interval = Duration::from_millis(number(value()?)?),
            "--timeout-ms" => out.timeout = Duration::from_millis(number(value()?)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    out.addr = addr.with_context(|| format!("--addr is required\n{USAGE}"))?;
    Ok(Some(out))
}

/// A connection to `to` from the local address `from`. Bound only when `from` is not
/// the address the kernel would pick anyway (`to`'s, on loopback): binding port 0 costs
/// a search of the ports in use, which slows tens of thousands of connects to a crawl.
async fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    if from == to.ip() {
        return TcpStream::connect(to).await;
    }
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// `paths`: `count` requests over `conns` keep-alive connections.
async fn paths(args: Args) -> anyhow::Result<()> {
    let count = if args.count == 0 { 2000 } else { args.count };
    let filler = Arc::new("a".repeat(args.path_bytes));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.conns {
        let filler = filler.clone();
        let n = count / args.conns + usize::from(t < count % args.conns);
        let (from, addr) = (args.from, args.addr);
        tasks.push(tokio::spawn(async move {
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            let mut sender = None;
            for i in 0..n {
                let path = if i % 5 == 0 {
                    let key = aigate::auth::key::generate().context("OS random source")?;
                    format!("/api/{}/{filler}", key.key.expose())
                } else {
                    format!("/api/{t}{filler}")
                };
                let status = match request(&mut sender, from, addr, &path).await {
                    Ok(s) => s.to_string(),
                    Err(_) => "error".to_string(),
                };
                *statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok(statuses)
        }));
    }
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        for (s, n) in t.await.context("a paths task")?? {
            *statuses.entry(s).or_default() += n;
        }
    }
    let shown: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    println!(
        "paths sent={count} path_bytes={} seconds={:.2} statuses={}",
        args.path_bytes,
        started.elapsed().as_secs_f64(),
        shown.join(",")
    );
    Ok(())
}

/// One request on the task's connection, opened (again) when there is none.
async fn request(
    sender: &mut Option<http1::SendRequest<Empty<Bytes>>>,
    from: IpAddr,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<u16> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = connect(from, addr).await?;
        let (s, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *sender = Some(s);
    }
    let s = sender.as_mut().context("no connection")?;
    s.ready().await?;
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())?;
    let result = s.send_request(req).await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            *sender = None;
            return Err(e.into());
        }
    };
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// `hold`: `count` tasks, each holding one idle connection and opening it again
/// `retry` after the gate closes it (or refuses it), for `seconds`.
async fn hold(args: Args) -> anyhow::Result<()> {
    let count = if args.count == 0 { 10_000 } else { args.count };
    let held = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    for i in 0..count {
        let (held, opened, closed, failed) =
            (held.clone(), opened.clone(), closed.clone(), failed.clone());
        let (from, addr, retry) = (args.from, args.addr, args.retry);
        tokio::spawn(async move {
            // Spread the first connects over the first second.
            tokio::time::sleep(Duration::from_micros((i as u64 * 1_000_000) / count as u64)).await;
            loop {
                match tokio::time::timeout(Duration::from_secs(5), connect(from, addr)).await {
                    Ok(Ok(mut s)) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        held.fetch_add(1, Ordering::Relaxed);
                        let mut buf = [0u8; 512];
                        // Idle until the gate closes it (a 503, or the end of stream).
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                        held.fetch_sub(1, Ordering::Relaxed);
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(retry).await;
            }
        });
    }
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = held.load(Ordering::Relaxed);
        most = most.max(now);
        println!(
            "hold from={} held={now} opened={} closed_by_gate={} connect_failed={}",
            args.from,
            opened.load(Ordering::Relaxed),
            closed.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
    }
    println!("hold done most_held={most}");
    Ok(())
}

/// `probe`: `count` requests, each on a fresh connection from `from`.
async fn probe(args: Args) -> anyhow::Result<()> {
    let count = if args.count == 0 { 50 } else { args.count };
    let auth = args
        .key
        .as_ref()
        .map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let request = format!(
        "GET /api/tags HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        args.addr
    );
    let expected = if args.key.is_some() { "200" } else { "401" };
    let (mut ok, mut times) = (0usize, Vec::with_capacity(count));
    for _ in 0..count {
        let t = Instant::now();
        let answer = tokio::time::timeout(args.timeout, async {
            let mut s = connect(args.from, args.addr).await?;
            s.write_all(request.as_bytes()).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            std::io::Result::Ok(out)
        })
        .await;
        let took = t.elapsed();
        if let Ok(Ok(out)) = answer {
            let head = String::from_utf8_lossy(&out[..out.len().min(16)]).into_owned();
            if head.starts_with(&format!("HTTP/1.1 {expected}")) {
                ok += 1;
            }
        }
        times.push(took);
        tokio::time::sleep(args.interval).await;
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "probe from={} ok={ok} total={count} success_pct={:.1} median_ms={:.2} p90_ms={:.2} \
         max_ms={:.2}",
        args.from,
        100.0 * ok as f64 / count as f64,
        at(0.5),
        at(0.9),
        at(1.0)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floods: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("floods: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.mode.as_str() {
            "paths" => paths(args).await,
            "hold" => hold(args).await,
            "probe" => probe(args).await,
            other => bail!("unknown mode {other:?}\n{USAGE}"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floods: {e:#}");
            ExitCode::FAILURE
        }
    }
}
