//! `aigate serve`: the authenticating reverse proxy. [`server`] accepts connections
//! (TLS, timeouts, graceful shutdown), [`handler`] routes a request and authenticates
//! it, [`forward`] streams it to Ollama and back through the usage [`tap`].

pub mod admin;
pub mod forward;
pub mod handler;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod pool;
pub mod recorder;
pub mod respond;
pub mod server;
pub mod tap;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};

use crate::auth::verifier::Verifier;

/// Everything the gate is configured with, resolved from `serve`'s options.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub upstreams: Vec<Upstream>,
    pub token_ttl: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_body: u64,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub cors_origins: Vec<String>,
    /// Whether `/auth/login` and JWTs are on.
    pub login: bool,
}

/// One upstream Ollama.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` header sent: the upstream's own authority (Ollama refuses others).
    pub host: HeaderValue,
}

impl Upstream {
    /// Parses `http://host:port` (a bare `host:port` means http). Only plain HTTP:
    /// Ollama listens on loopback or a private network.
    pub fn parse(s: &str) -> anyhow::Result<Upstream> {
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri: hyper::Uri = with_scheme
            .parse()
            .map_err(|e| anyhow::anyhow!("bad upstream URL {s:?}: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            anyhow::bail!("upstream {s:?}: only http:// upstreams are supported");
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            anyhow::bail!("upstream {s:?}: give only scheme, host and port (no path)");
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream {s:?} has no host"))?;
        let host = HeaderValue::from_str(authority.as_str())?;
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
            host,
        })
    }
}

/// What all workers share: credentials, recorded usage, metrics, login counters.
#[derive(Debug, Clone)]
pub struct Shared {
    pub verifier: Arc<Verifier>,
    pub recorder: Arc<recorder::Recorder>,
    pub metrics: Arc<metrics::Metrics>,
    pub login: Arc<login::LoginGuard>,
}

impl Shared {
    /// Shared state over `verifier` and `recorder`, with fresh metrics and counters.
    pub fn new(verifier: Arc<Verifier>, recorder: Arc<recorder::Recorder>) -> Shared {
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
    pub recorder: Arc<recorder::Recorder>,
    pub metrics: Arc<metrics::Metrics>,
    /// This worker's handles on the shared counters.
    pub counters: metrics::Handles,
    pub pool: pool::Pool,
    pub login: Arc<login::LoginGuard>,
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
    /// The state of one worker: its own upstream client (and so connection pool) over
    /// what all workers share.
    pub fn new(config: Config, shared: &Shared) -> State {
        let pool = pool::Pool::new(config.upstreams.len(), config.connect_timeout);
        State {
            config,
            verifier: shared.verifier.clone(),
            recorder: shared.recorder.clone(),
            metrics: shared.metrics.clone(),
            counters: metrics::Handles::default(),
            pool,
            login: shared.login.clone(),
            next_upstream: AtomicUsize::new(0),
        }
    }

    /// The next upstream, round-robin.
    pub fn upstream(&self) -> (usize, &Upstream) {
        let n = self
            .next_upstream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let i = n % self.config.upstreams.len();
        (i, &self.config.upstreams[i])
    }
}
