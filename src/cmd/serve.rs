//! `aigate serve`: resolve the options, open the database, start the database thread
//! and the server, and wait for SIGTERM or SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::jwt::JwtKeys;
use crate::auth::verifier::Verifier;
use crate::cli::ServeArgs;
use crate::gate::recorder::{DbThread, Recorder};
use crate::gate::{Config, State, Upstream, server};
use crate::store::{OpenMode, users};

/// Runs the gate until SIGTERM or SIGINT.
pub fn run(db: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let store = super::open(db, OpenMode::Create)?;
    let has_users = users::count(store.conn())? > 0;
    drop(store);
    let jwt = if args.no_login {
        None
    } else {
        match jwt_secret(&args)? {
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
    if upstreams.is_empty() {
        anyhow::bail!("no --upstream given");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(server::tls_acceptor(c, k)?),
        _ => None,
    };
    let config = Config {
        db: db.to_path_buf(),
        upstreams,
        token_ttl: args.token_ttl,
        trusted_proxies: args.trusted_proxy.clone(),
        max_body: args.max_body,
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        idle_timeout: args.idle_timeout,
        header_timeout: args.header_timeout,
        shutdown_timeout: args.shutdown_timeout,
        cors_origins: args.cors_origin.clone(),
        login: jwt.is_some(),
    };
    let verifier = Arc::new(Verifier::new(db, jwt)?);
    let recorder = Arc::new(Recorder::default());
    let db_thread = DbThread::spawn(db.to_path_buf(), verifier.clone(), recorder.clone())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aigate")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match args.metrics_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listening for metrics on {a}"))?,
            ),
            None => None,
        };
        let state = Arc::new(State::new(config, verifier, recorder));
        let c = &state.config;
        tracing::info!(
            "aigate {} listening on {}://{addr} db={} upstream={} tls={} login={} metrics={}",
            env!("CARGO_PKG_VERSION"),
            if tls.is_some() { "https" } else { "http" },
            db.display(),
            c.upstreams
                .iter()
                .map(|u| format!("http://{}", u.authority))
                .collect::<Vec<_>>()
                .join(","),
            if tls.is_some() { "on" } else { "off" },
            if c.login { "on" } else { "off" },
            metrics_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or("off".to_string(), |a| format!("http://{a}/metrics")),
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(ml) = metrics_listener {
            let mut rx = stop_rx.clone();
            tokio::spawn(server::run_metrics(ml, state.clone(), async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
        }
        let mut rx = stop_rx.clone();
        let serving = tokio::spawn(server::run(listener, state, tls, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; letting in-flight requests finish");
        let _ = stop_tx.send(true);
        let _ = serving.await;
        anyhow::Ok(())
    });
    // Streams still open past the shutdown timeout are cut here, with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    db_thread.stop();
    tracing::info!("stopped");
    result
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
