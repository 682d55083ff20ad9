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

use super::fleet::{Host, Slot};
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
    /// It waited its tier's `max-wait` (or the gate is shutting down).
    Expired { retry_after: u64 },
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

    /// Moves the slot to `host` (the request fails over to it).
    pub fn move_to(&mut self, host: &Arc<Host>) {
        self.slot = Some(host.take_slot());
        self.host = host.clone();
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
    place: Place,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut g = self.queue.lock();
        if let Some(w) = g.remove(&self.place)
            && let Some(t) = g.tiers.get(w.tier)
        {
            t.metrics.left.inc();
        }
    }
}

/// How long a flow with nothing waiting or in flight is remembered (for `aigate top`'s
/// tokens a second).
const LINGER: Duration = Duration::from_secs(30);

impl Queue {
    /// An empty queue counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Queue {
        Queue {
            inner: Mutex::default(),
            metrics,
            stop: watch::Sender::new(None),
            started: Instant::now(),
        }
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
                waiting: 0,
                in_flight: 0,
                tokens: Rate::default(),
                active: since,
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
                let mut pick = order::pick(ask.hosts, ask.model, 0, |_| 0);
                if matches!(pick, Pick::Host(_)) && !g.waiting.is_empty() {
                    undelivered = g.dispatch(self, false);
                    pick = order::pick(ask.hosts, ask.model, 0, |_| 0);
                }
                match pick {
                    Pick::Host(h) => {
                        let place = g.place(flow, &class);
                        return Ok(g.grant(self, &place, flow, tier, ask.concurrency, h, since));
                    }
                    Pick::Gone => return Err(Refusal::NoHost),
                    Pick::Wait => {}
                }
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
            place,
            armed: true,
        };
        let mut rx = rx;
        let mut stop = self.stop.subscribe();
        let deadline = class.max_wait.map(|d| since + d);
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
                    let gone = {
                        let mut g = self.lock();
                        let gone = g.remove(&place).is_some();
                        if gone && let Some(t) = g.tiers.get(tier) {
                            t.metrics.expired.inc();
                        }
                        gone
                    };
                    if !gone && let Ok(grant) = rx.try_recv() {
                        // Dispatched at the same instant.
                        return grant.map_err(|()| Refusal::NoHost);
                    }
                    let retry_after = match (stopping, class.max_wait) {
                        (Some(_), _) | (_, None) => 1,
                        (None, Some(d)) => d.as_secs().clamp(1, 30),
                    };
                    return Err(Refusal::Expired { retry_after });
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
        assert!(matches!(expired, Err(Refusal::Expired { retry_after: 1 })));
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
        let warm = host("warm", 1, &["m"]);
        let cold = host("cold", 1, &[]);
        let hosts = leak(vec![warm.clone(), cold.clone()]);
        let user = leak(Arc::new(LimitState::default()));
        let held = q
            .enter(ask(user, "t", Class::default(), hosts))
            .await
            .expect("slot");
        assert_eq!(held.host().name, "warm");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The first waits for the warm host rather than load the model on the cold one;
        // the second would wait a round more, so it takes the cold host.
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
            ("second", "cold")
        );
        drop(held);
        let (label, r) = next(&mut rx).await.expect("dispatched");
        assert_eq!(
            (label, r.expect("ticket").host().name.as_str()),
            ("first", "warm")
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
}
