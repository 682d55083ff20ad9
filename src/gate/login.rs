//! `POST /auth/login`: a password for a JWT, within the [`throttle`](super::throttle)'s
//! limits; an unknown user and a wrong password get the same answer after the same
//! argon2 work. The body is JSON when it looks like JSON, whatever its `Content-Type`
//! says (`curl -d` labels JSON as a form), else a form.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::error::GateError;
use super::respond::{self, Body};
use super::throttle::Attempt;
use super::{State, body, failure};
use crate::auth::jwt::{self, Claims};
use crate::auth::password;
use crate::store::{StoreError, now, users};

/// The largest login body read.
const MAX_LOGIN_BODY: u64 = 64 * 1024;
/// How long a client is asked to wait when every password-check slot is busy.
const BUSY_RETRY_AFTER: u64 = 1;

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
    let mut attempt = state
        .login
        .begin(ip)
        .map_err(|retry_after| GateError::TooManyLogins {
            detail: "Too many login attempts; try again later",
            retry_after,
        })?;
    let bytes = body::read(req.into_body(), MAX_LOGIN_BODY, state.config.body_timeout).await?;
    let form = parse(&bytes).ok_or(GateError::BadLoginBody)?;
    attempt
        .account(&form.username)
        .map_err(|retry_after| GateError::TooManyLogins {
            detail: "Too many failed logins for this account; try again later",
            retry_after,
        })?;
    let Some(slot) = state.login.check_slot().await else {
        return Err(GateError::LoginBusy {
            retry_after: BUSY_RETRY_AFTER,
        });
    };
    let task_state = state.clone();
    // The slot and the attempt go with the check: should the client leave, the check
    // still holds its slot until argon2 ends, and its outcome is still counted.
    let checked = tokio::task::spawn_blocking(move || {
        let checked = check(&task_state, ip, &form, attempt);
        drop(slot);
        checked
    })
    .await;
    let (user, fp) = match checked {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Err(GateError::LoginFailed),
        _ => return Err(GateError::Unavailable("Credential store unavailable")),
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

/// The login fields: JSON when the body opens with `{`, else a form.
fn parse(bytes: &[u8]) -> Option<LoginForm> {
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if json {
        serde_json::from_slice(bytes).ok()
    } else {
        serde_urlencoded::from_bytes(bytes).ok()
    }
}

/// Checks the password, blocking: when it is right and the user enabled, the user and
/// the fingerprint of their password hash (a token's `fp`).
/// Always one argon2 verification, so timing does not tell whether the user exists.
/// A failure is counted and recorded here, naming the account only if it exists: a
/// password typed into the username field is never stored.
fn check(
    state: &State,
    ip: IpAddr,
    form: &LoginForm,
    attempt: Attempt,
) -> Result<Option<(users::User, String)>, StoreError> {
    let found = state.verifier.credentials(&form.username)?;
    let hash = found
        .as_ref()
        .map_or(password::dummy_hash(), |(_, h)| h.as_str());
    let ok = password::verify(&form.password, hash);
    match found {
        Some((user, hash)) if ok && !user.disabled => Ok(Some((user, jwt::fingerprint(&hash)))),
        found => {
            attempt.failed();
            let user = found.map(|(u, _)| u.username);
            failure::record(
                state,
                ip,
                "bad_login",
                None,
                user,
                &Method::POST,
                "/auth/login",
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_json_when_it_opens_with_a_brace_else_a_form() {
        let form = parse(b" \n\t{\"username\":\"ana\",\"password\":\"p w\"}").expect("json");
        assert_eq!(
            (form.username.as_str(), form.password.as_str()),
            ("ana", "p w")
        );
        let form = parse(b"username=ana&password=p+w").expect("form");
        assert_eq!(
            (form.username.as_str(), form.password.as_str()),
            ("ana", "p w")
        );
        assert!(parse(b"{\"username\":\"ana\"}").is_none(), "no password");
        assert!(
            parse(b"{username=ana&password=x").is_none(),
            "broken JSON is no form"
        );
        assert!(parse(b"").is_none());
        assert!(parse(b"[\"ana\",\"x\"]").is_none());
    }
}
