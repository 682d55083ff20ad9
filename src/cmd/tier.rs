//! `aigate tier list|set`, one function per subcommand.

use std::path::Path;

use super::{open, operator};
use crate::cli::TierCommand;
use crate::output;
use crate::store::OpenMode;
use crate::store::tiers::{self, Tier, TierChange, split_models};

/// The columns of a tier table.
const HEADERS: [&str; 6] = [
    "TIER",
    "RPM",
    "CONCURRENCY",
    "TOKENS/DAY",
    "MODELS",
    "ADMIN",
];

/// Runs a tier command.
pub fn run(db: &Path, cmd: TierCommand) -> anyhow::Result<()> {
    match cmd {
        TierCommand::List(json) => list(db, json.json),
        TierCommand::Set {
            name,
            rpm,
            concurrency,
            tokens_per_day,
            models,
            admin,
            no_admin,
            priority,
            weight,
            max_wait,
            max_queued,
            json,
        } => {
            let change = TierChange {
                rpm: rpm.unwrap_or_default(),
                concurrency: concurrency.unwrap_or_default(),
                tokens_per_day: tokens_per_day.unwrap_or_default(),
                models: models.as_deref().map(split_models),
                admin: match (admin, no_admin) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                priority,
                weight,
                max_wait: max_wait.unwrap_or_default(),
                max_queued: max_queued.unwrap_or_default(),
            };
            set(db, &name, &change, json.json)
        }
    }
}

/// `tier list`.
fn list(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open(db, OpenMode::Existing)?;
    let list = tiers::list(store.conn())?;
    if json {
        return output::print_json(&list);
    }
    let mut t = output::table(&HEADERS);
    for tier in &list {
        t.add_row(row(tier));
    }
    output::print_table(&t, "no tiers")
}

/// `tier set`: creates the tier when missing, then shows it as it now is.
fn set(db: &Path, name: &str, change: &TierChange, json: bool) -> anyhow::Result<()> {
    let mut store = open(db, OpenMode::Existing)?;
    let (tier, created) = store.write(|tx| tiers::set_audited(tx, name, change, &operator()))?;
    if json {
        return output::print_json(&tier);
    }
    output::status(format_args!(
        "{} tier {}",
        if created { "created" } else { "updated" },
        tier.name
    ));
    let mut t = output::table(&HEADERS);
    t.add_row(row(&tier));
    output::print_table(&t, "")
}

fn row(t: &Tier) -> Vec<String> {
    let unlimited = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
    vec![
        t.name.clone(),
        unlimited(t.rpm.map(|v| v.to_string())),
        unlimited(t.concurrency.map(|v| v.to_string())),
        unlimited(t.tokens_per_day.map(|v| v.to_string())),
        t.models.join(","),
        if t.admin { "yes" } else { "no" }.into(),
    ]
}
