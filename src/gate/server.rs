//! Accepting connections: plain or TLS (rustls), hyper's HTTP/1 with a deadline for the
//! request head (slowloris), and graceful shutdown that lets in-flight streams finish
//! within a bound. The server takes an already-bound listener and a shutdown future,
//! so tests bind port 0 and stop it cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use super::error::{Dialect, GateError};
use super::metrics::Metrics;
use super::{State, handler};

/// hyper's own cap on a request head; past it hyper answers 431 itself. Heads under it
/// but over [`handler::MAX_HEADER_BYTES`] get the gate's JSON 431.
const MAX_HEAD: usize = 256 * 1024;

/// Loads a PEM certificate chain and key into a TLS acceptor (HTTP/1.1 over ALPN).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the gate on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for at most the configured shutdown timeout.
pub async fn run(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .max_buf_size(MAX_HEAD)
        // hyper would answer a 101st header with a bare 431; the handler's own check
        // answers in JSON.
        .max_headers(1000)
        .keep_alive(true)
        // One buffer, one write(2): the heads and chunks are small, so copying costs
        // less than building an iovec, and TLS takes one buffer anyway.
        .writev(false);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    serve_conn(&builder, watcher, TokioIo::new(stream), state, peer, false).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(state.config.header_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(s)) => {
                            serve_conn(&builder, watcher, TokioIo::new(s), state, peer, true).await
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let timeout = state.config.shutdown_timeout;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(timeout) => tracing::warn!("shutdown timeout ({timeout:?}) reached; closing the remaining connections"),
    }
}

async fn serve_conn<I>(
    builder: &http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    io: TokioIo<I>,
    state: Arc<State>,
    peer: SocketAddr,
    https: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handler::handle(state.clone(), peer, https, req));
    let conn = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection from {peer} ended: {e}");
    }
}

/// After a failed accept (out of file descriptors and the like): wait rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serves `GET /metrics` (Prometheus text) on its own listener until `shutdown`.
pub async fn run_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    use super::respond;
    use hyper::{Response, header};
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(respond::full(metrics.encode()));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        GateError::NotFound("Not Found".into()).into_response(Dialect::Ollama)
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
