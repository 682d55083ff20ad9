//! The queue's state and its one decision: which waiting request goes to which free slot.
//! Strict by priority; within a priority, start-time fair queuing over flows (a user, or
//! a key without one), each request costing its flow `1 / weight` of virtual time.
//!
//! Start-time fair queuing (Goyal et al., 1996) rather than deficit round-robin: a flow
//! that was idle starts at the band's virtual time, so it can neither hoard credit nor be
//! put behind another flow's backlog; a request's place is fixed when it arrives (one
//! ordered map, `O(log n)`), and weights need no quantum to be tuned.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::super::fleet::Host;
use super::super::fleet::host::Has;
use super::super::limits::LimitState;
use super::{Class, Queue, Ticket};

/// One request's virtual time at weight 1.
pub const UNIT: u64 = 1 << 20;

/// Where a waiting request stands: higher priority first, then the earlier start tag,
/// then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub rank: Reverse<i32>,
    pub start: u64,
    pub seq: u64,
}

/// What a waiting request is handed: its ticket, or word that no host is left for it.
pub type Grant = Result<Ticket, ()>;

/// A request waiting for a slot.
#[derive(Debug)]
pub struct Waiter {
    pub flow: usize,
    pub tier: usize,
    pub concurrency: Option<u32>,
    /// The hosts that can serve it, best first.
    pub hosts: Vec<Arc<Host>>,
    /// Its model's key, when it names one.
    pub model: Option<String>,
    pub since: Instant,
    pub tx: oneshot::Sender<Grant>,
}

/// A user, or a key without a user: who shares slots fairly with the others.
#[derive(Debug)]
pub struct Flow {
    pub budget: Arc<LimitState>,
    /// `user` or the key's prefix, for `aigate top`.
    pub who: String,
    pub tier: usize,
    pub band: i32,
    /// The start tag its next request may not come before.
    pub finish: u64,
    pub waiting: u32,
    pub in_flight: u32,
    pub tokens: Rate,
    /// When it last had a request waiting or in flight.
    pub active: Instant,
}

/// Completion tokens over the last [`Rate::SECONDS`] seconds.
#[derive(Debug, Default, Clone)]
pub struct Rate {
    buckets: [(u64, u64); Rate::SECONDS as usize],
}

impl Rate {
    pub const SECONDS: u64 = 10;

    pub fn add(&mut self, second: u64, n: u64) {
        let b = &mut self.buckets[(second % Self::SECONDS) as usize];
        if b.0 != second {
            *b = (second, 0);
        }
        b.1 += n;
    }

    /// Tokens a second, over the last full seconds before `second`.
    pub fn per_second(&self, second: u64) -> f64 {
        let from = second.saturating_sub(Self::SECONDS);
        let sum: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s >= from && *s < second)
            .map(|(_, n)| n)
            .sum();
        sum as f64 / Self::SECONDS as f64
    }
}

/// The counts of one tier.
#[derive(Debug)]
pub struct TierCounts {
    pub name: String,
    pub priority: i32,
    pub waiting: u32,
    pub in_flight: u32,
    pub tokens: Rate,
    pub metrics: super::TierMetrics,
}

/// Everything behind the queue's lock.
#[derive(Debug, Default)]
pub struct Inner {
    pub waiting: BTreeMap<Place, Waiter>,
    pub flows: HashMap<usize, Flow>,
    /// Each priority's virtual time: the start tag of its last dispatched request.
    /// Priorities are few: a list.
    pub bands: Vec<(i32, u64)>,
    pub tiers: Vec<TierCounts>,
    pub seq: u64,
    /// The hosts the waiting requests could go to, with how many wait for each: a pass
    /// that finds none of them with room ends at once.
    pub hosts: HashMap<usize, (Arc<Host>, u32)>,
}

/// A host has room for a request sent now, `extra` more being sent in the same pass: a
/// free slot, or no declared slots (a host given by `--upstream`, whose own queue the
/// gate leaves to it).
pub fn has_room(h: &Host, extra: u32) -> bool {
    !h.stored || h.in_flight().saturating_add(extra) < h.slots
}

/// What one request can have now.
#[derive(Debug)]
pub enum Pick {
    Host(Arc<Host>),
    /// Nothing free that it should take.
    Wait,
    /// Every host that could serve it is down or drained.
    Gone,
}

/// The host a request should take now, if any; `taken(h)` is how many of `h`'s slots
/// this pass already gave away. A host with its model loaded and a free slot first; a
/// free host that would load it only when no host has it loaded, or when `ahead`
/// requests for the same model already wait for a full round of the loaded hosts'
/// slots: a wait of about one request beats a load of seconds that also evicts another
/// model.
pub fn pick(
    hosts: &[Arc<Host>],
    model: Option<&str>,
    ahead: u32,
    taken: impl Fn(&Arc<Host>) -> u32,
) -> Pick {
    let mut usable = false;
    let mut warm_slots = 0u32;
    let mut cold = None;
    for h in hosts {
        if !h.usable() || h.draining() {
            continue;
        }
        usable = true;
        let loaded = model.is_some_and(|m| h.has(m) == Has::Loaded);
        let room = has_room(h, taken(h));
        if loaded {
            if room {
                return Pick::Host(h.clone());
            }
            warm_slots = warm_slots.saturating_add(h.slots);
        } else if room && cold.is_none() {
            cold = Some(h);
        }
    }
    match cold {
        _ if !usable => Pick::Gone,
        Some(h) if warm_slots == 0 || ahead >= warm_slots => Pick::Host(h.clone()),
        _ => Pick::Wait,
    }
}

/// How many of something one pass counted, by key: few keys, so a list.
#[derive(Debug, Default)]
struct Tally<K>(Vec<(K, u32)>);

impl<K: PartialEq> Tally<K> {
    fn get<Q>(&self, k: &Q) -> u32
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0
            .iter()
            .find(|(x, _)| x.borrow() == k)
            .map_or(0, |(_, n)| *n)
    }

    fn add(&mut self, k: K) {
        match self.0.iter_mut().find(|(x, _)| *x == k) {
            Some((_, n)) => *n += 1,
            None => self.0.push((k, 1)),
        }
    }
}

impl Inner {
    /// The place of a new request of `flow` (created if new) in `class`'s band, its flow
    /// charged for it.
    pub fn place(&mut self, flow: usize, class: &Class) -> Place {
        let v = self
            .bands
            .iter()
            .find(|(p, _)| *p == class.priority)
            .map_or(0, |(_, v)| *v);
        let f = self
            .flows
            .get_mut(&flow)
            .expect("flow entered before it is placed");
        let start = if f.band == class.priority {
            v.max(f.finish)
        } else {
            v
        };
        f.band = class.priority;
        f.finish = start + UNIT / u64::from(class.weight.max(1));
        self.seq += 1;
        Place {
            rank: Reverse(class.priority),
            start,
            seq: self.seq,
        }
    }

    /// Whether a request of `flow` under `concurrency` is held back by its own budget.
    pub fn over_budget(&self, flow: usize, concurrency: Option<u32>) -> bool {
        let budget = &self.flows[&flow].budget;
        concurrency.is_some_and(|c| budget.inflight.load(Ordering::Acquire) >= c)
    }

    /// The index of `tier`'s counts, added on first sight; its priority kept current.
    pub fn tier(
        &mut self,
        name: &str,
        priority: i32,
        metrics: &super::super::metrics::Metrics,
    ) -> usize {
        if let Some(i) = self.tiers.iter().position(|t| t.name == name) {
            self.tiers[i].priority = priority;
            return i;
        }
        self.tiers.push(TierCounts {
            name: name.to_string(),
            priority,
            waiting: 0,
            in_flight: 0,
            tokens: Rate::default(),
            metrics: super::TierMetrics::new(metrics, name),
        });
        self.tiers.len() - 1
    }

    /// Takes a slot on `host` for a request at `place` of `flow`, and counts it.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        queue: &Arc<Queue>,
        place: &Place,
        flow: usize,
        tier: usize,
        concurrency: Option<u32>,
        host: Arc<Host>,
        since: Instant,
    ) -> Ticket {
        match self.bands.iter_mut().find(|(p, _)| *p == place.rank.0) {
            Some((_, v)) => *v = (*v).max(place.start),
            None => self.bands.push((place.rank.0, place.start)),
        }
        let f = self.flows.get_mut(&flow).expect("a granted request's flow");
        f.in_flight += 1;
        f.active = since;
        let counted = concurrency.is_some();
        if counted {
            f.budget.inflight.fetch_add(1, Ordering::AcqRel);
        }
        let t = &mut self.tiers[tier];
        t.in_flight += 1;
        t.metrics.dispatched.inc();
        let waited = since.elapsed();
        t.metrics.wait.observe(waited.as_secs_f64());
        Ticket {
            queue: queue.clone(),
            slot: Some(host.take_slot()),
            host,
            flow,
            tier,
            counted,
            waited,
            tokens: 0,
        }
    }

    /// Adds a waiting request at `place`.
    pub fn wait(&mut self, place: Place, w: Waiter) {
        for h in &w.hosts {
            self.hosts
                .entry(host_id(h))
                .or_insert_with(|| (h.clone(), 0))
                .1 += 1;
        }
        if let Some(f) = self.flows.get_mut(&w.flow) {
            f.waiting += 1;
        }
        let t = &mut self.tiers[w.tier];
        t.waiting += 1;
        t.metrics.waiting.inc();
        self.waiting.insert(place, w);
    }

    /// Slots free now on the hosts the waiting requests could go to (`u32::MAX` when one
    /// of them has no declared slots).
    fn room(&self) -> u32 {
        let mut room = 0u32;
        for (h, _) in self.hosts.values() {
            if !h.usable() || h.draining() {
                continue;
            }
            if !h.stored {
                return u32::MAX;
            }
            room = room.saturating_add(h.slots.saturating_sub(h.in_flight()));
        }
        room
    }

    /// Forgets a waiting request (dispatched, expired or gone).
    fn unwait(&mut self, w: &Waiter) {
        for h in &w.hosts {
            let id = host_id(h);
            if let Some((_, n)) = self.hosts.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.hosts.remove(&id);
                }
            }
        }
        if let Some(f) = self.flows.get_mut(&w.flow) {
            f.waiting -= 1;
        }
        let t = &mut self.tiers[w.tier];
        t.waiting -= 1;
        t.metrics.waiting.dec();
    }

    /// Removes the waiting request at `place`, if it still waits.
    pub fn remove(&mut self, place: &Place) -> Option<Waiter> {
        let w = self.waiting.remove(place)?;
        self.unwait(&w);
        Some(w)
    }

    /// Dispatches every waiting request that can go now, in order. Returns what could
    /// not be handed over (its client left at that instant), to be dropped once the
    /// lock is released. The pass ends as soon as no slot is left; a `full` pass also
    /// looks at every request whose hosts all went down or were drained.
    pub fn dispatch(&mut self, queue: &Arc<Queue>, full: bool) -> Vec<Grant> {
        let mut undelivered = Vec::new();
        if self.waiting.is_empty() {
            return undelivered;
        }
        let mut room = self.room();
        if room == 0 && !full {
            return undelivered;
        }
        // What this pass gave away so far: slots by host, requests by flow, and the
        // requests passed over by model (a later one of the same model waits behind
        // them for the loaded hosts).
        let mut slots: Tally<usize> = Tally::default();
        let mut flows: Tally<usize> = Tally::default();
        let mut ahead: Tally<String> = Tally::default();
        let mut go: Vec<(Place, Option<Arc<Host>>)> = Vec::new();
        for (place, w) in &self.waiting {
            if room == 0 && !full {
                break;
            }
            if let Some(c) = w.concurrency {
                let budget = &self.flows[&w.flow].budget;
                let used = budget.inflight.load(Ordering::Acquire);
                if used.saturating_add(flows.get(&w.flow)) >= c {
                    continue;
                }
            }
            let model = w.model.as_deref();
            let n = model.map_or(0, |m| ahead.get(m));
            match pick(&w.hosts, model, n, |h| slots.get(&host_id(h))) {
                Pick::Host(h) => {
                    if h.stored {
                        room = room.saturating_sub(1);
                    }
                    slots.add(host_id(&h));
                    flows.add(w.flow);
                    go.push((*place, Some(h)));
                }
                Pick::Gone => go.push((*place, None)),
                Pick::Wait => {
                    if let Some(m) = model {
                        ahead.add(m.to_string());
                    }
                }
            }
        }
        for (place, host) in go {
            let Some(w) = self.remove(&place) else {
                continue;
            };
            let grant = match host {
                Some(h) => Ok(self.grant(queue, &place, w.flow, w.tier, w.concurrency, h, w.since)),
                None => Err(()),
            };
            if let Err(back) = w.tx.send(grant) {
                undelivered.push(back);
            }
        }
        undelivered
    }
}

/// A host's identity within one pass.
fn host_id(h: &Arc<Host>) -> usize {
    Arc::as_ptr(h) as usize
}
