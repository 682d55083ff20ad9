//! `aigate usage`: requests and tokens, grouped by key, user or model.

use std::path::Path;

use super::open;
use crate::cli::{UsageArgs, UsageBy};
use crate::output::{self, opt};
use crate::store::usage::{self, GroupBy};
use crate::store::{OpenMode, now};

/// Runs `aigate usage`.
pub fn run(db: &Path, a: UsageArgs) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let since = a.since.map_or(0, |d| now() - d.as_secs() as i64);
    let by = match a.by {
        None => GroupBy::All,
        Some(UsageBy::Key) => GroupBy::Key,
        Some(UsageBy::User) => GroupBy::User,
        Some(UsageBy::Model) => GroupBy::Model,
    };
    let rows = usage::report(store.conn(), since, by)?;
    if a.json.json {
        return output::print_json(&rows);
    }
    let mut t = output::table(&[
        "KEY",
        "USER",
        "MODEL",
        "REQUESTS",
        "PROMPT TOKENS",
        "COMPLETION TOKENS",
    ]);
    for r in &rows {
        t.add_row(vec![
            opt(r.key_id),
            opt(r.user.as_deref()),
            opt(r.model.as_deref()),
            r.requests.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
        ]);
    }
    output::print_table(&t, "no usage recorded")
}
