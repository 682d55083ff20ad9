//! `POST /auth/login`: a password for a JWT. At most 5 attempts per minute per client
//! address, and at most 10 failures per 15 minutes per account; an unknown user and a
//! wrong password get the same answer after the same argon2 work.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::State;
use super::handler::{read_body, record_auth_failure};
use super::respond::{self, Body};
use crate::auth::jwt::Claims;
use crate::auth::password;
use crate::store::{now, users};

const PER_IP: usize = 5;
const IP_WINDOW: Duration = Duration::from_secs(60);
const PER_ACCOUNT: usize = 10;
const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept per map before stale ones are swept.
const SWEEP_AT: usize = 10_000;

/// Sliding-window attempt counters for logins.
#[derive(Debug, Default)]
pub struct LoginGuard {
    by_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Counts an event in `map[k]` if fewer than `max` happened within `window`; else
/// returns the seconds until one expires.
fn hit<K: std::hash::Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, VecDeque<Instant>>>,
    k: &K,
    max: usize,
    window: Duration,
    record: bool,
) -> Result<(), u64> {
    let now = Instant::now();
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= SWEEP_AT {
        m.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
    }
    let q = m.entry(k.clone()).or_default();
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
    if q.len() >= max {
        let oldest = q.front().copied().unwrap_or(now);
        let wait = window.saturating_sub(now.duration_since(oldest));
        return Err(wait.as_secs().max(1));
    }
    if record {
        q.push_back(now);
    }
    Ok(())
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// Handles a login request.
pub async fn handle(state: &Arc<State>, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let Some(keys) = state.verifier.jwt() else {
        return respond::error(StatusCode::NOT_FOUND, "Login is disabled on this gate");
    };
    if req.method() != Method::POST {
        let mut r = respond::error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let guard = &state.login;
    if let Err(wait) = hit(&guard.by_ip, &ip, PER_IP, IP_WINDOW, true) {
        return respond::too_many("Too many login attempts; try again later", wait);
    }
    let form_encoded = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = match read_body(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let form: Option<LoginForm> = if form_encoded {
        serde_urlencoded::from_bytes(&body).ok()
    } else {
        serde_json::from_slice(&body).ok()
    };
    let Some(form) = form else {
        return respond::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Send {\"username\": …, \"password\": …} as JSON or a form",
        );
    };
    if let Err(wait) = hit(
        &guard.failures,
        &form.username,
        PER_ACCOUNT,
        ACCOUNT_WINDOW,
        false,
    ) {
        return respond::too_many(
            "Too many failed logins for this account; try again later",
            wait,
        );
    }
    let verifier = state.verifier.clone();
    let name = form.username.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let found = verifier.credentials(&name)?;
        // Always one argon2 verification, so timing does not tell whether the user exists.
        let (user, hash) = match &found {
            Some((u, h)) => (Some(u), h.as_str()),
            None => (None, password::dummy_hash()),
        };
        let ok = password::verify(&form.password, hash);
        Ok::<_, crate::store::StoreError>(match user {
            Some(u) if ok && !u.disabled => Some(u.clone()),
            _ => None,
        })
    })
    .await;
    let user: Option<users::User> = match checked {
        Ok(Ok(u)) => u,
        _ => {
            return respond::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Credential store unavailable",
            );
        }
    };
    let Some(user) = user else {
        let _ = hit(
            &guard.failures,
            &form.username,
            PER_ACCOUNT,
            ACCOUNT_WINDOW,
            true,
        );
        record_auth_failure(
            state,
            ip,
            "bad_login",
            None,
            Some(form.username.chars().take(64).collect()),
            &Method::POST,
            "/auth/login",
        );
        return respond::login_failed();
    };
    let ttl = state.config.token_ttl.as_secs();
    let iat = now() as u64;
    let claims = Claims {
        sub: user.username.clone(),
        exp: iat + ttl,
        iat,
        ver: user.token_version,
    };
    match keys.issue(&claims) {
        Ok(token) => respond::json(
            StatusCode::OK,
            &serde_json::json!({ "access_token": token, "token_type": "bearer", "expires_in": ttl }),
        ),
        Err(e) => {
            tracing::error!("signing a token failed: {e}");
            respond::error(StatusCode::INTERNAL_SERVER_ERROR, "Could not issue a token")
        }
    }
}
