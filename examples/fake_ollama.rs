//! A runnable fake Ollama for the benchmark and the README walkthrough; with `--slots`,
//! `--max-loaded`, `--load-time-ms` and `--tokens-per-second` it simulates a GPU host.
//!
//! `cargo run --example fake_ollama -- [OPTIONS]` (see `--help`); runs until Ctrl-C, and
//! dies at once on SIGTERM (no handler), which is how the benchmark kills a host.

#[path = "../tests/support/fake_ollama.rs"]
mod fake_ollama;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use fake_ollama::{FakeOllama, FakeOptions};

const USAGE: &str = "usage: fake_ollama [OPTIONS]
  --listen ADDR              address to bind (default 127.0.0.1:11434)
  --chunk-delay-ms N         delay before each streamed chunk after the first (default 0)
  --first-chunk-delay-ms N   delay before the first streamed chunk (default 0)
  --chunks N                 content chunks per streamed response (default 5)
  --no-host-check            accept any Host header (Ollama answers 403 to foreign hosts)
  --slots N                  requests generating at once, the rest wait in arrival order
                             (OLLAMA_NUM_PARALLEL; default no limit)
  --max-queue N              requests that may wait; more are answered 503 (OLLAMA_MAX_QUEUE;
                             default no limit)
  --installed NAME[,NAME..]  installed models, repeatable (default llama3.2:latest,
                             qwen2.5:7b, nomic-embed-text:latest)
  --max-loaded N             models loaded at once, least recently used unloaded first
                             (OLLAMA_MAX_LOADED_MODELS; default no limit)
  --load-time-ms N           time a model load takes (default 0)
  --tokens-per-second X      pace tokens (one per chunk) instead of --chunk-delay-ms
  GET /fake/stats answers the host's counters as JSON.";

/// Parsed command line.
struct Args {
    listen: SocketAddr,
    opts: FakeOptions,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 11434).into();
    let mut opts = FakeOptions::default();
    let mut installed: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v
                    .parse()
                    .with_context(|| format!("--listen: bad address {v:?}"))?;
            }
            "--chunk-delay-ms" => {
                opts.chunk_delay = millis("--chunk-delay-ms", &value("--chunk-delay-ms")?)?
            }
            "--first-chunk-delay-ms" => {
                opts.first_chunk_delay =
                    millis("--first-chunk-delay-ms", &value("--first-chunk-delay-ms")?)?;
            }
            "--chunks" => opts.chunks = number("--chunks", &value("--chunks")?)?,
            "--no-host-check" => opts.check_host = false,
            "--slots" => opts.slots = Some(number("--slots", &value("--slots")?)?),
            "--max-queue" => opts.max_queue = Some(number("--max-queue", &value("--max-queue")?)?),
            "--installed" => {
                let v = value("--installed")?;
                let names = v.split(',').map(str::trim).filter(|n| !n.is_empty());
                installed.extend(names.map(str::to_owned));
            }
            "--max-loaded" => {
                opts.max_loaded = Some(number("--max-loaded", &value("--max-loaded")?)?);
            }
            "--load-time-ms" => {
                opts.load_time = millis("--load-time-ms", &value("--load-time-ms")?)?
            }
            "--tokens-per-second" => {
                let v = value("--tokens-per-second")?;
                let tps: f64 = v
                    .parse()
                    .with_context(|| format!("--tokens-per-second: bad number {v:?}"))?;
                if !(tps.is_finite() && tps > 0.0) {
                    bail!("--tokens-per-second must be above 0, not {v:?}");
                }
                opts.tokens_per_second = Some(tps);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !installed.is_empty() {
        opts.installed = Some(installed);
    }
    Ok(Some(Args { listen, opts }))
}

fn number(name: &str, v: &str) -> anyhow::Result<usize> {
    v.parse()
        .with_context(|| format!("{name}: bad number {v:?}"))
}

fn millis(name: &str, v: &str) -> anyhow::Result<Duration> {
    let ms: u64 = v
        .parse()
        .with_context(|| format!("{name}: bad number {v:?}"))?;
    Ok(Duration::from_millis(ms))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake_ollama: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let fake = FakeOllama::start_on(args.listen, args.opts)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("fake ollama listening on http://{}", fake.addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    fake.stop().await;
    Ok(())
}
