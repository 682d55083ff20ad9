//! `aigate user add|list|passwd|disable|enable|remove|set-tier`.

use std::path::Path;

use super::{open, operator};
use crate::auth::password;
use crate::cli::UserCommand;
use crate::output;
use crate::store::{OpenMode, rfc3339, users};

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
            let user =
                store.write(|tx| users::add_audited(tx, &name, &hash, &tier, &operator()))?;
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
            store.write(|tx| users::set_password_audited(tx, &name, &hash, &operator()))?;
            eprintln!("changed the password of {name}; tokens issued before no longer work");
            Ok(())
        }
        UserCommand::Disable { name } => set_disabled(db, &name, true),
        UserCommand::Enable { name } => set_disabled(db, &name, false),
        UserCommand::Remove { name, yes } => {
            let mut store = open(db, OpenMode::Existing)?;
            users::get(store.conn(), &name)?;
            output::confirm(&format!("Remove user {name} and revoke their keys?"), yes)?;
            let revoked = store.write(|tx| users::remove_audited(tx, &name, &operator()))?;
            eprintln!("removed user {name}; revoked {revoked} key(s)");
            Ok(())
        }
        UserCommand::SetTier { name, tier } => {
            let mut store = open(db, OpenMode::Existing)?;
            store.write(|tx| users::set_tier_audited(tx, &name, &tier, &operator()))?;
            eprintln!("user {name} is now in tier {tier}");
            Ok(())
        }
    }
}

fn set_disabled(db: &Path, name: &str, disabled: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    store.write(|tx| users::set_disabled_audited(tx, name, disabled, &operator()))?;
    eprintln!(
        "{} user {name}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}
