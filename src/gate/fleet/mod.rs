//! The model hosts behind the gate (SPEC §6): those stored in the database (`aigate
//! host`), re-read whenever another connection commits, and those given by
//! `--upstream` for the run; with neither, Ollama's default address. The [`probe`] keeps each host's
//! health and models current; [`choose`] picks hosts for a request; [`lists`] merges
//! the model lists. The database thread writes what the gate observed back
//! ([`Fleet::report`]) for `aigate host list`.
//!
//! Pinned model options (`aigate model pin`) are read with the hosts.

pub mod choose;
pub mod host;
pub mod lists;
pub mod probe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::Connection;

pub use choose::NoHost;
pub use host::{Host, Kind, Slot, model_key};

use super::metrics::{HostLabel, Metrics};
use super::upstream::Upstream;
use crate::store::hosts::{self, Health};
use crate::store::model_pins;
use crate::store::{self, Store};

/// Ollama's own address: the host when none is stored and no `--upstream` is given.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:11434";

/// What the gate writes back is rewritten at least this often, so that `host list`
/// knows a gate is watching (see [`hosts::STALE_AFTER`]).
const REWRITE: Duration = Duration::from_secs(4);

/// Runs every future of `futures` at once on this task; their outputs in order.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot
                && let std::task::Poll::Ready(r) = f.as_mut().poll(cx)
            {
                *out = Some(r);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Options pinned for one model, as the gate writes them into Ollama requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub num_ctx: Option<u32>,
    /// Seconds; negative keeps the model loaded.
    pub keep_alive: Option<i64>,
}

/// The hosts and pins a worker sees: replaced whole on a change, never edited.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub hosts: Vec<Arc<Host>>,
    /// By [`model_key`].
    pub pins: HashMap<String, Pinned>,
}

impl Snapshot {
    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// What was last written back for one host.
#[derive(Debug, PartialEq)]
struct Written {
    health: Health,
    loaded: Vec<String>,
    in_flight: u32,
}

/// The hosts behind the gate.
pub struct Fleet {
    snapshot: RwLock<Arc<Snapshot>>,
    /// `--upstream` hosts.
    upstreams: Vec<Upstream>,
    workers: usize,
    metrics: Arc<Metrics>,
    turn: AtomicUsize,
    written: Mutex<HashMap<String, (Written, Instant)>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("hosts", &self.snapshot().hosts.len())
            .finish()
    }
}

impl Fleet {
    /// A fleet of `upstreams` (or the default host) until [`Fleet::refresh`] reads the
    /// database, for `workers` workers.
    pub fn new(upstreams: Vec<Upstream>, workers: usize, metrics: Arc<Metrics>) -> Fleet {
        let fleet = Fleet {
            snapshot: RwLock::default(),
            upstreams,
            workers,
            metrics,
            turn: AtomicUsize::new(0),
            written: Mutex::default(),
        };
        fleet.install(Vec::new(), HashMap::new());
        fleet
    }

    /// The metrics the hosts count in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The hosts and pins now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new turn, for spreading requests over hosts that tie.
    pub fn turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Re-reads the stored hosts and pins. A host whose name, URL, kind and slots are
    /// unchanged keeps what the gate observed of it.
    pub fn refresh(&self, conn: &Connection) -> store::Result<()> {
        let stored = hosts::list(conn)?;
        let pins = model_pins::list(conn)?
            .into_iter()
            .map(|p| {
                let pinned = Pinned {
                    num_ctx: p.num_ctx,
                    keep_alive: p.keep_alive.map(|k| k.secs),
                };
                (model_key(&p.model), pinned)
            })
            .collect();
        let specs = stored
            .into_iter()
            .filter_map(|h| {
                let upstream = Upstream::parse(&h.url)
                    .map_err(|e| tracing::error!("host {:?}: {e}", h.name))
                    .ok()?;
                Some(host::Spec {
                    name: h.name,
                    upstream,
                    kind: h.kind,
                    slots: h.slots,
                    stored: true,
                    draining: h.draining,
                })
            })
            .collect();
        self.install(specs, pins);
        Ok(())
    }

    /// Installs `stored` hosts and the `--upstream` ones (or, when there are none at
    /// all, the default) with `pins`.
    fn install(&self, stored: Vec<host::Spec>, pins: HashMap<String, Pinned>) {
        let ups = if self.upstreams.is_empty() && stored.is_empty() {
            Upstream::parse(DEFAULT_UPSTREAM).into_iter().collect()
        } else {
            self.upstreams.clone()
        };
        let mut specs = stored;
        for upstream in ups {
            let name = upstream.authority.to_string();
            // A stored host of the same name is that host (and one given twice, once).
            if specs.iter().any(|s| s.name == name) {
                continue;
            }
            specs.push(host::Spec {
                name,
                upstream,
                kind: Kind::Ollama,
                slots: 1,
                stored: false,
                draining: false,
            });
        }
        let mut slot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let before = slot.clone();
        let hosts: Vec<Arc<Host>> = specs
            .into_iter()
            .map(|spec| match before.host(&spec.name) {
                Some(h) if h.is(&spec) => {
                    h.set_draining(spec.draining);
                    h.clone()
                }
                _ => Arc::new(Host::new(spec, self.workers, &self.metrics)),
            })
            .collect();
        for gone in &before.hosts {
            if !hosts.iter().any(|h| Arc::ptr_eq(h, gone)) {
                gone.retire();
            }
            if !hosts.iter().any(|h| h.name == gone.name) {
                self.forget_metrics(&gone.name);
            }
        }
        *slot = Arc::new(Snapshot { hosts, pins });
    }

    fn forget_metrics(&self, name: &str) {
        let label = HostLabel { host: name.into() };
        let m = &self.metrics;
        m.host_up.remove(&label);
        m.host_in_flight.remove(&label);
        m.host_requests.remove(&label);
        m.host_failovers.remove(&label);
        m.host_loads.remove(&label);
    }

    /// Writes back, in one transaction, what the gate observed of each stored host
    /// that changed since the last write, or was last written [`REWRITE`] ago.
    /// Called by the database thread on the connection that polls for changes.
    pub fn report(&self, store: &mut Store) {
        let snapshot = self.snapshot();
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<(&Arc<Host>, Written)> = snapshot
            .hosts
            .iter()
            .filter(|h| h.stored)
            .filter_map(|h| {
                let health = h.health()?;
                let loaded = h
                    .models()
                    .map(|m| m.loaded_names.clone())
                    .unwrap_or_default();
                let now = Written {
                    health,
                    loaded,
                    in_flight: h.in_flight(),
                };
                match written.get(&h.name) {
                    Some((w, at)) if *w == now && at.elapsed() < REWRITE => None,
                    _ => Some((h, now)),
                }
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let at = store::now();
        let result = store.write(|tx| {
            for (h, w) in &due {
                hosts::report(tx, &h.name, w.health, &w.loaded, w.in_flight, at)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                written.retain(|name, _| snapshot.host(name).is_some());
                for (h, w) in due {
                    written.insert(h.name.clone(), (w, Instant::now()));
                }
            }
            Err(e) => tracing::warn!("writing the hosts' state failed: {e}"),
        }
    }
}
