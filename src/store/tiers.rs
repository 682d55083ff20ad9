//! Tiers: named bundles of limits (requests per minute, concurrency, tokens per day,
//! allowed models), whether the tier may administer the gate, and how the gate's queue
//! treats its requests while they wait for a slot (priority, weight, max wait, max queued).

use std::ops::RangeInclusive;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::{Result, StoreError, now};

/// The priorities a tier may have.
pub const PRIORITIES: RangeInclusive<i32> = -1000..=1000;
/// The weights a tier may have.
pub const WEIGHTS: RangeInclusive<u32> = 1..=1000;
/// The longest bound on a request's wait, in seconds: one day. A wait longer than that
/// is a client that has long given up.
pub const MAX_WAIT_SECS: u64 = 86_400;
/// The largest bound on one caller's waiting requests.
pub const MAX_QUEUED: u32 = 100_000;

/// A tier as stored. `None` limits are unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub name: String,
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub models: Vec<String>,
    pub admin: bool,
    /// Requests of a higher priority are always served before those of a lower one.
    pub priority: i32,
    /// Within one priority, callers share the slots in proportion to their tier's weight.
    pub weight: u32,
    /// Seconds a request may wait for a slot before it is refused; `None`: no bound.
    #[serde(rename = "max_wait_secs")]
    pub max_wait: Option<u64>,
    /// Requests one user (or one key without a user) may have waiting; beyond it a
    /// request is refused at once (0: never waits). `None`: no bound.
    pub max_queued: Option<u32>,
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
    pub priority: Option<i32>,
    pub weight: Option<u32>,
    /// Seconds; `Unlimited` removes the bound.
    pub max_wait: Change<u64>,
    /// `Unlimited` removes the bound.
    pub max_queued: Change<u32>,
}

impl TierChange {
    /// Checks the queue settings against their ranges.
    pub fn check(&self) -> Result<()> {
        let invalid = |what: String| Err(StoreError::Invalid(what));
        if let Some(p) = self.priority.filter(|p| !PRIORITIES.contains(p)) {
            return invalid(format!(
                "--priority {p} is out of range: use {} to {}",
                PRIORITIES.start(),
                PRIORITIES.end()
            ));
        }
        if let Some(w) = self.weight.filter(|w| !WEIGHTS.contains(w)) {
            return invalid(format!(
                "--weight {w} is out of range: use {} to {}",
                WEIGHTS.start(),
                WEIGHTS.end()
            ));
        }
        if let Change::Set(secs) = self.max_wait
            && !(1..=MAX_WAIT_SECS).contains(&secs)
        {
            return invalid(format!(
                "--max-wait {secs}s is out of range: use 1s to 1d ({MAX_WAIT_SECS}s), or unlimited"
            ));
        }
        if let Change::Set(n) = self.max_queued
            && n > MAX_QUEUED
        {
            return invalid(format!(
                "--max-queued {n} is out of range: use 0 to {MAX_QUEUED}, or unlimited"
            ));
        }
        Ok(())
    }
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
        priority: r.get(6)?,
        weight: r.get(7)?,
        max_wait: r.get::<_, Option<i64>>(8)?.map(|v| v.max(0) as u64),
        max_queued: r.get(9)?,
    })
}

const COLUMNS: &str = "name, rpm, concurrency, tokens_per_day, models, is_admin, \
                       priority, weight, max_wait, max_queued";

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

/// Creates the tier when missing (unlimited, all models, priority 0, weight 1, no bound
/// on waiting) and applies `change`. Returns the tier as it now is, and whether it was
/// created.
pub fn set(conn: &Connection, name: &str, change: &TierChange) -> Result<(Tier, bool)> {
    check_name(name)?;
    if let Some(models) = &change.models {
        check_models(models)?;
    }
    change.check()?;
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
    apply(
        conn,
        name,
        "priority",
        &change.priority.map_or(Change::Keep, Change::Set),
    )?;
    apply(
        conn,
        name,
        "weight",
        &change.weight.map_or(Change::Keep, Change::Set),
    )?;
    apply(conn, name, "max_wait", &change.max_wait)?;
    apply(conn, name, "max_queued", &change.max_queued)?;
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
            "tier={} rpm={} concurrency={} tokens_per_day={} models={} admin={} \
             priority={} weight={} max_wait={} max_queued={} by={by}",
            tier.name,
            limit(tier.rpm.map(u64::from)),
            limit(tier.concurrency.map(u64::from)),
            limit(tier.tokens_per_day),
            tier.models.join(","),
            tier.admin,
            tier.priority,
            tier.weight,
            tier.max_wait
                .map_or_else(|| "-".to_string(), |s| format!("{s}s")),
            limit(tier.max_queued.map(u64::from)),
        ),
    )?;
    Ok((tier, created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenMode, Store, latest_version, migrations};

    /// (priority, weight, max_wait, max_queued) of a tier.
    fn queue(t: &Tier) -> (i32, u32, Option<u64>, Option<u32>) {
        (t.priority, t.weight, t.max_wait, t.max_queued)
    }

    #[test]
    fn a_version_2_database_gains_the_queue_settings_and_keeps_its_tiers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("create");
            for (n, sql) in &migrations()[..2] {
                conn.execute_batch(sql).expect("an old migration");
                conn.execute_batch(&format!("PRAGMA user_version = {n}"))
                    .expect("user_version");
            }
            conn.execute_batch(
                "UPDATE tiers SET rpm = 25 WHERE name = 'free';
                 INSERT INTO tiers (name, rpm, models, is_admin, updated_at)
                     VALUES ('gold', 100, 'llama3*', 0, 0);",
            )
            .expect("old rows");
        }
        let store = Store::open(&path, OpenMode::Existing).expect("migrate");
        assert_eq!(store.schema_version().expect("version"), latest_version());
        let tiers = list(store.conn()).expect("list");
        let names: Vec<&str> = tiers.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["admin", "free", "gold", "pro"]);
        let by = |name: &str| get(store.conn(), name).expect(name);
        assert_eq!(queue(&by("free")), (0, 1, Some(60), Some(4)));
        assert_eq!(queue(&by("pro")), (10, 1, Some(300), Some(32)));
        assert_eq!(queue(&by("admin")), (20, 1, None, None));
        // The operator's own tier gets the defaults, and everything it had before.
        let gold = by("gold");
        assert_eq!(queue(&gold), (0, 1, None, None));
        assert_eq!(
            (gold.rpm, &*gold.models),
            (Some(100), &["llama3*".to_string()][..])
        );
        assert_eq!(by("free").rpm, Some(25));
    }

    #[test]
    fn queue_settings_are_set_cleared_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        let change = TierChange {
            priority: Some(-5),
            weight: Some(3),
            max_wait: Change::Set(120),
            max_queued: Change::Set(0),
            ..TierChange::default()
        };
        let (gold, created) = store.write(|tx| set(tx, "gold", &change)).expect("set");
        assert!(created);
        assert_eq!(queue(&gold), (-5, 3, Some(120), Some(0)));

        // Keep leaves them; Unlimited clears the bounds.
        let (gold, _) = store
            .write(|tx| set(tx, "gold", &TierChange::default()))
            .expect("keep");
        assert_eq!(queue(&gold), (-5, 3, Some(120), Some(0)));
        let clear = TierChange {
            max_wait: Change::Unlimited,
            max_queued: Change::Unlimited,
            ..TierChange::default()
        };
        let (gold, _) = store.write(|tx| set(tx, "gold", &clear)).expect("clear");
        assert_eq!(queue(&gold), (-5, 3, None, None));

        // The ends of each range are accepted.
        let edges = TierChange {
            priority: Some(1000),
            weight: Some(1000),
            max_wait: Change::Set(86_400),
            max_queued: Change::Set(100_000),
            ..TierChange::default()
        };
        let (gold, _) = store.write(|tx| set(tx, "gold", &edges)).expect("edges");
        assert_eq!(queue(&gold), (1000, 1000, Some(86_400), Some(100_000)));

        let with = |f: fn(&mut TierChange)| {
            let mut c = TierChange::default();
            f(&mut c);
            c
        };
        let bad = [
            (with(|c| c.priority = Some(1001)), "--priority 1001"),
            (with(|c| c.priority = Some(-1001)), "--priority -1001"),
            (with(|c| c.weight = Some(0)), "--weight 0"),
            (with(|c| c.weight = Some(1001)), "--weight 1001"),
            (with(|c| c.max_wait = Change::Set(0)), "--max-wait 0s"),
            (
                with(|c| c.max_wait = Change::Set(86_401)),
                "--max-wait 86401s",
            ),
            (
                with(|c| c.max_queued = Change::Set(100_001)),
                "--max-queued 100001",
            ),
        ];
        for (change, why) in bad {
            for name in ["gold", "new"] {
                let e = store.write(|tx| set(tx, name, &change)).expect_err(why);
                assert!(matches!(e, StoreError::Invalid(_)), "{why}: {e:?}");
                assert!(e.to_string().contains(why), "{why}: {e}");
            }
        }
        assert_eq!(
            queue(&get(store.conn(), "gold").expect("gold")),
            (1000, 1000, Some(86_400), Some(100_000))
        );
        assert!(matches!(
            get(store.conn(), "new"),
            Err(StoreError::NotFound(_))
        ));
    }
}
