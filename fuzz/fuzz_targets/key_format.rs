//! The key format and checksum (`aigate::auth::key`).
//!
//! - `parse` never panics, and accepts exactly what a reference model of the format
//!   accepts (`aig_` + 64 base64url + the 6-character base64url of the first 4 bytes of
//!   SHA-256 of the body); an accepted key's hash is the SHA-256 of the whole key.
//! - A key built from fuzzer-chosen secret bytes parses to its own hash, and a change of
//!   any single byte to a fuzzer-chosen value is refused. The checksum is 32 bits of
//!   SHA-256, not an error-correcting code, so a change to the *body* can collide with
//!   probability 2^-32; the target tells that (allowed, reported) from a parser bug by
//!   checking the changed key against the reference model.
//! - `display_prefix` of anything is at most 12 characters, all base64url.

#![no_main]

use aigate::auth::key::{self, KEY_LEN, PREFIX, SECRET_BYTES};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The format, written out independently of `key::parse`.
fn reference_valid(s: &[u8]) -> bool {
    if s.len() != KEY_LEN || !s.starts_with(PREFIX.as_bytes()) {
        return false;
    }
    let rest = &s[PREFIX.len()..];
    if !rest.iter().copied().all(b64url) {
        return false;
    }
    let (body, check) = rest.split_at(64);
    URL_SAFE_NO_PAD
        .encode(&Sha256::digest(body)[..4])
        .as_bytes()
        == check
}

fn check_display_prefix(s: &str) {
    let p = key::display_prefix(s);
    assert!(p.len() <= 12, "display prefix too long: {p:?}");
    assert!(p.bytes().all(b64url), "display prefix not base64url: {p:?}");
}

fn check_parse(s: &str) {
    let got = key::parse(s);
    assert_eq!(
        got.is_ok(),
        reference_valid(s.as_bytes()),
        "parse({s:?}) = {got:?}"
    );
    if let Ok(h) = got {
        assert_eq!(h.0, <[u8; 32]>::from(Sha256::digest(s.as_bytes())));
        assert!(key::looks_like_key(s));
    }
    check_display_prefix(s);
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary text, as it would arrive in a header.
    if let Ok(s) = std::str::from_utf8(data) {
        check_parse(s);
    }
    check_parse(&String::from_utf8_lossy(data));

    // A real key from the first 48 bytes; the rest choose the replacement bytes.
    let Some((secret, rest)) = data.split_first_chunk::<SECRET_BYTES>() else {
        return;
    };
    let k = key::from_secret(secret);
    let s = k.key.expose();
    assert_eq!(s.len(), KEY_LEN);
    assert_eq!(key::parse(s), Ok(k.hash));
    assert_eq!(k.prefix, key::display_prefix(s));
    assert_eq!(k.prefix.len(), 12);
    assert!(s.starts_with(&k.prefix));
    check_display_prefix(s);

    let mut bytes = s.as_bytes().to_vec();
    for i in 0..bytes.len() {
        let orig = bytes[i];
        // A fuzzer-chosen byte, else a neighbouring base64url character (which passes
        // the shape check and so exercises the checksum).
        let mut new = rest
            .get(i)
            .copied()
            .unwrap_or(if orig == b'A' { b'B' } else { b'A' });
        if new == orig {
            new = orig ^ 1;
        }
        bytes[i] = new;
        if let Ok(changed) = std::str::from_utf8(&bytes) {
            match key::parse(changed) {
                Err(_) => {}
                Ok(_) => {
                    // Only a genuine 32-bit checksum collision in the body may pass.
                    assert!(
                        (PREFIX.len()..PREFIX.len() + 64).contains(&i)
                            && reference_valid(changed.as_bytes()),
                        "single-byte change at {i} accepted: {changed:?}"
                    );
                    eprintln!("checksum collision (expected once in 2^32): {changed}");
                }
            }
            check_display_prefix(changed);
        }
        bytes[i] = orig;
    }
});
