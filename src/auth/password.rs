//! Passwords: argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).
//! Only the PHC string is stored; verification reads the parameters from it.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The shortest password `user add` and `user passwd` accept.
pub const MIN_LEN: usize = 8;

fn hasher() -> Argon2<'static> {
    // Params::new only fails on out-of-range values; these are constants in range.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh salt from the OS CSPRNG.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let phc = hasher()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
    Ok(phc.to_string())
}

/// Whether `password` matches the stored PHC string. A malformed hash, or one that
/// asks for more than [`MAX_MEMORY_KIB`], never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    verify_phc(password, phc).unwrap_or(false)
}

/// The most memory a stored hash may ask a verification for. Hashes made here ask for
/// 19 MiB; the cap keeps a foreign or damaged hash from making one login a large
/// allocation.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// The working memory of one verification is allocated at least this large, in blocks
/// of 1 KiB, though only the blocks the hash asks for are touched. glibc serves an
/// allocation this size (above its largest dynamic mmap threshold, 32 MiB) with its own
/// mapping and unmaps it when freed; a 19 MiB one would come from an arena after the
/// first, and the arenas keep what they are given (measured: resident memory grew by
/// 19 MiB per login). The untouched tail costs address space only.
const MAPPED_BLOCKS: usize = 33 * 1024;

fn verify_phc(password: &str, phc: &str) -> Option<bool> {
    let parsed = PasswordHash::new(phc).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return None;
    }
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let expected = parsed.hash?;
    let blocks = params.block_count();
    let mut memory: Vec<Block> = Vec::with_capacity(blocks.max(MAPPED_BLOCKS));
    memory.resize(blocks, Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory)
        .ok()?;
    // Constant time: the comparison does not stop at the first differing byte.
    let diff = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    Some(diff == 0 && out.len() == expected.len())
}

/// A valid hash of a password nobody knows, verified against when the user is unknown
/// so that an unknown user and a wrong password take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash("aigate-no-such-user-placeholder").unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE".into()
        })
    })
}

/// Checks a new password against the minimum rules.
pub fn check_new(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < MIN_LEN {
        anyhow::bail!("password must be at least {MIN_LEN} characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_argon2id() {
        let h = hash("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("x", "not a hash"));
        assert!(!verify("x", dummy_hash()));
    }

    #[test]
    fn hashes_with_other_parameters_verify_as_argon2_made_them() {
        let params = Params::new(4096, 1, 2, Some(24)).expect("params");
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        for (algorithm, version) in [
            (Algorithm::Argon2id, Version::V0x13),
            (Algorithm::Argon2i, Version::V0x10),
        ] {
            let phc = Argon2::new(algorithm, version, params.clone())
                .hash_password(b"pass word", &salt)
                .expect("hash")
                .to_string();
            assert!(verify("pass word", &phc), "{phc}");
            assert!(!verify("pass worD", &phc), "{phc}");
        }
    }

    #[test]
    fn a_hash_asking_for_too_much_memory_never_matches() {
        let h = hash("correct horse").expect("hash");
        let greedy = h.replace("m=19456", &format!("m={}", MAX_MEMORY_KIB + 1));
        assert_ne!(greedy, h);
        assert!(!verify("correct horse", &greedy));
    }
}
