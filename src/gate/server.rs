//! Accepting connections: plain or TLS (rustls), hyper's HTTP/1 with a deadline for the
//! request head (slowloris), and graceful shutdown that lets in-flight streams finish
//! within a bound. The server takes an already-bound listener and a shutdown future,
//! so tests bind port 0 and stop it cleanly.
//!
//! Open connections are capped per client address (an IPv6 /64 is one address; trusted
//! proxies are exempt) and in all, below the open-files limit, by [`Connections`],
//! which every worker shares: one address cannot hold every descriptor. A connection
//! over a cap gets a bare 503 (plain HTTP) and is closed at once. hyper's head deadline
//! also closes an idle keep-alive connection: since hyper 1.6 it runs from the end of
//! each response to the end of the next request head.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use super::metrics::KindLabel;
use super::{State, addr, handler};

/// hyper's own cap on a request head; past it hyper answers 431 itself. Heads under it
/// but over [`handler::MAX_HEADER_BYTES`] get the gate's JSON 431.
const MAX_HEAD: usize = 256 * 1024;

/// What a connection over a cap is told before it is closed. No request has been read,
/// so the body is the JSON every client reads, without a client's own dialect.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 33\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"detail\":\"Too many connections\"}";

/// The open connections of all workers, by client address, against the caps.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    per_address: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<Open>,
    refused_per_address: AtomicU64,
    refused_total: AtomicU64,
    last_refused: Mutex<Option<IpAddr>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: foldhash::HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    PerAddress,
    Total,
}

/// An open connection's place under the caps, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Connections>,
    /// The per-address unit it counts against, if any (trusted proxies count in the
    /// total only).
    key: Option<IpAddr>,
}

impl Connections {
    /// At most `max` connections in all and `per_address` from one address, except
    /// from peers in `exempt` (trusted proxies, which carry many clients).
    pub fn new(max: usize, per_address: usize, exempt: Vec<ipnet::IpNet>) -> Connections {
        Connections {
            max,
            per_address,
            exempt,
            open: Mutex::default(),
            refused_per_address: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            last_refused: Mutex::new(None),
        }
    }

    /// Takes a place for a connection from `peer`, or says which cap it is over.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Over> {
        let key = (!self.exempt.iter().any(|n| n.contains(&peer))).then(|| addr::counted(peer));
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.total >= self.max {
                Some(Over::Total)
            } else {
                let n = key.map_or(0, |k| open.by_address.get(&k).copied().unwrap_or(0));
                if n >= self.per_address {
                    Some(Over::PerAddress)
                } else {
                    open.total += 1;
                    if let Some(k) = key {
                        *open.by_address.entry(k).or_insert(0) += 1;
                    }
                    None
                }
            }
        };
        match refused {
            None => Ok(Slot {
                conns: self.clone(),
                key,
            }),
            Some(over) => {
                let counter = match over {
                    Over::PerAddress => &self.refused_per_address,
                    Over::Total => &self.refused_total,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                *self.last_refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
                Err(over)
            }
        }
    }

    fn release(&self, key: Option<IpAddr>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(k) = key {
            if let Some(n) = open.by_address.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    open.by_address.remove(&k);
                }
            }
        }
    }

    /// Open connections in all.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Logs one line for the connections refused since the last call, if any: called
    /// about once a second, so a flood of refusals costs one line a second.
    pub fn report_refused(&self) {
        let per_address = self.refused_per_address.swap(0, Ordering::Relaxed);
        let total = self.refused_total.swap(0, Ordering::Relaxed);
        if per_address + total == 0 {
            return;
        }
        let last = self
            .last_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tracing::warn!(
            "connections_refused ip={} count={} over_address_cap={per_address} over_total_cap={total} \
             caps={}/{}",
            last.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            per_address + total,
            self.per_address,
            self.max,
        );
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.release(self.key);
    }
}

/// Closes a connection over a cap at once; on plain HTTP after a bare 503, written
/// without waiting (a fresh socket's buffer has room for it).
fn refuse(stream: tokio::net::TcpStream, plain: bool) {
    if !plain {
        return;
    }
    if let Ok(mut s) = stream.into_std() {
        use std::io::Write;
        let _ = s.write(BUSY);
    }
}

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
    conns: Arc<Connections>,
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
        let slot = match conns.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                let kind = match over {
                    Over::PerAddress => "per_address",
                    Over::Total => "total",
                };
                state
                    .metrics
                    .connections_refused
                    .get_or_create(&KindLabel { kind })
                    .inc();
                refuse(stream, tls.is_none());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
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

/// Serves `GET /metrics` (Prometheus text) and `GET /status` (what `aigate top` shows,
/// JSON) on their own listener until `shutdown`.
pub async fn run_metrics(
    listener: TcpListener,
    shared: super::Shared,
    shutdown: impl Future<Output = ()>,
) {
    use super::respond;
    use hyper::{Response, StatusCode, header};
    let started = std::time::Instant::now();
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => {
                            let mut r = Response::new(respond::full(shared.metrics.encode()));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        }
                        "/status" => respond::json(
                            StatusCode::OK,
                            &super::status::status(&shared.fleet, &shared.queue, started),
                        ),
                        _ => GateError::NotFound("Not Found".into()).into_response(Dialect::Ollama),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["detail"], "Too many connections");
    }

    #[test]
    fn connections_are_capped_per_address_and_in_all() {
        let proxy: ipnet::IpNet = "10.9.0.0/16".parse().expect("net");
        let conns = Arc::new(Connections::new(6, 2, vec![proxy]));
        let a1 = conns.admit(ip("10.0.0.1")).expect("first");
        let a2 = conns.admit(ip("10.0.0.1")).expect("second");
        assert_eq!(conns.admit(ip("10.0.0.1")).err(), Some(Over::PerAddress));
        // One IPv6 /64 is one address.
        let v1 = conns.admit(ip("2001:db8::1")).expect("v6");
        let v2 = conns.admit(ip("2001:db8::ffff:2")).expect("v6 again");
        assert_eq!(conns.admit(ip("2001:db8::3")).err(), Some(Over::PerAddress));
        let other = conns.admit(ip("2001:db8:0:1::3")).expect("another /64");
        // A trusted proxy is held to the total only.
        let p = conns.admit(ip("10.9.1.1")).expect("proxy");
        assert_eq!(conns.open(), 6);
        assert_eq!(conns.admit(ip("10.9.1.1")).err(), Some(Over::Total));
        assert_eq!(conns.admit(ip("10.0.0.7")).err(), Some(Over::Total));
        drop((a1, v1, p, other));
        assert_eq!(conns.open(), 2);
        let again = conns.admit(ip("10.0.0.1")).expect("a place came free");
        drop((a2, v2, again));
        assert_eq!(conns.open(), 0);
        assert!(conns.open.lock().expect("lock").by_address.is_empty());
    }
}
