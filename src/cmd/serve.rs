//! `aigate serve`: resolve the options, open the database, start the database thread
//! and the server, and wait for SIGTERM or SIGINT. At start the soft limit on open files
//! is raised to the hard one, and the connection cap is set below it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use crate::auth::jwt::JwtKeys;
use crate::cli::ServeArgs;
use crate::gate::authn::Verifier;
use crate::gate::fleet::{Fleet, probe};
use crate::gate::recorder::{self, DbThread, Recorder};
use crate::gate::server::Connections;
use crate::gate::upstream::Pool;
use crate::gate::{Config, Shared, State, Upstream, failure, server};
use crate::store::{OpenMode, users};

/// Runs the gate until SIGTERM or SIGINT.
pub fn run(db: &Path, args: ServeArgs) -> anyhow::Result<()> {
    start(Plan::resolve(db, &args)?)
}

/// Everything `serve` was asked for, checked and resolved before anything starts.
struct Plan {
    config: Config,
    /// The `--upstream` hosts.
    upstreams: Vec<Upstream>,
    jwt: Option<JwtKeys>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    workers: usize,
    /// Connections in all and per client address.
    max_conns: usize,
    max_conns_per_ip: usize,
    audit_retention: Option<Duration>,
}

/// Descriptors kept out of the connection cap whatever the limit: listeners, the
/// database and its WAL, the runtimes' own, standard streams, the metrics listener.
const FIXED_RESERVE: usize = 64;

/// Raises the soft limit on open files to the hard one; returns the limit in force.
fn raise_open_files() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        // A hard limit of "unlimited" is above what Linux lets a process set.
        .or_else(|_| rlimit::increase_nofile_limit(1 << 20))
        .or_else(|_| rlimit::Resource::NOFILE.get().map(|(soft, _)| soft));
    match limit {
        Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Err(e) => {
            tracing::warn!("cannot read the open-files limit ({e}); assuming 1024");
            1024
        }
    }
}

/// The default connection cap for an open-files `limit`: what is left after a fixed
/// reserve and a quarter for upstream connections (each proxied request holds one),
/// at least 16.
fn default_max_conns(limit: usize, workers: usize) -> usize {
    let limit = limit.min(1 << 24);
    let reserve = FIXED_RESERVE + 4 * workers + limit / 4;
    limit.saturating_sub(reserve).max(16)
}

impl Plan {
    /// Resolves the options: the database (created when missing), the JWT secret, the
    /// upstreams, TLS, the worker count.
    fn resolve(db: &Path, args: &ServeArgs) -> anyhow::Result<Plan> {
        let store = super::open(db, OpenMode::Create)?;
        let has_users = users::count(store.conn())? > 0;
        drop(store);
        let jwt = if args.no_login {
            None
        } else {
            match jwt_secret(args)? {
                Some(secret) => Some(JwtKeys::new(&secret)?),
                None if has_users => anyhow::bail!(
                    "users exist but no JWT secret is configured: set AIGATE_JWT_SECRET or \
                     --jwt-secret-file (at least 32 bytes), or pass --no-login to serve API keys only"
                ),
                None => None,
            }
        };
        let upstreams = args
            .upstream
            .iter()
            .map(|u| Upstream::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(server::tls_acceptor(c, k)?),
            _ => None,
        };
        let config = Config {
            db: db.to_path_buf(),
            probe_interval: args.probe_interval,
            token_ttl: args.token_ttl,
            trusted_proxies: args.trusted_proxy.clone(),
            max_body: args.max_body,
            connect_timeout: args.connect_timeout,
            response_timeout: args.response_timeout,
            idle_timeout: args.idle_timeout,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            shutdown_timeout: args.shutdown_timeout,
            cors_origins: args.cors_origin.clone(),
        };
        let workers = args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        );
        let open_files = raise_open_files();
        let fits = default_max_conns(open_files, workers);
        let max_conns = match args.max_conns {
            None => fits,
            Some(n) => {
                let n = n as usize;
                if n > fits {
                    tracing::warn!(
                        "--max-conns {n} leaves too few of the {open_files} open files for \
                         upstream connections and the database (at most {fits} would)"
                    );
                }
                n
            }
        };
        Ok(Plan {
            config,
            upstreams,
            jwt,
            tls,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            workers,
            max_conns,
            max_conns_per_ip: args.max_conns_per_ip as usize,
            audit_retention: (!args.audit_retention.is_zero()).then_some(args.audit_retention),
        })
    }
}

/// Starts the database thread, the workers and the metrics listener, and waits for
/// SIGTERM or SIGINT.
fn start(plan: Plan) -> anyhow::Result<()> {
    let Plan {
        config,
        upstreams,
        jwt,
        tls,
        listen,
        metrics_listen,
        workers,
        max_conns,
        max_conns_per_ip,
        audit_retention,
    } = plan;
    let db = config.db.clone();
    let login = jwt.is_some();
    let verifier = Arc::new(Verifier::new(&db, jwt)?);
    let recorder = Arc::new(Recorder::default());
    let fleet = Arc::new(Fleet::new(upstreams, workers, Arc::default()));
    fleet.refresh(super::open(&db, OpenMode::Existing)?.conn())?;
    let db_thread = DbThread::spawn(
        db.clone(),
        verifier.clone(),
        recorder.clone(),
        fleet.clone(),
        audit_retention,
    )?;
    let conns = Arc::new(Connections::new(
        max_conns,
        max_conns_per_ip,
        config.trusted_proxies.clone(),
    ));
    tracing::info!(
        "at most {max_conns} connections, {max_conns_per_ip} per client address; audit kept {}",
        audit_retention.map_or("forever".to_string(), recorder::days)
    );

    let shared = Shared::new(verifier, recorder, fleet.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // SO_REUSEPORT would let this gate silently share a port with another one already
    // running: make sure the port is free first.
    if listen.port() != 0 {
        drop(
            std::net::TcpListener::bind(listen)
                .with_context(|| format!("listening on {listen}"))?,
        );
    }
    // Worker 0 binds first, so that port 0 resolves to one port for all of them.
    let mut threads = Vec::with_capacity(workers);
    let mut addr = listen;
    for n in 0..workers {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker = Worker {
            n,
            addr,
            state: State::new(config.clone(), &shared, n),
            conns: conns.clone(),
            tls: tls.clone(),
            stop: stop_rx.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("aigate-{n}"))
                .spawn(move || worker.run(ready_tx))
                .context("starting a worker thread")?,
        );
        match ready_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                return Err(e.context(format!("listening on {listen}")));
            }
            Err(_) => anyhow::bail!("worker {n} failed to start"),
        }
    }

    // The main thread answers signals and serves metrics.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let metrics_listener = match metrics_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listening for metrics on {a}"))?,
            ),
            None => None,
        };
        let hosts = fleet.snapshot();
        tracing::info!(
            "aigate {} listening on {}://{addr} db={} hosts={} tls={} login={} metrics={} workers={workers}",
            env!("CARGO_PKG_VERSION"),
            if tls.is_some() { "https" } else { "http" },
            db.display(),
            hosts
                .hosts
                .iter()
                .map(|h| format!("{}=http://{}", h.name, h.upstream.authority))
                .collect::<Vec<_>>()
                .join(","),
            if tls.is_some() { "on" } else { "off" },
            if login { "on" } else { "off" },
            metrics_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or("off".to_string(), |a| format!("http://{a}/metrics")),
        );
        let pool = Arc::new(Pool::new(config.connect_timeout, config.response_timeout));
        tokio::spawn(probe::run(fleet.clone(), pool, config.probe_interval));
        // The metrics listener answers until the workers have drained, so that /status
        // shows the queue emptying.
        let (drained_tx, mut drained_rx) = tokio::sync::watch::channel(false);
        if let Some(ml) = metrics_listener {
            tokio::spawn(server::run_metrics(ml, shared.clone(), async move {
                let _ = drained_rx.wait_for(|s| *s).await;
            }));
        }
        // Once a second: the summaries of ended failure windows, refused connections.
        let (recorder, metrics) = (shared.recorder.clone(), shared.metrics.clone());
        let conns = conns.clone();
        let queue = shared.queue.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                failure::sweep(&recorder, &metrics, false);
                conns.report_refused();
                // What a host coming back or a model loading may have freed.
                queue.tick();
            }
        });
        shutdown_signal().await;
        // Requests waiting for a slot are still served while the others finish; those
        // that would still wait when the shutdown timeout is near are told to retry.
        let grace = config.shutdown_timeout.saturating_sub(Duration::from_secs(1));
        shared.queue.stop_at(std::time::Instant::now() + grace);
        tracing::info!("shutting down: no new connections; letting in-flight requests finish");
        let _ = stop_tx.send(true);
        // The workers drain on their own threads while this runtime goes on serving
        // metrics and ticking the queue.
        let workers = std::mem::take(&mut threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in workers {
                let _ = t.join();
            }
        })
        .await;
        let _ = drained_tx.send(true);
        anyhow::Ok(())
    });
    let _ = stop_tx.send(true);
    for t in threads {
        let _ = t.join();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // What the failure windows left out so far, for the database thread's last write.
    failure::sweep(&shared.recorder, &shared.metrics, true);
    conns.report_refused();
    db_thread.stop();
    tracing::info!("stopped");
    result
}

/// One worker: a single-threaded runtime with its own listener on the shared port and
/// its own upstream connections, so that a request never crosses threads. The kernel
/// spreads new connections over the workers' listeners.
struct Worker {
    n: usize,
    addr: SocketAddr,
    state: State,
    conns: Arc<Connections>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let Worker {
            n,
            addr,
            state,
            conns,
            tls,
            mut stop,
        } = self;
        runtime.block_on(async move {
            let listener = match bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                    return;
                }
            };
            let bound = listener.local_addr().unwrap_or(addr);
            let _ = ready.send(Ok(bound));
            tracing::debug!("worker {n} accepting on {bound}");
            server::run(listener, Arc::new(state), conns, tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        });
        // Streams still open past the shutdown timeout are cut here, with the runtime.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
}

/// A listener that other workers may bind too (SO_REUSEPORT; on Linux only processes of
/// the same user can join it).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn jwt_secret(args: &ServeArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(path) = &args.jwt_secret_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the JWT secret from {}", path.display()))?;
        let trimmed = bytes.trim_ascii_end().to_vec();
        return Ok(Some(trimmed));
    }
    Ok(std::env::var_os("AIGATE_JWT_SECRET")
        .filter(|s| !s.is_empty())
        .map(|s| s.into_encoded_bytes()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_a_reserve() {
        assert_eq!(default_max_conns(20_000, 2), 20_000 - 64 - 8 - 5_000);
        assert_eq!(default_max_conns(1024, 2), 1024 - 64 - 8 - 256);
        assert_eq!(default_max_conns(10, 2), 16);
        assert!(default_max_conns(usize::MAX, 256) < 1 << 24);
    }
}
