//! One model host as the gate sees it: what it is (name, URL, kind, slots), and what the
//! gate last observed of it (health, installed and loaded models, requests in flight).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::super::metrics::{HostLabel, Metrics};
use super::super::upstream::{Idle, Upstream};
pub use crate::store::hosts::{Health, Kind};

/// Consecutive failed connections or probes after which a host is down. A refused
/// connection (nothing listens) is down at once.
pub const DOWN_AFTER: u32 = 2;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A model name as hosts are matched on it: lowercase, with `:latest` when it names no
/// tag (`Llama3.2` → `llama3.2:latest`), as Ollama reads it.
pub fn model_key(name: &str) -> String {
    let mut key = name.trim().to_ascii_lowercase();
    let last = key.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') {
        key.push_str(":latest");
    }
    key
}

/// What a host serves, as its last successful probe found it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Models {
    /// Installed models, by [`model_key`].
    pub installed: Vec<String>,
    /// Loaded models (in memory, answering without a load), by [`model_key`].
    pub loaded: Vec<String>,
    /// The loaded models' names as the host reported them, for `host list`.
    pub loaded_names: Vec<String>,
}

/// How a host stands for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Has {
    /// Loaded: a request starts generating without a load.
    Loaded,
    /// Installed, not loaded.
    Installed,
    /// Not probed yet: it may have the model.
    Unknown,
    /// Not installed.
    No,
}

/// The metric handles of one host, looked up once.
#[derive(Debug)]
pub struct HostMetrics {
    pub up: Gauge,
    pub in_flight: Gauge,
    pub requests: Counter,
    pub failovers: Counter,
    pub loads: Counter,
}

/// One host.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub upstream: Upstream,
    pub kind: Kind,
    pub slots: u32,
    /// In the database (so the gate writes its state back), not given by `--upstream`.
    pub stored: bool,
    draining: AtomicBool,
    /// No longer one of the fleet's hosts (removed, or replaced by a changed one): the
    /// requests on it finish, no other goes to it.
    retired: AtomicBool,
    health: AtomicU8,
    failures: AtomicU32,
    in_flight: AtomicU32,
    /// `None` until a probe has answered.
    models: RwLock<Option<Arc<Models>>>,
    /// Idle connections to the host: one list per worker, and the prober's last.
    idle: Box<[Arc<Idle>]>,
    pub metrics: HostMetrics,
}

/// What a new [`Host`] is.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub upstream: Upstream,
    pub kind: Kind,
    pub slots: u32,
    pub stored: bool,
    pub draining: bool,
}

impl Host {
    /// A host not yet probed, with idle lists for `workers` workers and the prober.
    pub fn new(spec: Spec, workers: usize, metrics: &Metrics) -> Host {
        let label = HostLabel {
            host: spec.name.clone(),
        };
        let metrics = HostMetrics {
            up: metrics.host_up.get_or_create(&label).clone(),
            in_flight: metrics.host_in_flight.get_or_create(&label).clone(),
            requests: metrics.host_requests.get_or_create(&label).clone(),
            failovers: metrics.host_failovers.get_or_create(&label).clone(),
            loads: metrics.host_loads.get_or_create(&label).clone(),
        };
        Host {
            name: spec.name,
            upstream: spec.upstream,
            kind: spec.kind,
            slots: spec.slots.max(1),
            stored: spec.stored,
            draining: AtomicBool::new(spec.draining),
            retired: AtomicBool::new(false),
            health: AtomicU8::new(UNKNOWN),
            failures: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            models: RwLock::new(None),
            idle: (0..=workers).map(|_| Arc::default()).collect(),
            metrics,
        }
    }

    /// Whether `spec` describes this host as it is (only draining may differ).
    pub fn is(&self, spec: &Spec) -> bool {
        self.name == spec.name
            && self.upstream.authority == spec.upstream.authority
            && self.kind == spec.kind
            && self.slots == spec.slots.max(1)
            && self.stored == spec.stored
    }

    /// Idle connections of worker `n` (the prober's is the last).
    pub fn idle(&self, n: usize) -> &Arc<Idle> {
        &self.idle[n.min(self.idle.len() - 1)]
    }

    /// The index of the prober's idle list.
    pub fn prober(&self) -> usize {
        self.idle.len() - 1
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// The last verdict: `None` before the first probe or connection.
    pub fn health(&self) -> Option<Health> {
        match self.health.load(Ordering::Relaxed) {
            UP => Some(Health::Up),
            DOWN => Some(Health::Down),
            _ => None,
        }
    }

    /// Whether requests may be sent: not known to be down, and still one of the fleet's.
    pub fn usable(&self) -> bool {
        self.health.load(Ordering::Relaxed) != DOWN && !self.retired.load(Ordering::Relaxed)
    }

    /// The host left the fleet.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether the host serves `path`: an OpenAI-compatible host only `/v1/*`.
    pub fn serves(&self, path: &str) -> bool {
        self.kind == Kind::Ollama || path.starts_with("/v1/")
    }

    /// Requests on the host now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a request sent now would find a free slot.
    pub fn has_free_slot(&self) -> bool {
        self.in_flight() < self.slots
    }

    /// How the host stands for the model `key` ([`model_key`]).
    pub fn has(&self, key: &str) -> Has {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        match models.as_deref() {
            None => Has::Unknown,
            Some(m) if m.loaded.iter().any(|k| k == key) => Has::Loaded,
            Some(m) if m.installed.iter().any(|k| k == key) => Has::Installed,
            Some(_) => Has::No,
        }
    }

    /// How many models the last probe found loaded.
    pub fn loaded_count(&self) -> usize {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        models.as_deref().map_or(0, |m| m.loaded.len())
    }

    /// What the last probe found, if one answered.
    pub fn models(&self) -> Option<Arc<Models>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a slot for one request; it is given back as the [`Slot`] drops.
    pub fn take_slot(self: &Arc<Self>) -> Slot {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.in_flight.inc();
        Slot(self.clone())
    }

    /// A probe or connection succeeded. Returns whether the host was down before.
    pub fn succeeded(&self) -> bool {
        // The common case, every request: nothing to change.
        if self.health.load(Ordering::Relaxed) == UP && self.failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.metrics.up.set(1);
        self.health.swap(UP, Ordering::AcqRel) == DOWN
    }

    /// A probe or connection failed; `refused` when nothing listens. Returns whether
    /// this made the host down.
    pub fn failed(&self, refused: bool) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if !refused && n < DOWN_AFTER {
            return false;
        }
        self.metrics.up.set(0);
        self.health.swap(DOWN, Ordering::AcqRel) != DOWN
    }

    /// Stores what a probe found; returns how many models became loaded since the
    /// last probe (the loads observed).
    pub fn set_models(&self, found: Models) -> u64 {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        let loads = match models.as_deref() {
            Some(before) => found
                .loaded
                .iter()
                .filter(|k| !before.loaded.contains(k))
                .count() as u64,
            None => 0,
        };
        *models = Some(Arc::new(found));
        loads
    }
}

/// One request's slot on a host: the host's in-flight count, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Host>);

impl Slot {
    pub fn host(&self) -> &Arc<Host> {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_keys_are_read_as_ollama_reads_names() {
        assert_eq!(model_key("Llama3.2"), "llama3.2:latest");
        assert_eq!(model_key("qwen2.5:0.5b"), "qwen2.5:0.5b");
        assert_eq!(model_key("registry:5000/m"), "registry:5000/m:latest");
        assert_eq!(model_key("hf.co/a/b:Q4_K_M"), "hf.co/a/b:q4_k_m");
    }
}
