//! The gate's one error type, and the one place where an error becomes a status, a JSON
//! body and its headers (`WWW-Authenticate`, `Retry-After`, `Allow`). Every body has
//! `detail` and also speaks its client's language, so that the client shows the
//! message: OpenAI's `error.message` on `/v1/*`, Ollama's `error` string elsewhere.

use std::time::Duration;

use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::authn::AuthError;
use super::limits::Rejection;
use super::respond::{self, Body};
use super::upstream::UpstreamError;

/// A request body that went silent for longer than the body timeout (a client
/// trickling bytes to hold a connection and a task).
#[derive(Debug, thiserror::Error)]
#[error("request body stalled for {0:?}")]
pub struct Stalled(pub Duration);

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
    #[error("Request body timed out")]
    BodyStalled(#[source] Stalled),
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
    /// A route whose model the gate cannot check, for a tier with an allow-list.
    #[error("Tier {0:?} may not use this route: its model allow-list cannot be checked on it")]
    Unchecked(String),
    #[error("{0}")]
    NotFound(String),
    /// No host has the model (SPEC §6).
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    /// Every host that could serve the request is down or drained (SPEC §4's body).
    #[error("Upstream unavailable")]
    HostsDown,
    /// With the methods to name in `Allow`, when the route has one.
    #[error("Method Not Allowed")]
    MethodNotAllowed(Option<&'static str>),
    #[error("{}", .0.detail())]
    Limited(Rejection),
    /// The caller already has its tier's `max-queued` requests waiting for a slot (429).
    #[error("{}", queue_full(*.0))]
    QueueFull(u32),
    /// It waited its tier's `max-wait` for a slot, or the gate is stopping (503).
    #[error("All model slots stayed busy; try again shortly")]
    QueueTimeout { retry_after: u64 },
    #[error("{detail}")]
    TooManyLogins {
        detail: &'static str,
        retry_after: u64,
    },
    /// Every password-check slot is busy: a gate-wide limit, not the client's (503).
    #[error("Too many logins in progress; try again shortly")]
    LoginBusy { retry_after: u64 },
    #[error("{}", if .0.is_timeout() { "Upstream timeout" } else { "Upstream unavailable" })]
    Upstream(UpstreamError),
    /// The database could not answer (503).
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Internal(&'static str),
}

fn queue_full(limit: u32) -> String {
    if limit == 0 {
        "All model slots are busy, and this tier does not wait for one".into()
    } else {
        format!("Too many requests waiting for a model slot: at most {limit} at once")
    }
}

const CHALLENGE: &str = r#"Bearer realm="aigate""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="aigate", error="invalid_token""#;

impl From<UpstreamError> for GateError {
    /// An upstream request that failed because the client's body stalled is the
    /// client's timeout (408), not the upstream's fault.
    fn from(e: UpstreamError) -> GateError {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(stalled) = s.downcast_ref::<Stalled>() {
                return GateError::BodyStalled(Stalled(stalled.0));
            }
            source = s.source();
        }
        GateError::Upstream(e)
    }
}

impl GateError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::BadPath
            | GateError::BodyUnreadable(_)
            | GateError::NotJson
            | GateError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GateError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GateError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            GateError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::BadLoginBody => StatusCode::UNPROCESSABLE_ENTITY,
            GateError::Auth(AuthError::Unavailable)
            | GateError::Unavailable(_)
            | GateError::LoginBusy { .. }
            | GateError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GateError::Auth(_) | GateError::LoginFailed => StatusCode::UNAUTHORIZED,
            GateError::AdminOnly(_)
            | GateError::ModelNotAllowed { .. }
            | GateError::Unchecked(_) => StatusCode::FORBIDDEN,
            GateError::NotFound(_) | GateError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            GateError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GateError::Limited(_) | GateError::TooManyLogins { .. } | GateError::QueueFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GateError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            GateError::Upstream(_) | GateError::HostsDown => StatusCode::BAD_GATEWAY,
            GateError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response in `dialect`: `detail` and the client's own error field, with the
    /// status and the headers the error calls for. Upstream and internal errors are
    /// logged here, with their sources.
    pub fn into_response(self, dialect: Dialect) -> Response<Body> {
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
        let status = self.status();
        let body = match dialect {
            Dialect::Ollama => serde_json::json!({ "detail": detail, "error": detail }),
            Dialect::OpenAi => {
                let (kind, code) = self.openai_kind();
                serde_json::json!({
                    "detail": detail,
                    "error": { "message": detail, "type": kind, "code": code },
                })
            }
        };
        let mut r = respond::json(status, &body);
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
            GateError::TooManyLogins { retry_after, .. }
            | GateError::LoginBusy { retry_after }
            | GateError::QueueTimeout { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from((*retry_after).max(1)));
            }
            GateError::QueueFull(_) => {
                h.insert(RETRY_AFTER, HeaderValue::from(1));
            }
            GateError::MethodNotAllowed(Some(allow)) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        r
    }
}

/// Which client's error shape a body takes beside `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"error": "<message>"`, which Ollama's clients (and Open WebUI) show.
    Ollama,
    /// `"error": {"message", "type", "code"}`, which OpenAI's SDKs show.
    OpenAi,
}

impl Dialect {
    /// The dialect of a request path: OpenAI's on `/v1/*`.
    pub fn of_path(path: &str) -> Dialect {
        if path.starts_with("/v1/") || path == "/v1" {
            Dialect::OpenAi
        } else {
            Dialect::Ollama
        }
    }
}

impl GateError {
    /// OpenAI's error `type` and `code` for this error, as its API uses them.
    fn openai_kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            GateError::Auth(AuthError::Unavailable)
            | GateError::Unavailable(_)
            | GateError::LoginBusy { .. }
            | GateError::QueueTimeout { .. } => ("server_error", Some("service_unavailable")),
            GateError::Auth(AuthError::Missing) => {
                ("invalid_request_error", Some("missing_api_key"))
            }
            GateError::Auth(AuthError::ExpiredToken | AuthError::InvalidToken) => {
                ("invalid_request_error", Some("invalid_token"))
            }
            GateError::Auth(_) | GateError::LoginFailed => {
                ("invalid_request_error", Some("invalid_api_key"))
            }
            GateError::AdminOnly(_) => ("permission_error", Some("admin_only")),
            GateError::ModelNotAllowed { .. } | GateError::Unchecked(_) => {
                ("permission_error", Some("model_not_allowed"))
            }
            GateError::NotFound(_) => ("invalid_request_error", Some("not_found")),
            GateError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            GateError::Limited(Rejection::Tokens { .. }) => {
                ("insufficient_quota", Some("insufficient_quota"))
            }
            GateError::Limited(_) | GateError::TooManyLogins { .. } | GateError::QueueFull(_) => {
                ("rate_limit_error", Some("rate_limit_exceeded"))
            }
            GateError::Upstream(_) | GateError::HostsDown | GateError::Internal(_) => {
                ("server_error", None)
            }
            _ => ("invalid_request_error", None),
        }
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
