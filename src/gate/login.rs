//! `POST /auth/login`: a password for a JWT, within the [`throttle`](super::throttle)'s
//! limits; an unknown user and a wrong password get the same answer after the same
//! argon2 work.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::error::GateError;
use super::respond::{self, Body};
use super::{State, body, failure};
use crate::auth::jwt::{self, Claims};
use crate::auth::password;
use crate::store::{now, users};

/// The largest login body read.
const MAX_LOGIN_BODY: u64 = 64 * 1024;

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// Handles a login request.
pub async fn handle(
    state: &Arc<State>,
    ip: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, GateError> {
    let Some(keys) = state.verifier.jwt() else {
        return Err(GateError::NotFound("Login is disabled on this gate".into()));
    };
    if req.method() != Method::POST {
        return Err(GateError::MethodNotAllowed(Some("POST")));
    }
    let guard = &state.login;
    guard
        .attempt(ip)
        .map_err(|retry_after| GateError::TooManyLogins {
            detail: "Too many login attempts; try again later",
            retry_after,
        })?;
    let form_encoded = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let bytes = body::read(req.into_body(), MAX_LOGIN_BODY, state.config.body_timeout).await?;
    let form: Option<LoginForm> = if form_encoded {
        serde_urlencoded::from_bytes(&bytes).ok()
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let form = form.ok_or(GateError::BadLoginBody)?;
    guard
        .account_open(&form.username)
        .map_err(|retry_after| GateError::TooManyLogins {
            detail: "Too many failed logins for this account; try again later",
            retry_after,
        })?;
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
            Some(u) if ok && !u.disabled => Some((u.clone(), jwt::fingerprint(hash))),
            _ => None,
        })
    })
    .await;
    let user: Option<(users::User, String)> = match checked {
        Ok(Ok(u)) => u,
        _ => return Err(GateError::Unavailable("Credential store unavailable")),
    };
    let Some((user, fp)) = user else {
        guard.failed(&form.username);
        failure::record(
            state,
            ip,
            "bad_login",
            None,
            Some(form.username.chars().take(64).collect()),
            &Method::POST,
            "/auth/login",
        );
        return Err(GateError::LoginFailed);
    };
    let ttl = state.config.token_ttl.as_secs();
    let iat = now() as u64;
    let claims = Claims {
        sub: user.username.clone(),
        exp: iat + ttl,
        iat,
        ver: user.token_version,
        fp,
    };
    let token = keys.issue(&claims).map_err(|e| {
        tracing::error!("signing a token failed: {e}");
        GateError::Internal("Could not issue a token")
    })?;
    Ok(respond::json(
        StatusCode::OK,
        &serde_json::json!({ "access_token": token, "token_type": "bearer", "expires_in": ttl }),
    ))
}
