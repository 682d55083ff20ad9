//! Bulk-loads API keys for the benchmark (`bench/run`): `--count N` keys of `--tier T`
//! (default `free`) into the database at `--db PATH`, through the store code
//! (`aigate::store::keys::create`) in one transaction, so a million keys take seconds
//! rather than a million CLI processes. The raw keys are thrown away.
//!
//! `cargo run --release --example bulk_keys -- --db PATH --count N [--tier T]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use aigate::auth::key;
use aigate::store::keys::{self, NewKeyParams};
use aigate::store::{OpenMode, Store, StoreError};
use anyhow::{Context, bail};

const USAGE: &str = "usage: bulk_keys --db PATH --count N [--tier T]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulk_keys: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut db: Option<PathBuf> = None;
    let mut count: Option<u64> = None;
    let mut tier = "free".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => db = Some(value()?.into()),
            "--count" => {
                let v = value()?;
                count = Some(
                    v.parse()
                        .with_context(|| format!("--count: bad number {v:?}"))?,
                );
            }
            "--tier" => tier = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let (Some(db), Some(count)) = (db, count) else {
        bail!("{USAGE}");
    };
    let started = Instant::now();
    let mut store =
        Store::open(&db, OpenMode::Create).with_context(|| format!("opening {}", db.display()))?;
    let params = NewKeyParams {
        tier: Some(tier),
        ..NewKeyParams::default()
    };
    store.write(|tx| {
        for _ in 0..count {
            let new = key::generate()
                .map_err(|e| StoreError::Invalid(format!("the OS random source: {e}")))?;
            keys::create(tx, &new, &params)?;
        }
        Ok(())
    })?;
    eprintln!(
        "bulk_keys: {count} keys into {} in {:.1} s",
        db.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
