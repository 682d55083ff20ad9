//! Authentication: the credential of a request (`X-API-Key` or a bearer key or JWT),
//! checked by the [`Verifier`] from its cache, or from the database off the async
//! runtime on a miss.

mod principal;
mod verifier;

use std::sync::Arc;

use hyper::header::{self, HeaderMap};

pub use principal::Principal;
pub use verifier::Verifier;

use crate::auth::{jwt, key};

/// The longest JWT read; anything longer is refused unparsed.
const MAX_TOKEN: usize = 8192;

/// Why a request was not authenticated. Each maps to one status and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("malformed key")]
    MalformedKey,
    #[error("invalid key")]
    InvalidKey,
    #[error("key checksum mismatch")]
    BadChecksum,
    #[error("revoked key")]
    RevokedKey,
    #[error("expired key")]
    ExpiredKey,
    #[error("invalid token")]
    InvalidToken,
    #[error("expired token")]
    ExpiredToken,
    #[error("credential store unavailable")]
    Unavailable,
}

impl AuthError {
    /// A stable, space-free reason for logs and the audit table.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::MalformedKey => "malformed_key",
            AuthError::InvalidKey => "unknown_key",
            AuthError::BadChecksum => "bad_checksum",
            AuthError::RevokedKey => "revoked_key",
            AuthError::ExpiredKey => "expired_key",
            AuthError::InvalidToken => "invalid_token",
            AuthError::ExpiredToken => "expired_token",
            AuthError::Unavailable => "store_unavailable",
        }
    }
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
    verifier: &Arc<Verifier>,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, AuthError> {
    let cred = match credential(headers) {
        None => return Err(AuthError::Missing),
        Some("") => return Err(AuthError::MalformedKey),
        Some(c) => c,
    };
    if key::looks_like_key(cred) {
        if let Some(p) = verifier.check_key(cred)? {
            return Ok(p);
        }
        let verifier = verifier.clone();
        let cred = cred.to_string();
        return tokio::task::spawn_blocking(move || verifier.load_key(&cred))
            .await
            .map_err(|_| AuthError::Unavailable)?;
    }
    if jwt::looks_like_jwt(cred) {
        if cred.len() > MAX_TOKEN {
            return Err(AuthError::InvalidToken);
        }
        let (cached, claims) = verifier.check_token(cred)?;
        if let Some(p) = cached {
            return Ok(p);
        }
        let verifier = verifier.clone();
        return tokio::task::spawn_blocking(move || verifier.load_user(&claims))
            .await
            .map_err(|_| AuthError::Unavailable)?;
    }
    Err(AuthError::MalformedKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

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
}
