//! `aigate key create|list|show|rotate|revoke|set`.

use std::io::Write;
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
            let mut store = open(db, OpenMode::Create)?;
            let new = key::generate().context("reading the OS random source")?;
            let params = NewKeyParams {
                tier,
                user,
                name,
                expires_at: expires_in.map(|d| now() + d.as_secs() as i64),
                overrides: overrides(&limits),
            };
            let created = store.write(|tx| keys::create_audited(tx, &new, &params, &operator()))?;
            print_new(&created, &new.key, &output, "created")
        }
        KeyCommand::List { all, json } => {
            let store = open(db, OpenMode::Existing)?;
            let list = keys::list(store.conn(), all)?;
            if json.json {
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
        KeyCommand::Show { id, json } => {
            let store = open(db, OpenMode::Existing)?;
            let k = keys::get(store.conn(), id)?;
            if json.json {
                return output::print_json(&k.shown(None));
            }
            print_details(&k)
        }
        KeyCommand::Rotate { id, grace, output } => {
            let mut store = open(db, OpenMode::Existing)?;
            let new = key::generate().context("reading the OS random source")?;
            let (fresh, old) = store.write(|tx| {
                keys::rotate_audited(tx, id, &new, grace.as_secs() as i64, &operator())
            })?;
            if !output.quiet && !output.json {
                eprintln!(
                    "key {} ({}…) keeps working until {}",
                    old.id,
                    old.prefix,
                    opt(old.expires_at.map(rfc3339))
                );
            }
            print_new(&fresh, &new.key, &output, "rotated")
        }
        KeyCommand::Revoke { id, yes } => {
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
                eprintln!("revoked key {} ({}…)", k.id, k.prefix);
            } else {
                eprintln!("key {} ({}…) was already revoked", k.id, k.prefix);
            }
            Ok(())
        }
        KeyCommand::Set {
            id,
            tier,
            name,
            limits,
            json,
        } => {
            let mut store = open(db, OpenMode::Existing)?;
            let change = KeyChange {
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
            };
            let k = store.write(|tx| keys::set_audited(tx, id, &change, &operator()))?;
            if json.json {
                return output::print_json(&k.shown(None));
            }
            print_details(&k)
        }
    }
}

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
    // println! would panic (exit 101) on a closed or full stdout; the key is committed by
    // now, so fail with one line that says which key to revoke.
    let shown = if out.json {
        output::print_json(&k.shown(Some(raw)))
    } else {
        writeln!(std::io::stdout(), "{}", raw.expose()).map_err(anyhow::Error::from)
    };
    shown.with_context(|| {
        format!(
            "key {id} was {verb} but could not be printed; revoke it with `aigate key revoke {id}`",
            id = k.id
        )
    })?;
    if !out.quiet && !out.json {
        eprintln!(
            "{verb} key {} ({}…, tier {}{}); it is shown only this once",
            k.id,
            k.prefix,
            k.tier,
            k.user
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn print_details(k: &Key) -> anyhow::Result<()> {
    let o = &k.overrides;
    let rows = [
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
        ("rpm", o.rpm.map_or("tier's".into(), |v| v.to_string())),
        (
            "concurrency",
            o.concurrency.map_or("tier's".into(), |v| v.to_string()),
        ),
        (
            "tokens/day",
            o.tokens_per_day.map_or("tier's".into(), |v| v.to_string()),
        ),
        (
            "models",
            o.models.as_ref().map_or("tier's".into(), |m| m.join(",")),
        ),
    ];
    let mut out = std::io::stdout().lock();
    for (label, value) in rows {
        writeln!(out, "{label:>13}  {value}")?;
    }
    Ok(())
}
