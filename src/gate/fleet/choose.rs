//! Choosing hosts for one request (SPEC §6): of the hosts that serve its route and are
//! not drained or down, those that have its model; among them first one with the model
//! loaded and a free slot, then one with it loaded and a short queue, then the least
//! busy relative to its slots. The answer is the order to try them in, for failover.

use std::cmp::Ordering;
use std::sync::Arc;

use super::host::{Has, Host};

/// Why no host can take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoHost {
    /// No host that serves the route has the model.
    UnknownModel,
    /// Hosts would serve it, but every one is down or drained.
    AllDown,
    /// No host serves the route at all (an Ollama route with only OpenAI-compatible
    /// hosts).
    NoRoute,
}

/// The hosts to try for a request on `path` naming the model `model` (a
/// [`super::model_key`]), best first. `turn` spreads requests over hosts that tie.
pub fn choose(
    hosts: &[Arc<Host>],
    path: &str,
    model: Option<&str>,
    turn: usize,
) -> Result<Vec<Arc<Host>>, NoHost> {
    let mut serving = 0;
    let mut having = 0;
    // (host, how it has the model, its position counted from `turn`)
    let mut picked: Vec<(&Arc<Host>, Has, usize)> = Vec::with_capacity(hosts.len());
    let n = hosts.len();
    for (i, h) in hosts.iter().enumerate() {
        if !h.serves(path) {
            continue;
        }
        serving += 1;
        let has = model.map_or(Has::Installed, |m| h.has(m));
        if has == Has::No {
            continue;
        }
        having += 1;
        if h.draining() || !h.usable() {
            continue;
        }
        picked.push((h, has, (i + n - turn % n.max(1)) % n.max(1)));
    }
    if picked.is_empty() {
        return Err(match (serving, having) {
            (0, _) => NoHost::NoRoute,
            (_, 0) => NoHost::UnknownModel,
            _ => NoHost::AllDown,
        });
    }
    // Hosts known to have the model before those not probed yet.
    if picked.iter().any(|(_, has, _)| *has != Has::Unknown) {
        picked.retain(|(_, has, _)| *has != Has::Unknown);
    }
    // With no free slot anywhere, a host that must load the model offers a load on top
    // of the wait: every host with it loaded stays warm.
    let any_free = picked.iter().any(|(h, ..)| h.has_free_slot());
    picked.sort_by(|a, b| rank(a, b, any_free));
    Ok(picked.into_iter().map(|(h, ..)| h.clone()).collect())
}

/// A host with the model loaded is still preferred while it has at most this many
/// rounds of its slots in flight (one generating, one waiting in Ollama's queue): a
/// wait of at most about one request, against a load of seconds to minutes that also
/// evicts another model.
pub const WARM_ROUNDS: u32 = 2;

/// Loaded with a free slot first; then loaded with a short queue (below
/// [`WARM_ROUNDS`] rounds of its slots, or any queue when no candidate has a free
/// slot); then the least busy relative to its slots; then loaded before not; then the
/// host with fewer models loaded (a load there evicts less); then by turn.
fn rank(a: &(&Arc<Host>, Has, usize), b: &(&Arc<Host>, Has, usize), any_free: bool) -> Ordering {
    let ready = |(h, has, _): &(&Arc<Host>, Has, usize)| *has == Has::Loaded && h.has_free_slot();
    let warm = |(h, has, _): &(&Arc<Host>, Has, usize)| {
        *has == Has::Loaded && (!any_free || h.in_flight() < WARM_ROUNDS.saturating_mul(h.slots))
    };
    let (ha, hb) = (a.0, b.0);
    // in_flight / slots, compared without division.
    let busy = |x: &Host, y: &Host| u64::from(x.in_flight()) * u64::from(y.slots);
    ready(b)
        .cmp(&ready(a))
        .then_with(|| warm(b).cmp(&warm(a)))
        .then_with(|| busy(ha, hb).cmp(&busy(hb, ha)))
        .then_with(|| (a.1 != Has::Loaded).cmp(&(b.1 != Has::Loaded)))
        .then_with(|| ha.loaded_count().cmp(&hb.loaded_count()))
        .then_with(|| a.2.cmp(&b.2))
}

#[cfg(test)]
mod tests {
    use super::super::host::{Kind, Models, Spec, model_key};
    use super::*;
    use crate::gate::metrics::Metrics;
    use crate::gate::upstream::Upstream;

    fn host(name: &str, kind: Kind, slots: u32, installed: &[&str], loaded: &[&str]) -> Arc<Host> {
        let metrics = Metrics::default();
        let spec = Spec {
            name: name.into(),
            upstream: Upstream::parse("127.0.0.1:1").expect("url"),
            kind,
            slots,
            stored: true,
            draining: false,
        };
        let h = Arc::new(Host::new(spec, 1, &metrics));
        let keys = |v: &[&str]| v.iter().map(|m| model_key(m)).collect::<Vec<_>>();
        h.set_models(Models {
            installed: keys(installed),
            loaded: keys(loaded),
            loaded_names: loaded.iter().map(|m| m.to_string()).collect(),
        });
        h.succeeded();
        h
    }

    fn names(r: Result<Vec<Arc<Host>>, NoHost>) -> Vec<String> {
        r.expect("hosts").iter().map(|h| h.name.clone()).collect()
    }

    #[test]
    fn loaded_with_a_free_slot_first_then_least_busy() {
        let a = host("a", Kind::Ollama, 2, &["m", "n"], &["n"]);
        let b = host("b", Kind::Ollama, 2, &["m", "n"], &["m"]);
        let c = host("c", Kind::Ollama, 4, &["m"], &[]);
        let all = [a.clone(), b.clone(), c.clone()];
        let m = model_key("m");
        // b has m loaded; of the others, c has nothing loaded to evict.
        assert_eq!(
            names(choose(&all, "/api/chat", Some(&m), 0)),
            ["b", "c", "a"]
        );
        // b's slots are full, but its queue is short: a wait there beats a load.
        let _b1 = b.take_slot();
        let _b2 = b.take_slot();
        let _a1 = a.take_slot();
        assert_eq!(
            names(choose(&all, "/api/chat", Some(&m), 0)),
            ["b", "c", "a"]
        );
        // Two rounds of b's slots in flight: the least busy relative to its slots.
        let _b3 = [b.take_slot(), b.take_slot()];
        assert_eq!(
            names(choose(&all, "/api/chat", Some(&m), 0)),
            ["c", "a", "b"]
        );
        let _c = [c.take_slot(), c.take_slot()];
        // a: 1/2, c: 2/4 tie; neither has m loaded; c has fewer models loaded.
        assert_eq!(
            names(choose(&all, "/api/chat", Some(&m), 0)),
            ["c", "a", "b"]
        );
        // No free slot anywhere: a load elsewhere would wait too, so b comes first.
        let _full = [a.take_slot(), c.take_slot(), c.take_slot()];
        assert_eq!(
            names(choose(&all, "/api/chat", Some(&m), 0)),
            ["b", "c", "a"]
        );
        // Hosts alike in all: by turn.
        let x = host("x", Kind::Ollama, 1, &["m"], &[]);
        let y = host("y", Kind::Ollama, 1, &["m"], &[]);
        let alike = [x, y];
        assert_eq!(names(choose(&alike, "/api/chat", Some(&m), 0)), ["x", "y"]);
        assert_eq!(names(choose(&alike, "/api/chat", Some(&m), 1)), ["y", "x"]);
    }

    #[test]
    fn only_hosts_that_have_the_model_and_serve_the_route() {
        let a = host("a", Kind::Ollama, 1, &["llama3.2:latest"], &[]);
        let o = host("o", Kind::Openai, 1, &["tiny"], &["tiny"]);
        let all = [a.clone(), o.clone()];
        let key = model_key("Llama3.2");
        assert_eq!(names(choose(&all, "/api/chat", Some(&key), 0)), ["a"]);
        let tiny = model_key("tiny");
        assert_eq!(
            names(choose(&all, "/v1/chat/completions", Some(&tiny), 0)),
            ["o"]
        );
        assert_eq!(
            choose(&all, "/api/chat", Some(&tiny), 0).map(|_| ()),
            Err(NoHost::UnknownModel)
        );
        assert_eq!(names(choose(&all, "/v1/embeddings", None, 0)), ["a", "o"]);
        assert_eq!(
            choose(std::slice::from_ref(&o), "/api/chat", None, 0).map(|_| ()),
            Err(NoHost::NoRoute)
        );
        a.set_draining(true);
        assert_eq!(
            choose(&all, "/api/chat", Some(&key), 0).map(|_| ()),
            Err(NoHost::AllDown)
        );
        a.set_draining(false);
        a.failed(true);
        assert_eq!(
            choose(&all, "/api/chat", Some(&key), 0).map(|_| ()),
            Err(NoHost::AllDown)
        );
    }
}
