//! One request, start to end: sanity checks, CORS, routing, authentication, the
//! caller's limits and model allow-list, then forwarding.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::forward::{self, Accounting, Tapped};
use super::limits;
use super::metrics::{KindLabel, ReasonLabel};
use super::respond::{self, Body};
use super::{State, admin, login};
use crate::auth::jwt;
use crate::auth::key;
use crate::auth::verifier::{AuthError, Principal};
use crate::store::audit;

/// Most headers accepted (hyper's own limit is set higher so this one answers in JSON).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The largest `/api/tags` or `/v1/models` answer filtered for a caller.
const MAX_LIST_BODY: usize = 16 << 20;

/// What a path is, for routing and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Login,
    Admin,
    /// Ollama's model management: admin tier only.
    Management,
    /// `GET /api/tags`, `GET /v1/models`: filtered to the caller's models.
    Models,
    /// Everything else, forwarded after authentication.
    Proxy,
}

impl Route {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Login => "login",
            Route::Admin => "admin",
            Route::Management => "management",
            Route::Models => "models",
            Route::Proxy => "proxy",
        }
    }
}

/// Classifies a path. `None`: a path no client of Ollama sends (dot segments, empty
/// segments, encoded dots, slashes or backslashes, malformed escapes), refused so that
/// no spelling can slip a management or admin route past the checks. The route is that
/// of the percent-decoded path, because that is what Ollama's router matches:
/// `/api/pul%6c` is `/api/pull`.
pub fn classify(method: &Method, path: &str) -> Option<Route> {
    if !plain_path(path.as_bytes()) {
        return None;
    }
    let decoded = percent_decoded(path)?;
    let route = match decoded.as_ref() {
        "/healthz" => Route::Health,
        "/auth/login" => Route::Login,
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" => {
            Route::Management
        }
        // The Ollama server's own account (ollama.com sign-in and its keys): only an
        // admin may act as the server.
        "/api/signin" | "/api/signout" | "/api/me" => Route::Management,
        p if p.starts_with("/api/user/") => Route::Management,
        "/api/tags" | "/v1/models" if method == Method::GET => Route::Models,
        p if p == "/admin" || p.starts_with("/admin/") => Route::Admin,
        p if p.starts_with("/api/blobs/") || p == "/api/blobs" => Route::Management,
        _ => Route::Proxy,
    };
    Some(route)
}

/// Whether `path` starts with `/` and has no empty, `.` or `..` segment, no backslash
/// and no escaped dot, slash or backslash (`%2e`, `%2f`, `%5c`). One pass: it runs on
/// every request.
fn plain_path(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let dots = |seg: &[u8]| seg == b"." || seg == b"..";
    let mut seg_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                let seg = &path[seg_start..i];
                if seg.is_empty() || dots(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            b'\\' => return false,
            b'%' => {
                if let Some(hex) = path.get(i + 1..i + 3)
                    && (hex.eq_ignore_ascii_case(b"2e")
                        || hex.eq_ignore_ascii_case(b"2f")
                        || hex.eq_ignore_ascii_case(b"5c"))
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    !dots(&path[seg_start..])
}

/// `path` with its `%XX` escapes decoded (bytes that are not UTF-8 replaced, as no route
/// has any), or `None` for a malformed escape, which Ollama refuses too.
fn percent_decoded(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(std::borrow::Cow::Owned(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Serves one request; never fails (every error is a JSON response).
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    https: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let origin = allowed_origin(&state, req.headers());
    let route = classify(req.method(), req.uri().path());
    let mut resp = match route {
        None => respond::error(StatusCode::BAD_REQUEST, "Bad path"),
        Some(route) => {
            if let Some(r) = preflight(&req, origin.as_ref()) {
                r
            } else {
                dispatch(&state, peer, https, req, route).await
            }
        }
    };
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    state.counters.request(
        &state.metrics,
        route.map_or("bad", Route::label),
        resp.status().as_u16(),
    );
    Ok(resp)
}

fn allowed_origin(state: &State, headers: &HeaderMap) -> Option<HeaderValue> {
    if state.config.cors_origins.is_empty() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let s = origin.to_str().ok()?;
    state
        .config
        .cors_origins
        .iter()
        .any(|o| o == s)
        .then(|| origin.clone())
}

/// A CORS preflight from an allowed origin, answered without credentials.
fn preflight(req: &Request<Incoming>, origin: Option<&HeaderValue>) -> Option<Response<Body>> {
    if req.method() != Method::OPTIONS
        || origin.is_none()
        || !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut r = Response::new(respond::full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Some(r)
}

fn header_size_ok(headers: &HeaderMap) -> bool {
    if headers.len() > MAX_HEADERS {
        return false;
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    bytes <= MAX_HEADER_BYTES
}

async fn dispatch(
    state: &Arc<State>,
    peer: SocketAddr,
    https: bool,
    req: Request<Incoming>,
    route: Route,
) -> Response<Body> {
    if !header_size_ok(req.headers()) {
        return respond::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request headers too large",
        );
    }
    let ip = forward::client_ip(peer.ip(), req.headers(), &state.config.trusted_proxies);
    match route {
        Route::Health => {
            return respond::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }));
        }
        Route::Login => return login::handle(state, ip, req).await,
        _ => {}
    }
    let principal = match authenticate(state, req.headers()).await {
        Ok(p) => p,
        Err(e) => {
            auth_failed(state, ip, e, req.headers(), req.method(), req.uri().path());
            return respond::auth_error(e);
        }
    };
    match route {
        Route::Admin => {
            if !principal.admin {
                return forbidden_admin(&principal);
            }
            return admin::handle(state, &principal, ip, req).await;
        }
        Route::Management if !principal.admin => return forbidden_admin(&principal),
        _ => {}
    }
    let admitted = match limits::admit(principal) {
        Ok(a) => a,
        Err(rejection) => {
            state
                .metrics
                .rejections
                .get_or_create(&KindLabel {
                    kind: rejection.kind(),
                })
                .inc();
            return respond::too_many(&rejection.detail(), rejection.retry_after());
        }
    };
    forward_request(state, peer.ip(), https, req, route, admitted).await
}

fn forbidden_admin(p: &Principal) -> Response<Body> {
    respond::error(
        StatusCode::FORBIDDEN,
        &format!("Tier {:?} may not use this route: admin tier only", p.tier),
    )
}

/// The credential of a request: `X-API-Key`, else `Authorization: Bearer …`.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.to_str().unwrap_or("").trim());
    }
    // Split on bytes: a Bearer credential with non-ASCII bytes was still given (a
    // malformed one), not absent.
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = auth.iter().position(|b| *b == b' ')?;
    if !auth[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(std::str::from_utf8(&auth[space + 1..]).map_or("", str::trim))
}

/// Resolves the caller, from the cache when it can, else from the database off the
/// async runtime.
pub async fn authenticate(
    state: &Arc<State>,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, AuthError> {
    let cred = match credential(headers) {
        None => return Err(AuthError::Missing),
        Some("") => return Err(AuthError::MalformedKey),
        Some(c) => c,
    };
    if key::looks_like_key(cred) {
        if let Some(p) = state.verifier.check_key(cred)? {
            return Ok(p);
        }
        let verifier = state.verifier.clone();
        let cred = cred.to_string();
        return tokio::task::spawn_blocking(move || verifier.load_key(&cred))
            .await
            .map_err(|_| AuthError::Unavailable)?;
    }
    if jwt::looks_like_jwt(cred) {
        if cred.len() > 8192 {
            return Err(AuthError::InvalidToken);
        }
        let (cached, sub, ver) = state.verifier.check_token(cred)?;
        if let Some(p) = cached {
            return Ok(p);
        }
        let verifier = state.verifier.clone();
        return tokio::task::spawn_blocking(move || verifier.load_user(&sub, ver))
            .await
            .map_err(|_| AuthError::Unavailable)?;
    }
    Err(AuthError::MalformedKey)
}

/// Records a failed authentication with the display prefix of a key-shaped credential.
fn auth_failed(
    state: &State,
    ip: IpAddr,
    e: AuthError,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) {
    let prefix = credential(headers)
        .filter(|c| key::looks_like_key(c))
        .map(key::display_prefix);
    record_auth_failure(state, ip, e.reason(), prefix, None, method, path);
}

/// The one record of a failed authentication or login: a stable log line (for
/// fail2ban: `auth_failure ip=<HOST> …`), the metric, and an audit entry queued.
pub fn record_auth_failure(
    state: &State,
    ip: IpAddr,
    reason: &'static str,
    key_prefix: Option<String>,
    user: Option<String>,
    method: &Method,
    path: &str,
) {
    tracing::warn!(
        "auth_failure ip={ip} reason={reason} key={} method={method} path={path}",
        key_prefix.as_deref().unwrap_or("-"),
    );
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let queued = state.recorder.audit(audit::Entry {
        at: crate::store::now(),
        kind: "auth_failure".into(),
        ip: Some(ip.to_string()),
        reason: Some(reason.into()),
        key_prefix,
        user,
        detail: Some(format!("{method} {path}")),
    });
    if !queued {
        state.metrics.audit_dropped.inc();
    }
}

/// Reads the whole request body, at most `limit` bytes. A body that comes in one
/// frame, as most do, is kept as it came, without a copy.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        respond::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body over the limit of {limit} bytes"),
        )
    };
    let unreadable = || respond::error(StatusCode::BAD_REQUEST, "Could not read the request body");
    let mut first: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else {
            continue; // trailers
        };
        let len = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
        if len > limit {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Every model a JSON body names at its top level, read as Ollama will read it: Go's
/// decoder matches keys regardless of case and, of duplicates, keeps the last non-null
/// one, so each is returned (the last is the one used). `Err` when serde cannot read the
/// body as one JSON document (trailing data, bad escapes, deep nesting), which Go may
/// still accept; with an allow-list such a body is refused rather than guessed at.
fn models_of(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// A key, told apart without copying it: is it one that names the model?
    struct ModelKey;
    impl<'de> DeserializeSeed<'de> for ModelKey {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for ModelKey {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, k: &str) -> Result<bool, E> {
            // `name` is the older spelling Ollama still accepts (`/api/show`).
            Ok(k.eq_ignore_ascii_case("model") || k.eq_ignore_ascii_case("name"))
        }
    }

    /// A model key's value: the name if it is a string; anything else is skipped.
    struct ModelName;
    impl<'de> Visitor<'de> for ModelName {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    impl<'de> DeserializeSeed<'de> for ModelName {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    struct Models;
    impl<'de> Visitor<'de> for Models {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut found = Vec::new();
            while let Some(is_model) = map.next_key_seed(ModelKey)? {
                if is_model {
                    found.extend(map.next_value_seed(ModelName)?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    // Anything but an object names no model (and Ollama refuses it).
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(Vec::new());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de.deserialize_map(Models)?;
    de.end()?;
    Ok(found)
}

async fn forward_request(
    state: &Arc<State>,
    peer: IpAddr,
    https: bool,
    req: Request<Incoming>,
    route: Route,
    admitted: limits::Admitted,
) -> Response<Body> {
    let principal = &admitted.principal;
    let max = state.config.max_body;
    let declared: Option<u64> = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > max) {
        return respond::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body over the limit of {max} bytes"),
        );
    }
    let (parts, incoming) = req.into_parts();
    let filter = principal.limits.models.as_ref();
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD) || declared.is_some();
    // The body is read whole only when it must be looked at (the model allow-list) or
    // its size is not declared; otherwise it streams through as it arrives.
    let must_read = has_body && (filter.is_some() || declared.is_none());
    let (body, model) = if must_read {
        let bytes = match read_body(incoming, max as usize).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let models = models_of(&bytes);
        if filter.is_some() && models.is_err() {
            return respond::error(StatusCode::BAD_REQUEST, "Request body is not valid JSON");
        }
        let mut models = models.unwrap_or_default();
        if let Some(f) = filter
            && let Some(m) = models.iter().find(|m| !f.allows(m))
        {
            state
                .metrics
                .rejections
                .get_or_create(&KindLabel { kind: "model" })
                .inc();
            return respond::error(
                StatusCode::FORBIDDEN,
                &format!("Model {m:?} is not allowed for tier {:?}", principal.tier),
            );
        }
        (respond::full(bytes), models.pop())
    } else {
        (incoming.map_err(Into::into).boxed(), None)
    };
    let peer_trusted = state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let (index, upstream) = state.upstream();
    let up_req = forward::upstream_request(upstream, parts, body, peer, peer_trusted, https);
    let (resp, lease) = match forward::send(state, index, upstream, up_req).await {
        Ok(sent) => sent,
        Err(r) => return r,
    };
    let (mut head, upstream_body) = resp.into_parts();
    forward::strip_response_headers(&mut head.headers);
    let filtered = route == Route::Models && head.status.is_success() && filter.is_some();
    let accounting = Accounting {
        state: state.clone(),
        admitted,
        model,
        lease: Some(lease),
    };
    if filtered {
        return filtered_models(head, upstream_body, accounting, state).await;
    }
    let scan = head.status.is_success() && route == Route::Proxy;
    let body = Tapped::new(upstream_body, scan, state.config.idle_timeout, accounting);
    Response::from_parts(head, body.boxed())
}

/// `/api/tags` or `/v1/models`, with only the models the caller may use.
async fn filtered_models(
    mut head: hyper::http::response::Parts,
    body: Incoming,
    accounting: Accounting,
    state: &Arc<State>,
) -> Response<Body> {
    let principal = accounting.admitted.principal.clone();
    let Some(filter) = principal.limits.models.as_ref() else {
        return respond::error(StatusCode::BAD_GATEWAY, "Upstream unavailable");
    };
    let tapped = Tapped::new(body, false, state.config.idle_timeout, accounting);
    let bytes = match Limited::new(tapped, MAX_LIST_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return respond::error(StatusCode::BAD_GATEWAY, "Upstream unavailable"),
    };
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return respond::error(StatusCode::BAD_GATEWAY, "Upstream unavailable");
    };
    // Ollama: {"models":[{"name":…}]}; OpenAI: {"data":[{"id":…}]}.
    for (list, field) in [("models", "name"), ("data", "id")] {
        if let Some(items) = doc.get_mut(list).and_then(|v| v.as_array_mut()) {
            items.retain(|m| {
                m.get(field)
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| filter.allows(n))
            });
        }
    }
    let out = serde_json::to_vec(&doc).unwrap_or_default();
    head.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(head, respond::full(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_hide_a_route_are_refused() {
        for p in [
            "//admin/keys",
            "/api/../admin/keys",
            "/api/%2e%2e/pull",
            "/api/./pull",
            "/x%2Fy",
            "/a\\b",
            "api",
        ] {
            assert_eq!(classify(&Method::GET, p), None, "{p}");
        }
        assert_eq!(
            classify(&Method::POST, "/api/pull"),
            Some(Route::Management)
        );
        assert_eq!(
            classify(&Method::POST, "/api/blobs/sha256:abc"),
            Some(Route::Management)
        );
        assert_eq!(classify(&Method::GET, "/api/tags"), Some(Route::Models));
        assert_eq!(
            classify(&Method::POST, "/api/signout"),
            Some(Route::Management)
        );
        assert_eq!(
            classify(&Method::DELETE, "/api/user/keys/x"),
            Some(Route::Management)
        );
        assert_eq!(classify(&Method::POST, "/api/chat"), Some(Route::Proxy));
        assert_eq!(classify(&Method::GET, "/admin/keys"), Some(Route::Admin));
    }

    /// The one-pass check agrees with the plain statement of the rule on every path
    /// of up to five characters drawn from the ones that matter.
    #[test]
    fn plain_path_matches_the_rule() {
        fn rule(p: &str) -> bool {
            let escaped = p.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && [&b"2e"[..], b"2f", b"5c"]
                        .iter()
                        .any(|e| w[1..].eq_ignore_ascii_case(e))
            });
            p.starts_with('/')
                && !p.contains("//")
                && !p.contains('\\')
                && !p.split('/').any(|seg| seg == "." || seg == "..")
                && !escaped
        }
        let alphabet = ['/', '.', '%', '2', 'e', 'F', '5', 'c', '\\', 'a'];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for p in &longer {
                assert_eq!(plain_path(p.as_bytes()), rule(p), "{p:?}");
            }
            paths = longer;
        }
    }

    /// Found by `fuzz/` (credential_header): Ollama routes on the percent-decoded path,
    /// so an escaped letter must not turn a filtered or admin-only route into a plain
    /// proxy one.
    #[test]
    fn escaped_spellings_get_the_route_ollama_sees() {
        for (method, p, want) in [
            (Method::GET, "/v%31/models", Some(Route::Models)),
            (Method::GET, "/api/tag%73", Some(Route::Models)),
            (Method::POST, "/api/pul%6c", Some(Route::Management)),
            (Method::POST, "/%61pi/%70ush", Some(Route::Management)),
            (Method::POST, "/api/blob%73/x", Some(Route::Management)),
            (Method::GET, "/a%64min/keys", Some(Route::Admin)),
            // Decoded once, as Ollama does: `%256c` is the literal `%6c`.
            (Method::POST, "/api/pul%256c", Some(Route::Proxy)),
            (Method::POST, "/api/chat%", None),
            (Method::POST, "/api/chat%4", None),
            (Method::POST, "/api/chat%zz", None),
            (Method::POST, "/api/chat%C3%A9", Some(Route::Proxy)),
        ] {
            assert_eq!(classify(&method, p), want, "{method} {p}");
        }
    }

    #[test]
    fn credential_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("authorization", HeaderValue::from_static("bearer abc"));
        assert_eq!(credential(&h), Some("abc"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        assert_eq!(credential(&h), Some("k"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", HeaderValue::from_static("Basic Zm9v"));
        assert_eq!(credential(&basic), None);
    }

    #[test]
    fn models_are_read_as_go_reads_them() {
        let m = |b: &str| models_of(b.as_bytes()).ok();
        assert_eq!(m(r#"{"messages":[]}"#), Some(vec![]));
        assert_eq!(m(""), Some(vec![]));
        assert_eq!(
            m(r#"{"model":"a","Model":"b","model":null,"MODEL":5}"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(m(r#"{"mod\u0065l":"a"}"#), Some(vec!["a".into()]));
        assert_eq!(m(r#"{"model":"a"} {"model":"b"}"#), None);
        // Go turns a lone surrogate into U+FFFD; the model is read all the same.
        assert_eq!(m(r#"{"model":"a","x":"\ud800"}"#), Some(vec!["a".into()]));
        assert_eq!(
            m(&format!(r#"{{"model":"a","x":{}}}"#, "[".repeat(200))),
            None
        );
    }
}
