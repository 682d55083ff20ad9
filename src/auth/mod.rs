//! Credentials: the API key format, password hashing, JWTs, and the gate's verifier
//! with its cache.

pub mod jwt;
pub mod key;
pub mod password;
pub mod verifier;
