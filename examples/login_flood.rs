//! A flood of failed logins, for the login benchmark (`bench/login_flood`): times a
//! valid key's requests to `--gate` while idle, then while `--concurrency` logins with
//! wrong passwords run at once for `--seconds`, each from a fresh `X-Forwarded-For`
//! address (the gate must trust 127.0.0.1 as a proxy), and samples the resident memory
//! and threads of process `--pid` (the gate) from `/proc/PID/status` throughout.
//! Only a gate on 127.0.0.1 is accepted.
//!
//! `cargo run --release --example login_flood -- --gate http://127.0.0.1:PORT --pid PID
//! --key KEY [--user NAME] [--concurrency N] [--seconds S] [--idle-seconds S]
//! [--stop-rss-mib N] [--after-seconds S]`
//!
//! With `--seconds 0` each of the N logins is sent once (one burst). New logins stop
//! when the gate's resident memory passes `--stop-rss-mib` (default 6144), so that a
//! gate without bounds cannot take the machine down; the output then says `stopped=1`.
//!
//! Prints `key=value` lines: `idle …`, `flood …`, `after …` (latencies in ms, memory in
//! MiB).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const USAGE: &str = "usage: login_flood --gate http://127.0.0.1:PORT --pid PID --key KEY \
[--user NAME] [--concurrency N] [--seconds S] [--idle-seconds S] [--stop-rss-mib N] \
[--after-seconds S]";
/// The key's request: a non-streamed generation, as `bench/run` sends.
const KEY_BODY: &str = r#"{"model":"llama3.2","prompt":"hi","stream":false}"#;
/// Pause between two of the key's requests: a steady, light caller.
const KEY_PAUSE: Duration = Duration::from_millis(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

struct Args {
    gate: Uri,
    pid: u32,
    key: String,
    user: String,
    concurrency: usize,
    seconds: f64,
    idle_seconds: f64,
    after_seconds: f64,
    stop_rss_kib: u64,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut gate = None;
    let mut pid = None;
    let mut key = None;
    let mut a = Args {
        gate: Uri::from_static("http://127.0.0.1"),
        pid: 0,
        key: String::new(),
        user: "ana".into(),
        concurrency: 200,
        seconds: 10.0,
        idle_seconds: 3.0,
        after_seconds: 11.0,
        stop_rss_kib: 6144 * 1024,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--gate" => gate = Some(value()?),
            "--pid" => pid = Some(value()?.parse().context("--pid")?),
            "--key" => key = Some(value()?),
            "--user" => a.user = value()?,
            "--concurrency" => a.concurrency = value()?.parse().context("--concurrency")?,
            "--seconds" => a.seconds = value()?.parse().context("--seconds")?,
            "--idle-seconds" => a.idle_seconds = value()?.parse().context("--idle-seconds")?,
            "--after-seconds" => a.after_seconds = value()?.parse().context("--after-seconds")?,
            "--stop-rss-mib" => {
                a.stop_rss_kib = value()?.parse::<u64>().context("--stop-rss-mib")? * 1024
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let (Some(gate), Some(pid), Some(key)) = (gate, pid, key) else {
        bail!("--gate, --pid and --key are needed\n{USAGE}");
    };
    a.gate = gate
        .parse()
        .with_context(|| format!("--gate: bad URL {gate:?}"))?;
    if a.gate.scheme_str() != Some("http") || a.gate.host() != Some("127.0.0.1") {
        bail!("--gate must be http://127.0.0.1:PORT: this tool floods only the local host");
    }
    if a.concurrency == 0 {
        bail!("--concurrency must be 1 or more");
    }
    a.pid = pid;
    a.key = key;
    Ok(Some(a))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends a request and reads the whole answer; the status.
async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> anyhow::Result<u16> {
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// The key's requests, one after another until `stop`: their latencies, and how many
/// answered other than 200.
async fn key_requests(
    client: HttpClient,
    url: Uri,
    key: String,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    let (mut times, mut bad) = (Vec::new(), 0);
    while !stop.load(Ordering::Acquire) {
        let req = Request::post(url.clone())
            .header("content-type", "application/json")
            .header("x-api-key", key.as_str())
            .body(Full::new(Bytes::from_static(KEY_BODY.as_bytes())));
        let Ok(req) = req else { break };
        let started = Instant::now();
        match send(&client, req).await {
            Ok(200) => times.push(started.elapsed()),
            _ => bad += 1,
        }
        tokio::time::sleep(KEY_PAUSE).await;
    }
    (times, bad)
}

/// The gate's resident memory, peak resident memory (KiB) and threads.
fn proc_status(pid: u32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?, field("Threads:")?))
}

/// The largest resident memory and thread count seen.
#[derive(Default)]
struct Peaks {
    rss_kib: AtomicU64,
    threads: AtomicU64,
}

fn sample(pid: u32, peaks: &Peaks, stop_rss_kib: u64, stop_logins: &AtomicBool) {
    if let Some((rss, _, threads)) = proc_status(pid) {
        peaks.rss_kib.fetch_max(rss, Ordering::Relaxed);
        peaks.threads.fetch_max(threads, Ordering::Relaxed);
        if rss > stop_rss_kib {
            stop_logins.store(true, Ordering::Release);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n= p50= p99= max=` of `times`, in ms.
fn summary(times: &mut [Duration]) -> String {
    if times.is_empty() {
        return "n=0 p50_ms=- p99_ms=- max_ms=-".into();
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        times.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(1.0)),
    )
}

/// The `i`th flooding address: 10.0.0.1, 10.0.0.2, … (never the same one twice).
fn address(i: u64) -> String {
    let i = i + 1;
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("login_flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Some(a) = parse_args()? else {
        return Ok(());
    };
    let a = Arc::new(a);
    let base = a.gate.to_string();
    let base = base.trim_end_matches('/');
    let generate: Uri = format!("{base}/api/generate").parse()?;
    let login: Uri = format!("{base}/auth/login").parse()?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    proc_status(a.pid).with_context(|| format!("no process {}", a.pid))?;

    // Idle: the key alone.
    let stop = Arc::new(AtomicBool::new(false));
    let idle = tokio::spawn(key_requests(
        client.clone(),
        generate.clone(),
        a.key.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs_f64(a.idle_seconds)).await;
    stop.store(true, Ordering::Release);
    let (mut idle_times, idle_bad) = idle.await?;
    let (rss, _, threads) = proc_status(a.pid).context("the gate exited")?;
    println!(
        "idle key {} non200={idle_bad} rss_mib={:.1} threads={threads}",
        summary(&mut idle_times),
        rss as f64 / 1024.0,
    );

    // Flood: the key again, the logins, and the sampler.
    let peaks = Arc::new(Peaks::default());
    let stop_key = Arc::new(AtomicBool::new(false));
    let stop_logins = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (a, peaks, stop_key, stop_logins) = (
            a.clone(),
            peaks.clone(),
            stop_key.clone(),
            stop_logins.clone(),
        );
        tokio::spawn(async move {
            while !stop_key.load(Ordering::Acquire) {
                sample(a.pid, &peaks, a.stop_rss_kib, &stop_logins);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let key_task = tokio::spawn(key_requests(
        client.clone(),
        generate,
        a.key.clone(),
        stop_key.clone(),
    ));
    let next = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let login_times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(a.seconds);
    let mut flooders = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency {
        let (a, login, next, statuses, login_times, stop_logins) = (
            a.clone(),
            login.clone(),
            next.clone(),
            statuses.clone(),
            login_times.clone(),
            stop_logins.clone(),
        );
        // Its own connection per flooder, as distinct attackers would have.
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        flooders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"username":{},"password":"wrong-{i}"}}"#,
                    serde_json::Value::from(a.user.as_str())
                );
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(login.clone())
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", address(i))
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else { break };
                let t = Instant::now();
                let status = match send(&client, req).await {
                    Ok(s) => s.to_string(),
                    Err(_) => "error".to_string(),
                };
                let took = t.elapsed();
                login_times.lock().map(|mut v| v.push(took)).ok();
                if let Ok(mut m) = statuses.lock() {
                    *m.entry(status).or_default() += 1;
                }
                if Instant::now() >= until || stop_logins.load(Ordering::Acquire) {
                    break;
                }
            }
        }));
    }
    for f in flooders {
        f.await?;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    stop_key.store(true, Ordering::Release);
    let (mut key_times, key_bad) = key_task.await?;
    sampler.await?;
    let (_, hwm, _) = proc_status(a.pid).context("the gate exited")?;
    let statuses = statuses.lock().map(|m| m.clone()).unwrap_or_default();
    let sent: u64 = statuses.values().sum();
    let statuses: Vec<String> = statuses
        .iter()
        .map(|(s, n)| format!("status_{s}={n}"))
        .collect();
    let mut login_times = login_times.lock().map(|v| v.clone()).unwrap_or_default();
    println!(
        "flood concurrency={} seconds={flood_secs:.1} logins={sent} {} stopped={} \
         rss_max_mib={:.1} hwm_mib={:.1} threads_max={}",
        a.concurrency,
        statuses.join(" "),
        u8::from(stop_logins.load(Ordering::Acquire)),
        peaks.rss_kib.load(Ordering::Relaxed) as f64 / 1024.0,
        hwm as f64 / 1024.0,
        peaks.threads.load(Ordering::Relaxed),
    );
    println!("flood key {} non200={key_bad}", summary(&mut key_times));
    println!("flood login {}", summary(&mut login_times));

    // After: what the gate keeps once the flood is over (tokio lets an idle blocking
    // thread go after 10 s).
    tokio::time::sleep(Duration::from_secs_f64(a.after_seconds)).await;
    let (rss, _, threads) = proc_status(a.pid).context("the gate exited")?;
    println!(
        "after seconds={} rss_mib={:.1} threads={threads}",
        a.after_seconds,
        rss as f64 / 1024.0
    );
    Ok(())
}
