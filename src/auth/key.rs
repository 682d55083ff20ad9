//! The API key format: `aig_`, then 64 base64url characters (48 bytes from the OS
//! CSPRNG), then a 6-character checksum. The checksum lets the gate refuse a mistyped or forged key
//! without touching the database, and the fixed shape lets secret scanners match it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const PREFIX: &str = "aig_";
/// How many random bytes a key carries.
pub const SECRET_BYTES: usize = 48;
const BODY_LEN: usize = 64; // base64url of 48 bytes, no padding
const CHECK_LEN: usize = 6; // base64url of the first 4 bytes of SHA-256(body)
/// The length of every key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
/// How many characters of the key the display prefix shows (`aig_` + 8).
const DISPLAY_LEN: usize = PREFIX.len() + 8;

/// Why a string is not a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not an aigate key")]
    NotAKey,
    #[error("key checksum mismatch")]
    Checksum,
}

/// The SHA-256 of a key: what the database stores and the gate's cache is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Lowercase hex, the form stored in `api_keys.key_hash`.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({})", &self.hex()[..12])
    }
}

/// A raw key, shown once. Its `Debug` shows only the display prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct RawKey(String);

impl RawKey {
    /// The whole key, for the one place it is printed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawKey({}…)", display_prefix(&self.0))
    }
}

/// A freshly generated key with what the database keeps of it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: RawKey,
    pub hash: KeyHash,
    pub prefix: String,
}

/// Generates a key from the OS CSPRNG.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret)?;
    Ok(from_secret(&secret))
}

/// Builds the key for given secret bytes: [`generate`] without the CSPRNG, so that
/// tests and the fuzz targets can make keys deterministically.
pub fn from_secret(secret: &[u8; SECRET_BYTES]) -> NewKey {
    let body = URL_SAFE_NO_PAD.encode(secret);
    let key = format!("{PREFIX}{body}{}", checksum(body.as_bytes()));
    NewKey {
        hash: hash(&key),
        prefix: display_prefix(&key),
        key: RawKey(key),
    }
}

fn checksum(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    URL_SAFE_NO_PAD.encode(&digest[..4])
}

fn hash(key: &str) -> KeyHash {
    KeyHash(Sha256::digest(key.as_bytes()).into())
}

/// Checks the shape and checksum of `candidate` and returns its hash. Costs two
/// SHA-256s of under 80 bytes and no allocation beyond the checksum's few bytes.
pub fn parse(candidate: &str) -> Result<KeyHash, KeyFormatError> {
    let bytes = candidate.as_bytes();
    if bytes.len() != KEY_LEN || !candidate.starts_with(PREFIX) {
        return Err(KeyFormatError::NotAKey);
    }
    let rest = &bytes[PREFIX.len()..];
    if !rest
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return Err(KeyFormatError::NotAKey);
    }
    let (body, check) = rest.split_at(BODY_LEN);
    let digest = Sha256::digest(body);
    let mut expected = [0u8; CHECK_LEN];
    // 4 bytes encode to exactly 6 characters without padding.
    let _ = URL_SAFE_NO_PAD.encode_slice(&digest[..4], &mut expected);
    if expected != check {
        return Err(KeyFormatError::Checksum);
    }
    Ok(hash(candidate))
}

/// Whether `candidate` looks like an aigate key (right prefix), well-formed or not.
pub fn looks_like_key(candidate: &str) -> bool {
    candidate.starts_with(PREFIX)
}

/// The non-secret display prefix of a key (`aig_` + 8 characters). For text that is not
/// a key, characters outside base64url are dropped so that a log line cannot be forged.
pub fn display_prefix(candidate: &str) -> String {
    candidate
        .chars()
        .take(DISPLAY_LEN)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate().expect("rng");
        let b = generate().expect("rng");
        assert_eq!(a.key.expose().len(), KEY_LEN);
        assert_ne!(a.key, b.key);
        assert_eq!(parse(a.key.expose()), Ok(a.hash));
        assert!(a.key.expose().starts_with(&a.prefix));
        assert_eq!(a.prefix.len(), 12);
    }

    #[test]
    fn any_single_change_is_refused() {
        let k = generate().expect("rng");
        let s = k.key.expose();
        for i in PREFIX.len()..s.len() {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(b).expect("ascii");
            assert!(parse(&changed).is_err(), "position {i} accepted");
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert_eq!(parse(""), Err(KeyFormatError::NotAKey));
        assert_eq!(parse("aig_short"), Err(KeyFormatError::NotAKey));
        let long = format!("aig_{}", "é".repeat(35));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn debug_redacts() {
        let k = generate().expect("rng");
        let shown = format!("{:?}", k);
        assert!(!shown.contains(k.key.expose()));
    }

    #[test]
    fn display_prefix_strips_log_injection() {
        assert_eq!(display_prefix("aig_a b\nc=d"), "aig_abcd");
    }
}
