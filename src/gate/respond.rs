//! The one body type of the gate, and every response the gate writes itself: JSON
//! bodies with the spec's statuses, so local errors and upstream bodies are
//! interchangeable.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::auth::verifier::AuthError;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every request sent upstream and every response sent back.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"detail": …}` with `status`.
pub fn error(status: StatusCode, detail: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "detail": detail }))
}

/// A 429 with `Retry-After` in whole seconds (at least 1).
pub fn too_many(detail: &str, retry_after_secs: u64) -> Response<Body> {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, detail);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    r
}

const CHALLENGE: &str = r#"Bearer realm="aigate""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="aigate", error="invalid_token""#;

/// The 401 (or 503) for a failed authentication, with the RFC 6750 challenge.
pub fn auth_error(e: AuthError) -> Response<Body> {
    let (status, detail) = match e {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, "Not authenticated"),
        AuthError::MalformedKey
        | AuthError::InvalidKey
        | AuthError::BadChecksum
        | AuthError::RevokedKey => (StatusCode::UNAUTHORIZED, "Invalid API key"),
        AuthError::ExpiredKey => (StatusCode::UNAUTHORIZED, "API key expired"),
        AuthError::InvalidToken => (StatusCode::UNAUTHORIZED, "Invalid token"),
        AuthError::ExpiredToken => (StatusCode::UNAUTHORIZED, "Token expired"),
        AuthError::Unavailable => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Credential store unavailable",
            );
        }
    };
    let mut r = error(status, detail);
    let challenge = if e == AuthError::Missing {
        CHALLENGE
    } else {
        CHALLENGE_INVALID
    };
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// A 401 for a failed login (same challenge as a bad credential).
pub fn login_failed() -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, "Incorrect username or password");
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    r
}
