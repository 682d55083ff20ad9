//! `aigate model pin|unpin|list`, one function per subcommand: the per-model options
//! clients may not choose, so that they cannot make a host reload a model.

use std::path::Path;

use super::{open, operator};
use crate::cli::ModelCommand;
use crate::output::{self, opt};
use crate::store::OpenMode;
use crate::store::model_pins::{self, KeepAlive, Pin};

/// Runs a model command.
pub fn run(db: &Path, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pin {
            model,
            num_ctx,
            keep_alive,
        } => pin(db, &model, num_ctx, keep_alive.as_ref()),
        ModelCommand::Unpin { model } => unpin(db, &model),
        ModelCommand::List(json) => list(db, json.json),
    }
}

/// `model pin`: the options given change; the pin is shown as it now is.
fn pin(
    db: &Path,
    model: &str,
    num_ctx: Option<u32>,
    keep_alive: Option<&KeepAlive>,
) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let p =
        store.write(|tx| model_pins::pin_audited(tx, model, num_ctx, keep_alive, &operator()))?;
    output::status(format_args!("pinned {}", describe(&p)));
    Ok(())
}

/// `model unpin`.
fn unpin(db: &Path, model: &str) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let p = store.write(|tx| model_pins::unpin_audited(tx, model, &operator()))?;
    output::status(format_args!(
        "unpinned {}; clients choose its options again",
        p.model
    ));
    Ok(())
}

/// `model list`.
fn list(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let list = model_pins::list(store.conn())?;
    if json {
        let shown: Vec<_> = list.iter().map(Pin::shown).collect();
        return output::print_json(&shown);
    }
    let mut t = output::table(&["MODEL", "NUM_CTX", "KEEP_ALIVE"]);
    for p in &list {
        t.add_row(vec![
            p.model.clone(),
            opt(p.num_ctx),
            opt(p.keep_alive.as_ref().map(|k| &k.text)),
        ]);
    }
    output::print_table(&t, "no pinned models")
}

/// `MODEL (num_ctx N, keep_alive DUR)`, naming only what is pinned.
fn describe(p: &Pin) -> String {
    let mut parts = Vec::new();
    if let Some(n) = p.num_ctx {
        parts.push(format!("num_ctx {n}"));
    }
    if let Some(k) = &p.keep_alive {
        parts.push(format!("keep_alive {}", k.text));
    }
    format!("{} ({})", p.model, parts.join(", "))
}
