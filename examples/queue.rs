//! What the queue costs per request, timed one by one; p50, p99 and p99.9 printed.
//!
//! - `no wait`: two threads, each on its own runtime as the gate's workers are, take a
//!   slot and give it back as fast as they can (the queue's lock shared by both): the
//!   cost every generation request pays when a slot is free.
//! - `backlog N`: a host with 2 slots and N requests of 10 users waiting; each round a
//!   request ends (its slot given back and the next request dispatched, in order) and
//!   the one dispatched comes back to wait again: the cost of one dispatch with a queue.
//! - `held N`: one user with a concurrency limit of 1 has N requests waiting (the
//!   gate's most is 4096) while slots are free; another takes a slot and gives it back:
//!   every pass looks past the held backlog, the queue's worst case.
//!
//! `cargo run --release --example queue [-- REQUESTS]` (default 200000)

use std::sync::Arc;
use std::time::{Duration, Instant};

use aigate::gate::fleet::Host;
use aigate::gate::fleet::host::{Kind, Models, Spec, model_key};
use aigate::gate::limits::LimitState;
use aigate::gate::metrics::Metrics;
use aigate::gate::queue::{Ask, Class, Queue, Ticket};
use aigate::gate::upstream::Upstream;

fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let (p50, p99, p999) = no_wait(requests);
    println!(
        "queue: no wait, 2 threads, {requests} requests: p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
    );
    for held in [100, 4096] {
        let (p50, p99, p999) = with_held(held, (requests / 10).max(1000));
        println!(
            "queue: held {held}, another user's slot taken and given back: p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
        );
    }
    for backlog in [100, 1000] {
        let rounds = (requests / 10).max(1000);
        let (p50, p99, p999) = with_backlog(backlog, rounds);
        println!(
            "queue: backlog {backlog}, {rounds} dispatches: p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
        );
    }
}

fn host(slots: u32, metrics: &Metrics) -> Arc<Host> {
    let spec = Spec {
        name: "gpu0".into(),
        upstream: Upstream::parse("127.0.0.1:20000").expect("url"),
        kind: Kind::Ollama,
        slots,
        stored: true,
        draining: false,
    };
    let h = Arc::new(Host::new(spec, 2, metrics));
    h.set_models(Models {
        installed: vec![model_key("llama3.2")],
        loaded: vec![model_key("llama3.2")],
        loaded_names: vec!["llama3.2:latest".into()],
    });
    h.succeeded();
    h
}

fn ask<'a>(budget: &'a Arc<LimitState>, host: &'a Arc<Host>) -> Ask<'a> {
    Ask {
        budget,
        user: None,
        prefix: "aig_bench",
        tier: "free",
        class: Class::default(),
        concurrency: None,
        hosts: std::slice::from_ref(host),
        model: Some("llama3.2:latest"),
        path: "/api/chat",
        bytes: 0,
        wait: true,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Two threads taking and giving back slots on a host with room for all.
fn no_wait(requests: usize) -> (f64, f64, f64) {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(metrics.clone()));
    let h = host(1_000_000, &metrics);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (queue, h) = (queue.clone(), h.clone());
            std::thread::spawn(move || {
                let budget = Arc::new(LimitState::default());
                let rt = runtime();
                let mut times = Vec::with_capacity(requests / 2);
                rt.block_on(async {
                    for _ in 0..requests / 2 {
                        let start = Instant::now();
                        let ticket = queue.enter(ask(&budget, &h)).await;
                        drop(ticket);
                        times.push(start.elapsed());
                    }
                });
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    percentiles(&mut times)
}

/// One dispatch at a time with `backlog` requests of 10 users waiting on 2 slots.
fn with_backlog(backlog: usize, rounds: usize) -> (f64, f64, f64) {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(metrics.clone()));
    let h = host(2, &metrics);
    let users: Vec<Arc<LimitState>> = (0..10).map(|_| Arc::default()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Ticket)>();
        let start_one = |user: usize| {
            let (queue, h, budget, tx) =
                (queue.clone(), h.clone(), users[user].clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(t) = queue.enter(ask(&budget, &h)).await {
                    let _ = tx.send((user, t));
                }
            });
        };
        // Two hold the slots; the backlog waits.
        for n in 0..backlog + 2 {
            start_one(n % users.len());
            tokio::task::yield_now().await;
        }
        while queue.status().tiers.iter().map(|t| t.waiting).sum::<u32>() < backlog as u32 {
            tokio::task::yield_now().await;
        }
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(rx.recv().await.expect("a slot"));
        }
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let (user, ticket) = held.remove(0);
            let start = Instant::now();
            drop(ticket);
            times.push(start.elapsed());
            // The user comes back to the end of its share.
            start_one(user);
            held.push(rx.recv().await.expect("dispatched"));
        }
        percentiles(&mut times)
    })
}

/// Another user's requests on a host with free slots while one user has `held`
/// requests waiting behind its own concurrency limit.
fn with_held(held: usize, rounds: usize) -> (f64, f64, f64) {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(metrics.clone()));
    let h = host(4, &metrics);
    let flood = Arc::new(LimitState::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let limited = |budget| Ask {
            concurrency: Some(1),
            ..ask(budget, &h)
        };
        let _first = queue.enter(limited(&flood)).await.expect("a slot");
        for _ in 0..held {
            let (queue, h, flood) = (queue.clone(), h.clone(), flood.clone());
            tokio::spawn(async move {
                let a = Ask {
                    concurrency: Some(1),
                    ..ask(&flood, &h)
                };
                let _ = queue.enter(a).await;
            });
        }
        while queue.status().tiers.iter().map(|t| t.waiting).sum::<u32>() < held as u32 {
            tokio::task::yield_now().await;
        }
        let other = Arc::new(LimitState::default());
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            let t = queue.enter(ask(&other, &h)).await;
            drop(t);
            times.push(start.elapsed());
        }
        percentiles(&mut times)
    })
}

/// p50, p99 and p99.9 of `times`, in microseconds.
fn percentiles(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort_unstable();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len() - 1);
        times[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(0.999))
}
