//! Model pins: per-model options the operator fixes (`num_ctx`, `keep_alive`) because a
//! client choosing its own makes Ollama reload the model, so that clients cannot
//! thrash a host. The CLI writes them with audit rows; the gate reads them ([`list`]).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::audit::admin_action;
use super::{Result, StoreError};
use crate::units::parse_duration;

/// The largest `num_ctx` accepted: 16 Mi tokens, past any model's context, so that a
/// typo does not ask a host for a KV cache it cannot hold.
pub const MAX_NUM_CTX: u32 = 1 << 24;

/// The longest model name accepted (Ollama's own limit on a full name).
const MAX_MODEL_LEN: usize = 350;

/// How long Ollama keeps a model loaded after a request, as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    /// The text given (`30m`, `0`, `-1`, `forever`), shown back as it was.
    pub text: String,
    /// The same in seconds for Ollama's `keep_alive` (a number is seconds there);
    /// `-1` is "never unload", `0` "unload at once".
    pub secs: i64,
}

/// Reads a keep-alive: a duration (`30s`, `15m`, `24h`, `7d`), `0` to unload after
/// each request, or `-1` / `forever` never to unload (Ollama reads any negative value
/// so). The seconds are what the gate sends: Ollama's own parser knows no `d`.
pub fn parse_keep_alive(s: &str) -> Result<KeepAlive, String> {
    let text = s.trim();
    let secs = if text == "-1" || text.eq_ignore_ascii_case("forever") {
        -1
    } else {
        parse_duration(text)
            .map_err(|e| format!("{e}; or 0 to unload at once, -1 or forever to keep"))?
            .as_secs() as i64
    };
    Ok(KeepAlive {
        text: text.to_string(),
        secs,
    })
}

/// A model name as Ollama reads it, with `:latest` added when it names no tag
/// (`llama3.2` → `llama3.2:latest`; `registry:5000/llama` has none either). Names are
/// compared without regard to case, as Ollama compares them; the gate normalizes a
/// request's model with this before looking up its pin.
pub fn normalize(model: &str) -> Result<String> {
    let bad = |why: &str| StoreError::Invalid(format!("bad model name {model:?}: {why}"));
    if model.is_empty() || model.len() > MAX_MODEL_LEN {
        return Err(bad("use 1-350 characters"));
    }
    if !model
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
    {
        return Err(bad("use letters, digits, '.', '_', '-', '/' and ':'"));
    }
    if model.split('/').any(str::is_empty) {
        return Err(bad("an empty part between '/'"));
    }
    let last = model.rsplit('/').next().unwrap_or(model);
    match last.split_once(':') {
        None => Ok(format!("{model}:latest")),
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() && !tag.contains(':') => {
            Ok(model.to_string())
        }
        Some(_) => Err(bad("write it as NAME or NAME:TAG")),
    }
}

/// A model's pinned options; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Normalized, as first pinned (`llama3.2:latest`).
    pub model: String,
    pub num_ctx: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
}

/// A pin as `model list --json` shows it: `keep_alive` is the text the operator gave.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub model: String,
    pub num_ctx: Option<u32>,
    pub keep_alive: Option<String>,
}

impl Pin {
    /// The JSON shape.
    pub fn shown(&self) -> Shown {
        Shown {
            model: self.model.clone(),
            num_ctx: self.num_ctx,
            keep_alive: self.keep_alive.as_ref().map(|k| k.text.clone()),
        }
    }
}

const COLUMNS: &str = "model, num_ctx, keep_alive, keep_alive_secs";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Pin> {
    let text: Option<String> = r.get(2)?;
    let secs: Option<i64> = r.get(3)?;
    Ok(Pin {
        model: r.get(0)?,
        num_ctx: r.get(1)?,
        keep_alive: text.zip(secs).map(|(text, secs)| KeepAlive { text, secs }),
    })
}

/// The pin of `model` (normalized here), if any.
pub fn find(conn: &Connection, model: &str) -> Result<Option<Pin>> {
    let model = normalize(model)?;
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM model_pins WHERE model = ?1"),
            [&model],
            from_row,
        )
        .optional()?)
}

/// Every pin, by model name. The gate reads this at start and whenever another
/// connection has committed, and keys it by the lowercased model name.
pub fn list(conn: &Connection) -> Result<Vec<Pin>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM model_pins ORDER BY model"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Pins options of `model`: those given change, the others stay as they were (a new
/// pin needs at least one). Returns the pin as it now is.
pub fn pin(
    conn: &Connection,
    model: &str,
    num_ctx: Option<u32>,
    keep_alive: Option<&KeepAlive>,
) -> Result<Pin> {
    let model = normalize(model)?;
    if num_ctx.is_none() && keep_alive.is_none() {
        return Err(StoreError::Invalid(
            "nothing to pin: give --num-ctx or --keep-alive".into(),
        ));
    }
    if let Some(n) = num_ctx
        && !(1..=MAX_NUM_CTX).contains(&n)
    {
        return Err(StoreError::Invalid(format!(
            "bad num_ctx {n}: use 1 to {MAX_NUM_CTX}"
        )));
    }
    conn.execute(
        "INSERT INTO model_pins (model, num_ctx, keep_alive, keep_alive_secs, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (model) DO UPDATE SET
             num_ctx = COALESCE(excluded.num_ctx, num_ctx),
             keep_alive = COALESCE(excluded.keep_alive, keep_alive),
             keep_alive_secs = COALESCE(excluded.keep_alive_secs, keep_alive_secs),
             updated_at = excluded.updated_at",
        params![
            model,
            num_ctx,
            keep_alive.map(|k| &k.text),
            keep_alive.map(|k| k.secs),
            super::now()
        ],
    )?;
    find(conn, &model)?.ok_or_else(|| StoreError::NotFound(format!("no pin for {model:?}")))
}

/// Removes the pin of `model` and returns it as it was, or a failure naming the model.
pub fn unpin(conn: &Connection, model: &str) -> Result<Pin> {
    let pin = find(conn, model)?.ok_or_else(|| {
        let name = normalize(model).unwrap_or_else(|_| model.to_string());
        StoreError::NotFound(format!("no pinned options for model {name:?}"))
    })?;
    conn.execute("DELETE FROM model_pins WHERE model = ?1", [&pin.model])?;
    Ok(pin)
}

/// How many models have pins, for `aigate status`.
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM model_pins", [], |r| r.get(0))?)
}

/// The `num_ctx=… keep_alive=…` of an audit row; `-` for what is not pinned.
fn describe(p: &Pin) -> String {
    format!(
        "model={} num_ctx={} keep_alive={}",
        p.model,
        p.num_ctx.map_or_else(|| "-".into(), |n| n.to_string()),
        p.keep_alive.as_ref().map_or("-", |k| k.text.as_str()),
    )
}

/// [`pin`] with its `model_pin` audit row, which records the pin as it now is; `by`
/// names who acted (the caller holds the transaction).
pub fn pin_audited(
    conn: &Connection,
    model: &str,
    num_ctx: Option<u32>,
    keep_alive: Option<&KeepAlive>,
    by: &str,
) -> Result<Pin> {
    let p = pin(conn, model, num_ctx, keep_alive)?;
    admin_action(
        conn,
        "model_pin",
        None,
        None,
        format!("{} by={by}", describe(&p)),
    )?;
    Ok(p)
}

/// [`unpin`] with its `model_unpin` audit row, which records what was pinned.
pub fn unpin_audited(conn: &Connection, model: &str, by: &str) -> Result<Pin> {
    let p = unpin(conn, model)?;
    admin_action(
        conn,
        "model_unpin",
        None,
        None,
        format!("{} by={by}", describe(&p)),
    )?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenMode, Store};

    #[test]
    fn names_get_latest_when_they_name_no_tag() {
        for (given, normal) in [
            ("llama3.2", "llama3.2:latest"),
            ("llama3.2:latest", "llama3.2:latest"),
            ("qwen2.5:7b-instruct-q4_K_M", "qwen2.5:7b-instruct-q4_K_M"),
            ("library/llama3.2", "library/llama3.2:latest"),
            ("registry:5000/me/llama", "registry:5000/me/llama:latest"),
            (
                "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
                "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            ),
        ] {
            assert_eq!(normalize(given).expect(given), normal);
        }
        for bad in [
            "",
            "llama3.2:",
            ":7b",
            "a:b:c",
            "a//b",
            "/a",
            "a/",
            "llama 3",
            "x\u{1b}",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
        assert!(normalize(&"a".repeat(351)).is_err());
    }

    #[test]
    fn keep_alives_are_durations_zero_or_forever() {
        let secs = |s: &str| parse_keep_alive(s).expect(s).secs;
        assert_eq!(secs("30m"), 1800);
        assert_eq!(secs("7d"), 7 * 86_400);
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("-1"), -1);
        assert_eq!(secs("Forever"), -1);
        assert_eq!(parse_keep_alive(" 30m ").expect("trimmed").text, "30m");
        for bad in ["soon", "-5m", "", "200y"] {
            assert!(parse_keep_alive(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pin_changes_what_is_given_and_matches_any_case() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        let ka = parse_keep_alive("30m").expect("keep alive");
        let p = store
            .write(|tx| pin_audited(tx, "Llama3.2", Some(8192), None, "op"))
            .expect("pin");
        assert_eq!(p.model, "Llama3.2:latest");
        let p = store
            .write(|tx| pin_audited(tx, "llama3.2:latest", None, Some(&ka), "op"))
            .expect("pin again");
        assert_eq!(
            p,
            Pin {
                model: "Llama3.2:latest".into(),
                num_ctx: Some(8192),
                keep_alive: Some(ka.clone()),
            }
        );
        assert_eq!(list(store.conn()).expect("list"), [p]);
        for refused in [
            store.write(|tx| pin(tx, "x", None, None).map(drop)),
            store.write(|tx| pin(tx, "x", Some(0), None).map(drop)),
            store.write(|tx| pin(tx, "x", Some(MAX_NUM_CTX + 1), None).map(drop)),
            store.write(|tx| unpin(tx, "other").map(drop)),
        ] {
            assert!(refused.is_err());
        }
        let gone = store
            .write(|tx| unpin_audited(tx, "LLAMA3.2", "op"))
            .expect("unpin");
        assert_eq!(gone.num_ctx, Some(8192));
        assert!(list(store.conn()).expect("list").is_empty());
        let details: Vec<String> = crate::store::audit::list(store.conn(), 0)
            .expect("audit")
            .into_iter()
            .map(|r| format!("{} {}", r.kind, r.detail.unwrap_or_default()))
            .collect();
        assert_eq!(
            details,
            [
                "model_pin model=Llama3.2:latest num_ctx=8192 keep_alive=- by=op",
                "model_pin model=Llama3.2:latest num_ctx=8192 keep_alive=30m by=op",
                "model_unpin model=Llama3.2:latest num_ctx=8192 keep_alive=30m by=op",
            ]
        );
    }
}
