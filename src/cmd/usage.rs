//! `aigate usage`: requests and tokens, grouped by key, user or model.

use std::path::Path;

use super::open;
use crate::cli::{UsageArgs, UsageBy};
use crate::output::{self, opt};
use crate::store::usage::{self, GroupBy, Row};
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
    // Only the columns grouped by, then the counts: a column that is null on every row
    // says nothing.
    let grouped: &[Column] = match by {
        GroupBy::All => &[("KEY", key), ("USER", user), ("MODEL", model)],
        GroupBy::Key => &[("KEY", key)],
        GroupBy::User => &[("USER", user)],
        GroupBy::Model => &[("MODEL", model)],
    };
    let headers: Vec<&str> = grouped
        .iter()
        .map(|(h, _)| *h)
        .chain(["REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS"])
        .collect();
    let mut t = output::table(&headers);
    for r in &rows {
        let mut cells: Vec<String> = grouped.iter().map(|(_, cell)| cell(r)).collect();
        cells.extend([
            r.requests.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
        ]);
        t.add_row(cells);
    }
    output::print_table(&t, "no usage recorded")
}

/// A column of the table: its header and how a row fills it.
type Column = (&'static str, fn(&Row) -> String);

fn key(r: &Row) -> String {
    opt(r.key_id)
}

fn user(r: &Row) -> String {
    opt(r.user.as_deref())
}

fn model(r: &Row) -> String {
    opt(r.model.as_deref())
}
