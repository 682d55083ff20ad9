//! One worker's connections to the upstream(s): HTTP/1 keep-alive connections driven by
//! hyper's client connection API, kept idle per upstream and reused. A connection goes
//! back to the pool only when its response body has been read to the end; a response
//! abandoned midway (the client left) takes its connection with it, which closes it, so
//! Ollama stops generating.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Upstream;
use super::respond::Body;

/// Idle connections kept per upstream, at most.
const MAX_IDLE: usize = 1024;

/// Why an upstream request failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting timed out")]
    Timeout,
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Default)]
struct Idle {
    senders: Mutex<Vec<SendRequest<Body>>>,
}

/// The pool of one worker.
pub struct Pool {
    idle: Vec<Arc<Idle>>,
    connect_timeout: Duration,
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
    /// A pool for `upstreams` (indexed as in the config).
    pub fn new(upstreams: usize, connect_timeout: Duration) -> Pool {
        Pool {
            idle: (0..upstreams).map(|_| Arc::default()).collect(),
            connect_timeout,
        }
    }

    /// Sends `req` to upstream `index` on an idle connection, or a new one.
    pub async fn send(
        &self,
        index: usize,
        up: &Upstream,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let idle = self.idle[index].clone();
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
                    None => return Err(UpstreamError::Unavailable(e.into_error().to_string())),
                },
            }
        }
        // Boxed: connecting is rare, and its future would make every request's bigger.
        let mut sender = Box::pin(self.connect(up)).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, Lease { sender, idle })),
            Err(e) => Err(UpstreamError::Unavailable(e.to_string())),
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
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(UpstreamError::Timeout);
            }
            Ok(Err(e)) => {
                return Err(UpstreamError::Unavailable(format!(
                    "connecting to {}: {e}",
                    up.authority
                )));
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        // One buffer, one write(2), as on the client side (see `server::run`).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}
