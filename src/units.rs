//! Values both the CLI and the gate read from text: durations (`30s`, `7d`) and byte
//! sizes (`32M`). Below both, so that neither imports the other for them.

use std::time::Duration;

/// The longest duration accepted: 100 years. Durations become `i64` seconds added to
/// or taken from the Unix time (expiry, `--since`) and deadlines on `Instant`s (the
/// gate's timeouts); far longer ones overflowed those (found by `fuzz/`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses `30s`, `15m`, `24h`, `7d` (and anything humantime reads, like `1h30m`), up to
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (try 30s, 15m, 24h or 7d)"))?;
    if d > MAX_DURATION {
        return Err(format!("{:?} is longer than 100 years", s.trim()));
    }
    Ok(d)
}

/// Parses a byte size: `1048576`, `512K`, `32M`, `1G` (powers of 1024; `KiB`/`MB` too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
    }

    /// Found by `fuzz/` (duration): a duration past `i64` seconds turned a key's
    /// expiry negative and overflowed the gate's `Instant` deadlines.
    #[test]
    fn durations_are_bounded() {
        assert!(parse_duration(" 327611319552years ").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        assert!(parse_duration("100y 1s").is_err());
    }
}
