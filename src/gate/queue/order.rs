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
    /// The start tag plus the request's cost: its flow's finish tag once it is served.
    pub finish: u64,
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
    /// Its path, to choose hosts again by when all of its own are gone.
    pub path: String,
    /// The request body it holds while it waits.
    pub bytes: u64,
    /// How long it waits for a busy host with its model loaded ([`patience`]).
    pub patience: std::time::Duration,
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
    /// The finish tag of its last request served: what `finish` falls back to when all
    /// it had waiting left unserved (expired, or their clients left), so that requests
    /// never served cost it nothing.
    pub served: u64,
    pub waiting: u32,
    pub in_flight: u32,
    pub tokens: Rate,
    /// When it last had a request waiting or in flight.
    pub active: Instant,
    /// Its requests held back by its own concurrency limit, out of the way of every pass
    /// until one of its requests ends.
    pub parked: BTreeMap<Place, Waiter>,
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
    /// The request bodies held by those waiting.
    pub bytes: u64,
    /// Requests parked in their flows (counted in `waiting` of flows and tiers, not in
    /// `waiting` here).
    pub parked: usize,
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
    /// A host with room: its model loaded there, or loaded nowhere it could go.
    Host(Arc<Host>),
    /// A host with room that must load the model, although a busy host has it loaded:
    /// taken because enough requests for the model already wait for those.
    Cold(Arc<Host>),
    /// Nothing free that it should take.
    Wait,
    /// Every host that could serve it is down, drained or gone.
    Gone,
}

/// How long a request waits for a busy host that has its model loaded before it takes a
/// free one that must load it: about one request on a busy host, against a load of
/// seconds that also evicts another model.
pub const WARM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a request with `max_wait` waits for a loaded host: [`WARM_PATIENCE`], or
/// half its max-wait when that is shorter, so that it never runs out waiting for one.
pub fn patience(max_wait: Option<std::time::Duration>) -> std::time::Duration {
    max_wait.map_or(WARM_PATIENCE, |m| WARM_PATIENCE.min(m / 2))
}

/// The host a request should take now, if any; `taken(h)` is how many of `h`'s slots
/// this pass already gave away. A host with its model loaded and a free slot first; a
/// free host that would load it only when no host has it loaded, when `ahead` requests
/// for the same model already wait for a full round of the loaded hosts' slots, or when
/// it has waited its [`patience`] (`patient` false).
pub fn pick(
    hosts: &[Arc<Host>],
    model: Option<&str>,
    ahead: u32,
    patient: bool,
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
        Some(h) if warm_slots == 0 => Pick::Host(h.clone()),
        Some(h) if ahead >= warm_slots || !patient => Pick::Cold(h.clone()),
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
        let band = class.priority;
        let v = self
            .bands
            .iter()
            .find(|(p, _)| *p == band)
            .map_or(0, |(_, v)| *v);
        // A request dispatched on another host may have moved the band's time past
        // those still waiting here: a newcomer starts no later than the first of them.
        let lowest = self
            .waiting
            .range(
                Place {
                    rank: Reverse(band),
                    start: 0,
                    seq: 0,
                    finish: 0,
                }..,
            )
            .next()
            .filter(|(p, _)| p.rank == Reverse(band))
            .map_or(u64::MAX, |(p, _)| p.start);
        let v = v.min(lowest);
        let Some(f) = self.flows.get_mut(&flow) else {
            return Place {
                rank: Reverse(band),
                start: v,
                seq: 0,
                finish: v,
            };
        };
        let start = if f.band == band { v.max(f.finish) } else { v };
        let finish = start + UNIT / u64::from(class.weight.max(1));
        f.band = band;
        f.finish = finish;
        self.seq += 1;
        Place {
            rank: Reverse(band),
            start,
            seq: self.seq,
            finish,
        }
    }

    /// Whether a request of `flow` under `concurrency` is held back by its own budget.
    pub fn over_budget(&self, flow: usize, concurrency: Option<u32>) -> bool {
        let used = self
            .flows
            .get(&flow)
            .map_or(0, |f| f.budget.inflight.load(Ordering::Acquire));
        concurrency.is_some_and(|c| used >= c)
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
        let counted = concurrency.is_some();
        if let Some(f) = self.flows.get_mut(&flow) {
            f.in_flight += 1;
            f.active = since;
            f.served = f.served.max(place.finish);
            if counted {
                f.budget.inflight.fetch_add(1, Ordering::AcqRel);
            }
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

    /// Requests waiting, parked ones included.
    pub fn count(&self) -> usize {
        self.waiting.len() + self.parked
    }

    /// Moves requests of `flow` held by its concurrency limit back in line, as many as
    /// the limit has room for now, first ones first.
    pub fn unpark(&mut self, flow: usize) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        let used = f.budget.inflight.load(Ordering::Acquire);
        let mut back = Vec::new();
        while let Some(entry) = f.parked.first_entry() {
            let room = entry
                .get()
                .concurrency
                .map_or(u32::MAX, |c| c.saturating_sub(used));
            if room as usize <= back.len() {
                break;
            }
            back.push(entry.remove_entry());
        }
        self.parked -= back.len();
        self.waiting.extend(back);
    }

    /// Moves every flow's requests held by its limit back in line where it has room.
    pub fn unpark_all(&mut self) {
        let flows: Vec<usize> = self
            .flows
            .iter()
            .filter(|(_, f)| !f.parked.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for flow in flows {
            self.unpark(flow);
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
        self.bytes += w.bytes;
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
        self.bytes -= w.bytes;
    }

    /// Removes the waiting request at `place`, if it still waits.
    pub fn remove(&mut self, place: &Place) -> Option<Waiter> {
        let w = self.waiting.remove(place)?;
        self.unwait(&w);
        Some(w)
    }

    /// Removes a request of `flow` that leaves without being served (in line or parked);
    /// once its flow has nothing waiting, what it was charged for unserved requests is
    /// given back.
    pub fn remove_unserved(&mut self, flow: usize, place: &Place) -> Option<Waiter> {
        let parked = self
            .flows
            .get_mut(&flow)
            .and_then(|f| f.parked.remove(place));
        let w = match parked {
            Some(w) => {
                self.parked -= 1;
                self.unwait(&w);
                w
            }
            None => self.remove(place)?,
        };
        if let Some(f) = self.flows.get_mut(&w.flow)
            && f.waiting == 0
        {
            f.finish = f.served;
        }
        Some(w)
    }

    /// Dispatches every waiting request that can go now, in order. Returns what could
    /// not be handed over (its client left at that instant), to be dropped once the
    /// lock is released. The pass ends as soon as no slot is left; a `full` pass also
    /// looks at every request whose hosts all went down, were drained or removed (and
    /// gives those new hosts when the fleet has some).
    pub fn dispatch(&mut self, queue: &Arc<Queue>, full: bool) -> Vec<Grant> {
        let mut undelivered = Vec::new();
        for _ in 0..2 {
            if self.waiting.is_empty() {
                break;
            }
            let mut room = self.room();
            if room == 0 && !full {
                break;
            }
            let now = Instant::now();
            // What this pass gave away so far: slots by host, requests by flow, and the
            // requests passed over by model (a later one of the same model waits behind
            // them for the loaded hosts).
            let mut slots: Tally<usize> = Tally::default();
            let mut flows: Tally<usize> = Tally::default();
            let mut ahead: Tally<String> = Tally::default();
            // Requests waiting for a loaded host, first in line first: the first of them
            // is given a free host that must load the model when one is taken for it.
            let mut passed: Vec<(&Place, &Waiter)> = Vec::new();
            let mut go: Vec<(Place, Option<Arc<Host>>)> = Vec::new();
            let mut park: Vec<(usize, Place)> = Vec::new();
            for (place, w) in &self.waiting {
                if room == 0 && !full {
                    break;
                }
                if let Some(c) = w.concurrency {
                    let used = self
                        .flows
                        .get(&w.flow)
                        .map_or(0, |f| f.budget.inflight.load(Ordering::Acquire));
                    if used.saturating_add(flows.get(&w.flow)) >= c {
                        if flows.get(&w.flow) == 0 {
                            park.push((w.flow, *place));
                        }
                        continue;
                    }
                }
                let model = w.model.as_deref();
                let n = model.map_or(0, |m| ahead.get(m));
                let patient = now.duration_since(w.since) < w.patience;
                let (place, w, h) =
                    match pick(&w.hosts, model, n, patient, |h| slots.get(&host_id(h))) {
                        Pick::Host(h) => (place, w, h),
                        Pick::Cold(h) => {
                            // Taken for the first request passed over that can go there.
                            let first = passed.iter().position(|(_, p)| {
                                p.model == w.model && p.hosts.iter().any(|x| Arc::ptr_eq(x, &h))
                            });
                            match first {
                                Some(i) => {
                                    let (p_place, p) = passed.remove(i);
                                    passed.push((place, w));
                                    (p_place, p, h)
                                }
                                None => (place, w, h),
                            }
                        }
                        Pick::Gone => {
                            go.push((*place, None));
                            continue;
                        }
                        Pick::Wait => {
                            if let Some(m) = model {
                                ahead.add(m.to_string());
                            }
                            passed.push((place, w));
                            continue;
                        }
                    };
                if h.stored {
                    room = room.saturating_sub(1);
                }
                slots.add(host_id(&h));
                flows.add(w.flow);
                go.push((*place, Some(h)));
            }
            for (flow, place) in park {
                if let Some(w) = self.waiting.remove(&place)
                    && let Some(f) = self.flows.get_mut(&flow)
                {
                    f.parked.insert(place, w);
                    self.parked += 1;
                }
            }
            let mut rehomed = false;
            for (place, host) in go {
                let grant = match host {
                    Some(h) => {
                        let Some(w) = self.remove(&place) else {
                            continue;
                        };
                        let t =
                            self.grant(queue, &place, w.flow, w.tier, w.concurrency, h, w.since);
                        (w.tx, Ok(t))
                    }
                    None => {
                        if self.rehome(queue, &place) {
                            rehomed = true;
                            continue;
                        }
                        let flow = self.waiting.get(&place).map_or(0, |w| w.flow);
                        let Some(w) = self.remove_unserved(flow, &place) else {
                            continue;
                        };
                        (w.tx, Err(()))
                    }
                };
                if let Err(back) = grant.0.send(grant.1) {
                    undelivered.push(back);
                }
            }
            if !rehomed {
                break;
            }
        }
        undelivered
    }

    /// Gives a request whose hosts are all gone the fleet's hosts that can serve it now
    /// (a host removed and added again, another host that got its model); whether it
    /// found any.
    fn rehome(&mut self, queue: &Queue, place: &Place) -> bool {
        let Some(hosts) = self
            .waiting
            .get(place)
            .and_then(|w| queue.rechoose(&w.path, w.model.as_deref()))
        else {
            return false;
        };
        let Some(mut w) = self.waiting.remove(place) else {
            return false;
        };
        for h in &w.hosts {
            let id = host_id(h);
            if let Some((_, n)) = self.hosts.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.hosts.remove(&id);
                }
            }
        }
        for h in &hosts {
            self.hosts
                .entry(host_id(h))
                .or_insert_with(|| (h.clone(), 0))
                .1 += 1;
        }
        w.hosts = hosts;
        self.waiting.insert(*place, w);
        true
    }
}

/// A host's identity within one pass.
fn host_id(h: &Arc<Host>) -> usize {
    Arc::as_ptr(h) as usize
}
