//! The gate's one error type, and the one place where an error becomes a status, a JSON
//! body and its headers (`WWW-Authenticate`, `Retry-After`, `Allow`).

use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::authn::AuthError;
use super::limits::Rejection;
use super::respond::{self, Body};
use super::upstream::UpstreamError;

/// Why the gate answered a request itself instead of forwarding it. `Display` is the
/// `detail` the client reads; sources are kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A path that could hide a route (see `route::classify`).
    #[error("Bad path")]
    BadPath,
    #[error("Request headers too large")]
    HeadersTooLarge,
    #[error("Request body over the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("Could not read the request body")]
    BodyUnreadable(#[source] hyper::Error),
    #[error("Request body is not valid JSON")]
    NotJson,
    /// A client mistake the message explains (400).
    #[error("{0}")]
    BadRequest(String),
    /// A login body that is neither JSON nor a form with both fields (422).
    #[error("Send {{\"username\": …, \"password\": …}} as JSON or a form")]
    BadLoginBody,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("Incorrect username or password")]
    LoginFailed,
    #[error("Tier {0:?} may not use this route: admin tier only")]
    AdminOnly(String),
    #[error("Model {model:?} is not allowed for tier {tier:?}")]
    ModelNotAllowed { model: String, tier: String },
    #[error("{0}")]
    NotFound(String),
    /// With the methods to name in `Allow`, when the route has one.
    #[error("Method Not Allowed")]
    MethodNotAllowed(Option<&'static str>),
    #[error("{}", .0.detail())]
    Limited(Rejection),
    #[error("{detail}")]
    TooManyLogins {
        detail: &'static str,
        retry_after: u64,
    },
    #[error("{}", if .0.is_timeout() { "Upstream timeout" } else { "Upstream unavailable" })]
    Upstream(#[from] UpstreamError),
    /// The database could not answer (503).
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Internal(&'static str),
}

const CHALLENGE: &str = r#"Bearer realm="aigate""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="aigate", error="invalid_token""#;

impl GateError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::BadPath
            | GateError::BodyUnreadable(_)
            | GateError::NotJson
            | GateError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GateError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GateError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::BadLoginBody => StatusCode::UNPROCESSABLE_ENTITY,
            GateError::Auth(AuthError::Unavailable) | GateError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GateError::Auth(_) | GateError::LoginFailed => StatusCode::UNAUTHORIZED,
            GateError::AdminOnly(_) | GateError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            GateError::NotFound(_) => StatusCode::NOT_FOUND,
            GateError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GateError::Limited(_) | GateError::TooManyLogins { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GateError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            GateError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GateError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response: `{"detail": …}` with the status and the headers the error calls
    /// for. Upstream and internal errors are logged here, with their sources.
    pub fn into_response(self) -> Response<Body> {
        match &self {
            GateError::Upstream(e) => tracing::warn!("{}", error_chain(e)),
            GateError::Internal(_) | GateError::Unavailable(_) => {
                tracing::error!("{}", error_chain(&self))
            }
            _ => {}
        }
        let detail = match &self {
            GateError::Auth(e) => auth_detail(*e).to_string(),
            other => other.to_string(),
        };
        let mut r = respond::json(self.status(), &serde_json::json!({ "detail": detail }));
        let h = r.headers_mut();
        match &self {
            GateError::Auth(AuthError::Unavailable) => {}
            GateError::Auth(AuthError::Missing) | GateError::LoginFailed => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            }
            GateError::Auth(_) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE_INVALID),
                );
            }
            GateError::Limited(rejection) => {
                h.insert(
                    RETRY_AFTER,
                    HeaderValue::from(rejection.retry_after().max(1)),
                );
            }
            GateError::TooManyLogins { retry_after, .. } => {
                h.insert(RETRY_AFTER, HeaderValue::from((*retry_after).max(1)));
            }
            GateError::MethodNotAllowed(Some(allow)) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        r
    }
}

/// What a client is told for each authentication failure (SPEC §4).
fn auth_detail(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "Not authenticated",
        AuthError::MalformedKey
        | AuthError::InvalidKey
        | AuthError::BadChecksum
        | AuthError::RevokedKey => "Invalid API key",
        AuthError::ExpiredKey => "API key expired",
        AuthError::InvalidToken => "Invalid token",
        AuthError::ExpiredToken => "Token expired",
        AuthError::Unavailable => "Credential store unavailable",
    }
}

/// An error and its sources on one line, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
