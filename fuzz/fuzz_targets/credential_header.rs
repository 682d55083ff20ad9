//! Header and path handling of the gate (`aigate::gate::route`, `aigate::gate::authn`, `aigate::gate::headers`).
//!
//! Fuzzer-chosen header names and raw value bytes go into a `HeaderMap` (what hyper
//! would accept); a path is either raw bytes or a known route mangled by fuzzer-chosen
//! edits (percent-encoding, extra slashes, dot segments, case, stray bytes).
//!
//! - `credential` never panics; it returns the trimmed `X-API-Key` (empty if not
//!   text), else the trimmed rest of a `Bearer` `Authorization` (empty if not UTF-8),
//!   else nothing.
//! - `classify` never panics; it refuses every path with an empty, `.` or `..` segment;
//!   and for every path it lets through, the route it names is the route Ollama's router
//!   (gin, which matches the percent-decoded path) would take: a spelling of
//!   `/api/pull` must never pass as a plain proxy route.
//! - `client_ip` is the peer unless the peer is trusted, and then an address named in
//!   `X-Forwarded-For`; `upstream_headers` drops credentials, hop-by-hop headers, those
//!   named in `Connection` and forwarding headers, and sets exactly one `Host`,
//!   `X-Forwarded-For` (ending with the peer) and `X-Forwarded-Proto`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use aigate::gate::Upstream;
use aigate::gate::headers::{client_ip, upstream_headers};
use aigate::gate::authn::credential;
use aigate::gate::route::{Route, classify};
use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes as a little program.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

const NAMES: &[&str] = &[
    "x-api-key",
    "authorization",
    "x-forwarded-for",
    "connection",
    "host",
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "content-type",
    "x-custom",
];

const VALUES: &[&str] = &[
    "Bearer ",
    "bearer ",
    "BEARER\t",
    "Basic ",
    "aig_",
    " ",
    "\t",
    ",",
    "10.0.0.1",
    "203.0.113.9",
    "::1",
    "x-api-key",
    "authorization, x-custom",
    "eyJ.eyJ.sig",
];

const ROUTES: &[&str] = &[
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/sha256:abc",
    "/api/blobs",
    "/api/tags",
    "/v1/models",
    "/admin",
    "/admin/keys",
    "/healthz",
    "/auth/login",
    "/api/chat",
    "/v1/chat/completions",
];

fn headers(r: &mut Reader) -> HeaderMap {
    let mut h = HeaderMap::new();
    let count = r.byte().unwrap_or(0) % 12;
    for _ in 0..count {
        let sel = r.byte().unwrap_or(0) as usize;
        let name = match NAMES.get(sel % 32) {
            Some(n) => HeaderName::from_static(n),
            None => {
                let len = (r.byte().unwrap_or(0) % 24) as usize;
                match HeaderName::from_bytes(r.bytes(len)) {
                    Ok(n) => n,
                    Err(_) => continue,
                }
            }
        };
        let mut value = Vec::new();
        for _ in 0..(r.byte().unwrap_or(0) % 4) {
            let sel = r.byte().unwrap_or(0) as usize;
            match VALUES.get(sel % 32) {
                Some(v) => value.extend_from_slice(v.as_bytes()),
                None => {
                    let len = (r.byte().unwrap_or(0) % 96) as usize;
                    value.extend_from_slice(r.bytes(len));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            h.append(name, v);
        }
    }
    h
}

fn path(r: &mut Reader) -> String {
    let mode = r.byte().unwrap_or(0);
    if mode < 32 {
        let len = r.byte().unwrap_or(0) as usize;
        return String::from_utf8_lossy(r.bytes(len)).into_owned();
    }
    let mut p: Vec<u8> = ROUTES[mode as usize % ROUTES.len()].as_bytes().to_vec();
    for _ in 0..(r.byte().unwrap_or(0) % 8) {
        let (Some(op), Some(at)) = (r.byte(), r.byte()) else {
            break;
        };
        let at = at as usize % (p.len() + 1);
        match op % 9 {
            0 | 1 if at < p.len() => {
                let hex = if op % 2 == 0 {
                    format!("%{:02X}", p[at])
                } else {
                    format!("%{:02x}", p[at])
                };
                p.splice(at..at + 1, hex.bytes());
            }
            2 => p.insert(at, b'/'),
            3 => {
                p.splice(at..at, *b"/.");
            }
            4 => {
                p.splice(at..at, *b"/..");
            }
            5 => p.insert(at, r.byte().unwrap_or(b'%')),
            6 => p.push(b'/'),
            7 if at < p.len() => p[at] = p[at].to_ascii_uppercase(),
            8 if at < p.len() => {
                p.remove(at);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&p).into_owned()
}

/// Go's `url.PathUnescape`, which gives the `URL.Path` Ollama's router matches; `None`
/// where Go refuses the request.
fn go_unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The route of a path as the upstream sees it, by the gate's own table.
fn reference_route(method: &Method, p: &[u8]) -> Route {
    match p {
        b"/healthz" => Route::Health,
        b"/auth/login" => Route::Login,
        b"/api/pull" | b"/api/push" | b"/api/create" | b"/api/copy" | b"/api/delete" => {
            Route::Management
        }
        // The Ollama server's own account.
        b"/api/signin" | b"/api/signout" | b"/api/me" => Route::Management,
        p if p.starts_with(b"/api/user/") => Route::Management,
        p if p == b"/api/experimental" || p.starts_with(b"/api/experimental/") => {
            Route::Management
        }
        b"/api/tags" | b"/v1/models" => Route::Models,
        b"/api/ps" if method == Method::GET => Route::Models,
        p if p.starts_with(b"/v1/models/") && method == Method::GET => Route::Model,
        b"/" | b"/api/version" | b"/api/show" => Route::Info,
        p if p == b"/admin" || p.starts_with(b"/admin/") => Route::Admin,
        p if p == b"/api/blobs" || p.starts_with(b"/api/blobs/") => Route::Management,
        _ => Route::Proxy,
    }
}

fn check_classify(method: &Method, p: &str) {
    let Some(route) = classify(method, p) else {
        return;
    };
    assert!(p.starts_with('/'), "{p:?} -> {route:?}");
    assert!(!p.contains("//"), "{p:?} -> {route:?}");
    assert!(
        !p.split('/').any(|s| s == "." || s == ".."),
        "{p:?} -> {route:?}"
    );
    // What the upstream would route: if the gate forwards it as a plain proxy (or
    // models) route, the upstream must not see a management route, and so on.
    if let Some(decoded) = go_unescape(p) {
        let upstream = reference_route(method, &decoded);
        assert_eq!(
            route,
            upstream,
            "{method} {p:?}: gate {route:?}, upstream sees {:?}",
            String::from_utf8_lossy(&decoded)
        );
    }
}

fn check_credential(h: &HeaderMap) {
    let got = credential(h);
    let want: Option<String> = if let Some(v) = h.get("x-api-key") {
        Some(v.to_str().unwrap_or("").trim().to_string())
    } else {
        // A Bearer credential that is not text was given (malformed), not absent.
        h.get("authorization").and_then(|v| {
            let b = v.as_bytes();
            let space = b.iter().position(|c| *c == b' ')?;
            b[..space].eq_ignore_ascii_case(b"bearer").then(|| {
                std::str::from_utf8(&b[space + 1..])
                    .map_or("", str::trim)
                    .to_string()
            })
        })
    };
    assert_eq!(got.map(str::to_string), want, "{h:?}");
    if let Some(c) = got {
        assert_eq!(c, c.trim());
        let _ = aigate::auth::key::parse(c);
        let _ = aigate::auth::jwt::looks_like_jwt(c);
        let shown = aigate::auth::key::display_prefix(c);
        assert!(shown.len() <= 12);
    }
}

fn trusted() -> &'static [ipnet::IpNet] {
    static T: OnceLock<Vec<ipnet::IpNet>> = OnceLock::new();
    T.get_or_init(|| {
        ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    })
}

fn upstream() -> &'static Upstream {
    static U: OnceLock<Upstream> = OnceLock::new();
    U.get_or_init(|| Upstream::parse("http://127.0.0.1:11434").expect("upstream"))
}

fn check_forwarding(h: &HeaderMap, peer: IpAddr, https: bool) {
    let trusted = trusted();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let ip = client_ip(peer, h, trusted);
    if !is_trusted(&peer) {
        assert_eq!(ip, peer);
    } else if ip != peer {
        assert!(!is_trusted(&ip));
        let named = h
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|s| s.trim().parse::<IpAddr>().ok() == Some(ip));
        assert!(named, "{ip} not in X-Forwarded-For");
    }

    let up = upstream();
    let peer_trusted = is_trusted(&peer);
    let mut out = h.clone();
    upstream_headers(&mut out, peer, peer_trusted, https, up);
    for gone in [
        "x-api-key",
        "authorization",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "forwarded",
        "x-forwarded-host",
    ] {
        assert!(!out.contains_key(gone), "{gone} forwarded");
    }
    for named in h
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
    {
        if named != "x-forwarded-for" && named != "x-forwarded-proto" && named != "host" {
            assert!(
                !out.contains_key(&named),
                "{named} named in Connection, forwarded"
            );
        }
    }
    assert_eq!(out.get_all("host").iter().count(), 1);
    assert_eq!(out.get("host"), Some(&up.host));
    assert_eq!(out.get_all("x-forwarded-proto").iter().count(), 1);
    let xff: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
    assert!(xff.len() <= 1);
    if let Some(v) = xff.first() {
        let v = v.to_str().expect("x-forwarded-for is text");
        assert!(
            v.ends_with(&peer.to_string()),
            "{v:?} does not end with {peer}"
        );
        if !peer_trusted {
            assert_eq!(v, peer.to_string());
        }
    } else {
        // Only a trusted proxy's chain can make it unrepresentable.
        assert!(peer_trusted);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let method = match r.byte().unwrap_or(0) % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::DELETE,
        _ => Method::HEAD,
    };
    let peer = match r.byte().unwrap_or(0) % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        1 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        2 => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
    };
    let https = r.byte().unwrap_or(0) % 2 == 1;
    let p = path(&mut r);
    check_classify(&method, &p);
    let h = headers(&mut r);
    check_credential(&h);
    check_forwarding(&h, peer, https);
});
