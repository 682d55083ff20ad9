//! Access tokens: HS256 JWTs with `sub`, `exp`, `iat`, the user's token version `ver`,
//! so that `user passwd` and `user disable` end every token issued before, and `fp`, a
//! fingerprint of the user's password hash, so that a user removed and added again
//! under the same name does not inherit the old user's tokens.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The shortest secret accepted: HS256 is only as strong as its key.
pub const MIN_SECRET_LEN: usize = 32;

/// The claims aigate issues and accepts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub ver: i64,
    /// [`fingerprint`] of the user's password hash when the token was issued.
    #[serde(default)]
    pub fp: String,
}

/// A short, non-secret fingerprint of a stored password hash (whose salt is random per
/// user and password): 16 hex digits of its SHA-256.
pub fn fingerprint(password_hash: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(password_hash.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// The signing secret with its keys. `Debug` never shows the secret.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(redacted)")
    }
}

impl JwtKeys {
    /// Builds the keys from a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> anyhow::Result<JwtKeys> {
        if secret.len() < MIN_SECRET_LEN {
            anyhow::bail!(
                "the JWT secret must be at least {MIN_SECRET_LEN} bytes (it has {})",
                secret.len()
            );
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // aigate is the only issuer and shares its clock: no leeway, so a token ends
        // exactly at `exp`.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Signs `claims`.
    pub fn issue(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Checks the signature, the algorithm (HS256 only: `none` and RS/HS confusion fail)
    /// and `exp`/`nbf`, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Whether `s` has the shape of a JWT (three dot-separated parts), as opposed to a key.
pub fn looks_like_jwt(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        crate::store::now() as u64
    }

    #[test]
    fn issue_verify_and_refuse() {
        let keys = JwtKeys::new(&[7u8; 32]).expect("keys");
        let claims = Claims {
            sub: "ana".into(),
            exp: now() + 60,
            iat: now(),
            ver: 3,
            fp: fingerprint("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"),
        };
        let token = keys.issue(&claims).expect("issue");
        assert!(looks_like_jwt(&token));
        assert_eq!(keys.verify(&token), Ok(claims.clone()));

        let other = JwtKeys::new(&[8u8; 32]).expect("keys");
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));

        let old = keys
            .issue(&Claims {
                exp: now() - 1,
                ..claims
            })
            .expect("issue");
        assert_eq!(keys.verify(&old), Err(TokenError::Expired));
        assert_eq!(keys.verify("a.b.c"), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = b.encode(format!(
            r#"{{"sub":"ana","exp":{},"iat":1,"ver":0}}"#,
            now() + 60
        ));
        let keys = JwtKeys::new(&[7u8; 32]).expect("keys");
        assert_eq!(
            keys.verify(&format!("{head}.{body}.")),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(JwtKeys::new(b"short").is_err());
    }
}
