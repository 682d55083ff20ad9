//! `aigate serve`.

use std::path::PathBuf;

use crate::cli::ServeArgs;

/// Runs the gate until SIGTERM or SIGINT.
pub fn run(_db: &PathBuf, _args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
