//! Forwarding: the upstream request (credentials, hop-by-hop and spoofed forwarding
//! headers stripped; `X-Forwarded-For` and the upstream's `Host` set; path and query
//! byte-exact), error mapping (502/504), and the response body
//! wrapper that streams each chunk on as it arrives while the usage tap reads it.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};
use tokio::time::Sleep;

use super::limits::{self, Admitted};
use super::pool::{Lease, UpstreamError};
use super::respond::{self, Body, BoxError};
use super::tap::Scanner;
use super::{State, Upstream};
use crate::store::usage::Counts;

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Headers named in `Connection`, which are hop-by-hop too. The usual tokens, `close`
/// and `keep-alive`, are skipped without parsing (and allocating) a name: the first
/// names no header and the second is hop-by-hop anyway.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut values = headers.get_all(header::CONNECTION).iter();
    if let (Some(v), None) = (values.next(), values.next())
        && (v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            || v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        return Vec::new();
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Removes, in place, the hop-by-hop headers, those `Connection` names, and those
/// `also_drop` picks. Removing only what is there costs less than copying the map, and
/// a request or response mostly has one or two such headers, or none.
fn strip_in_place(h: &mut HeaderMap, also_drop: impl Fn(&HeaderName) -> bool) {
    let named = if h.contains_key(header::CONNECTION) {
        connection_named(h)
    } else {
        Vec::new()
    };
    while let Some(name) = h
        .keys()
        .find(|n| hop_by_hop(n) || also_drop(n) || named.contains(n))
        .cloned()
    {
        h.remove(name);
    }
}

/// Makes a client's request headers the ones sent upstream, in place: credentials,
/// hop-by-hop and forwarding headers removed; `X-Forwarded-For`, `X-Forwarded-Proto`
/// and the upstream's `Host` set.
pub fn upstream_headers(
    h: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    https: bool,
    up: &Upstream,
) {
    // A trusted proxy's chain is kept and extended; anyone else's is replaced.
    let before: Vec<&str> = if peer_trusted {
        h.get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let chain = if before.is_empty() {
        ip_value(peer)
    } else {
        HeaderValue::from_str(&format!("{}, {peer}", before.join(", "))).ok()
    };
    strip_in_place(h, |n| {
        n == X_API_KEY
            || n == header::AUTHORIZATION
            || n == header::FORWARDED
            || n.as_str().starts_with("x-forwarded-")
    });
    if let Some(v) = chain {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    h.insert(header::HOST, up.host.clone());
}

/// `ip` as a header value. An IPv4 address is written out by hand: through `fmt` it
/// cost some 1,300 instructions a request.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// The client's address: the peer, or for a trusted proxy the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Builds the upstream request from the client's `parts` with `body`. The target is
/// sent in origin form (`/path?query`, byte-exact), as to any server; absolute form is
/// for proxies.
pub fn upstream_request(
    up: &Upstream,
    parts: hyper::http::request::Parts,
    body: Body,
    peer: IpAddr,
    peer_trusted: bool,
    https: bool,
) -> Request<Body> {
    let hyper::http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    upstream_headers(&mut headers, peer, peer_trusted, https, up);
    let target = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from(target);
    *req.headers_mut() = headers;
    req
}

/// Sends `req` to upstream `index`, waiting at most the response timeout for its head.
pub async fn send(
    state: &State,
    index: usize,
    up: &Upstream,
    req: Request<Body>,
) -> Result<(Response<Incoming>, Lease), Response<Body>> {
    let started = Instant::now();
    let result = tokio::time::timeout(
        state.config.response_timeout,
        state.pool.send(index, up, req),
    )
    .await;
    state
        .metrics
        .upstream_latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(sent)) => Ok(sent),
        Ok(Err(UpstreamError::Timeout)) => {
            tracing::warn!("connecting to upstream {} timed out", up.authority);
            Err(respond::error(
                StatusCode::GATEWAY_TIMEOUT,
                "Upstream timeout",
            ))
        }
        Ok(Err(UpstreamError::Unavailable(e))) => {
            tracing::warn!("upstream unavailable: {e}");
            Err(respond::error(
                StatusCode::BAD_GATEWAY,
                "Upstream unavailable",
            ))
        }
        Err(_) => {
            tracing::warn!(
                "upstream sent no response within {:?}",
                state.config.response_timeout
            );
            Err(respond::error(
                StatusCode::GATEWAY_TIMEOUT,
                "Upstream timeout",
            ))
        }
    }
}

/// Makes the upstream's response headers the ones sent back: hop-by-hop headers (and
/// those `Connection` names) are removed in place.
pub fn strip_response_headers(h: &mut HeaderMap) {
    strip_in_place(h, |_| false);
}

/// What is recorded when a forwarded response ends (or the client leaves).
pub struct Accounting {
    pub state: Arc<State>,
    /// The caller, and its concurrency slot (freed as this drops).
    pub admitted: Admitted,
    /// The model the request named, if it was read.
    pub model: Option<String>,
    /// The upstream connection, returned to the pool when the body ends.
    pub lease: Option<Lease>,
}

impl Accounting {
    fn finish(self, scanner: Option<Scanner>) {
        let seen = scanner.map(Scanner::finish).unwrap_or_default();
        let p = &self.admitted.principal;
        let tokens = seen.prompt_tokens + seen.completion_tokens;
        if tokens > 0 {
            limits::add_tokens(&p.state, tokens);
            self.state.counters.tokens(
                &self.state.metrics,
                &p.tier,
                seen.prompt_tokens,
                seen.completion_tokens,
            );
        }
        // Ollama reads `llama3.2` as `llama3.2:latest`; count both under one name.
        let mut model = self.model.or(seen.model).unwrap_or_default();
        if !model.is_empty() && !model.contains(':') {
            model.push_str(":latest");
        }
        self.state.recorder.record(
            p.key_id,
            p.user.as_deref(),
            &model,
            Counts {
                requests: 1,
                prompt_tokens: seen.prompt_tokens,
                completion_tokens: seen.completion_tokens,
            },
        );
        self.state.metrics.streams.dec();
        // The concurrency slot (if any) is released here, as `self` drops.
    }
}

/// A response body on its way to the client: each frame is passed on as it comes,
/// read by the usage tap, and guarded by the idle timeout. Recording happens once, at
/// the end of the stream or when the client goes away (drop).
pub struct Tapped {
    inner: Incoming,
    scanner: Option<Scanner>,
    /// Fires at the latest `last_frame + idle_timeout`; moved on when it fires rather
    /// than on every frame, since re-arming a timer takes the timer wheel's lock. Made
    /// the first time the upstream keeps the body waiting: most bodies never do.
    idle: Option<Pin<Box<Sleep>>>,
    last_frame: tokio::time::Instant,
    idle_timeout: Duration,
    accounting: Option<Accounting>,
}

impl Tapped {
    /// Wraps `inner`; `scan` says whether to read token counts from it.
    pub fn new(
        inner: Incoming,
        scan: bool,
        idle_timeout: Duration,
        accounting: Accounting,
    ) -> Tapped {
        accounting.state.metrics.streams.inc();
        Tapped {
            inner,
            scanner: scan.then(Scanner::default),
            idle: None,
            last_frame: tokio::time::Instant::now(),
            idle_timeout,
            accounting: Some(accounting),
        }
    }

    /// The body was read to the end: its connection can carry another request.
    fn release(&mut self) {
        if let Some(lease) = self.accounting.as_mut().and_then(|a| a.lease.take()) {
            lease.release();
        }
    }

    fn finish(&mut self) {
        if let Some(a) = self.accounting.take() {
            a.finish(self.scanner.take());
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Tapped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let ended = this.inner.is_end_stream();
                if let (Some(sc), Some(data)) = (this.scanner.as_mut(), frame.data_ref()) {
                    if ended {
                        sc.feed_last(data);
                    } else {
                        sc.feed(data);
                    }
                }
                this.last_frame = tokio::time::Instant::now();
                // hyper stops polling a body that says it has ended, so the connection
                // goes back to the pool here, not only on the final `None`.
                if ended {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.last_frame + this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                while idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_frame + this.idle_timeout;
                    if deadline > tokio::time::Instant::now() {
                        // A frame came since the timer was set: wait the rest.
                        idle.as_mut().reset(deadline);
                        continue;
                    }
                    this.finish();
                    tracing::warn!(
                        "upstream idle for {:?}, ending the response",
                        this.idle_timeout
                    );
                    return Poll::Ready(Some(Err("upstream idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream::parse("http://127.0.0.1:11434").expect("upstream")
    }

    #[test]
    fn credentials_and_hop_by_hop_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("aig_secret"));
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer aig_secret"),
        );
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert("host", HeaderValue::from_static("gate.example"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let mut out = h;
        upstream_headers(
            &mut out,
            "10.0.0.1".parse().expect("ip"),
            false,
            false,
            &up(),
        );
        assert!(out.get("x-api-key").is_none());
        assert!(out.get("authorization").is_none());
        assert!(out.get("x-custom").is_none());
        assert!(out.get("connection").is_none());
        assert!(out.get("x-forwarded-host").is_none());
        assert_eq!(out["x-forwarded-for"], "10.0.0.1");
        assert_eq!(out["host"], "127.0.0.1:11434");
        assert_eq!(out["content-type"], "application/json");
    }

    #[test]
    fn a_trusted_proxys_chain_is_extended_and_anyone_elses_replaced() {
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let xff = |value: Option<&'static [u8]>, trusted: bool| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(
                    "x-forwarded-for",
                    HeaderValue::from_bytes(v).expect("value"),
                );
            }
            upstream_headers(&mut h, peer, trusted, false, &up());
            h["x-forwarded-for"].to_str().expect("text").to_string()
        };
        assert_eq!(xff(Some(b"1.2.3.4"), true), "1.2.3.4, 10.0.0.1");
        assert_eq!(xff(Some(b"1.2.3.4"), false), "10.0.0.1");
        assert_eq!(xff(None, true), "10.0.0.1");
        // A chain that is not text cannot be extended: the peer alone is sent.
        assert_eq!(xff(Some(b"\xff"), true), "10.0.0.1");
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.9",
            "1.20.3.40",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_value(ip).expect("value"), ip.to_string().as_str());
        }
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped_in_place() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        strip_response_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.0.0.9"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let stranger: IpAddr = "5.5.5.5".parse().expect("ip");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
    }
}
