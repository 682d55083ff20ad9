//! The admin commands, one file per command group, each run against the database.

mod audit;
mod key;
mod serve;
mod status;
mod tier;
mod usage;
mod user;

use std::path::Path;

use crate::cli::{Cli, Command};
use crate::store::{OpenMode, Store};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let db = cli.db.clone().unwrap_or_else(crate::store::default_path);
    match cli.command {
        Command::Init => {
            let store = open(&db, OpenMode::Create)?;
            if !store.created() {
                eprintln!(
                    "database {} is ready (schema version {})",
                    db.display(),
                    store.schema_version()?
                );
            }
            Ok(())
        }
        Command::Key(c) => key::run(&db, c),
        Command::User(c) => user::run(&db, c),
        Command::Tier(c) => tier::run(&db, c),
        Command::Usage(a) => usage::run(&db, a),
        Command::Audit(a) => audit::run(&db, a),
        Command::Status(a) => status::run(&db, a.json),
        Command::Serve(a) => serve::run(&db, *a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // clap_complete panics on a failed write; render first, then write fallibly.
            let mut script = Vec::new();
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "aigate", &mut script);
            std::io::stdout().write_all(&script)?;
            Ok(())
        }
    }
}

/// Opens the database, saying on stderr when this created it.
pub(crate) fn open(db: &Path, mode: OpenMode) -> anyhow::Result<Store> {
    let store = Store::open(db, mode)?;
    if store.created() {
        eprintln!("created database {}", db.display());
    }
    Ok(store)
}

/// The name of the operator for audit entries of CLI actions.
pub(crate) fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}
