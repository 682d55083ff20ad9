//! The queue in front of the GPUs (SPEC §7): a generation request goes to a host only
//! when one that can serve it has a free slot; until then it waits here, not in
//! Ollama's first-come queue. Strict by tier priority; within a priority, users (or keys
//! without a user) share the slots by tier weight ([`order`]). A request waits at most
//! its tier's `max-wait`; a user has at most `max-queued` waiting; a client that leaves
//! is forgotten at once. A caller's concurrency limit holds its requests here too,
//! within the same bounds.
//!
//! One lock, taken when a request arrives, when it ends and when it gives up waiting;
//! never per chunk. A request that finds a slot free and nobody waiting takes it at once.

pub mod order;

use std::cmp::Reverse;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use super::fleet::choose::choose;
use super::fleet::{Fleet, Host, Slot};
use super::limits::LimitState;
use super::metrics::{Metrics, TierLabel};
use order::{Flow, Inner, Pick, Place, Rate, Waiter};

/// How a tier's requests wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Higher is served first.
    pub priority: i32,
    /// Share of the slots within one priority.
    pub weight: u32,
    /// Longest wait; `None`: until the client leaves.
    pub max_wait: Option<Duration>,
    /// Most requests one user may have waiting; `None`: no bound.
    pub max_queued: Option<u32>,
}

impl Default for Class {
    fn default() -> Self {
        Class {
            priority: 0,
            weight: 1,
            max_wait: None,
            max_queued: None,
        }
    }
}

/// A request asking for a slot.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The caller's budget: who shares fairly (a user, or a key without one).
    pub budget: &'a Arc<LimitState>,
    /// The user, or `None` for a key without one.
    pub user: Option<&'a str>,
    /// The key's display prefix (empty for a logged-in user).
    pub prefix: &'a str,
    pub tier: &'a str,
    pub class: Class,
    /// The caller's limit of requests in flight.
    pub concurrency: Option<u32>,
    /// The hosts that can serve it, best first.
    pub hosts: &'a [Arc<Host>],
    /// Its model's key ([`super::fleet::model_key`]), when it names one.
    pub model: Option<&'a str>,
    /// Its path, to choose hosts by again if all of `hosts` are removed while it waits.
    pub path: &'a str,
    /// The request body it holds while it waits.
    pub bytes: u64,
    /// Whether it may wait: `false` asks only for a slot free now
    /// ([`Refusal::WouldWait`] otherwise), for a request whose body is not read yet.
    pub wait: bool,
}

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user already has `limit` requests waiting; `concurrency` is the caller's
    /// in-flight limit when that is what held this one back.
    Full {
        limit: u32,
        concurrency: Option<u32>,
    },
    /// It waited its tier's `max-wait` (or the gate is shutting down); `concurrency` is
    /// the caller's in-flight limit when that, not the hosts, held it to the end.
    Expired {
        retry_after: u64,
        concurrency: Option<u32>,
    },
    /// The gate holds as many waiting requests (or bytes of their bodies) as it will.
    Busy,
    /// No slot is free now, and the request asked not to wait.
    WouldWait,
    /// Every host that could serve it went down or was drained while it waited.
    NoHost,
}

/// The metric handles of one tier, looked up once.
#[derive(Debug)]
pub struct TierMetrics {
    pub waiting: Gauge,
    pub wait: Histogram,
    pub dispatched: Counter,
    pub expired: Counter,
    pub left: Counter,
    pub refused: Counter,
}

impl TierMetrics {
    fn new(m: &Metrics, tier: &str) -> TierMetrics {
        let l = TierLabel { tier: tier.into() };
        TierMetrics {
            waiting: m.queue_waiting.get_or_create(&l).clone(),
            wait: m.queue_wait.get_or_create(&l).clone(),
            dispatched: m.queue_dispatched.get_or_create(&l).clone(),
            expired: m.queue_expired.get_or_create(&l).clone(),
            left: m.queue_left.get_or_create(&l).clone(),
            refused: m.queue_refused.get_or_create(&l).clone(),
        }
    }
}

/// The queue, shared by every worker.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    /// Where requests whose hosts were all removed find new ones.
    fleet: Option<Arc<Fleet>>,
    /// When the gate stops: requests still waiting then give up.
    stop: watch::Sender<Option<Instant>>,
    started: Instant,
}

/// A dispatched request's slot: held while the response streams, given back (and the
/// next waiting request dispatched) as it drops.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<Queue>,
    slot: Option<Slot>,
    host: Arc<Host>,
    flow: usize,
    tier: usize,
    /// The flow's budget counts this request in flight (it has a concurrency limit).
    counted: bool,
    waited: Duration,
    /// Completion tokens of the response, counted for tokens a second.
    pub tokens: u64,
}

impl Ticket {
    /// The host it holds a slot on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// How long the request waited for its slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Moves the slot to `host` (the request fails over to it), under the queue's lock:
    /// the slot given back goes to whoever waits for it. The request takes its slot on
    /// `host` at once, even past the host's slots: it already waited its turn.
    pub fn move_to(&mut self, host: &Arc<Host>) {
        let queue = self.queue.clone();
        let undelivered = {
            let mut g = queue.lock();
            drop(self.slot.replace(host.take_slot()));
            self.host = host.clone();
            g.dispatch(&queue, false)
        };
        drop(undelivered);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let queue = self.queue.clone();
        let undelivered = {
            let mut g = queue.lock();
            // Given back under the lock, so that no waiting request misses it.
            drop(self.slot.take());
            let now = Instant::now();
            let second = now.duration_since(queue.started).as_secs();
            if let Some(f) = g.flows.get_mut(&self.flow) {
                f.in_flight -= 1;
                f.active = now;
                f.tokens.add(second, self.tokens);
                if self.counted {
                    f.budget
                        .inflight
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
            if self.counted {
                g.unpark(self.flow);
            }
            if let Some(t) = g.tiers.get_mut(self.tier) {
                t.in_flight -= 1;
                t.tokens.add(second, self.tokens);
            }
            g.dispatch(&queue, false)
        };
        drop(undelivered);
    }
}

/// Forgets a waiting request whose client left (its future dropped).
struct Leave<'a> {
    queue: &'a Queue,
    flow: usize,
    place: Place,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut g = self.queue.lock();
        if let Some(w) = g.remove_unserved(self.flow, &self.place)
            && let Some(t) = g.tiers.get(w.tier)
        {
            t.metrics.left.inc();
        }
    }
}

/// Most requests waiting in the gate at once, over every tier: what one pass may have to
/// look at, whatever the tiers allow.
pub const MAX_WAITING: usize = 4096;

/// Most bytes of request bodies held by waiting requests at once.
pub const MAX_WAITING_BYTES: u64 = 1 << 30;

/// How long a flow with nothing waiting or in flight is remembered (for `aigate top`'s
/// tokens a second).
const LINGER: Duration = Duration::from_secs(30);

impl Queue {
    /// An empty queue counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Queue {
        Queue {
            inner: Mutex::default(),
            metrics,
            fleet: None,
            stop: watch::Sender::new(None),
            started: Instant::now(),
        }
    }

    /// An empty queue in front of `fleet`'s hosts, counting into its metrics.
    pub fn for_fleet(fleet: Arc<Fleet>) -> Queue {
        Queue {
            fleet: Some(fleet.clone()),
            ..Queue::new(fleet.metrics().clone())
        }
    }

    /// The fleet's hosts that can serve a request on `path` for `model` now, if any.
    fn rechoose(&self, path: &str, model: Option<&str>) -> Option<Vec<Arc<Host>>> {
        let fleet = self.fleet.as_ref()?;
        choose(&fleet.snapshot().hosts, path, model, fleet.turn()).ok()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds since the queue was made.
    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Waits until `ask` can have a slot on one of its hosts, and takes it.
    pub async fn enter(self: &Arc<Self>, ask: Ask<'_>) -> Result<Ticket, Refusal> {
        let since = Instant::now();
        let flow = Arc::as_ptr(ask.budget) as usize;
        let class = ask.class;
        // Tickets whose clients left at the instant they were dispatched: dropped (which
        // takes the lock) only after the lock is released, on every path out.
        let mut undelivered = Vec::new();
        let (place, tier, rx) = {
            let mut g = self.lock();
            let tier = g.tier(ask.tier, class.priority, &self.metrics);
            let f = g.flows.entry(flow).or_insert_with(|| Flow {
                budget: ask.budget.clone(),
                who: String::new(),
                tier,
                band: class.priority,
                finish: 0,
                served: 0,
                waiting: 0,
                in_flight: 0,
                tokens: Rate::default(),
                active: since,
                parked: std::collections::BTreeMap::new(),
            });
            f.tier = tier;
            f.active = since;
            if f.who.is_empty() {
                f.who = match ask.user {
                    Some(u) => u.to_string(),
                    None => format!("key {}", ask.prefix),
                };
            }
            let waiting = f.waiting;
            let held = g.over_budget(flow, ask.concurrency);
            if !held {
                // Those waiting have first claim on a free slot (a host that came back
                // or loaded a model since the last pass may have one for them); what
                // they leave, the request takes now.
                let mut pick = order::pick(ask.hosts, ask.model, 0, true, |_| 0);
                if matches!(pick, Pick::Host(_) | Pick::Cold(_)) && !g.waiting.is_empty() {
                    undelivered = g.dispatch(self, false);
                    pick = order::pick(ask.hosts, ask.model, 0, true, |_| 0);
                }
                match pick {
                    Pick::Host(h) | Pick::Cold(h) => {
                        let place = g.place(flow, &class);
                        return Ok(g.grant(self, &place, flow, tier, ask.concurrency, h, since));
                    }
                    Pick::Gone => return Err(Refusal::NoHost),
                    Pick::Wait => {}
                }
            }
            if !ask.wait {
                return Err(Refusal::WouldWait);
            }
            if let Some(limit) = class.max_queued
                && waiting >= limit
            {
                g.tiers[tier].metrics.refused.inc();
                return Err(Refusal::Full {
                    limit,
                    concurrency: ask.concurrency.filter(|_| held),
                });
            }
            if g.count() >= MAX_WAITING || g.bytes.saturating_add(ask.bytes) > MAX_WAITING_BYTES {
                g.tiers[tier].metrics.refused.inc();
                return Err(Refusal::Busy);
            }
            let place = g.place(flow, &class);
            let (tx, rx) = oneshot::channel();
            g.wait(
                place,
                Waiter {
                    flow,
                    tier,
                    concurrency: ask.concurrency,
                    hosts: ask.hosts.to_vec(),
                    model: ask.model.map(str::to_string),
                    path: ask.path.to_string(),
                    bytes: ask.bytes,
                    patience: order::patience(class.max_wait),
                    since,
                    tx,
                },
            );
            // Its place among those waiting may let it take a slot it would not take
            // first in line (a host that must load its model, when enough wait ahead).
            undelivered.extend(g.dispatch(self, false));
            (place, tier, rx)
        };
        drop(undelivered);
        let mut leave = Leave {
            queue: self,
            flow,
            place,
            armed: true,
        };
        let mut rx = rx;
        let mut stop = self.stop.subscribe();
        let deadline = class.max_wait.map(|d| since + d);
        // When its patience for a loaded host runs out, a pass lets it take a free one.
        let impatient = tokio::time::sleep_until((since + order::patience(class.max_wait)).into());
        tokio::pin!(impatient);
        let mut patient = true;
        loop {
            let stopping = *stop.borrow_and_update();
            let end = match (deadline, stopping) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match end {
                    Some(end) => tokio::time::sleep_until(end.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                grant = &mut rx => {
                    leave.armed = false;
                    return grant.unwrap_or(Err(())).map_err(|()| Refusal::NoHost);
                }
                () = sleep => {
                    leave.armed = false;
                    let (gone, held) = {
                        let mut g = self.lock();
                        let held = g.over_budget(flow, ask.concurrency);
                        let gone = g.remove_unserved(flow, &place).is_some();
                        if gone && let Some(t) = g.tiers.get(tier) {
                            t.metrics.expired.inc();
                        }
                        (gone, held)
                    };
                    if !gone && let Ok(grant) = rx.try_recv() {
                        // Dispatched at the same instant.
                        return grant.map_err(|()| Refusal::NoHost);
                    }
                    let retry_after = match (stopping, class.max_wait) {
                        (Some(_), _) | (_, None) => 1,
                        (None, Some(d)) => d.as_secs().clamp(1, 30),
                    };
                    return Err(Refusal::Expired {
                        retry_after,
                        concurrency: ask.concurrency.filter(|_| held),
                    });
                }
                () = &mut impatient, if patient => {
                    patient = false;
                    let undelivered = self.lock().dispatch(self, false);
                    drop(undelivered);
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The queue is going away with the gate; keep waiting for the grant.
                        let grant = (&mut rx).await;
                        leave.armed = false;
                        return grant.unwrap_or(Err(())).map_err(|()| Refusal::NoHost);
                    }
                }
            }
        }
    }

    /// The gate is stopping: requests still waiting at `deadline` give up (503 with a
    /// short `Retry-After`, so that clients come back to the next gate), those
    /// dispatched before it are served.
    pub fn stop_at(&self, deadline: Instant) {
        self.stop.send_replace(Some(deadline));
    }

    /// Once a second: dispatches what a change of hosts (one up again, a model loaded,
    /// a host added) may have freed, and forgets flows idle for a while.
    pub fn tick(self: &Arc<Self>) {
        let undelivered = {
            let mut g = self.lock();
            let now = Instant::now();
            g.flows.retain(|_, f| {
                f.waiting > 0 || f.in_flight > 0 || now.duration_since(f.active) < LINGER
            });
            // A limit freed outside the queue (a management request ended).
            g.unpark_all();
            g.dispatch(self, true)
        };
        drop(undelivered);
    }

    /// What `aigate top` shows of the queue.
    pub fn status(&self) -> QueueStatus {
        let g = self.lock();
        let second = self.second();
        let mut tiers: Vec<TierStatus> = g
            .tiers
            .iter()
            .map(|t| TierStatus {
                tier: t.name.clone(),
                priority: t.priority,
                waiting: t.waiting,
                in_flight: t.in_flight,
                tokens_per_second: t.tokens.per_second(second),
            })
            .collect();
        tiers.sort_by_key(|t| (Reverse(t.priority), t.tier.clone()));
        let mut users: Vec<UserStatus> = g
            .flows
            .values()
            .map(|f| UserStatus {
                user: f.who.clone(),
                tier: g
                    .tiers
                    .get(f.tier)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                waiting: f.waiting,
                in_flight: f.in_flight,
                tokens_per_second: f.tokens.per_second(second),
            })
            .collect();
        users.sort_by(|a, b| {
            (b.waiting + b.in_flight)
                .cmp(&(a.waiting + a.in_flight))
                .then_with(|| a.user.cmp(&b.user))
        });
        QueueStatus { tiers, users }
    }
}

/// The queue as `aigate top` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub tiers: Vec<TierStatus>,
    pub users: Vec<UserStatus>,
}

/// One tier's requests.
#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    pub tier: String,
    pub priority: i32,
    pub waiting: u32,
    pub in_flight: u32,
    /// Completion tokens a second over the last 10 s, counted as responses end.
    pub tokens_per_second: f64,
}

/// One user's (or key's) requests.
#[derive(Debug, Clone, Serialize)]
pub struct UserStatus {
    /// The user, or `key PREFIX` for a key without one.
    pub user: String,
    pub tier: String,
    pub waiting: u32,
    pub in_flight: u32,
    pub tokens_per_second: f64,
}

#[cfg(test)]
mod tests {
    use super::super::fleet::host::{Kind, Models, Spec, model_key};
    use super::super::upstream::Upstream;
    use super::*;

    fn host(name: &str, slots: u32, loaded: &[&str]) -> Arc<Host> {
        let spec = Spec {
            name: name.into(),
            upstream: Upstream::parse("127.0.0.1:1").expect("url"),
            kind: Kind::Ollama,
            slots,
            stored: true,
            draining: false,
        };
        let h = Arc::new(Host::new(spec, 1, &Metrics::default()));
        let keys: Vec<String> = loaded.iter().map(|m| model_key(m)).collect();
        h.set_models(Models {
            installed: vec![model_key("m"), model_key("n")],
            loaded: keys,
            loaded_names: Vec::new(),
        });
        h.succeeded();
        h
    }

    fn class(priority: i32, weight: u32) -> Class {
        Class {
            priority,
            weight,
            ..Class::default()
        }
    }

    fn ask<'a>(
        budget: &'a Arc<LimitState>,
        tier: &'a str,
        class: Class,
        hosts: &'a [Arc<Host>],
    ) -> Ask<'a> {
        Ask {
            budget,
            user: None,
            prefix: "aig_test",
            tier,
            class,
            concurrency: None,
            hosts,
            model: Some("m:latest"),
            path: "/api/chat",
            bytes: 0,
            wait: true,
        }
    }

    /// Starts a request that may wait; its result arrives on the returned receiver.
    fn spawn(
        q: &Arc<Queue>,
        a: Ask<'static>,
        done: tokio::sync::mpsc::UnboundedSender<(&'static str, Result<Ticket, Refusal>)>,
        label: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let q = q.clone();
        tokio::spawn(async move {
            let r = q.enter(a).await;
            let _ = done.send((label, r));
        })
    }

    /// A host `warm` with the model loaded and its one slot held, and an idle host
    /// `cold` that would have to load it; the held ticket.
    async fn warm_busy(q: &Arc<Queue>) -> (&'static [Arc<Host>], Ticket) {
        let hosts: &'static [Arc<Host>] = leak(vec![host("warm", 1, &["m"]), host("cold", 1, &[])]);
        let holder = leak(Arc::new(LimitState::default()));
        let held = q
            .enter(ask(holder, "t", Class::default(), hosts))
            .await
            .expect("slot");
        assert_eq!(held.host().name, "warm");
        (hosts, held)
    }

    /// The next answer, or a failure rather than a hang.
    async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an answer within 10 s")
    }

    fn leak<T>(v: T) -> &'static T {
        Box::leak(Box::new(v))
    }

    /// Lets spawned requests reach the queue.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_at_once_and_given_back_on_drop() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 2, &["m"]);
        let budget = Arc::default();
        let t1 = q
            .enter(ask(
                &budget,
                "free",
                Class::default(),
                std::slice::from_ref(&h),
            ))
            .await;
        let t2 = q
            .enter(ask(
                &budget,
                "free",
                Class::default(),
                std::slice::from_ref(&h),
            ))
            .await;
        assert_eq!(h.in_flight(), 2);
        assert_eq!(
            t1.as_ref().map(|t| t.waited() < Duration::from_secs(1)),
            Ok(true)
        );
        let s = q.status();
        assert_eq!((s.tiers[0].in_flight, s.users[0].in_flight), (2, 2));
        assert_eq!(s.users[0].user, "key aig_test");
        drop((t1, t2));
        assert_eq!(h.in_flight(), 0);
        assert_eq!(q.status().tiers[0].in_flight, 0);
    }

    #[tokio::test]
    async fn higher_priority_first_then_fair_among_users() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 1, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let heavy = leak(Arc::new(LimitState::default()));
        let light = leak(Arc::new(LimitState::default()));
        let paying = leak(Arc::new(LimitState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let first = q
            .enter(ask(heavy, "free", class(0, 1), hosts))
            .await
            .expect("slot");
        // The heavy user queues 4 more, then the light user 1, then a paying user 1.
        for _ in 0..4 {
            spawn(
                &q,
                ask(heavy, "free", class(0, 1), hosts),
                tx.clone(),
                "heavy",
            );
            settle().await;
        }
        spawn(
            &q,
            ask(light, "free", class(0, 1), hosts),
            tx.clone(),
            "light",
        );
        settle().await;
        spawn(
            &q,
            ask(paying, "pro", class(10, 1), hosts),
            tx.clone(),
            "pro",
        );
        settle().await;
        assert_eq!(q.status().tiers.iter().map(|t| t.waiting).sum::<u32>(), 6);
        let mut order = Vec::new();
        let mut held = first;
        for _ in 0..6 {
            drop(held);
            let (label, r) = next(&mut rx).await.expect("a dispatch");
            order.push(label);
            held = r.expect("a ticket");
        }
        // Pro before everyone; the light user's one request before the heavy user's
        // backlog, since the heavy user was already served once.
        assert_eq!(order, ["pro", "light", "heavy", "heavy", "heavy", "heavy"]);
    }

    #[tokio::test]
    async fn weights_share_the_slots() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 1, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let one = leak(Arc::new(LimitState::default()));
        let three = leak(Arc::new(LimitState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut held = q
            .enter(ask(one, "a", class(0, 1), hosts))
            .await
            .expect("slot");
        for _ in 0..40 {
            spawn(&q, ask(one, "a", class(0, 1), hosts), tx.clone(), "one");
            spawn(&q, ask(three, "b", class(0, 3), hosts), tx.clone(), "three");
        }
        settle().await;
        let mut served = (0, 0);
        for _ in 0..40 {
            drop(held);
            let (label, r) = next(&mut rx).await.expect("a dispatch");
            if label == "one" {
                served.0 += 1;
            } else {
                served.1 += 1;
            }
            held = r.expect("a ticket");
        }
        assert!((9..=11).contains(&served.0), "{served:?}");
        assert_eq!(served.0 + served.1, 40);
    }

    #[tokio::test]
    async fn bounds_refuse_expire_and_forget() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 1, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let bounded = Class {
            max_queued: Some(1),
            max_wait: Some(Duration::from_millis(50)),
            ..Class::default()
        };
        let held = q
            .enter(ask(user, "free", bounded, hosts))
            .await
            .expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(&q, ask(user, "free", bounded, hosts), tx.clone(), "waits");
        settle().await;
        // A second waiting request is one too many.
        let full = q.enter(ask(user, "free", bounded, hosts)).await;
        assert_eq!(
            full.map(|_| ()),
            Err(Refusal::Full {
                limit: 1,
                concurrency: None
            })
        );
        let (_, expired) = next(&mut rx).await.expect("an answer");
        assert!(matches!(
            expired,
            Err(Refusal::Expired {
                retry_after: 1,
                concurrency: None
            })
        ));
        assert_eq!(q.status().tiers[0].waiting, 0);
        // A client that leaves is removed and never gets the slot.
        let unbounded = Class::default();
        let gone = spawn(&q, ask(user, "free", unbounded, hosts), tx.clone(), "gone");
        settle().await;
        assert_eq!(q.status().tiers[0].waiting, 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(q.status().tiers[0].waiting, 0);
        drop(held);
        assert_eq!(h.in_flight(), 0, "nobody took the slot");
    }

    #[tokio::test]
    async fn the_callers_concurrency_holds_its_requests_here() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 4, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let limited = |a: Ask<'static>| Ask {
            concurrency: Some(1),
            ..a
        };
        let first = q
            .enter(limited(ask(user, "free", Class::default(), hosts)))
            .await
            .expect("slot");
        assert_eq!(user.inflight.load(std::sync::atomic::Ordering::Relaxed), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(
            &q,
            limited(ask(user, "free", Class::default(), hosts)),
            tx,
            "second",
        );
        settle().await;
        assert_eq!(h.in_flight(), 1, "the host has room, the caller has not");
        drop(first);
        let (_, second) = next(&mut rx).await.expect("dispatched");
        let second = second.expect("ticket");
        assert_eq!(user.inflight.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(user.inflight.load(std::sync::atomic::Ordering::Relaxed), 0);
        // With no room to wait, the caller's own limit is what it is told.
        let never = Class {
            max_queued: Some(0),
            ..Class::default()
        };
        let _t = q
            .enter(limited(ask(user, "free", never, hosts)))
            .await
            .expect("slot");
        let r = q.enter(limited(ask(user, "free", never, hosts))).await;
        assert_eq!(
            r.map(|_| ()),
            Err(Refusal::Full {
                limit: 0,
                concurrency: Some(1)
            })
        );
    }

    #[tokio::test]
    async fn a_loaded_host_is_waited_for_about_one_round() {
        let q = Arc::new(Queue::new(Arc::default()));
        let (hosts, held) = warm_busy(&q).await;
        let cold = &hosts[1];
        let user = leak(Arc::new(LimitState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The first waits for the warm host rather than load the model on the cold one;
        // the second would wait a round more, so the cold host is taken: by the first in
        // line, and the second waits for the warm one.
        spawn(
            &q,
            ask(user, "t", Class::default(), hosts),
            tx.clone(),
            "first",
        );
        settle().await;
        assert_eq!(cold.in_flight(), 0);
        spawn(
            &q,
            ask(user, "t", Class::default(), hosts),
            tx.clone(),
            "second",
        );
        let (label, r) = next(&mut rx).await.expect("dispatched");
        assert_eq!(
            (label, r.expect("ticket").host().name.as_str()),
            ("first", "cold")
        );
        drop(held);
        let (label, r) = next(&mut rx).await.expect("dispatched");
        assert_eq!(
            (label, r.expect("ticket").host().name.as_str()),
            ("second", "warm")
        );
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_at_once_while_others_wait_for_another_host() {
        let q = Arc::new(Queue::new(Arc::default()));
        let busy = leak(vec![host("busy", 1, &["m"])]);
        let free = leak(vec![host("free", 1, &["m"])]);
        let user = leak(Arc::new(LimitState::default()));
        let held = q
            .enter(ask(user, "t", Class::default(), busy))
            .await
            .expect("slot");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(&q, ask(user, "t", Class::default(), busy), tx, "waits");
        settle().await;
        // A tier that never waits still gets a slot nobody waiting can use.
        let never = Class {
            max_queued: Some(0),
            ..Class::default()
        };
        let other = leak(Arc::new(LimitState::default()));
        let t = q
            .enter(ask(other, "t", never, free))
            .await
            .expect("the free host's slot");
        assert_eq!(t.host().name, "free");
        assert_eq!(q.status().tiers[0].waiting, 1);
        drop((t, held));
    }

    #[tokio::test]
    async fn a_backlog_held_by_its_own_limit_is_parked_out_of_every_pass() {
        let q = Arc::new(Queue::new(Arc::default()));
        let hosts = leak(vec![host("a", 4, &["m"])]);
        let flood = leak(Arc::new(LimitState::default()));
        let limited = |a: Ask<'static>| Ask {
            concurrency: Some(1),
            ..a
        };
        let first = q
            .enter(limited(ask(flood, "t", Class::default(), hosts)))
            .await
            .expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..50 {
            let label: &'static str = leak(format!("f{n}"));
            spawn(
                &q,
                limited(ask(flood, "t", Class::default(), hosts)),
                tx.clone(),
                label,
            );
            settle().await;
        }
        // All 50 wait (and count as waiting), none of them in the line a pass walks.
        assert_eq!(q.status().tiers[0].waiting, 50);
        let lens = {
            let g = q.lock();
            (g.waiting.len(), g.count())
        };
        assert_eq!(lens, (0, 50));
        // Another user is not held up; the flood's next goes, in order, as its own ends.
        let other = leak(Arc::new(LimitState::default()));
        drop(
            q.enter(ask(other, "t", Class::default(), hosts))
                .await
                .expect("slot"),
        );
        drop(first);
        let (label, t) = next(&mut rx).await.expect("dispatched");
        assert_eq!(label, "f0");
        drop(t);
        let (label, _t) = next(&mut rx).await.expect("dispatched");
        assert_eq!(label, "f1");
        assert_eq!(q.lock().count(), 48);
    }

    #[tokio::test]
    async fn a_host_lost_while_waiting_answers_no_host() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 1, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let held = q
            .enter(ask(user, "t", Class::default(), hosts))
            .await
            .expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(&q, ask(user, "t", Class::default(), hosts), tx, "waits");
        settle().await;
        h.failed(true);
        q.tick();
        let (_, r) = next(&mut rx).await.expect("answered");
        assert_eq!(r.map(|_| ()), Err(Refusal::NoHost));
        drop(held);
    }

    /// Failover moves a ticket's slot under the queue's lock: the slot given back on the
    /// first host goes to the request waiting for it.
    #[tokio::test]
    async fn failover_gives_the_slot_left_to_whoever_waits_for_it() {
        let q = Arc::new(Queue::new(Arc::default()));
        let a = host("a", 1, &["m"]);
        let b = host("b", 1, &["m"]);
        let only_a = leak(vec![a.clone()]);
        let only_b = leak(vec![b.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let other = leak(Arc::new(LimitState::default()));
        let mut t = q
            .enter(ask(user, "t", Class::default(), only_a))
            .await
            .expect("slot on a");
        let on_b = q
            .enter(ask(other, "t", Class::default(), only_b))
            .await
            .expect("slot on b");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(
            &q,
            ask(other, "t", Class::default(), only_a),
            tx,
            "waits for a",
        );
        settle().await;
        assert_eq!(q.status().tiers[0].waiting, 1);
        // forward.rs fails over from a to b: a's slot goes to the request waiting for
        // it at once; the request failing over takes b's at once (it waited its turn).
        t.move_to(&b);
        let (_, woke) = next(&mut rx).await.expect("dispatched");
        assert_eq!(woke.expect("ticket").host().name, "a");
        assert_eq!(b.in_flight(), 2);
        drop((t, on_b));
        assert_eq!(b.in_flight(), 0);
    }

    /// Requests that expired (never served) cost their flow nothing: its next request is
    /// not placed behind everyone else's backlog.
    #[tokio::test]
    async fn requests_never_served_cost_their_user_nothing() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 1, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let holder = leak(Arc::new(LimitState::default()));
        let a = leak(Arc::new(LimitState::default()));
        let b = leak(Arc::new(LimitState::default()));
        let short = Class {
            max_wait: Some(Duration::from_millis(20)),
            ..Class::default()
        };
        let mut held = q
            .enter(ask(holder, "t", Class::default(), hosts))
            .await
            .expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..10 {
            spawn(&q, ask(a, "t", short, hosts), tx.clone(), "a-expired");
        }
        for _ in 0..10 {
            let (label, r) = next(&mut rx).await.expect("answer");
            assert_eq!(label, "a-expired");
            assert!(matches!(r, Err(Refusal::Expired { .. })));
        }
        for _ in 0..5 {
            spawn(&q, ask(b, "t", Class::default(), hosts), tx.clone(), "b");
            settle().await;
        }
        spawn(&q, ask(a, "t", Class::default(), hosts), tx.clone(), "a");
        settle().await;
        let mut order = Vec::new();
        for _ in 0..6 {
            drop(held);
            let (label, r) = next(&mut rx).await.expect("dispatch");
            order.push(label);
            held = r.expect("ticket");
        }
        let a_at = order.iter().position(|l| *l == "a");
        assert!(a_at.is_some_and(|i| i <= 1), "{order:?}");
    }

    /// A dispatch on another host (here on an idle host at once) moves the band's virtual
    /// time to the dispatching flow's far start tag; a newcomer still starts no later
    /// than the first request waiting, not behind that flow's whole backlog.
    #[tokio::test]
    async fn a_grant_elsewhere_does_not_put_a_newcomer_behind_a_backlog() {
        let q = Arc::new(Queue::new(Arc::default()));
        let hm = host("hm", 1, &["m"]);
        let hn = host("hn", 1, &["n"]);
        let for_m = leak(vec![hm.clone()]);
        let for_n = leak(vec![hn.clone()]);
        let heavy = leak(Arc::new(LimitState::default()));
        let light = leak(Arc::new(LimitState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut held = q
            .enter(ask(heavy, "t", Class::default(), for_m))
            .await
            .expect("slot");
        for _ in 0..10 {
            spawn(
                &q,
                ask(heavy, "t", Class::default(), for_m),
                tx.clone(),
                "heavy",
            );
        }
        settle().await;
        // One request of the heavy user for the other model, on the idle host.
        let on_n = q
            .enter(Ask {
                model: Some("n:latest"),
                ..ask(heavy, "t", Class::default(), for_n)
            })
            .await
            .expect("idle host");
        spawn(
            &q,
            ask(light, "t", Class::default(), for_m),
            tx.clone(),
            "light",
        );
        settle().await;
        let mut order = Vec::new();
        for _ in 0..11 {
            drop(held);
            let (label, r) = next(&mut rx).await.expect("dispatch");
            order.push(label);
            held = r.expect("ticket");
        }
        drop(on_n);
        let at = order.iter().position(|l| *l == "light");
        assert!(
            at.is_some_and(|i| i <= 1),
            "light served at {at:?}: {order:?}"
        );
    }

    /// A request waits for its loaded host's busy slot only so long: then it takes the
    /// idle host that must load the model, well before its max-wait.
    #[tokio::test]
    async fn patience_for_a_loaded_host_ends_before_max_wait() {
        let q = Arc::new(Queue::new(Arc::default()));
        let (hosts, held) = warm_busy(&q).await;
        let cold = &hosts[1];
        let user = leak(Arc::new(LimitState::default()));
        let bounded = Class {
            max_wait: Some(Duration::from_millis(100)),
            ..Class::default()
        };
        let r = q.enter(ask(user, "t", bounded, hosts)).await;
        assert!(
            r.is_ok(),
            "{:?} while the cold host has {} of {} slots in use",
            r.map(|_| ()),
            cold.in_flight(),
            cold.slots
        );
        drop(held);
    }

    /// When a host that must load the model is taken, the first in line takes it: a
    /// lower priority does not pass a higher one.
    #[tokio::test]
    async fn a_cold_host_goes_to_the_first_in_line() {
        let q = Arc::new(Queue::new(Arc::default()));
        let (hosts, held) = warm_busy(&q).await;
        let pro = leak(Arc::new(LimitState::default()));
        let free = leak(Arc::new(LimitState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(&q, ask(pro, "pro", class(10, 1), hosts), tx.clone(), "pro");
        settle().await;
        spawn(
            &q,
            ask(free, "free", class(0, 1), hosts),
            tx.clone(),
            "free",
        );
        let (label, r) = next(&mut rx).await.expect("dispatch");
        let on = r.map(|t| t.host().name.clone());
        assert_eq!((label, on), ("pro", Ok("cold".to_string())));
        drop(held);
    }

    /// A request held to its max-wait by its caller's own concurrency limit, with the
    /// host's slots free, says so (the gate answers 429 with the limit, not 503).
    #[tokio::test]
    async fn expiry_held_by_the_callers_own_limit_names_the_limit() {
        let q = Arc::new(Queue::new(Arc::default()));
        let h = host("a", 4, &["m"]);
        let hosts = leak(vec![h.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let c = Class {
            max_wait: Some(Duration::from_millis(50)),
            ..Class::default()
        };
        let limited = |a: Ask<'static>| Ask {
            concurrency: Some(1),
            ..a
        };
        let _first = q
            .enter(limited(ask(user, "t", c, hosts)))
            .await
            .expect("slot");
        let r = q.enter(limited(ask(user, "t", c, hosts))).await;
        assert!(
            matches!(
                r,
                Err(Refusal::Expired {
                    concurrency: Some(1),
                    ..
                })
            ),
            "{:?} with {} of 4 slots free",
            r.map(|_| ()),
            4 - h.in_flight()
        );
    }

    /// Many requests entering, leaving, expiring, failing over and ending at once on two
    /// threads: every count returns to zero and nothing hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_return_to_zero_under_churn() {
        let q = Arc::new(Queue::new(Arc::default()));
        let a = host("a", 2, &["m"]);
        let b = host("b", 2, &[]);
        let hosts = leak(vec![a.clone(), b.clone()]);
        let budgets: &'static Vec<Arc<LimitState>> =
            leak((0..8).map(|_| Arc::new(LimitState::default())).collect());
        let mut tasks = Vec::new();
        for i in 0..3000u64 {
            let q = q.clone();
            let budget = &budgets[(i % 8) as usize];
            let class = Class {
                priority: (i % 3) as i32,
                weight: 1 + (i % 4) as u32,
                max_wait: (i % 5 == 0).then(|| Duration::from_millis(i % 7)),
                max_queued: (i % 11 == 0).then_some(2),
            };
            let concurrency = (i % 2 == 0).then_some(1 + (i % 3) as u32);
            let t = tokio::spawn(async move {
                let r = q
                    .enter(Ask {
                        concurrency,
                        ..ask(budget, ["x", "y"][(i % 2) as usize], class, hosts)
                    })
                    .await;
                if let Ok(mut t) = r {
                    if i % 13 == 0 {
                        t.move_to(&hosts[1]);
                    }
                    tokio::time::sleep(Duration::from_micros(i % 500)).await;
                    drop(t);
                }
            });
            tasks.push(t);
            if i % 17 == 0 {
                tokio::task::yield_now().await;
                if let Some(t) = tasks.iter().rev().nth(3) {
                    t.abort();
                }
            }
        }
        // Failover frees slots outside the lock (see above): the tick picks them up.
        let ticker = {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    q.tick();
                }
            })
        };
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no request hangs");
        }
        ticker.abort();
        let s = q.status();
        assert_eq!(
            s.tiers
                .iter()
                .map(|t| (t.waiting, t.in_flight))
                .fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1)),
            (0, 0)
        );
        assert!(s.users.iter().all(|u| u.waiting == 0 && u.in_flight == 0));
        assert_eq!((a.in_flight(), b.in_flight()), (0, 0));
        for b in budgets {
            assert_eq!(b.inflight.load(std::sync::atomic::Ordering::Relaxed), 0);
        }
        assert!(q.lock().hosts.is_empty() && q.lock().waiting.is_empty());
    }
}
