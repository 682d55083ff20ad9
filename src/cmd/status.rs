//! `aigate status`: what an operator checks first.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::open;
use crate::output;
use crate::store::{OpenMode, keys, tiers, users};

#[derive(Serialize)]
struct Status {
    version: &'static str,
    db_path: String,
    schema_version: i64,
    keys: i64,
    usable_keys: i64,
    users: i64,
    tiers: usize,
}

/// Runs `aigate status`.
pub fn run(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let (keys, usable_keys) = keys::counts(store.conn())?;
    let s = Status {
        version: env!("CARGO_PKG_VERSION"),
        db_path: db.display().to_string(),
        schema_version: store.schema_version()?,
        keys,
        usable_keys,
        users: users::count(store.conn())?,
        tiers: tiers::list(store.conn())?.len(),
    };
    if json {
        return output::print_json(&s);
    }
    // writeln!, not println!: a closed stdout is an error (exit 1), not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(out, "aigate {}", s.version)?;
    writeln!(out, "database        {}", s.db_path)?;
    writeln!(out, "schema version  {}", s.schema_version)?;
    writeln!(out, "keys            {} ({} usable)", s.keys, s.usable_keys)?;
    writeln!(out, "users           {}", s.users)?;
    writeln!(out, "tiers           {}", s.tiers)?;
    Ok(())
}
