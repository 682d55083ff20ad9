//! `aigate audit`: authentication failures and admin actions.

use std::path::Path;

use super::open;
use crate::cli::AuditArgs;
use crate::output::{self, opt};
use crate::store::{OpenMode, audit, now};

/// Runs `aigate audit`.
pub fn run(db: &Path, a: AuditArgs) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let rows = audit::list(store.conn(), now() - a.since.as_secs() as i64)?;
    if a.json.json {
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
