//! The admin commands, one file per command group, each subcommand one function run
//! against the database (`top` asks a running serve instead). What they print goes
//! through [`crate::output`].

mod audit;
mod host;
mod key;
mod model;
mod serve;
mod status;
mod tier;
mod top;
mod usage;
mod user;

use std::path::Path;

use crate::cli::{Cli, Command};
use crate::output;
use crate::store::{OpenMode, Store};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let db = cli.db.clone().unwrap_or_else(crate::store::default_path);
    match cli.command {
        Command::Init => init(&db),
        Command::Key(c) => key::run(&db, c),
        Command::User(c) => user::run(&db, c),
        Command::Tier(c) => tier::run(&db, c),
        Command::Host(c) => host::run(&db, c),
        Command::Model(c) => model::run(&db, c),
        Command::Usage(a) => usage::run(&db, a),
        Command::Audit(a) => audit::run(&db, a),
        Command::Status(a) => status::run(&db, a.json),
        Command::Serve(a) => serve::run(&db, *a),
        // Reads no database: what it shows comes from a running serve.
        Command::Top(a) => top::run(a),
        Command::Completions { shell } => completions(shell),
    }
}

/// `init`: creates the database, or says that it is ready.
fn init(db: &Path) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Create)?;
    if !store.created() {
        output::status(format_args!(
            "database {} is ready (schema version {})",
            db.display(),
            store.schema_version()?
        ));
    }
    Ok(())
}

/// `completions SHELL`: exactly the scripts committed under `completions/`.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    // clap_complete panics on a failed write; render first, then write fallibly.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "aigate", &mut script);
    output::print_bytes(&script)
}

/// Opens the database, saying on stderr when this created it.
pub(crate) fn open(db: &Path, mode: OpenMode) -> anyhow::Result<Store> {
    let store = Store::open(db, mode)?;
    if store.created() {
        output::status(format_args!("created database {}", db.display()));
    }
    Ok(store)
}

/// Who acted, for the `by=` of audit entries of CLI actions: the person behind `sudo`
/// (`$SUDO_USER`), else the OS user the process runs as. `$USER` is not asked: it is
/// missing under cron and systemd and can say anything; the uid is what the kernel says.
pub(crate) fn operator() -> String {
    let uid = nix::unistd::Uid::effective();
    let name = || {
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
    };
    operator_from(std::env::var("SUDO_USER").ok(), uid.as_raw(), name)
}

/// [`operator`] with its sources passed in; `name` looks the uid up in the user database.
fn operator_from(
    sudo_user: Option<String>,
    uid: u32,
    name: impl FnOnce() -> Option<String>,
) -> String {
    sudo_user
        .filter(|u| !u.is_empty())
        .or_else(|| name().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| format!("uid={uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_is_sudo_user_then_os_user_then_uid() {
        let named = || Some("alice".to_string());
        assert_eq!(operator_from(Some("bob".into()), 0, named), "bob");
        assert_eq!(operator_from(None, 1000, named), "alice");
        assert_eq!(operator_from(Some(String::new()), 1000, named), "alice");
        assert_eq!(operator_from(None, 4242, || None), "uid=4242");
        assert_eq!(
            operator_from(None, 4242, || Some(String::new())),
            "uid=4242"
        );
    }

    #[test]
    fn operator_names_this_process_user() {
        let uid = nix::unistd::Uid::effective();
        let expected = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid={uid}"), |u| u.name);
        if std::env::var_os("SUDO_USER").is_none_or(|v| v.is_empty()) {
            assert_eq!(operator(), expected);
        }
    }
}
