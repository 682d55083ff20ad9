//! Time to first chunk, for the benchmark (`bench/run`): sends `--count` streaming
//! requests to each `--url` in turn (alternating, so every URL sees the same moment of a
//! noisy machine), and times each from sending the request to the first body chunk. The
//! rest of each body is read, so the pooled connection is reused.
//!
//! `cargo run --release --example ttfb -- --url URL [--url URL…] [--key KEY] [--count N]
//! [--body JSON]`
//!
//! Prints one line per URL: `ttfb URL n=N min_ms=… p50_ms=… p90_ms=… max_ms=…`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const USAGE: &str = "usage: ttfb --url URL [--url URL…] [--key KEY] [--count N] [--body JSON]";
const WARMUP: usize = 2;

struct Args {
    urls: Vec<Uri>,
    key: Option<String>,
    count: usize,
    body: String,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        urls: Vec::new(),
        key: None,
        count: 50,
        body: r#"{"model":"llama3.2","prompt":"hi"}"#.to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => {
                let v = value()?;
                a.urls
                    .push(v.parse().with_context(|| format!("--url: bad URL {v:?}"))?);
            }
            "--key" => a.key = Some(value()?),
            "--count" => {
                let v = value()?;
                a.count = v
                    .parse()
                    .with_context(|| format!("--count: bad number {v:?}"))?;
            }
            "--body" => a.body = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.urls.is_empty() || a.count == 0 {
        bail!("give at least one --url and a --count of 1 or more\n{USAGE}");
    }
    Ok(Some(a))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One request: the time to its first body chunk.
async fn once(client: &HttpClient, a: &Args, url: &Uri) -> anyhow::Result<Duration> {
    let mut req = Request::post(url.clone()).header("content-type", "application/json");
    if let Some(k) = &a.key {
        req = req.header("x-api-key", k.as_str());
    }
    let req = req.body(Full::new(Bytes::from(a.body.clone())))?;
    let started = Instant::now();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("{url}"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading the body of {url}"))?;
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(started.elapsed());
        }
    }
    first.with_context(|| format!("{url} sent an empty body"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ttfb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Some(a) = parse_args()? else {
        return Ok(());
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(a.count); a.urls.len()];
    for i in 0..a.count + WARMUP {
        for (u, url) in a.urls.iter().enumerate() {
            let t = once(&client, &a, url).await?;
            if i >= WARMUP {
                times[u].push(t);
            }
        }
    }
    for (url, mut t) in a.urls.iter().zip(times) {
        t.sort();
        let pick = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "ttfb {url} n={} min_ms={:.3} p50_ms={:.3} p90_ms={:.3} max_ms={:.3}",
            t.len(),
            ms(pick(0.0)),
            ms(pick(0.5)),
            ms(pick(0.9)),
            ms(pick(1.0)),
        );
    }
    Ok(())
}
