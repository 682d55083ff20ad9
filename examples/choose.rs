//! What choosing a host costs per request: the fleet's snapshot taken, the model's
//! key made, the hosts ranked and a slot taken and given back, timed one by one over
//! many requests; p50, p99 and p99.9 printed for a 3-host and a 16-host fleet.
//!
//! `cargo run --release --example choose [-- REQUESTS]` (default 200000)

use std::sync::Arc;
use std::time::Instant;

use aigate::gate::fleet::choose::choose;
use aigate::gate::fleet::host::{Kind, Models, Spec};
use aigate::gate::fleet::{Fleet, Host, model_key};
use aigate::gate::metrics::Metrics;
use aigate::gate::upstream::Upstream;

fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    for (hosts, models) in [(3, 4), (16, 24)] {
        let (p50, p99, p999) = run(hosts, models, requests);
        println!(
            "choose: {hosts} hosts, {models} models, {requests} requests: p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
        );
    }
}

/// Times `requests` choices over `hosts` hosts that each install `models` models and
/// have two of them loaded; returns p50, p99 and p99.9 in microseconds.
fn run(hosts: usize, models: usize, requests: usize) -> (f64, f64, f64) {
    let metrics = Arc::new(Metrics::default());
    let fleet = Fleet::new(Vec::new(), 2, metrics.clone());
    let names: Vec<String> = (0..models).map(|i| format!("model-{i}:7b")).collect();
    let fleet_hosts: Vec<Arc<Host>> = (0..hosts)
        .map(|i| {
            let spec = Spec {
                name: format!("gpu{i}"),
                upstream: Upstream::parse(&format!("127.0.0.1:{}", 20000 + i)).expect("url"),
                kind: Kind::Ollama,
                slots: 2,
                stored: true,
                draining: false,
            };
            let h = Arc::new(Host::new(spec, 2, &metrics));
            let loaded = [i % models, (i + 1) % models];
            h.set_models(Models {
                installed: names.iter().map(|n| model_key(n)).collect(),
                loaded: loaded.iter().map(|&j| model_key(&names[j])).collect(),
                loaded_names: loaded.iter().map(|&j| names[j].clone()).collect(),
            });
            h.succeeded();
            h
        })
        .collect();
    // A skewed mix: model j with weight 1/(j+1).
    let weights: Vec<f64> = (0..models).map(|j| 1.0 / (j + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut pick = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut x = (seed >> 11) as f64 / (1u64 << 53) as f64 * total;
        for (j, w) in weights.iter().enumerate() {
            if x < *w {
                return j;
            }
            x -= w;
        }
        models - 1
    };
    // Some requests in flight, as under load.
    let busy: Vec<_> = fleet_hosts
        .iter()
        .step_by(2)
        .map(|h| h.take_slot())
        .collect();
    let mut times = Vec::with_capacity(requests);
    let mut chosen = 0usize;
    for _ in 0..requests {
        let model = &names[pick()];
        let started = Instant::now();
        let snapshot = fleet.snapshot();
        let key = model_key(model);
        let order = choose(&fleet_hosts, "/api/chat", Some(&key), fleet.turn()).expect("a host");
        let slot = order[0].take_slot();
        drop(slot);
        times.push(started.elapsed().as_nanos() as f64 / 1000.0);
        chosen += order.len() + snapshot.hosts.len();
    }
    drop(busy);
    assert!(chosen > 0);
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.50), at(0.99), at(0.999))
}
