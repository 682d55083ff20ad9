//! Users: people who log in with a password for a JWT, and own API keys.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::audit::admin_action;
use super::{Result, StoreError, now, rfc3339};

/// A user as listed. The password hash never leaves the store except to the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub tier: String,
    pub disabled: bool,
    pub token_version: i64,
    pub created_at: i64,
}

/// A user as `--json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub id: i64,
    pub username: String,
    pub tier: String,
    pub status: &'static str,
    pub created_at: String,
}

impl User {
    /// The JSON shape of the spec.
    pub fn shown(&self) -> Shown {
        Shown {
            id: self.id,
            username: self.username.clone(),
            tier: self.tier.clone(),
            status: self.status(),
            created_at: rfc3339(self.created_at),
        }
    }

    /// `active` or `disabled`.
    pub fn status(&self) -> &'static str {
        if self.disabled { "disabled" } else { "active" }
    }
}

const COLUMNS: &str = "id, username, tier, disabled_at IS NOT NULL, token_version, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        tier: r.get(2)?,
        disabled: r.get(3)?,
        token_version: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// Checks that a username is usable: 1-64 of letters, digits and `._@-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bad username {name:?}: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )))
    }
}

/// Adds a user with an argon2id hash already computed.
pub fn add(conn: &Connection, name: &str, password_hash: &str, tier: &str) -> Result<User> {
    check_name(name)?;
    super::tiers::get(conn, tier)?;
    if find(conn, name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "user {name:?} already exists"
        )));
    }
    conn.execute(
        "INSERT INTO users (username, password_hash, tier, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, password_hash, tier, now()],
    )?;
    get(conn, name)
}

/// The user called `name`, if any.
pub fn find(conn: &Connection, name: &str) -> Result<Option<User>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM users WHERE username = ?1"),
            [name],
            from_row,
        )
        .optional()?)
}

/// The user called `name`, or a failure naming it.
pub fn get(conn: &Connection, name: &str) -> Result<User> {
    find(conn, name)?.ok_or_else(|| StoreError::NotFound(format!("no user named {name:?}")))
}

/// The user and their password hash, for login.
pub fn credentials(conn: &Connection, name: &str) -> Result<Option<(User, String)>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS}, password_hash FROM users WHERE username = ?1"),
            [name],
            |r| Ok((from_row(r)?, r.get(6)?)),
        )
        .optional()?)
}

/// Every user, by id.
pub fn list(conn: &Connection) -> Result<Vec<User>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY id"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Replaces the password and bumps the token version, ending the user's issued JWTs.
pub fn set_password(conn: &Connection, name: &str, password_hash: &str) -> Result<User> {
    get(conn, name)?;
    conn.execute(
        "UPDATE users SET password_hash = ?1, token_version = token_version + 1 WHERE username = ?2",
        params![password_hash, name],
    )?;
    get(conn, name)
}

/// Disables or enables a user. Disabling bumps the token version, so re-enabling does
/// not bring old tokens back.
pub fn set_disabled(conn: &Connection, name: &str, disabled: bool) -> Result<User> {
    get(conn, name)?;
    if disabled {
        conn.execute(
            "UPDATE users SET disabled_at = COALESCE(disabled_at, ?1), token_version = token_version + 1
             WHERE username = ?2",
            params![now(), name],
        )?;
    } else {
        conn.execute(
            "UPDATE users SET disabled_at = NULL WHERE username = ?1",
            [name],
        )?;
    }
    get(conn, name)
}

/// Removes a user: revokes their keys (which keep their rows, detached from the user,
/// for the record) and deletes the user. Returns how many keys were revoked.
pub fn remove(conn: &Connection, name: &str) -> Result<usize> {
    let user = get(conn, name)?;
    let revoked = conn.execute(
        "UPDATE api_keys SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
        params![now(), user.id],
    )?;
    conn.execute(
        "UPDATE api_keys SET user_id = NULL WHERE user_id = ?1",
        [user.id],
    )?;
    conn.execute("DELETE FROM users WHERE id = ?1", [user.id])?;
    Ok(revoked)
}

/// Sets a user's tier.
pub fn set_tier(conn: &Connection, name: &str, tier: &str) -> Result<User> {
    get(conn, name)?;
    super::tiers::get(conn, tier)?;
    conn.execute(
        "UPDATE users SET tier = ?1 WHERE username = ?2",
        params![tier, name],
    )?;
    get(conn, name)
}

/// [`add`] with its `user_add` audit row; `by` names who acted (the caller holds the
/// transaction).
pub fn add_audited(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    tier: &str,
    by: &str,
) -> Result<User> {
    let u = add(conn, name, password_hash, tier)?;
    admin_action(
        conn,
        "user_add",
        Some(&u.username),
        None,
        format!("tier={} by={by}", u.tier),
    )?;
    Ok(u)
}

/// [`set_password`] with its `user_passwd` audit row.
pub fn set_password_audited(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    by: &str,
) -> Result<User> {
    let u = set_password(conn, name, password_hash)?;
    admin_action(
        conn,
        "user_passwd",
        Some(&u.username),
        None,
        format!("by={by}"),
    )?;
    Ok(u)
}

/// [`set_disabled`] with its `user_disable` or `user_enable` audit row.
pub fn set_disabled_audited(
    conn: &Connection,
    name: &str,
    disabled: bool,
    by: &str,
) -> Result<User> {
    let u = set_disabled(conn, name, disabled)?;
    let kind = if disabled {
        "user_disable"
    } else {
        "user_enable"
    };
    admin_action(conn, kind, Some(&u.username), None, format!("by={by}"))?;
    Ok(u)
}

/// [`remove`] with its `user_remove` audit row. Returns how many keys were revoked.
pub fn remove_audited(conn: &Connection, name: &str, by: &str) -> Result<usize> {
    let revoked = remove(conn, name)?;
    admin_action(
        conn,
        "user_remove",
        Some(name),
        None,
        format!("revoked_keys={revoked} by={by}"),
    )?;
    Ok(revoked)
}

/// [`set_tier`] with its `user_set_tier` audit row.
pub fn set_tier_audited(conn: &Connection, name: &str, tier: &str, by: &str) -> Result<User> {
    let u = set_tier(conn, name, tier)?;
    admin_action(
        conn,
        "user_set_tier",
        Some(&u.username),
        None,
        format!("tier={} by={by}", u.tier),
    )?;
    Ok(u)
}

/// How many users exist (the gate needs a JWT secret when any do).
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tiers::{self, Change, TierChange};
    use crate::store::{OpenMode, Store, StoreError, keys};

    /// (kind, user, detail) of every audit row, oldest first.
    fn rows(store: &Store) -> Vec<(String, Option<String>, String)> {
        crate::store::audit::list(store.conn(), 0)
            .expect("audit")
            .into_iter()
            .map(|r| (r.kind, r.user, r.detail.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn every_audited_action_writes_its_row_and_a_failed_one_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        let row = |kind: &str, user: Option<&str>, detail: &str| {
            (kind.to_string(), user.map(String::from), detail.to_string())
        };
        store
            .write(|tx| {
                add_audited(tx, "bob", "$argon2id$x", "free", "op")?;
                set_password_audited(tx, "bob", "$argon2id$y", "op")?;
                set_disabled_audited(tx, "bob", true, "op")?;
                set_disabled_audited(tx, "bob", false, "op")?;
                set_tier_audited(tx, "bob", "pro", "op")?;
                let change = TierChange {
                    rpm: Change::Set(9),
                    ..TierChange::default()
                };
                tiers::set_audited(tx, "gold", &change, "op")?;
                let new =
                    crate::auth::key::generate().map_err(|e| StoreError::Invalid(e.to_string()))?;
                let params = keys::NewKeyParams {
                    user: Some("bob".into()),
                    ..keys::NewKeyParams::default()
                };
                let k = keys::create(tx, &new, &params)?;
                keys::set_audited(tx, k.id, &keys::KeyChange::default(), "op")?;
                remove_audited(tx, "bob", "op")?;
                Ok(())
            })
            .expect("the actions");
        assert_eq!(
            rows(&store),
            [
                row("user_add", Some("bob"), "tier=free by=op"),
                row("user_passwd", Some("bob"), "by=op"),
                row("user_disable", Some("bob"), "by=op"),
                row("user_enable", Some("bob"), "by=op"),
                row("user_set_tier", Some("bob"), "tier=pro by=op"),
                row(
                    "tier_set",
                    None,
                    "tier=gold rpm=9 concurrency=- tokens_per_day=- models=* admin=false \
                     priority=0 weight=1 max_wait=- max_queued=- by=op"
                ),
                row("key_set", Some("bob"), "id=1 by=op"),
                row("user_remove", Some("bob"), "revoked_keys=1 by=op"),
            ]
        );

        // A refused action leaves no row behind.
        let before = rows(&store).len();
        for failed in [
            store.write(|tx| add_audited(tx, "carol", "h", "no-such-tier", "op").map(drop)),
            store.write(|tx| set_tier_audited(tx, "nobody", "pro", "op").map(drop)),
            store.write(|tx| remove_audited(tx, "nobody", "op").map(drop)),
            store.write(|tx| {
                tiers::set_audited(tx, "bad name", &TierChange::default(), "op").map(drop)
            }),
        ] {
            assert!(failed.is_err());
        }
        assert_eq!(rows(&store).len(), before);
    }
}
