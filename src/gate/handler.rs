//! The order of the steps of one request: route → CORS → authentication → admin check
//! → limits → forward, or one of the gate's own routes. Each step lives in its own
//! module; every refusal is a [`GateError`], turned into a response in one place.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};

use super::error::{Dialect, GateError};
use super::respond::{self, Body};
use super::route::{self, Route};
use super::{State, admin, authn, authz, cors, failure, forward, headers, limits, login};
use crate::auth::key;

/// Most headers accepted (hyper's own limit is set higher so this one answers in JSON).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Serves one request; never fails (every error is a JSON response).
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    https: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let origin = cors::allowed_origin(&state.config.cors_origins, req.headers());
    let route = route::classify(req.method(), req.uri().path());
    let dialect = Dialect::of_path(req.uri().path());
    let result = match route {
        None => Err(GateError::BadPath),
        Some(route) => match cors::preflight(&req, origin.as_ref()) {
            Some(r) => Ok(r),
            None => dispatch(&state, peer, https, req, route).await,
        },
    };
    let mut resp = result.unwrap_or_else(|e| e.into_response(dialect));
    if let Some(o) = origin {
        cors::allow(&mut resp, o);
    }
    state.counters.request(
        &state.metrics,
        route.map_or("bad", Route::label),
        resp.status().as_u16(),
    );
    Ok(resp)
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
) -> Result<Response<Body>, GateError> {
    if !header_size_ok(req.headers()) {
        return Err(GateError::HeadersTooLarge);
    }
    let ip = headers::client_ip(peer.ip(), req.headers(), &state.config.trusted_proxies);
    match route {
        Route::Health => {
            return Ok(respond::json(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok" }),
            ));
        }
        Route::Login => return login::handle(state, ip, req).await,
        _ => {}
    }
    let principal = match authn::authenticate(&state.verifier, req.headers()).await {
        Ok(p) => p,
        Err(e) => {
            let prefix = authn::credential(req.headers())
                .filter(|c| key::looks_like_key(c))
                .map(key::display_prefix);
            let (method, path) = (req.method(), req.uri().path());
            failure::record(state, ip, e.reason(), prefix, None, method, path);
            return Err(e.into());
        }
    };
    match route {
        Route::Admin => {
            authz::require_admin(&principal)?;
            return admin::handle(state, &principal, ip, req).await;
        }
        Route::Management => authz::require_admin(&principal)?,
        Route::Proxy => authz::require_checkable(&principal, req.uri().path())?,
        Route::Model => {
            // `/v1/models/{id}`: the id is the model (percent-escapes as Ollama reads them).
            let id = req.uri().path().trim_start_matches("/v1/models/");
            let id = route::percent_decoded(id).unwrap_or_default();
            authz::check_models(state, &principal, &[id.into_owned()])?;
        }
        _ => {}
    }
    if matches!(route, Route::Models | Route::Model | Route::Info) {
        let admitted = limits::unmetered(principal);
        return forward::forward(state, peer.ip(), https, req, route, admitted).await;
    }
    // Generation waits in the queue, which keeps the concurrency limit.
    let admit = match route {
        Route::Proxy => limits::admit_queued,
        _ => limits::admit,
    };
    let admitted = admit(principal).map_err(|rejection| {
        state.metrics.rejected(rejection.kind());
        GateError::Limited(rejection)
    })?;
    forward::forward(state, peer.ip(), https, req, route, admitted).await
}
