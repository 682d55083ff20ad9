//! API keys: create, list, show, rotate, revoke, per-key limits, and the gate's lookup
//! by hash. Only the SHA-256 of a key is stored.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::tiers::{Change, check_models, split_models};
use super::{Result, StoreError, now, rfc3339};
use crate::auth::key::{KeyHash, NewKey, RawKey};

/// A key that expires within this long is shown as `expiring`: the default rotation
/// grace period, so a rotated key reads `expiring` for all of its grace.
pub const EXPIRING_WINDOW: i64 = 7 * 86_400;

/// Where a key stands, in the order an operator cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Expiring,
    Expired,
    Revoked,
}

impl KeyStatus {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expiring => "expiring",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// Per-key overrides of the tier's limits; `None` means "the tier's".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub models: Option<Vec<String>>,
}

/// A key as stored, with its user's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: i64,
    pub prefix: String,
    pub name: Option<String>,
    pub user_id: Option<i64>,
    pub user: Option<String>,
    pub tier: String,
    pub overrides: Overrides,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rotated_from: Option<i64>,
}

/// A key in the JSON shape of the spec; `key` only right after create or rotate.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub prefix: String,
    pub name: Option<String>,
    pub user: Option<String>,
    pub tier: String,
    pub status: KeyStatus,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl Key {
    /// The status at `now`.
    pub fn status(&self, now: i64) -> KeyStatus {
        match (self.revoked_at, self.expires_at) {
            (Some(_), _) => KeyStatus::Revoked,
            (None, Some(exp)) if exp <= now => KeyStatus::Expired,
            (None, Some(exp)) if exp - now <= EXPIRING_WINDOW => KeyStatus::Expiring,
            _ => KeyStatus::Active,
        }
    }

    /// The JSON shape, with the raw key when it is being shown for the only time.
    pub fn shown(&self, raw: Option<&RawKey>) -> Shown {
        Shown {
            id: self.id,
            key: raw.map(|k| k.expose().to_string()),
            prefix: self.prefix.clone(),
            name: self.name.clone(),
            user: self.user.clone(),
            tier: self.tier.clone(),
            status: self.status(now()),
            created_at: rfc3339(self.created_at),
            expires_at: self.expires_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            last_used_at: self.last_used_at.map(rfc3339),
        }
    }
}

const SELECT: &str = "SELECT k.id, k.prefix, k.name, k.user_id, u.username, k.tier,
        k.rpm, k.concurrency, k.tokens_per_day, k.models,
        k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.rotated_from,
        COALESCE(u.disabled_at IS NOT NULL, 0)
    FROM api_keys k LEFT JOIN users u ON u.id = k.user_id";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Key> {
    Ok(Key {
        id: r.get(0)?,
        prefix: r.get(1)?,
        name: r.get(2)?,
        user_id: r.get(3)?,
        user: r.get(4)?,
        tier: r.get(5)?,
        overrides: Overrides {
            rpm: r.get(6)?,
            concurrency: r.get(7)?,
            tokens_per_day: r.get::<_, Option<i64>>(8)?.map(|v| v.max(0) as u64),
            models: r.get::<_, Option<String>>(9)?.map(|m| split_models(&m)),
        },
        created_at: r.get(10)?,
        expires_at: r.get(11)?,
        revoked_at: r.get(12)?,
        last_used_at: r.get(13)?,
        rotated_from: r.get(14)?,
    })
}

/// What a new key is made with.
#[derive(Debug, Clone, Default)]
pub struct NewKeyParams {
    pub tier: Option<String>,
    pub user: Option<String>,
    pub name: Option<String>,
    pub expires_at: Option<i64>,
    pub overrides: Overrides,
}

/// Stores a generated key. The tier defaults to the user's tier, else `free`.
pub fn create(conn: &Connection, new: &NewKey, p: &NewKeyParams) -> Result<Key> {
    let user = match &p.user {
        Some(name) => Some(super::users::get(conn, name)?),
        None => None,
    };
    let tier = p
        .tier
        .clone()
        .or_else(|| user.as_ref().map(|u| u.tier.clone()))
        .unwrap_or_else(|| "free".into());
    super::tiers::get(conn, &tier)?;
    if let Some(models) = &p.overrides.models {
        check_models(models)?;
    }
    conn.execute(
        "INSERT INTO api_keys (key_hash, prefix, name, user_id, tier, rpm, concurrency,
                               tokens_per_day, models, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            new.hash.hex(),
            new.prefix,
            p.name,
            user.as_ref().map(|u| u.id),
            tier,
            p.overrides.rpm,
            p.overrides.concurrency,
            p.overrides.tokens_per_day.map(|v| v as i64),
            p.overrides.models.as_ref().map(|m| m.join(",")),
            now(),
            p.expires_at,
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

/// The key with `id`, or a failure naming it.
pub fn get(conn: &Connection, id: i64) -> Result<Key> {
    conn.query_row(&format!("{SELECT} WHERE k.id = ?1"), [id], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no key with id {id}")))
}

/// Keys by id; without `all`, only those still usable (not revoked, not expired).
pub fn list(conn: &Connection, all: bool) -> Result<Vec<Key>> {
    let sql = if all {
        format!("{SELECT} ORDER BY k.id")
    } else {
        format!(
            "{SELECT} WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?1)
             ORDER BY k.id"
        )
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = if all {
        stmt.query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        stmt.query_map([now()], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(rows)
}

/// Makes a new key with the same user, tier, name and limits as key `id`; the old key
/// now expires at `now + grace` (or sooner, if it already expired sooner).
pub fn rotate(conn: &Connection, id: i64, new: &NewKey, grace: i64) -> Result<(Key, Key)> {
    let old = get(conn, id)?;
    match old.status(now()) {
        KeyStatus::Revoked => {
            return Err(StoreError::Conflict(format!(
                "key {id} is revoked and cannot be rotated"
            )));
        }
        KeyStatus::Expired => {
            return Err(StoreError::Conflict(format!(
                "key {id} has expired and cannot be rotated"
            )));
        }
        _ => {}
    }
    let grace_end = now() + grace.max(0);
    let old_expiry = old.expires_at.map_or(grace_end, |e| e.min(grace_end));
    conn.execute(
        "INSERT INTO api_keys (key_hash, prefix, name, user_id, tier, rpm, concurrency,
                               tokens_per_day, models, created_at, expires_at, rotated_from)
         SELECT ?1, ?2, name, user_id, tier, rpm, concurrency, tokens_per_day, models, ?3,
                expires_at, id
         FROM api_keys WHERE id = ?4",
        params![new.hash.hex(), new.prefix, now(), id],
    )?;
    let new_id = conn.last_insert_rowid();
    // A key with an expiry keeps its lifetime: the new key inherits the old expires_at,
    // which the old one now gives up for the grace period.
    conn.execute(
        "UPDATE api_keys SET expires_at = ?1 WHERE id = ?2",
        params![old_expiry, id],
    )?;
    Ok((get(conn, new_id)?, get(conn, id)?))
}

/// Revokes key `id` at once. Revoking a revoked key changes nothing and is not an error.
pub fn revoke(conn: &Connection, id: i64) -> Result<(Key, bool)> {
    get(conn, id)?;
    let changed = conn.execute(
        "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![now(), id],
    )? == 1;
    Ok((get(conn, id)?, changed))
}

/// [`create`] with its `key_create` audit row; `by` names who acted (the caller holds
/// the transaction). The CLI and the admin API both make keys through this.
pub fn create_audited(conn: &Connection, new: &NewKey, p: &NewKeyParams, by: &str) -> Result<Key> {
    let k = create(conn, new, p)?;
    super::audit::admin_action(
        conn,
        "key_create",
        k.user.as_deref(),
        Some(&k.prefix),
        format!("id={} tier={} by={by}", k.id, k.tier),
    )?;
    Ok(k)
}

/// [`rotate`] with its `key_rotate` audit row. Returns (new key, old key).
pub fn rotate_audited(
    conn: &Connection,
    id: i64,
    new: &NewKey,
    grace: i64,
    by: &str,
) -> Result<(Key, Key)> {
    let (fresh, old) = rotate(conn, id, new, grace)?;
    super::audit::admin_action(
        conn,
        "key_rotate",
        fresh.user.as_deref(),
        Some(&fresh.prefix),
        format!("id={} replaces={} by={by}", fresh.id, old.id),
    )?;
    Ok((fresh, old))
}

/// [`revoke`] with its `key_revoke` audit row when it changed anything.
pub fn revoke_audited(conn: &Connection, id: i64, by: &str) -> Result<(Key, bool)> {
    let (k, changed) = revoke(conn, id)?;
    if changed {
        super::audit::admin_action(
            conn,
            "key_revoke",
            k.user.as_deref(),
            Some(&k.prefix),
            format!("id={id} by={by}"),
        )?;
    }
    Ok((k, changed))
}

/// What `key set` changes.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    pub tier: Option<String>,
    pub name: Option<String>,
    pub rpm: Change<u32>,
    pub concurrency: Change<u32>,
    pub tokens_per_day: Change<u64>,
    pub models: Change<Vec<String>>,
}

/// Changes a key's tier, name or per-key limits (`Unlimited` here means "back to the
/// tier's limit").
pub fn set(conn: &Connection, id: i64, c: &KeyChange) -> Result<Key> {
    get(conn, id)?;
    if let Some(tier) = &c.tier {
        super::tiers::get(conn, tier)?;
        conn.execute(
            "UPDATE api_keys SET tier = ?1 WHERE id = ?2",
            params![tier, id],
        )?;
    }
    if let Some(name) = &c.name {
        conn.execute(
            "UPDATE api_keys SET name = ?1 WHERE id = ?2",
            params![name, id],
        )?;
    }
    fn apply(
        conn: &Connection,
        id: i64,
        column: &str,
        v: Option<rusqlite::types::Value>,
    ) -> Result<()> {
        conn.execute(
            &format!("UPDATE api_keys SET {column} = ?1 WHERE id = ?2"),
            params![v, id],
        )?;
        Ok(())
    }
    use rusqlite::types::Value;
    let int = |v: i64| Some(Value::Integer(v));
    match c.rpm {
        Change::Keep => {}
        Change::Unlimited => apply(conn, id, "rpm", None)?,
        Change::Set(v) => apply(conn, id, "rpm", int(v.into()))?,
    }
    match c.concurrency {
        Change::Keep => {}
        Change::Unlimited => apply(conn, id, "concurrency", None)?,
        Change::Set(v) => apply(conn, id, "concurrency", int(v.into()))?,
    }
    match c.tokens_per_day {
        Change::Keep => {}
        Change::Unlimited => apply(conn, id, "tokens_per_day", None)?,
        Change::Set(v) => apply(conn, id, "tokens_per_day", int(v as i64))?,
    }
    match &c.models {
        Change::Keep => {}
        Change::Unlimited => apply(conn, id, "models", None)?,
        Change::Set(m) => {
            check_models(m)?;
            apply(conn, id, "models", Some(Value::Text(m.join(","))))?
        }
    }
    get(conn, id)
}

/// [`set`] with its `key_set` audit row; `by` names who acted (the caller holds the
/// transaction).
pub fn set_audited(conn: &Connection, id: i64, c: &KeyChange, by: &str) -> Result<Key> {
    let k = set(conn, id, c)?;
    super::audit::admin_action(
        conn,
        "key_set",
        k.user.as_deref(),
        Some(&k.prefix),
        format!("id={} by={by}", k.id),
    )?;
    Ok(k)
}

/// What the gate needs to authorise a request with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRow {
    pub key: Key,
    /// The owning user is disabled: the key is refused like a revoked one.
    pub user_disabled: bool,
}

/// Looks a key up by hash, for the gate (an indexed point query).
pub fn find_by_hash(conn: &Connection, hash: &KeyHash) -> Result<Option<AuthRow>> {
    find_auth(conn, "k.key_hash = ?1", hash.hex())
}

/// Re-reads a key by id, for the gate's cache after another process committed.
pub fn find_by_id(conn: &Connection, id: i64) -> Result<Option<AuthRow>> {
    find_auth(conn, "k.id = ?1", id)
}

fn find_auth(conn: &Connection, cond: &str, arg: impl rusqlite::ToSql) -> Result<Option<AuthRow>> {
    Ok(conn
        .prepare_cached(&format!("{SELECT} WHERE {cond}"))?
        .query_row([arg], |r| {
            Ok(AuthRow {
                key: from_row(r)?,
                user_disabled: r.get(15)?,
            })
        })
        .optional()?)
}

/// Counts of keys by status: (total, usable).
pub fn counts(conn: &Connection) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT count(*), count(*) FILTER (WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1))
         FROM api_keys",
        [now()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}
