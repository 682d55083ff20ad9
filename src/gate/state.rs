//! What a request handler reaches: the shared verifier, recorder, metrics, login
//! throttle, hosts and queue, and one worker's own connection pool and metric handles.

use std::sync::Arc;

use super::authn::Verifier;
use super::config::Config;
use super::fleet::Fleet;
use super::metrics::{Handles, Metrics};
use super::queue::Queue;
use super::recorder::Recorder;
use super::throttle::LoginThrottle;
use super::upstream::Pool;

/// What all workers share: credentials, recorded usage, metrics, login counters, hosts,
/// the queue for their slots.
#[derive(Debug, Clone)]
pub struct Shared {
    pub verifier: Arc<Verifier>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub login: Arc<LoginThrottle>,
    pub fleet: Arc<Fleet>,
    pub queue: Arc<Queue>,
}

impl Shared {
    /// Shared state over `verifier`, `recorder` and `fleet` (whose metrics are used),
    /// with fresh login counters and an empty queue.
    pub fn new(verifier: Arc<Verifier>, recorder: Arc<Recorder>, fleet: Arc<Fleet>) -> Shared {
        Shared {
            verifier,
            recorder,
            metrics: fleet.metrics().clone(),
            login: Arc::default(),
            queue: Arc::new(Queue::for_fleet(fleet.clone())),
            fleet,
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
    pub fleet: Arc<Fleet>,
    pub queue: Arc<Queue>,
    /// This worker's number: which of each host's idle connection lists is its own.
    pub worker: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("config", &self.config)
            .finish()
    }
}

impl State {
    /// The state of worker `worker`: its own upstream connections over what all
    /// workers share.
    pub fn new(config: Config, shared: &Shared, worker: usize) -> State {
        let pool = Pool::new(config.connect_timeout, config.response_timeout);
        State {
            config,
            verifier: shared.verifier.clone(),
            recorder: shared.recorder.clone(),
            metrics: shared.metrics.clone(),
            counters: Handles::default(),
            pool,
            login: shared.login.clone(),
            fleet: shared.fleet.clone(),
            queue: shared.queue.clone(),
            worker,
        }
    }
}
