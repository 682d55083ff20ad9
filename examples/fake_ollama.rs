//! A runnable fake Ollama for the benchmark and the README walkthrough.
//!
//! `cargo run --example fake_ollama -- [--listen ADDR] [--chunk-delay-ms N] [--chunks N]
//! [--first-chunk-delay-ms N] [--no-host-check]`; runs until Ctrl-C.

#[path = "../tests/support/fake_ollama.rs"]
mod fake_ollama;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use fake_ollama::{FakeOllama, FakeOptions};

const USAGE: &str = "usage: fake_ollama [--listen ADDR] [--chunk-delay-ms N] [--chunks N] \
[--first-chunk-delay-ms N] [--no-host-check]
  --listen ADDR              address to bind (default 127.0.0.1:11434)
  --chunk-delay-ms N         delay before each streamed chunk after the first (default 0)
  --first-chunk-delay-ms N   delay before the first streamed chunk (default 0)
  --chunks N                 content chunks per streamed response (default 5)
  --no-host-check            accept any Host header (Ollama answers 403 to foreign hosts)";

/// Parsed command line.
struct Args {
    listen: SocketAddr,
    opts: FakeOptions,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 11434).into();
    let mut opts = FakeOptions::default();
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
            "--chunks" => {
                let v = value("--chunks")?;
                opts.chunks = v
                    .parse()
                    .with_context(|| format!("--chunks: bad number {v:?}"))?;
            }
            "--no-host-check" => opts.check_host = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(Args { listen, opts }))
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
