//! The gate as `aigate top` shows it: hosts with their loaded models and slots in use,
//! requests waiting and in flight per tier and per user, tokens a second. Served as JSON
//! at `GET /status` on the metrics listener, never on the public port.

use std::time::Instant;

use serde::Serialize;

use super::fleet::Fleet;
use super::fleet::host::Health;
use super::queue::{Queue, TierStatus, UserStatus};

/// The whole document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub hosts: Vec<HostStatus>,
    pub tiers: Vec<TierStatus>,
    pub users: Vec<UserStatus>,
    /// Over every tier.
    pub waiting: u32,
    pub in_flight: u32,
    pub tokens_per_second: f64,
}

/// One host.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub url: String,
    pub kind: &'static str,
    pub slots: u32,
    /// Whether its slots are declared (`aigate host add --slots`), so that requests wait
    /// in the gate for them; a host given by `--upstream` queues its own.
    pub queued: bool,
    /// `up`, `down`, `draining`, or `unknown` before its first probe.
    pub state: &'static str,
    pub in_flight: u32,
    /// The loaded models, as the host names them.
    pub loaded: Vec<String>,
}

/// What the gate looks like now.
pub fn status(fleet: &Fleet, queue: &Queue, started: Instant) -> Status {
    let snapshot = fleet.snapshot();
    let hosts = snapshot
        .hosts
        .iter()
        .map(|h| HostStatus {
            name: h.name.clone(),
            url: format!("http://{}", h.upstream.authority),
            kind: h.kind.as_str(),
            slots: h.slots,
            queued: h.stored,
            state: match (h.draining(), h.health()) {
                (true, _) => "draining",
                (false, Some(Health::Up)) => "up",
                (false, Some(Health::Down)) => "down",
                (false, None) => "unknown",
            },
            in_flight: h.in_flight(),
            loaded: h
                .models()
                .map(|m| m.loaded_names.clone())
                .unwrap_or_default(),
        })
        .collect();
    let q = queue.status();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: started.elapsed().as_secs(),
        hosts,
        waiting: q.tiers.iter().map(|t| t.waiting).sum(),
        in_flight: q.tiers.iter().map(|t| t.in_flight).sum(),
        tokens_per_second: q.tiers.iter().map(|t| t.tokens_per_second).sum(),
        tiers: q.tiers,
        users: q.users,
    }
}
