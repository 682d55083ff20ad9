//! `aigate user add|list|passwd|disable|enable|remove|set-tier`.

use std::path::Path;

use super::{open, operator};
use crate::auth::password;
use crate::cli::UserCommand;
use crate::output;
use crate::store::{OpenMode, audit, rfc3339, users};

/// Runs a user command.
pub fn run(db: &Path, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            tier,
            password: pw,
        } => {
            users::check_name(&name)?;
            // Ask before creating anything, so a cancelled prompt leaves no database behind.
            let secret = output::read_new_password(pw.password_stdin)?;
            let hash = password::hash(&secret)?;
            let mut store = open(db, OpenMode::Create)?;
            let user = store.write(|tx| {
                let u = users::add(tx, &name, &hash, &tier)?;
                audit::admin_action(
                    tx,
                    "user_add",
                    Some(&u.username),
                    None,
                    format!("tier={} by={}", u.tier, operator()),
                )?;
                Ok(u)
            })?;
            eprintln!("added user {} (tier {})", user.username, user.tier);
            Ok(())
        }
        UserCommand::List(json) => {
            let store = open(db, OpenMode::Existing)?;
            let list = users::list(store.conn())?;
            if json.json {
                let shown: Vec<_> = list.iter().map(users::User::shown).collect();
                return output::print_json(&shown);
            }
            let mut t = output::table(&["ID", "USERNAME", "TIER", "STATUS", "CREATED"]);
            for u in &list {
                t.add_row(vec![
                    u.id.to_string(),
                    u.username.clone(),
                    u.tier.clone(),
                    u.status().to_string(),
                    rfc3339(u.created_at),
                ]);
            }
            output::print_table(&t, "no users")
        }
        UserCommand::Passwd { name, password: pw } => {
            let mut store = open(db, OpenMode::Existing)?;
            users::get(store.conn(), &name)?;
            let secret = output::read_new_password(pw.password_stdin)?;
            let hash = password::hash(&secret)?;
            store.write(|tx| {
                users::set_password(tx, &name, &hash)?;
                audit::admin_action(
                    tx,
                    "user_passwd",
                    Some(&name),
                    None,
                    format!("by={}", operator()),
                )
            })?;
            eprintln!("changed the password of {name}; tokens issued before no longer work");
            Ok(())
        }
        UserCommand::Disable { name } => set_disabled(db, &name, true),
        UserCommand::Enable { name } => set_disabled(db, &name, false),
        UserCommand::Remove { name, yes } => {
            let mut store = open(db, OpenMode::Existing)?;
            users::get(store.conn(), &name)?;
            output::confirm(&format!("Remove user {name} and revoke their keys?"), yes)?;
            let revoked = store.write(|tx| {
                let n = users::remove(tx, &name)?;
                audit::admin_action(
                    tx,
                    "user_remove",
                    Some(&name),
                    None,
                    format!("revoked_keys={n} by={}", operator()),
                )?;
                Ok(n)
            })?;
            eprintln!("removed user {name}; revoked {revoked} key(s)");
            Ok(())
        }
        UserCommand::SetTier { name, tier } => {
            let mut store = open(db, OpenMode::Existing)?;
            store.write(|tx| {
                users::set_tier(tx, &name, &tier)?;
                audit::admin_action(
                    tx,
                    "user_set_tier",
                    Some(&name),
                    None,
                    format!("tier={tier} by={}", operator()),
                )
            })?;
            eprintln!("user {name} is now in tier {tier}");
            Ok(())
        }
    }
}

fn set_disabled(db: &Path, name: &str, disabled: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let kind = if disabled {
        "user_disable"
    } else {
        "user_enable"
    };
    store.write(|tx| {
        users::set_disabled(tx, name, disabled)?;
        audit::admin_action(tx, kind, Some(name), None, format!("by={}", operator()))
    })?;
    eprintln!(
        "{} user {name}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}
