//! Forwarding an admitted request: its body read only when it must be looked at (the
//! model allow-list, an undeclared length), the upstream request built with clean
//! headers and the path and query byte-exact, and the response streamed back through
//! [`Tapped`] — or, for a caller with an allow-list, the model list filtered.

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri};

use super::authn::Principal;
use super::error::GateError;
use super::limits::Admitted;
use super::respond::{self, Body};
use super::route::Route;
use super::stream::{Accounting, Tapped};
use super::upstream::{Lease, Upstream, UpstreamError};
use super::{State, authz, body, cap, headers};
use crate::store::usage::DAY;

/// The largest `/api/tags` or `/v1/models` answer filtered for a caller.
const MAX_LIST_BODY: usize = 16 << 20;

/// Forwards `req` for an admitted caller and returns the response to stream back.
pub async fn forward(
    state: &Arc<State>,
    peer: IpAddr,
    https: bool,
    req: Request<Incoming>,
    route: Route,
    admitted: Admitted<Principal>,
) -> Result<Response<Body>, GateError> {
    let principal = admitted.caller();
    let max = state.config.max_body;
    let declared = body::declared_len(req.headers());
    if declared.is_some_and(|n| n > max) {
        return Err(GateError::BodyTooLarge(max));
    }
    let (mut parts, incoming) = req.into_parts();
    let filter = principal.models.as_ref();
    if filter.is_some() {
        // Ollama also reads a `model` from the query (`FormValue`).
        let models = query_models(parts.uri.query())
            .ok_or_else(|| GateError::BadRequest("Malformed query string".into()))?;
        authz::check_models(state, principal, &models)?;
    }
    let quota = principal.limits.tokens_per_day;
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD) || declared.is_some();
    // The body is read whole only when it must be looked at (the model allow-list, a
    // daily token quota to cap generation to) or its size is not declared; otherwise it
    // streams through as it arrives.
    let must_read = has_body && (filter.is_some() || quota.is_some() || declared.is_none());
    let mut request_bytes = declared.unwrap_or(0);
    let (up_body, model) = if must_read {
        let bytes = body::read(incoming, max, state.config.body_timeout).await?;
        request_bytes = bytes.len() as u64;
        let fields = body::fields_of(&bytes);
        // With an allow-list, a body must be one the gate can read the model of: a
        // multipart or form body (whose `model` field Ollama reads too) is refused. So
        // must a generation body under a token quota, whose cap the gate writes: Go's
        // decoder reads a first object and ignores what follows, serde does not.
        let start = bytes.trim_ascii_start();
        let opaque = !start.is_empty() && !start.starts_with(b"{");
        let api = cap::Api::of_path(parts.uri.path());
        let strict = filter.is_some() || (quota.is_some() && api.is_some());
        if strict && (fields.is_err() || opaque) {
            return Err(GateError::NotJson);
        }
        let body::Fields { mut models, set } = fields.unwrap_or_default();
        authz::check_models(state, principal, &models)?;
        let mut bytes = bytes;
        if let (Some(limit), Some(api)) = (quota, api) {
            let used = principal
                .state
                .tokens_on(crate::store::now().div_euclid(DAY));
            let remaining = limit.saturating_sub(used).max(1);
            if let Some(capped) = cap::generation(&bytes, api, set, remaining) {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(capped.len()));
                bytes = capped;
            }
        }
        (respond::full(bytes), models.pop())
    } else {
        (
            body::Guarded::boxed(incoming, state.config.body_timeout),
            None,
        )
    };
    let peer_trusted = state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let (index, upstream) = state.upstream();
    let up_req = upstream_request(upstream, parts, up_body, peer, peer_trusted, https);
    let (resp, lease) = state
        .pool
        .send(&state.metrics, index, upstream, up_req)
        .await?;
    let (mut head, upstream_body) = resp.into_parts();
    headers::strip_response_headers(&mut head.headers);
    let accounting = Accounting {
        state: state.clone(),
        admitted,
        model,
        request_bytes,
    };
    let filter_list = route == Route::Models && head.status.is_success();
    if filter_list && accounting.admitted.caller().models.is_some() {
        return filtered_models(head, upstream_body, lease, accounting, upstream).await;
    }
    let scan = head.status.is_success() && route == Route::Proxy;
    let body = Tapped::new(upstream_body, scan, lease, accounting);
    Ok(Response::from_parts(head, body.boxed()))
}

/// The `model` values of a query string (any case of the key, as Go's `FormValue`
/// reads the exact key and clients may vary; every spelling is checked).
/// `None` for a query that cannot be read, which is refused rather than guessed at.
fn query_models(query: Option<&str>) -> Option<Vec<String>> {
    let Some(q) = query else {
        return Some(Vec::new());
    };
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok()?;
    Some(
        pairs
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("model"))
            .map(|(_, v)| v)
            .collect(),
    )
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
    headers::upstream_headers(&mut headers, peer, peer_trusted, https, up);
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

/// `/api/tags` or `/v1/models`, with only the models the caller may use.
async fn filtered_models(
    mut head: hyper::http::response::Parts,
    body: Incoming,
    lease: Lease,
    accounting: Accounting,
    upstream: &Upstream,
) -> Result<Response<Body>, GateError> {
    let principal = accounting.admitted.caller().clone();
    let bad_list = || GateError::Upstream(UpstreamError::BadList(upstream.authority.clone()));
    // Only called for a caller with an allow-list; fails closed if ever not.
    let Some(filter) = principal.models.as_ref() else {
        return Err(bad_list());
    };
    let tapped = Tapped::new(body, false, lease, accounting);
    let bytes = Limited::new(tapped, MAX_LIST_BODY)
        .collect()
        .await
        .map_err(|_| bad_list())?
        .to_bytes();
    let mut doc = serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|_| bad_list())?;
    filter.retain_allowed(&mut doc);
    let out = serde_json::to_vec(&doc).unwrap_or_default();
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(head, respond::full(out)))
}
