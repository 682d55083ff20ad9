//! The CLI's value parsers (`aigate::units::parse_duration`, `aigate::units::parse_size`).
//!
//! - Neither panics on any text.
//! - Every accepted duration is safe to use the way aigate uses one: as whole seconds
//!   in `i64` added to or taken from the current Unix time (key expiry, `--since`), and
//!   added to an `Instant` (the gate's timeouts).
//! - Nothing over `MAX_DURATION` (100 years) is accepted.
//! - Round trips: `humantime::format_duration` of an accepted duration parses back to
//!   it; `<n><unit>` built by the fuzzer parses to `n × unit`; an accepted size printed
//!   as plain bytes parses back to itself, and `<n><unit>` sizes (any case, spaces
//!   around) parse to `n × unit` unless that overflows `u64`.

#![no_main]

use std::time::{Duration, Instant, SystemTime};

use aigate::units::{MAX_DURATION, parse_duration, parse_size};
use libfuzzer_sys::fuzz_target;

const DURATION_UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("seconds", 1),
    ("m", 60),
    ("min", 60),
    ("h", 3600),
    ("hours", 3600),
    ("d", 86_400),
    ("days", 86_400),
    ("w", 604_800),
    ("weeks", 604_800),
    ("y", 31_557_600),
    ("years", 31_557_600),
];

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
];

/// What aigate does with a duration must not overflow.
fn check_usable(d: Duration, input: &str) {
    let secs = i64::try_from(d.as_secs());
    assert!(secs.is_ok(), "{input:?} -> {d:?}: seconds do not fit i64");
    let secs = secs.unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    assert!(
        now.checked_add(secs).is_some(),
        "{input:?} -> {d:?}: now + d overflows"
    );
    assert!(
        now.checked_sub(secs).is_some(),
        "{input:?} -> {d:?}: now - d overflows"
    );
    assert!(
        Instant::now().checked_add(d).is_some(),
        "{input:?} -> {d:?}: Instant + d overflows"
    );
}

fn check_text(s: &str) {
    if let Ok(d) = parse_duration(s) {
        assert!(d <= MAX_DURATION, "{s:?} -> {d:?}");
        check_usable(d, s);
        let shown = humantime::format_duration(d).to_string();
        assert_eq!(parse_duration(&shown), Ok(d), "{s:?} -> {d:?} -> {shown:?}");
    }
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&n.to_string()), Ok(n), "{s:?} -> {n}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_text(s);
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut num = [0u8; 8];
    let n_bytes = rest.len().min(8);
    num[..n_bytes].copy_from_slice(&rest[..n_bytes]);
    let raw = u64::from_le_bytes(num);
    // Mostly small numbers, sometimes any.
    let n = if sel & 0x80 == 0 { raw % 100_000 } else { raw };
    let pad = if sel & 0x40 == 0 { "" } else { " " };

    let (unit, mult) = DURATION_UNITS[sel as usize % DURATION_UNITS.len()];
    let text = format!("{pad}{n}{unit}{pad}");
    match parse_duration(&text) {
        Ok(d) => {
            assert_eq!(
                u128::from(n) * u128::from(mult),
                d.as_secs() as u128,
                "{text:?}"
            );
            check_usable(d, &text);
        }
        Err(e) => assert!(
            u128::from(n) * u128::from(mult) > u128::from(MAX_DURATION.as_secs()),
            "{text:?} refused: {e}"
        ),
    }

    let (unit, mult) = SIZE_UNITS[sel as usize % SIZE_UNITS.len()];
    let unit = if sel & 0x20 == 0 {
        unit.to_string()
    } else {
        unit.to_ascii_uppercase()
    };
    let text = format!("{pad}{n}{pad}{unit}{pad}");
    match (parse_size(&text), n.checked_mul(mult)) {
        (Ok(got), Some(want)) => assert_eq!(got, want, "{text:?}"),
        (Err(_), None) => {}
        (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
    }
});
