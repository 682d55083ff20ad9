//! The audit table: authentication failures (written by the gate in batches) and admin
//! actions (written in the same transaction as the action).

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Result, rfc3339};

/// One audit row to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub at: i64,
    pub kind: String,
    pub ip: Option<String>,
    pub reason: Option<String>,
    pub key_prefix: Option<String>,
    pub user: Option<String>,
    pub detail: Option<String>,
}

/// An audit row as `aigate audit --json` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shown {
    pub at: String,
    pub kind: String,
    pub ip: Option<String>,
    pub reason: Option<String>,
    pub key_prefix: Option<String>,
    pub user: Option<String>,
    pub detail: Option<String>,
}

/// Writes `entries` with one prepared statement (the caller holds the transaction).
pub fn insert(conn: &Connection, entries: &[Entry]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit (at, kind, ip, reason, key_prefix, user, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in entries {
        stmt.execute(params![
            e.at,
            e.kind,
            e.ip,
            e.reason,
            e.key_prefix,
            e.user,
            e.detail
        ])?;
    }
    Ok(())
}

/// Records an admin action taken through the CLI or the admin API.
pub fn admin_action(
    conn: &Connection,
    kind: &str,
    user: Option<&str>,
    key_prefix: Option<&str>,
    detail: String,
) -> Result<()> {
    insert(
        conn,
        &[Entry {
            at: super::now(),
            kind: kind.into(),
            user: user.map(String::from),
            key_prefix: key_prefix.map(String::from),
            detail: Some(detail),
            ..Entry::default()
        }],
    )
}

/// Deletes the rows older than `before` (Unix seconds); returns how many.
pub fn prune(conn: &Connection, before: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM audit WHERE at < ?1", [before])?)
}

/// Rows at or after `since` (Unix seconds), oldest first.
pub fn list(conn: &Connection, since: i64) -> Result<Vec<Shown>> {
    let mut stmt = conn.prepare(
        "SELECT at, kind, ip, reason, key_prefix, user, detail FROM audit
         WHERE at >= ?1 ORDER BY at, id",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok(Shown {
            at: rfc3339(r.get(0)?),
            kind: r.get(1)?,
            ip: r.get(2)?,
            reason: r.get(3)?,
            key_prefix: r.get(4)?,
            user: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
