//! Header hygiene in both directions: credentials, hop-by-hop headers (and those named
//! in `Connection`) and spoofed forwarding headers stripped in place; `X-Forwarded-For`,
//! `X-Forwarded-Proto` and the upstream's `Host` set; the client's address behind a
//! trusted proxy.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::upstream::Upstream;

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The host a management request is for (SPEC §6); the gate's, never sent upstream.
pub static X_AIGATE_HOST: HeaderName = HeaderName::from_static("x-aigate-host");
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
            || n == X_REAL_IP
            || n == X_AIGATE_HOST
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

/// Makes the upstream's response headers the ones sent back: hop-by-hop headers (and
/// those `Connection` names) are removed in place.
pub fn strip_response_headers(h: &mut HeaderMap) {
    strip_in_place(h, |_| false);
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
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
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
        assert!(out.get("x-real-ip").is_none());
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
