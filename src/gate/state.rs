//! What a request handler reaches: the shared verifier, recorder, metrics and login
//! throttle, and one worker's own connection pool and metric handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::authn::Verifier;
use super::config::Config;
use super::metrics::{Handles, Metrics};
use super::recorder::Recorder;
use super::throttle::LoginThrottle;
use super::upstream::{Pool, Upstream};

/// What all workers share: credentials, recorded usage, metrics, login counters.
#[derive(Debug, Clone)]
pub struct Shared {
    pub verifier: Arc<Verifier>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub login: Arc<LoginThrottle>,
}

impl Shared {
    /// Shared state over `verifier` and `recorder`, with fresh metrics and counters.
    pub fn new(verifier: Arc<Verifier>, recorder: Arc<Recorder>) -> Shared {
        Shared {
            verifier,
            recorder,
            metrics: Arc::default(),
            login: Arc::default(),
        }
    }
}

/// What every request handler of one worker uses.
pub struct State {
    pub config: Config,
    pub verifier: Arc<Verifier>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    /// This worker's handles on the shared counters.
    pub counters: Handles,
    pub pool: Pool,
    pub login: Arc<LoginThrottle>,
    next_upstream: AtomicUsize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("config", &self.config)
            .finish()
    }
}

impl State {
    /// The state of one worker: its own upstream connection pool over what all
    /// workers share.
    pub fn new(config: Config, shared: &Shared) -> State {
        let pool = Pool::new(
            config.upstreams.len(),
            config.connect_timeout,
            config.response_timeout,
        );
        State {
            config,
            verifier: shared.verifier.clone(),
            recorder: shared.recorder.clone(),
            metrics: shared.metrics.clone(),
            counters: Handles::default(),
            pool,
            login: shared.login.clone(),
            next_upstream: AtomicUsize::new(0),
        }
    }

    /// The next upstream, round-robin.
    pub fn upstream(&self) -> (usize, &Upstream) {
        let n = self.next_upstream.fetch_add(1, Ordering::Relaxed);
        let i = n % self.config.upstreams.len();
        (i, &self.config.upstreams[i])
    }
}
