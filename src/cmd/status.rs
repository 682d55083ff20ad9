//! `aigate status`: what an operator checks first.

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
    output::print_fields(
        Some(&format!("aigate {}", s.version)),
        &[
            ("database", s.db_path.clone()),
            ("schema version", s.schema_version.to_string()),
            ("keys", format!("{} ({} usable)", s.keys, s.usable_keys)),
            ("users", s.users.to_string()),
            ("tiers", s.tiers.to_string()),
        ],
    )
}
