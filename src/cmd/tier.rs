//! `aigate tier list|set`, one function per subcommand.

use std::path::Path;

use super::{open, operator};
use crate::cli::TierCommand;
use crate::output;
use crate::store::OpenMode;
use crate::store::tiers::{self, Tier, TierChange, split_models};

/// The columns of a tier table.
const HEADERS: [&str; 10] = [
    "TIER",
    "RPM",
    "CONCURRENCY",
    "TOKENS/DAY",
    "MODELS",
    "ADMIN",
    "PRIORITY",
    "WEIGHT",
    "MAX WAIT",
    "MAX QUEUED",
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
        t.priority.to_string(),
        t.weight.to_string(),
        unlimited(t.max_wait.map(seconds)),
        unlimited(t.max_queued.map(|v| v.to_string())),
    ]
}

/// Seconds in the largest unit that divides them: 60 is `1m`, 90 `90s`, 7200 `2h`.
fn seconds(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn waits_show_in_their_largest_whole_unit() {
        for (secs, shown) in [
            (1, "1s"),
            (60, "1m"),
            (90, "90s"),
            (300, "5m"),
            (5_400, "90m"),
            (7_200, "2h"),
            (86_400, "1d"),
        ] {
            assert_eq!(seconds(secs), shown);
        }
    }
}
