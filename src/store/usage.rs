//! Usage: requests and tokens per UTC day, key, user and model, added to by the gate in
//! batches and read by `aigate usage` and by the gate's daily token quota.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::Result;

/// Seconds in a day; usage is kept per Unix day (UTC).
pub const DAY: i64 = 86_400;

/// Who a usage row belongs to and for which model, on which day.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub day: i64,
    /// 0 for a caller without a key (a JWT).
    pub key_id: i64,
    /// Empty for a key without a user.
    pub user: String,
    /// Empty when the request named no model.
    pub model: String,
}

/// Counts to add to a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Adds a batch of counts (the caller holds the transaction).
pub fn add(conn: &Connection, batch: &[(UsageKey, Counts)]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO usage (day, key_id, user, model, requests, prompt_tokens, completion_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (day, key_id, user, model) DO UPDATE SET
            requests = requests + excluded.requests,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens",
    )?;
    for (k, c) in batch {
        stmt.execute(params![
            k.day,
            k.key_id,
            k.user,
            k.model,
            c.requests as i64,
            c.prompt_tokens as i64,
            c.completion_tokens as i64
        ])?;
    }
    Ok(())
}

/// Sets `last_used_at` for keys (the caller holds the transaction).
pub fn touch_keys(conn: &Connection, used: &[(i64, i64)]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = max(COALESCE(last_used_at, 0), ?1) WHERE id = ?2",
    )?;
    for (id, at) in used {
        stmt.execute(params![at, id])?;
    }
    Ok(())
}

/// How `aigate usage` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Key, user and model together.
    All,
    Key,
    User,
    Model,
}

/// A row of `aigate usage`; fields not grouped by are null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub key_id: Option<i64>,
    pub user: Option<String>,
    pub model: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Sums usage from the UTC day containing `since` on, grouped by `by`, most tokens first.
pub fn report(conn: &Connection, since: i64, by: GroupBy) -> Result<Vec<Row>> {
    let (cols, group) = match by {
        GroupBy::All => (
            "NULLIF(key_id, 0), NULLIF(user, ''), NULLIF(model, '')",
            "key_id, user, model",
        ),
        GroupBy::Key => ("NULLIF(key_id, 0), NULL, NULL", "key_id"),
        GroupBy::User => ("NULL, NULLIF(user, ''), NULL", "user"),
        GroupBy::Model => ("NULL, NULL, NULLIF(model, '')", "model"),
    };
    let sql = format!(
        "SELECT {cols}, sum(requests), sum(prompt_tokens), sum(completion_tokens)
         FROM usage WHERE day >= ?1 GROUP BY {group}
         ORDER BY sum(prompt_tokens) + sum(completion_tokens) DESC, sum(requests) DESC"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([since.div_euclid(DAY)], |r| {
        Ok(Row {
            key_id: r.get(0)?,
            user: r.get(1)?,
            model: r.get(2)?,
            requests: r.get::<_, i64>(3)?.max(0) as u64,
            prompt_tokens: r.get::<_, i64>(4)?.max(0) as u64,
            completion_tokens: r.get::<_, i64>(5)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Tokens a key (key_id > 0) or a keyless user used on `day`, for the daily quota.
pub fn tokens_on(conn: &Connection, day: i64, key_id: i64, user: &str) -> Result<u64> {
    let v: i64 = if key_id > 0 {
        conn.prepare_cached(
            "SELECT COALESCE(sum(prompt_tokens + completion_tokens), 0) FROM usage
             WHERE day = ?1 AND key_id = ?2",
        )?
        .query_row(params![day, key_id], |r| r.get(0))?
    } else {
        conn.prepare_cached(
            "SELECT COALESCE(sum(prompt_tokens + completion_tokens), 0) FROM usage
             WHERE day = ?1 AND key_id = 0 AND user = ?2",
        )?
        .query_row(params![day, user], |r| r.get(0))?
    };
    Ok(v.max(0) as u64)
}
