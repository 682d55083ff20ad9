//! `aigate audit`: authentication failures and admin actions, and their retention
//! (`--prune-older-than`).

use std::path::Path;
use std::time::Duration;

use super::{open, operator};
use crate::cli::AuditArgs;
use crate::output::{self, opt};
use crate::store::{OpenMode, audit, now, rfc3339};

/// Runs `aigate audit`.
pub fn run(db: &Path, a: AuditArgs) -> anyhow::Result<()> {
    match a.prune_older_than {
        Some(age) => prune(db, age, a.yes),
        None => list(db, a.since, a.json.json),
    }
}

/// Entries from `since` ago on, oldest first.
fn list(db: &Path, since: Duration, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let rows = audit::list(store.conn(), now() - since.as_secs() as i64)?;
    if json {
        return output::print_json(&rows);
    }
    let mut t = output::table(&["AT", "KIND", "IP", "REASON", "KEY", "USER", "DETAIL"]);
    for r in &rows {
        t.add_row(vec![
            r.at.clone(),
            r.kind.clone(),
            opt(r.ip.as_deref()),
            opt(r.reason.as_deref()),
            opt(r.key_prefix.as_deref()),
            opt(r.user.as_deref()),
            opt(r.detail.as_deref()),
        ]);
    }
    output::print_table(&t, "no audit entries in that period")
}

/// Deletes the entries older than `age`, asking first on a terminal when there are any;
/// the deletion is itself recorded (`audit_prune`).
fn prune(db: &Path, age: Duration, yes: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let before = now() - age.as_secs() as i64;
    let doomed = audit::count_before(store.conn(), before)?;
    if doomed > 0 {
        output::confirm(
            &format!(
                "Delete {doomed} audit entries from before {}?",
                rfc3339(before)
            ),
            yes,
        )?;
    }
    let deleted = store.write(|tx| audit::prune_audited(tx, before, &operator()))?;
    output::status(format_args!(
        "deleted {deleted} audit entries from before {}",
        rfc3339(before)
    ));
    Ok(())
}
