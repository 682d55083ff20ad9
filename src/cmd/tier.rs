//! `aigate tier list|set`.

use std::path::Path;

use super::{open, operator};
use crate::cli::TierCommand;
use crate::output;
use crate::store::tiers::{self, Tier, TierChange, split_models};
use crate::store::OpenMode;

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
        TierCommand::List(json) => {
            let store = open(db, OpenMode::Existing)?;
            let list = tiers::list(store.conn())?;
            if json.json {
                return output::print_json(&list);
            }
            let mut t = output::table(&HEADERS);
            for tier in &list {
                t.add_row(row(tier));
            }
            output::print_table(&t, "no tiers")
        }
        TierCommand::Set {
            name,
            rpm,
            concurrency,
            tokens_per_day,
            models,
            admin,
            no_admin,
            json,
        } => {
            let mut store = open(db, OpenMode::Existing)?;
            let change = TierChange {
                rpm: rpm.unwrap_or_default(),
                concurrency: concurrency.unwrap_or_default(),
                tokens_per_day: tokens_per_day.unwrap_or_default(),
                models: models.as_deref().map(split_models),
                admin: if admin {
                    Some(true)
                } else if no_admin {
                    Some(false)
                } else {
                    None
                },
            };
            let (tier, created) =
                store.write(|tx| tiers::set_audited(tx, &name, &change, &operator()))?;
            if json.json {
                return output::print_json(&tier);
            }
            eprintln!(
                "{} tier {}",
                if created { "created" } else { "updated" },
                tier.name
            );
            let mut t = output::table(&HEADERS);
            t.add_row(row(&tier));
            output::print_table(&t, "")
        }
    }
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
