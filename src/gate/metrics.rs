//! Prometheus metrics, served on their own address (`--metrics-listen`), never on the
//! public port.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

/// A single `reason`/`kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A single `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Labels of the token counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub tier: String,
    pub kind: &'static str,
}

/// A single `host` label: a host's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

/// A single `tier` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

/// The histogram of queue waits: 1 ms to about 9 minutes.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric of the gate.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub rejections: Family<KindLabel, Counter>,
    pub upstream_latency: Histogram,
    pub streams: Gauge,
    pub tokens: Family<TokenLabels, Counter>,
    pub audit_dropped: Counter,
    /// Failures counted but not logged or audited one by one (past the rate bound).
    pub auth_failures_suppressed: Counter,
    /// Connections closed at once for a cap: `cap` is `per_address` or `total`.
    pub connections_refused: Family<KindLabel, Counter>,
    /// Per host: up (1) or down (0), requests in flight, requests sent, requests that
    /// failed over to another host from this one, model loads seen by the probes.
    pub host_up: Family<HostLabel, Gauge>,
    pub host_in_flight: Family<HostLabel, Gauge>,
    pub host_requests: Family<HostLabel, Counter>,
    pub host_failovers: Family<HostLabel, Counter>,
    pub host_loads: Family<HostLabel, Counter>,
    /// Per tier: requests waiting for a slot, how long each dispatched request waited,
    /// requests dispatched, given up at `max-wait`, whose client left while waiting, and
    /// refused at once (`max-queued`).
    pub queue_waiting: Family<TierLabel, Gauge>,
    pub queue_wait: Family<TierLabel, Histogram, fn() -> Histogram>,
    pub queue_dispatched: Family<TierLabel, Counter>,
    pub queue_expired: Family<TierLabel, Counter>,
    pub queue_left: Family<TierLabel, Counter>,
    pub queue_refused: Family<TierLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aigate");
        let requests = Family::<RequestLabels, Counter>::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        let rejections = Family::<KindLabel, Counter>::default();
        // 1 ms to about 65 s: model loading sits at the top.
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let streams = Gauge::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let auth_failures_suppressed = Counter::default();
        let connections_refused = Family::<KindLabel, Counter>::default();
        let host_up = Family::<HostLabel, Gauge>::default();
        let host_in_flight = Family::<HostLabel, Gauge>::default();
        let host_requests = Family::<HostLabel, Counter>::default();
        let host_failovers = Family::<HostLabel, Counter>::default();
        let host_loads = Family::<HostLabel, Counter>::default();
        let queue_waiting = Family::<TierLabel, Gauge>::default();
        let queue_wait =
            Family::<TierLabel, Histogram, fn() -> Histogram>::new_with_constructor(wait_histogram);
        let queue_dispatched = Family::<TierLabel, Counter>::default();
        let queue_expired = Family::<TierLabel, Counter>::default();
        let queue_left = Family::<TierLabel, Counter>::default();
        let queue_refused = Family::<TierLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests by route class and status",
            requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Authentication failures by reason",
            auth_failures.clone(),
        );
        registry.register(
            "limit_rejections",
            "Requests refused by a limit",
            rejections.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            upstream_latency.clone(),
        );
        registry.register(
            "streams_in_flight",
            "Responses being streamed",
            streams.clone(),
        );
        registry.register("tokens", "Tokens by tier and kind", tokens.clone());
        registry.register(
            "audit_dropped",
            "Audit entries dropped because the queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "auth_failures_suppressed",
            "Authentication failures past the per-address or overall record bound, counted but not logged one by one",
            auth_failures_suppressed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once for a cap (kind: per_address or total)",
            connections_refused.clone(),
        );
        registry.register(
            "host_up",
            "Whether a host answers (1) or is down (0)",
            host_up.clone(),
        );
        registry.register(
            "host_in_flight",
            "Requests on a host now",
            host_in_flight.clone(),
        );
        registry.register(
            "host_requests",
            "Requests sent to a host",
            host_requests.clone(),
        );
        registry.register(
            "host_failovers",
            "Requests that failed on a host before any byte went back and were sent to the next one",
            host_failovers.clone(),
        );
        registry.register(
            "host_model_loads",
            "Models a host loaded, as its probes saw them appear in /api/ps",
            host_loads.clone(),
        );
        registry.register(
            "queue_waiting",
            "Requests waiting in the gate for a free slot, by tier",
            queue_waiting.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "How long dispatched requests waited for a slot, by tier",
            queue_wait.clone(),
        );
        registry.register(
            "queue_dispatched",
            "Requests given a slot, by tier",
            queue_dispatched.clone(),
        );
        registry.register(
            "queue_expired",
            "Requests that waited their tier's max-wait and were answered 503, by tier",
            queue_expired.clone(),
        );
        registry.register(
            "queue_left",
            "Requests whose client left while they waited, by tier",
            queue_left.clone(),
        );
        registry.register(
            "queue_refused",
            "Requests refused at once because their user had max-queued waiting, by tier",
            queue_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            auth_failures,
            rejections,
            upstream_latency,
            streams,
            tokens,
            audit_dropped,
            auth_failures_suppressed,
            connections_refused,
            host_up,
            host_in_flight,
            host_requests,
            host_failovers,
            host_loads,
            queue_waiting,
            queue_wait,
            queue_dispatched,
            queue_expired,
            queue_left,
            queue_refused,
        }
    }
}

/// One worker's handles on the shared counters, each looked up in its `Family` once:
/// a lookup hashes the labels and takes a read lock that every worker shares, and the
/// token labels need the tier's name copied. Label sets are few (routes and statuses,
/// tiers), so the maps stay small.
#[derive(Default)]
pub struct Handles {
    requests: Mutex<foldhash::HashMap<(&'static str, u16), Counter>>,
    tokens: Mutex<foldhash::HashMap<String, [Counter; 2]>>,
}

impl Handles {
    /// Counts a request answered with `status` on `route`.
    pub fn request(&self, m: &Metrics, route: &'static str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((route, status))
            .or_insert_with(|| {
                m.requests
                    .get_or_create(&RequestLabels { route, status })
                    .clone()
            })
            .inc();
    }

    /// Counts the prompt and completion tokens of a caller of `tier`.
    pub fn tokens(&self, m: &Metrics, tier: &str, prompt: u64, completion: u64) {
        let mut map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(tier) {
            let counter = |kind| {
                m.tokens
                    .get_or_create(&TokenLabels {
                        tier: tier.to_string(),
                        kind,
                    })
                    .clone()
            };
            let counters = [counter("prompt"), counter("completion")];
            map.insert(tier.to_string(), counters);
        }
        if let Some([p, c]) = map.get(tier) {
            p.inc_by(prompt);
            c.inc_by(completion);
        }
    }
}

impl Metrics {
    /// Counts a request refused by one of its caller's limits (`kind`: rate,
    /// concurrency, tokens).
    pub fn rejected(&self, kind: &'static str) {
        self.rejections.get_or_create(&KindLabel { kind }).inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
