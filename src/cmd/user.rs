//! `aigate user add|list|passwd|disable|enable|remove|set-tier`, one function per
//! subcommand.

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
            password,
        } => add(db, &name, &tier, password.password_stdin),
        UserCommand::List(json) => list(db, json.json),
        UserCommand::Passwd { name, password } => passwd(db, &name, password.password_stdin),
        UserCommand::Disable { name } => set_disabled(db, &name, true),
        UserCommand::Enable { name } => set_disabled(db, &name, false),
        UserCommand::Remove { name, yes } => remove(db, &name, yes),
        UserCommand::SetTier { name, tier } => set_tier(db, &name, &tier),
    }
}

/// `user add`: asks for the password before creating anything, so that a cancelled
/// prompt leaves no database behind.
fn add(db: &Path, name: &str, tier: &str, password_stdin: bool) -> anyhow::Result<()> {
    users::check_name(name)?;
    let hash = password::hash(&output::read_new_password(password_stdin)?)?;
    let mut store = open(db, OpenMode::Create)?;
    let user = store.write(|tx| users::add_audited(tx, name, &hash, tier, &operator()))?;
    output::status(format_args!(
        "added user {} (tier {})",
        user.username, user.tier
    ));
    Ok(())
}

/// `user list`.
fn list(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let list = users::list(store.conn())?;
    if json {
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

/// `user passwd`: the user must exist before the prompt.
fn passwd(db: &Path, name: &str, password_stdin: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    users::get(store.conn(), name)?;
    let hash = password::hash(&output::read_new_password(password_stdin)?)?;
    store.write(|tx| users::set_password_audited(tx, name, &hash, &operator()))?;
    output::status(format_args!(
        "changed the password of {name}; tokens issued before no longer work"
    ));
    Ok(())
}

/// `user disable` and `user enable`.
fn set_disabled(db: &Path, name: &str, disabled: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    store.write(|tx| users::set_disabled_audited(tx, name, disabled, &operator()))?;
    output::status(format_args!(
        "{} user {name}",
        if disabled { "disabled" } else { "enabled" }
    ));
    Ok(())
}

/// `user remove`: asks first on a terminal.
fn remove(db: &Path, name: &str, yes: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    users::get(store.conn(), name)?;
    output::confirm(&format!("Remove user {name} and revoke their keys?"), yes)?;
    let revoked = store.write(|tx| users::remove_audited(tx, name, &operator()))?;
    output::status(format_args!(
        "removed user {name}; revoked {revoked} key(s)"
    ));
    Ok(())
}

/// `user set-tier`.
fn set_tier(db: &Path, name: &str, tier: &str) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    store.write(|tx| users::set_tier_audited(tx, name, tier, &operator()))?;
    output::status(format_args!("user {name} is now in tier {tier}"));
    Ok(())
}
