//! Forwarding an admitted request: its body read only when it must be looked at (the
//! model allow-list, the quota's cap, the host to choose, pinned options, an undeclared
//! length), the host chosen ([`choose`]), the upstream request built with clean headers
//! and the path and query byte-exact, sent again to the next host when one fails before
//! answering, and the response streamed back through [`Tapped`] — or, for a caller with
//! an allow-list, the model list filtered; over several hosts, the lists merged.

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Method, Request, Response, Uri};

use super::authn::Principal;
use super::error::GateError;
use super::fleet::choose::choose;
use super::fleet::{Host, NoHost, Snapshot, lists, model_key};
use super::limits::{Admitted, Rejection};
use super::queue::{Ask, Refusal};
use super::respond::{self, Body};
use super::route::Route;
use super::stream::{Accounting, Framing, Tapped};
use super::upstream::{Lease, Upstream, UpstreamError};
use super::{State, authz, body, headers, rewrite, route};
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
    let fleet = state.fleet.snapshot();
    // The path as Ollama's router reads it (`route::classify` refused any other).
    let path = route::percent_decoded(parts.uri.path()).unwrap_or_default();
    let path: &str = &path;
    // A management request goes to the host it names, and only there.
    let named = match route {
        Route::Management => Some(named_host(&fleet, &parts.headers)?),
        _ => None,
    };
    let serving = fleet.hosts.iter().filter(|h| h.serves(path)).count();
    let several = named.is_none() && serving > 1;
    let quota = principal.limits.tokens_per_day;
    let api = rewrite::Api::of_path(path);
    let pinned = api.is_some_and(rewrite::Api::takes_pins) && !fleet.pins.is_empty();
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD) || declared.is_some();
    // Generation may wait in the queue: for a host's slot (hosts with declared slots),
    // or for one of the caller's own requests to end.
    let may_wait = route == Route::Proxy
        && (principal.limits.concurrency.is_some()
            || fleet.hosts.iter().any(|h| h.stored && h.serves(path)));
    // The body is read whole only when it must be looked at (the model allow-list, a
    // daily token quota to cap generation to, the model to choose a host by or to
    // apply pins for) or its size is not declared; otherwise it streams through as it
    // arrives. A body read whole can be sent again to another host, and a client that
    // leaves while its request waits is noticed (its connection has nothing left to
    // read but the end).
    let looked_at = filter.is_some() || quota.is_some() || declared.is_none() || several || pinned;
    // A request whose body would be read only so that it can wait takes a free slot on
    // its one host at once if there is one, its body left to stream through.
    let mut ticket = None;
    if has_body && may_wait && !looked_at {
        let one: &[Arc<Host>] = match fleet.hosts.iter().position(|h| h.serves(path)) {
            Some(i) => std::slice::from_ref(&fleet.hosts[i]),
            None => &[],
        };
        if !one.is_empty() {
            match state
                .queue
                .enter(ask(principal, one, None, path, 0, false))
                .await
            {
                Ok(t) => ticket = Some(t),
                Err(Refusal::WouldWait) => {}
                Err(r) => return Err(refused(state, r)),
            }
        }
    }
    let must_read = has_body && (looked_at || (may_wait && ticket.is_none()));
    let mut request_bytes = declared.unwrap_or(0);
    let mut model = None;
    let mut streamed = None;
    let mut whole = None;
    if must_read {
        let bytes = body::read(incoming, max, state.config.body_timeout).await?;
        request_bytes = bytes.len() as u64;
        let fields = body::fields_of(&bytes);
        // With an allow-list, a body must be one the gate can read the model of: a
        // multipart or form body (whose `model` field Ollama reads too) is refused. So
        // must a generation body under a token quota, whose cap the gate writes: Go's
        // decoder reads a first object and ignores what follows, serde does not.
        let start = bytes.trim_ascii_start();
        let opaque = !start.is_empty() && !start.starts_with(b"{");
        let capped = quota.is_some() && api.is_some_and(rewrite::Api::generates);
        if (filter.is_some() || capped) && (fields.is_err() || opaque) {
            return Err(GateError::NotJson);
        }
        let body::Fields { mut models, set } = fields.unwrap_or_default();
        authz::check_models(state, principal, &models)?;
        model = models.pop();
        let mut bytes = bytes;
        if let Some(api) = api {
            let mut edits = rewrite::Edits::default();
            if let Some(limit) = quota.filter(|_| api.generates()) {
                let used = principal
                    .state
                    .tokens_on(crate::store::now().div_euclid(DAY));
                edits.max_tokens = Some(limit.saturating_sub(used).max(1));
            }
            if let Some(pin) = model.as_deref().and_then(|m| fleet.pins.get(&model_key(m))) {
                edits.num_ctx = pin.num_ctx;
                edits.keep_alive = pin.keep_alive;
            }
            if let Some(edited) = rewrite::rewrite(&bytes, api, set, edits) {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(edited.len()));
                bytes = edited;
            }
        }
        whole = Some(bytes);
    } else {
        streamed = Some(body::Guarded::boxed(incoming, state.config.body_timeout));
    }
    if route == Route::Model {
        // `/v1/models/{id}`: the id is the model.
        model = Some(path.trim_start_matches("/v1/models/").to_string());
    }
    if route == Route::Models && several {
        return merged_models(state, &fleet, path, admitted).await;
    }
    let management = named.is_some();
    let chosen: Vec<Arc<Host>>;
    let hosts: &[Arc<Host>] = match &named {
        Some(host) => std::slice::from_ref(host),
        // One host serves the route: it answers for itself (an unknown model too), as
        // long as it is up and not drained.
        None if !several => {
            let one = fleet.hosts.iter().find(|h| h.serves(path));
            match one {
                Some(h) if h.usable() && !h.draining() => std::slice::from_ref(h),
                Some(_) => return Err(no_host(NoHost::AllDown, None)),
                None => return Err(no_host(NoHost::NoRoute, None)),
            }
        }
        None => {
            let key = model.as_deref().map(model_key);
            chosen = choose(&fleet.hosts, path, key.as_deref(), state.fleet.turn())
                .map_err(|e| no_host(e, model.as_deref()))?;
            &chosen
        }
    };
    // Generation waits for a slot, and goes first to the host it was given.
    let reordered: Vec<Arc<Host>>;
    let hosts = if route == Route::Proxy {
        let t = match ticket.take() {
            Some(t) => t,
            None => {
                let key = model.as_deref().map(model_key);
                let bytes = whole.as_ref().map_or(0, |b| b.len() as u64);
                let ask = ask(principal, hosts, key.as_deref(), path, bytes, true);
                state
                    .queue
                    .enter(ask)
                    .await
                    .map_err(|r| refused(state, r))?
            }
        };
        let first = t.host().clone();
        ticket = Some(t);
        if Arc::ptr_eq(&first, &hosts[0]) {
            hosts
        } else {
            reordered = std::iter::once(first.clone())
                .chain(hosts.iter().filter(|h| !Arc::ptr_eq(h, &first)).cloned())
                .collect();
            &reordered
        }
    } else {
        hosts
    };
    let peer_trusted = state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let hyper::http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    headers::upstream_headers(&mut headers, peer, peer_trusted, https, &hosts[0].upstream);
    let target = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Failover: a request whose body can be sent again goes to the next host when this
    // one failed before any byte went back. Management requests are never retried.
    let mut tries = hosts.iter().enumerate().peekable();
    let (mut method, mut target) = (Some(method), Some(target));
    let (resp, lease, host) = loop {
        let Some((n, host)) = tries.next() else {
            return Err(GateError::HostsDown);
        };
        let again = whole.is_some() && !management && tries.peek().is_some();
        let body = match (&whole, streamed.take()) {
            (Some(bytes), _) => respond::full(bytes.clone()),
            (None, Some(body)) => body,
            (None, None) => return Err(GateError::HostsDown),
        };
        let mut req = Request::new(body);
        // The last try takes what the others copy.
        *req.method_mut() = copy_or_take(&mut method, again).unwrap_or_default();
        *req.uri_mut() = Uri::from(
            copy_or_take(&mut target, again).unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        *req.headers_mut() = if again {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        if n > 0 {
            req.headers_mut()
                .insert(header::HOST, host.upstream.host.clone());
        }
        // Generation holds a slot (taken in the queue); a model list or a pull does not.
        if n > 0
            && let Some(t) = ticket.as_mut()
        {
            t.move_to(host);
        }
        host.metrics.requests.inc();
        let idle = host.idle(state.worker);
        match state
            .pool
            .send(&state.metrics, &host.upstream, idle, req)
            .await
        {
            Ok((resp, lease)) => break (resp, lease, host.clone()),
            Err(e) => {
                // A client whose body stalls or breaks off must not make the host look
                // down to everyone else.
                if !e.is_client_body() && host.failed(e.refused()) {
                    tracing::warn!("host {} is down: {e}", host.name);
                }
                if again && e.may_fail_over() {
                    host.metrics.failovers.inc();
                    tracing::debug!("failing over from host {}: {e}", host.name);
                    continue;
                }
                return Err(e.into());
            }
        }
    };
    if host.succeeded() {
        tracing::info!("host {} is up again", host.name);
    }
    let (mut head, upstream_body) = resp.into_parts();
    headers::strip_response_headers(&mut head.headers);
    let accounting = Accounting {
        state: state.clone(),
        admitted,
        model,
        request_bytes,
        ticket,
    };
    let filter_list = route == Route::Models && head.status.is_success();
    if filter_list && accounting.admitted.caller().models.is_some() {
        return filtered_models(head, upstream_body, lease, accounting, &host.upstream).await;
    }
    let scan = head.status.is_success() && route == Route::Proxy;
    let framing = Framing::of(&head.headers);
    if framing.is_some() {
        // An error record may be added if the host fails midway.
        head.headers.remove(header::CONTENT_LENGTH);
    }
    let body = Tapped::new(upstream_body, scan, framing, lease, accounting);
    Ok(Response::from_parts(head, body.boxed()))
}

/// A copy of `v` when it is needed again, else `v` itself.
fn copy_or_take<T: Clone>(v: &mut Option<T>, again: bool) -> Option<T> {
    if again { v.clone() } else { v.take() }
}

/// The host a management request names in `X-Aigate-Host`: required when there are
/// several, optional (but checked) with one.
fn named_host(fleet: &Snapshot, headers: &HeaderMap) -> Result<Arc<Host>, GateError> {
    let named = headers.get(&headers::X_AIGATE_HOST);
    match (named, fleet.hosts.as_slice()) {
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(GateError::BadRequest(format!(
            "Name the host in X-Aigate-Host: this gate has {} ({})",
            fleet.hosts.len(),
            host_names(fleet)
        ))),
        (Some(v), _) => {
            let name = v.to_str().unwrap_or_default().trim();
            fleet.host(name).cloned().ok_or_else(|| {
                GateError::BadRequest(format!(
                    "X-Aigate-Host names no host of this gate; it has {}",
                    host_names(fleet)
                ))
            })
        }
    }
}

/// The hosts' names for an error message, at most a few.
fn host_names(fleet: &Snapshot) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<&str> = fleet
        .hosts
        .iter()
        .take(SHOWN)
        .map(|h| h.name.as_str())
        .collect();
    if fleet.hosts.len() > SHOWN {
        names.push("…");
    }
    names.join(", ")
}

/// What `principal` asks of the queue for a request on `path` to one of `hosts`.
fn ask<'a>(
    principal: &'a Principal,
    hosts: &'a [Arc<Host>],
    model: Option<&'a str>,
    path: &'a str,
    bytes: u64,
    wait: bool,
) -> Ask<'a> {
    Ask {
        budget: &principal.state,
        user: principal.user.as_deref(),
        prefix: &principal.prefix,
        tier: &principal.tier,
        class: principal.class,
        concurrency: principal.limits.concurrency,
        hosts,
        model,
        path,
        bytes,
        wait,
    }
}

/// The answer to a request the queue did not give a slot.
fn refused(state: &State, r: Refusal) -> GateError {
    match r {
        Refusal::Full {
            concurrency: Some(limit),
            ..
        } => {
            let rejection = Rejection::Concurrency { limit };
            state.metrics.rejected(rejection.kind());
            GateError::Limited(rejection)
        }
        Refusal::Full { limit, .. } => GateError::QueueFull(limit),
        // Held to the end by its own limit, not by the hosts.
        Refusal::Expired {
            concurrency: Some(limit),
            ..
        } => GateError::Limited(Rejection::Concurrency { limit }),
        Refusal::Expired { retry_after, .. } => GateError::QueueTimeout { retry_after },
        Refusal::Busy | Refusal::WouldWait => GateError::QueueTimeout { retry_after: 1 },
        Refusal::NoHost => GateError::HostsDown,
    }
}

fn no_host(e: NoHost, model: Option<&str>) -> GateError {
    match e {
        NoHost::UnknownModel => GateError::ModelNotFound(model.unwrap_or_default().into()),
        NoHost::AllDown => GateError::HostsDown,
        NoHost::NoRoute => GateError::NotFound("No host of this gate serves this route".into()),
    }
}

/// `/api/tags`, `/api/ps` or `/v1/models` over several hosts: every host that is up
/// asked at once, the lists merged, and cut down to the caller's models.
async fn merged_models(
    state: &Arc<State>,
    fleet: &Snapshot,
    path: &str,
    admitted: Admitted<Principal>,
) -> Result<Response<Body>, GateError> {
    let path: &'static str = match path {
        "/api/tags" => "/api/tags",
        "/api/ps" => "/api/ps",
        _ => "/v1/models",
    };
    let hosts: Vec<Arc<Host>> = fleet
        .hosts
        .iter()
        .filter(|h| h.serves(path) && h.usable() && !h.draining())
        .cloned()
        .collect();
    if hosts.is_empty() {
        return Err(GateError::HostsDown);
    }
    let answers = lists::fetch_all(&state.pool, &state.metrics, &hosts, state.worker, path).await;
    let mut bodies = Vec::with_capacity(answers.len());
    for (host, answer) in hosts.iter().zip(answers) {
        match answer {
            Ok(b) => bodies.push(b),
            Err(e) => tracing::warn!("host {} did not list its models: {e}", host.name),
        }
    }
    let mut doc = lists::merge(path, &bodies).ok_or(GateError::HostsDown)?;
    if let Some(filter) = admitted.caller().models.as_ref() {
        filter.retain_allowed(&mut doc);
    }
    Ok(respond::json(hyper::StatusCode::OK, &doc))
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
    let tapped = Tapped::new(body, false, None, lease, accounting);
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
