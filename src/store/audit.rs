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

/// Records an admin action taken through the CLI or the admin API. Only the store's
/// `*_audited` functions call this, so that every admin write and its row go together.
pub(super) fn admin_action(
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

/// Deletes the rows from before `before` (Unix seconds) and returns how many went: the
/// audit table's retention. Uses the index on `audit(at)`; the caller holds the
/// transaction (the CLI through [`prune_audited`], the gate's database thread on its own).
pub fn prune(conn: &Connection, before: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM audit WHERE at < ?1", [before])?)
}

/// How many rows are from before `before`: what [`prune`] would delete.
pub fn count_before(conn: &Connection, before: i64) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT count(*) FROM audit WHERE at < ?1", [before], |r| {
        r.get(0)
    })?;
    Ok(n.max(0) as u64)
}

/// [`prune`] with its `audit_prune` row, written after the delete so that it stays;
/// `by` names who acted.
pub fn prune_audited(conn: &Connection, before: i64, by: &str) -> Result<usize> {
    let deleted = prune(conn, before)?;
    admin_action(
        conn,
        "audit_prune",
        None,
        None,
        format!("before={} deleted={deleted} by={by}", rfc3339(before)),
    )?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenMode, Store};

    fn row(at: i64) -> Entry {
        Entry {
            at,
            kind: "auth_failure".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn prune_deletes_only_rows_before_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        store
            .write(|tx| insert(tx, &[row(10), row(19), row(20), row(30)]))
            .expect("insert");
        assert_eq!(count_before(store.conn(), 20).expect("count"), 2);
        assert_eq!(store.write(|tx| prune(tx, 20)).expect("prune"), 2);
        assert_eq!(store.write(|tx| prune(tx, 20)).expect("prune"), 0);
        let left: Vec<String> = list(store.conn(), 0)
            .expect("list")
            .into_iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(left, [rfc3339(20), rfc3339(30)]);

        let deleted = store
            .write(|tx| prune_audited(tx, 25, "alice"))
            .expect("prune_audited");
        assert_eq!(deleted, 1);
        let rows = list(store.conn(), 0).expect("list");
        assert_eq!(rows.len(), 2);
        let last = rows.last().expect("the prune row");
        assert_eq!(last.kind, "audit_prune");
        assert_eq!(
            last.detail.as_deref(),
            Some(format!("before={} deleted=1 by=alice", rfc3339(25)).as_str())
        );
    }

    #[test]
    fn prune_uses_the_index_on_at() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        let plan: Vec<String> = store
            .conn()
            .prepare("EXPLAIN QUERY PLAN DELETE FROM audit WHERE at < ?1")
            .expect("prepare")
            .query_map([0], |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        assert!(plan.iter().any(|p| p.contains("audit_at")), "{plan:?}");
    }
}
