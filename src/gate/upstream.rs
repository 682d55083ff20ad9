//! The upstream Ollama server(s) and one worker's connections to them: HTTP/1 keep-alive
//! connections driven by hyper's client connection API, kept idle per upstream and
//! reused. A connection goes
//! back to the pool only when its response body has been read to the end; a response
//! abandoned midway (the client left) takes its connection with it, which closes it, so
//! Ollama stops generating.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::metrics::Metrics;
use super::respond::Body;

/// Idle connections kept per upstream, at most.
const MAX_IDLE: usize = 1024;

/// One upstream Ollama.
#[derive(Debug, Clone)]
pub struct Upstream {
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
        Ok(Upstream { authority, host })
    }
}

/// Why an upstream request failed before a response head arrived. The sources are
/// kept for the log; the client sees only 502 or 504.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to upstream {0} timed out")]
    ConnectTimeout(Authority),
    #[error("connecting to upstream {0}")]
    Connect(Authority, #[source] std::io::Error),
    #[error("upstream {0} sent no response within {1:?}")]
    NoResponse(Authority, Duration),
    #[error("upstream {0} failed")]
    Http(Authority, #[source] hyper::Error),
    #[error("upstream {0} sent a model list that could not be read")]
    BadList(Authority),
}

impl UpstreamError {
    /// Whether the request may be sent to another host: it failed to connect, or the
    /// connection failed before a response head (so no byte went back to the client).
    /// Not after the response timeout: the host is there and may be loading the model,
    /// which another host would then load as well.
    pub fn may_fail_over(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::Connect(..) | UpstreamError::Http(..)
        )
    }

    /// Whether the failure was the client's: its request body failed (it stalled, or
    /// the client left mid-body). Such a failure says nothing of the host.
    pub fn is_client_body(&self) -> bool {
        matches!(self, UpstreamError::Http(_, e) if e.is_user())
    }

    /// Whether the host refused the connection: nothing listens there.
    pub fn refused(&self) -> bool {
        matches!(self, UpstreamError::Connect(_, e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// Whether the client should see a 504 rather than a 502.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::NoResponse(..)
        )
    }
}

/// The idle connections of one worker (or the prober) to one host.
#[derive(Default)]
pub struct Idle {
    senders: Mutex<Vec<SendRequest<Body>>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Idle")
    }
}

/// How one worker (or the prober) connects to hosts; the idle connections themselves
/// are kept per host ([`Idle`]).
pub struct Pool {
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

/// A connection lent for one request; [`Lease::release`] returns it once the response
/// body has ended. Dropped instead, it closes.
pub struct Lease {
    sender: SendRequest<Body>,
    idle: Arc<Idle>,
}

impl Lease {
    /// Returns the connection to the pool.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.senders.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(self.sender);
        }
    }
}

impl Pool {
    /// A pool with these timeouts.
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Pool {
        Pool {
            connect_timeout,
            response_timeout,
        }
    }

    /// Sends `req` to `up` on one of the `idle` connections or a new one, waiting at
    /// most the response timeout for its head (a model may take minutes to load; after
    /// the head, the idle timeout rules).
    pub async fn send(
        &self,
        metrics: &Metrics,
        up: &Upstream,
        idle: &Arc<Idle>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.response_timeout, self.send_now(up, idle, req)).await;
        metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        result.unwrap_or_else(|_| {
            Err(UpstreamError::NoResponse(
                up.authority.clone(),
                self.response_timeout,
            ))
        })
    }

    /// Sends `req` to `up` on an idle connection, or a new one.
    async fn send_now(
        &self,
        up: &Upstream,
        idle: &Arc<Idle>,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let idle = idle.clone();
        // Idle connections first; one the upstream closed meanwhile hands the request
        // back unsent, and the next one is tried.
        loop {
            let popped = idle.senders.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut sender) = popped else { break };
            if sender.is_closed() || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { sender, idle })),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(UpstreamError::Http(up.authority.clone(), e.into_error()));
                    }
                },
            }
        }
        // Boxed: connecting is rare, and its future would make every request's bigger.
        let mut sender = Box::pin(self.connect(up)).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, Lease { sender, idle })),
            Err(e) => Err(UpstreamError::Http(up.authority.clone(), e)),
        }
    }

    async fn connect(&self, up: &Upstream) -> Result<SendRequest<Body>, UpstreamError> {
        // An IPv6 host is written in brackets in a URL, not in a socket address.
        let host = up
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = up.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Err(_) => return Err(UpstreamError::ConnectTimeout(up.authority.clone())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(UpstreamError::ConnectTimeout(up.authority.clone()));
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(up.authority.clone(), e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        // One buffer, one write(2), as on the client side (see `server::run`).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Http(up.authority.clone(), e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}
