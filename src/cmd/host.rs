//! `aigate host add|list|drain|undrain|remove`, one function per subcommand: the model
//! servers behind the gate. A running `serve` sees each change within a second.

use std::path::Path;

use super::{open, operator};
use crate::cli::{HostCommand, HostKind};
use crate::output::{self, opt};
use crate::store::hosts::{self, Kind, NewHost};
use crate::store::{OpenMode, now, rfc3339};

/// Runs a host command.
pub fn run(db: &Path, cmd: HostCommand) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Add {
            url,
            name,
            kind,
            slots,
        } => {
            let kind = match kind {
                HostKind::Ollama => Kind::Ollama,
                HostKind::Openai => Kind::Openai,
            };
            add(
                db,
                &NewHost {
                    url,
                    name,
                    kind,
                    slots,
                },
            )
        }
        HostCommand::List(json) => list(db, json.json),
        HostCommand::Drain { name } => set_draining(db, &name, true),
        HostCommand::Undrain { name } => set_draining(db, &name, false),
        HostCommand::Remove { name, yes } => remove(db, &name, yes),
    }
}

/// `host add`.
fn add(db: &Path, new: &NewHost) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let h = store.write(|tx| hosts::add_audited(tx, new, &operator()))?;
    output::status(format_args!(
        "added host {} ({}, {}, {} slot{})",
        h.name,
        h.url,
        h.kind.as_str(),
        h.slots,
        if h.slots == 1 { "" } else { "s" }
    ));
    Ok(())
}

/// `host list`: the stored hosts with what a running gate last saw of them.
fn list(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let list = hosts::list(store.conn())?;
    let now = now();
    if json {
        let shown: Vec<_> = list.iter().map(|h| h.shown(now)).collect();
        return output::print_json(&shown);
    }
    let mut t = output::table(&[
        "NAME",
        "URL",
        "KIND",
        "SLOTS",
        "STATE",
        "LOADED",
        "IN FLIGHT",
        "SEEN",
    ]);
    for h in &list {
        let s = h.shown(now);
        t.add_row(vec![
            s.name,
            s.url,
            s.kind.as_str().to_string(),
            s.slots.to_string(),
            s.state.as_str().to_string(),
            match s.loaded_models {
                Some(m) if !m.is_empty() => m.join(","),
                _ => "-".to_string(),
            },
            opt(s.in_flight),
            opt(h.seen_at.map(rfc3339)),
        ]);
    }
    output::print_table(
        &t,
        "no hosts (serve uses --upstream, default http://127.0.0.1:11434)",
    )
}

/// `host drain` and `host undrain`; saying so when nothing changed.
fn set_draining(db: &Path, name: &str, draining: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let (h, changed) =
        store.write(|tx| hosts::set_draining_audited(tx, name, draining, &operator()))?;
    let name = &h.name;
    output::status(match (draining, changed) {
        (true, true) => format!("draining host {name}: no new requests; those in flight finish"),
        (true, false) => format!("host {name} was already draining"),
        (false, true) => format!("host {name} takes requests again"),
        (false, false) => format!("host {name} was not draining"),
    });
    Ok(())
}

/// `host remove`: asks first on a terminal.
fn remove(db: &Path, name: &str, yes: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let h = hosts::get(store.conn(), name)?;
    output::confirm(&format!("Remove host {} ({})?", h.name, h.url), yes)?;
    let h = store.write(|tx| hosts::remove_audited(tx, name, &operator()))?;
    output::status(format_args!("removed host {} ({})", h.name, h.url));
    Ok(())
}
