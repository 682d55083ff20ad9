//! The admin commands, one file per command group, each subcommand one function run
//! against the database. What they print goes through [`crate::output`].

mod audit;
mod key;
mod serve;
mod status;
mod tier;
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
        Command::Usage(a) => usage::run(&db, a),
        Command::Audit(a) => audit::run(&db, a),
        Command::Status(a) => status::run(&db, a.json),
        Command::Serve(a) => serve::run(&db, *a),
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

/// The name of the operator for audit entries of CLI actions.
pub(crate) fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}
