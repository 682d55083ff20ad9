//! `aigate status`: what an operator checks first.

use std::path::Path;

use serde::Serialize;

use super::open;
use crate::output;
use crate::store::{OpenMode, hosts, keys, model_pins, tiers, users};

#[derive(Serialize)]
struct Status {
    version: &'static str,
    db_path: String,
    schema_version: i64,
    keys: i64,
    usable_keys: i64,
    users: i64,
    tiers: usize,
    hosts: i64,
    draining_hosts: i64,
    model_pins: i64,
}

/// Runs `aigate status`.
pub fn run(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let (keys, usable_keys) = keys::counts(store.conn())?;
    let (hosts, draining_hosts) = hosts::counts(store.conn())?;
    let s = Status {
        version: env!("CARGO_PKG_VERSION"),
        db_path: db.display().to_string(),
        schema_version: store.schema_version()?,
        keys,
        usable_keys,
        users: users::count(store.conn())?,
        tiers: tiers::list(store.conn())?.len(),
        hosts,
        draining_hosts,
        model_pins: model_pins::count(store.conn())?,
    };
    if json {
        return output::print_json(&s);
    }
    output::print_fields(
        Some(&format!("aigate {}", s.version)),
        &[
            ("database", s.db_path.clone()),
            ("schema version", s.schema_version.to_string()),
            ("keys", format!("{} ({} usable)", s.keys, s.usable_keys)),
            ("users", s.users.to_string()),
            ("tiers", s.tiers.to_string()),
            (
                "hosts",
                format!("{} ({} draining)", s.hosts, s.draining_hosts),
            ),
            ("pinned models", s.model_pins.to_string()),
        ],
    )
}
