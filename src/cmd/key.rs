//! `aigate key create|list|show|rotate|revoke|set`, one function per subcommand.

use std::path::Path;

use anyhow::Context;

use super::{open, operator};
use crate::auth::key::{self, RawKey};
use crate::cli::{KeyCommand, KeyLimits, KeyOutput};
use crate::output::{self, opt};
use crate::store::keys::{self, Key, KeyChange, NewKeyParams, Overrides};
use crate::store::tiers::{Change, split_models};
use crate::store::{OpenMode, now, rfc3339};

/// Runs a key command.
pub fn run(db: &Path, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create {
            tier,
            user,
            name,
            expires_in,
            limits,
            output,
        } => {
            let params = NewKeyParams {
                tier,
                user,
                name,
                expires_at: expires_in.map(|d| now() + d.as_secs() as i64),
                overrides: overrides(&limits),
            };
            create(db, &params, &output)
        }
        KeyCommand::List { all, json } => list(db, all, json.json),
        KeyCommand::Show { id, json } => show(db, id, json.json),
        KeyCommand::Rotate { id, grace, output } => rotate(db, id, grace.as_secs() as i64, &output),
        KeyCommand::Revoke { id, yes } => revoke(db, id, yes),
        KeyCommand::Set {
            id,
            tier,
            name,
            limits,
            json,
        } => set(db, id, &change(tier, name, limits), json.json),
    }
}

/// `key create`: the key is shown this once.
fn create(db: &Path, params: &NewKeyParams, out: &KeyOutput) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Create)?;
    let new = key::generate().context("reading the OS random source")?;
    let created = store.write(|tx| keys::create_audited(tx, &new, params, &operator()))?;
    print_new(&created, &new.key, out, "created")
}

/// `key list`: usable keys, or every key with `all`.
fn list(db: &Path, all: bool, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let list = keys::list(store.conn(), all)?;
    if json {
        let shown: Vec<_> = list.iter().map(|k| k.shown(None)).collect();
        return output::print_json(&shown);
    }
    let mut t = output::table(&[
        "ID",
        "PREFIX",
        "NAME",
        "USER",
        "TIER",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    let now = now();
    for k in &list {
        t.add_row(vec![
            k.id.to_string(),
            format!("{}…", k.prefix),
            opt(k.name.as_deref()),
            opt(k.user.as_deref()),
            k.tier.clone(),
            k.status(now).as_str().to_string(),
            rfc3339(k.created_at),
            opt(k.expires_at.map(rfc3339)),
            opt(k.last_used_at.map(rfc3339)),
        ]);
    }
    output::print_table(&t, "no keys")
}

/// `key show`: one key with its per-key limits.
fn show(db: &Path, id: i64, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let k = keys::get(store.conn(), id)?;
    if json {
        return output::print_json(&k.shown(None));
    }
    print_details(&k)
}

/// `key rotate`: a new key; the old one works until the grace ends.
fn rotate(db: &Path, id: i64, grace: i64, out: &KeyOutput) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let new = key::generate().context("reading the OS random source")?;
    let (fresh, old) = store.write(|tx| keys::rotate_audited(tx, id, &new, grace, &operator()))?;
    if !out.quiet && !out.json {
        output::status(format_args!(
            "key {} ({}…) keeps working until {}",
            old.id,
            old.prefix,
            opt(old.expires_at.map(rfc3339))
        ));
    }
    print_new(&fresh, &new.key, out, "rotated")
}

/// `key revoke`: asks first on a terminal.
fn revoke(db: &Path, id: i64, yes: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let k = keys::get(store.conn(), id)?;
    output::confirm(
        &format!(
            "Revoke key {id} ({}…, {})?",
            k.prefix,
            opt(k.name.as_deref())
        ),
        yes,
    )?;
    let (k, changed) = store.write(|tx| keys::revoke_audited(tx, id, &operator()))?;
    if changed {
        output::status(format_args!("revoked key {} ({}…)", k.id, k.prefix));
    } else {
        output::status(format_args!(
            "key {} ({}…) was already revoked",
            k.id, k.prefix
        ));
    }
    Ok(())
}

/// `key set`: tier, label or per-key limits.
fn set(db: &Path, id: i64, change: &KeyChange, json: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let k = store.write(|tx| keys::set_audited(tx, id, change, &operator()))?;
    if json {
        return output::print_json(&k.shown(None));
    }
    print_details(&k)
}

/// What `key set` changes; `--models tier` and a limit of `tier` go back to the tier's.
fn change(tier: Option<String>, name: Option<String>, limits: KeyLimits) -> KeyChange {
    KeyChange {
        tier,
        name,
        rpm: limits.rpm.unwrap_or_default(),
        concurrency: limits.concurrency.unwrap_or_default(),
        tokens_per_day: limits.tokens_per_day.unwrap_or_default(),
        models: match limits.models.as_deref() {
            None => Change::Keep,
            Some("tier") => Change::Unlimited,
            Some(m) => Change::Set(split_models(m)),
        },
    }
}

/// The per-key limits of `key create`; `tier` there means none.
fn overrides(l: &KeyLimits) -> Overrides {
    fn set<T: Copy>(c: Option<Change<T>>) -> Option<T> {
        match c {
            Some(Change::Set(v)) => Some(v),
            _ => None,
        }
    }
    Overrides {
        rpm: set(l.rpm),
        concurrency: set(l.concurrency),
        tokens_per_day: set(l.tokens_per_day),
        models: l
            .models
            .as_deref()
            .filter(|m| *m != "tier")
            .map(split_models),
    }
}

fn print_new(k: &Key, raw: &RawKey, out: &KeyOutput, verb: &str) -> anyhow::Result<()> {
    let shown = if out.json {
        output::print_json(&k.shown(Some(raw)))
    } else {
        output::print_secret(raw.expose())
    };
    // The key is committed by now, and nobody has seen it: a failed write is a failure
    // that says which key to revoke, even when the reader has gone. The cause is kept as
    // text, so that main does not take it for a quiet broken pipe.
    shown.map_err(|e| {
        anyhow::anyhow!(
            "key {id} was {verb} but could not be printed; revoke it with `aigate key revoke {id}`: {e:#}",
            id = k.id
        )
    })?;
    if !out.quiet && !out.json {
        output::status(format_args!(
            "{verb} key {} ({}…, tier {}{}); it is shown only this once",
            k.id,
            k.prefix,
            k.tier,
            k.user
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

fn print_details(k: &Key) -> anyhow::Result<()> {
    let o = &k.overrides;
    let tiers = |v: Option<String>| v.unwrap_or_else(|| "tier's".into());
    output::print_fields(
        None,
        &[
            ("id", k.id.to_string()),
            ("prefix", format!("{}…", k.prefix)),
            ("name", opt(k.name.as_deref())),
            ("user", opt(k.user.as_deref())),
            ("tier", k.tier.clone()),
            ("status", k.status(now()).as_str().to_string()),
            ("created", rfc3339(k.created_at)),
            ("expires", opt(k.expires_at.map(rfc3339))),
            ("revoked", opt(k.revoked_at.map(rfc3339))),
            ("last used", opt(k.last_used_at.map(rfc3339))),
            ("rotated from", opt(k.rotated_from)),
            ("rpm", tiers(o.rpm.map(|v| v.to_string()))),
            ("concurrency", tiers(o.concurrency.map(|v| v.to_string()))),
            ("tokens/day", tiers(o.tokens_per_day.map(|v| v.to_string()))),
            ("models", tiers(o.models.as_ref().map(|m| m.join(",")))),
        ],
    )
}
