//! Tiers: named bundles of limits (requests per minute, concurrency, tokens per day,
//! allowed models) and whether the tier may administer the gate.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::{Result, StoreError, now};

/// A tier as stored. `None` limits are unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub name: String,
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub models: Vec<String>,
    pub admin: bool,
}

/// A change to a limit: leave it, clear it (unlimited) or set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    #[default]
    Keep,
    Unlimited,
    Set(T),
}

/// What `tier set` changes; `Keep` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct TierChange {
    pub rpm: Change<u32>,
    pub concurrency: Change<u32>,
    pub tokens_per_day: Change<u64>,
    pub models: Option<Vec<String>>,
    pub admin: Option<bool>,
}

/// Splits a stored comma-separated model list.
pub fn split_models(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
}

/// Checks that every model pattern is a valid glob.
pub fn check_models(models: &[String]) -> Result<()> {
    if models.is_empty() {
        return Err(StoreError::Invalid(
            "--models needs at least one pattern".into(),
        ));
    }
    for m in models {
        globset::Glob::new(m)
            .map_err(|e| StoreError::Invalid(format!("bad model pattern {m:?}: {e}")))?;
    }
    Ok(())
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Tier> {
    Ok(Tier {
        name: r.get(0)?,
        rpm: r.get(1)?,
        concurrency: r.get(2)?,
        tokens_per_day: r.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
        models: split_models(&r.get::<_, String>(4)?),
        admin: r.get(5)?,
    })
}

const COLUMNS: &str = "name, rpm, concurrency, tokens_per_day, models, is_admin";

/// Every tier, by name.
pub fn list(conn: &Connection) -> Result<Vec<Tier>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tiers ORDER BY name"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The tier called `name`, or a failure naming it.
pub fn get(conn: &Connection, name: &str) -> Result<Tier> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tiers WHERE name = ?1"),
        [name],
        from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no tier named {name:?}")))
}

/// Checks that a tier name is usable.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bad tier name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Creates the tier when missing (unlimited, all models) and applies `change`.
/// Returns the tier as it now is, and whether it was created.
pub fn set(conn: &Connection, name: &str, change: &TierChange) -> Result<(Tier, bool)> {
    check_name(name)?;
    if let Some(models) = &change.models {
        check_models(models)?;
    }
    let created = conn.execute(
        "INSERT OR IGNORE INTO tiers (name, models, is_admin, updated_at) VALUES (?1, '*', 0, ?2)",
        params![name, now()],
    )? == 1;
    fn apply<T: rusqlite::ToSql>(
        conn: &Connection,
        name: &str,
        column: &str,
        change: &Change<T>,
    ) -> Result<()> {
        let sql = format!("UPDATE tiers SET {column} = ?1 WHERE name = ?2");
        match change {
            Change::Keep => {}
            Change::Unlimited => {
                conn.execute(&sql, params![rusqlite::types::Null, name])?;
            }
            Change::Set(v) => {
                conn.execute(&sql, params![v, name])?;
            }
        }
        Ok(())
    }
    apply(conn, name, "rpm", &change.rpm)?;
    apply(conn, name, "concurrency", &change.concurrency)?;
    apply(conn, name, "tokens_per_day", &change.tokens_per_day)?;
    if let Some(models) = &change.models {
        conn.execute(
            "UPDATE tiers SET models = ?1 WHERE name = ?2",
            params![models.join(","), name],
        )?;
    }
    if let Some(admin) = change.admin {
        conn.execute(
            "UPDATE tiers SET is_admin = ?1 WHERE name = ?2",
            params![admin, name],
        )?;
    }
    conn.execute(
        "UPDATE tiers SET updated_at = ?1 WHERE name = ?2",
        params![now(), name],
    )?;
    Ok((get(conn, name)?, created))
}

/// [`set`] with its `tier_set` audit row, which records every limit as it now is; `by`
/// names who acted (the caller holds the transaction).
pub fn set_audited(
    conn: &Connection,
    name: &str,
    change: &TierChange,
    by: &str,
) -> Result<(Tier, bool)> {
    let (tier, created) = set(conn, name, change)?;
    let limit = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    super::audit::admin_action(
        conn,
        "tier_set",
        None,
        None,
        format!(
            "tier={} rpm={} concurrency={} tokens_per_day={} models={} admin={} by={by}",
            tier.name,
            limit(tier.rpm.map(u64::from)),
            limit(tier.concurrency.map(u64::from)),
            limit(tier.tokens_per_day),
            tier.models.join(","),
            tier.admin,
        ),
    )?;
    Ok((tier, created))
}
