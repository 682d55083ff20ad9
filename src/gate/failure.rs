//! The one record of a failed authentication or login: a stable log line (for
//! fail2ban: `auth_failure ip=<HOST> …`), the metric, and an audit entry queued for the
//! database thread.
//!
//! What reaches the log and the audit is bounded here and nowhere else. In size: every
//! field a client chose is cut (path 200 bytes, method 16, user 64, then `…`), its
//! control characters are escaped, and any `aig_` + base64url run in it is cut to the
//! key's display prefix. In rate: the [`Recorder`]'s failure windows let through at
//! most 10 records per address (an IPv6 /64 is one address) per minute and 50 per
//! second in all; past that a failure is only counted (metric, memory), and one
//! `auth_failure_suppressed ip=<HOST> count=N window=60s` line and audit row per address
//! and minute says how many were left out.

use std::net::IpAddr;
use std::time::Instant;

use hyper::Method;

use super::metrics::{Metrics, ReasonLabel};
use super::recorder::Recorder;
use super::windows::{Admit, FAILURE_WINDOW, Suppressed};
use super::{State, addr};
use crate::auth::key;
use crate::store::audit;

/// Most bytes of a path kept in a record (before `…`).
pub const MAX_PATH: usize = 200;
/// Most bytes of a method kept in a record.
pub const MAX_METHOD: usize = 16;
/// Most bytes of a user name kept in a record.
pub const MAX_USER: usize = 64;
/// A key prefix is already a display prefix; this only bounds a forged one.
const MAX_KEY_PREFIX: usize = 16;

/// Records one failure. `key_prefix` is the display prefix of a key-shaped credential,
/// never the credential.
pub fn record(
    state: &State,
    ip: IpAddr,
    reason: &'static str,
    key_prefix: Option<String>,
    user: Option<String>,
    method: &Method,
    path: &str,
) {
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let (admit, closed) = state
        .recorder
        .failure(addr::counted(ip), ip, Instant::now());
    if let Some(s) = closed {
        report(&state.recorder, &state.metrics, s);
    }
    if admit == Admit::Suppress {
        state.metrics.auth_failures_suppressed.inc();
        return;
    }
    let method = clean(method.as_str(), MAX_METHOD);
    let path = clean(path, MAX_PATH);
    let key_prefix = key_prefix.map(|k| clean(&k, MAX_KEY_PREFIX));
    tracing::warn!(
        "auth_failure ip={ip} reason={reason} key={} method={method} path={path}",
        key_prefix.as_deref().unwrap_or("-"),
    );
    queue(
        &state.recorder,
        &state.metrics,
        audit::Entry {
            at: crate::store::now(),
            kind: "auth_failure".into(),
            ip: Some(ip.to_string()),
            reason: Some(reason.into()),
            key_prefix,
            user: user.map(|u| clean(&u, MAX_USER)),
            detail: Some(format!("{method} {path}")),
        },
    );
}

/// Writes the summaries of the failure windows that have ended (all of them when
/// `all`, at shutdown). Called about once a second.
pub fn sweep(recorder: &Recorder, metrics: &Metrics, all: bool) {
    for s in recorder.ended_failure_windows(Instant::now(), all) {
        report(recorder, metrics, s);
    }
}

/// One summary of suppressed failures: a log line and one coalesced audit row. Without
/// an address, the failures of addresses the windows had no room (or budget) for.
fn report(recorder: &Recorder, metrics: &Metrics, s: Suppressed) {
    let window = FAILURE_WINDOW.as_secs();
    let ip = s.ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
    tracing::warn!(
        "auth_failure_suppressed ip={ip} count={} window={window}s",
        s.count
    );
    queue(
        recorder,
        metrics,
        audit::Entry {
            at: crate::store::now(),
            kind: "auth_failure".into(),
            ip: s.ip.map(|ip| ip.to_string()),
            reason: Some("suppressed".into()),
            detail: Some(format!("count={}", s.count)),
            ..audit::Entry::default()
        },
    );
}

fn queue(recorder: &Recorder, metrics: &Metrics, entry: audit::Entry) {
    if !recorder.audit(entry) {
        metrics.audit_dropped.inc();
    }
}

/// Client-chosen `text` made fit for a log line and an audit row: at most `max` bytes
/// and then `…`; control and bidirectional-format characters escaped (`\n`, `\x1b`,
/// `\u{202e}`) and backslashes doubled, so that nothing reaches a terminal as a control
/// sequence or forges a line; every `aig_` + base64url run (in any case, `_` also as
/// `%5F`) cut to the key's display prefix and `…`, so that no key is kept whole.
/// Stops reading at the bound: a 60 KB path costs what 200 bytes do.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 3);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let before = out.len();
        match key_start(&bytes[i..]) {
            Some(skip) => {
                let body = i + skip;
                let run = bytes[body..].iter().take_while(|b| is_b64url(**b)).count();
                let whole = format!("{}{}", key::PREFIX, &text[body..body + run]);
                let shown = key::display_prefix(&whole);
                out.push_str(&shown);
                if shown.len() < whole.len() {
                    out.push('…');
                }
                i = body + run;
            }
            None => {
                let c = text[i..].chars().next().unwrap_or('\u{fffd}');
                escape(c, &mut out);
                i += c.len_utf8();
            }
        }
        // A piece that would cross the bound is left out whole.
        if out.len() > max {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// The length of the key prefix at the start of `b` (`aig_`, or `aig%5F`, in any case)
/// when a base64url character follows it.
fn key_start(b: &[u8]) -> Option<usize> {
    if b.len() < 5 || !b[..3].eq_ignore_ascii_case(b"aig") {
        return None;
    }
    let skip = if b[3] == b'_' {
        4
    } else if b.len() > 6 && b[3..6].eq_ignore_ascii_case(b"%5f") {
        6
    } else {
        return None;
    };
    is_b64url(b[skip]).then_some(skip)
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Appends `c` to `out` as it may be shown: itself, or an escape when it would act on
/// a terminal or could be taken for one.
fn escape(c: char, out: &mut String) {
    use std::fmt::Write;
    let bidi = matches!(
        c,
        '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
    );
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c if c.is_control() || bidi => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_cut_at_the_bound() {
        let long = format!("/api/{}", "a".repeat(60_000));
        let cut = clean(&long, MAX_PATH);
        assert_eq!(cut.len(), MAX_PATH + "…".len());
        assert!(cut.ends_with('…') && cut.starts_with("/api/aaa"));
        assert_eq!(clean("/api/tags", MAX_PATH), "/api/tags");
        // Never inside a character.
        let wide = "é".repeat(300);
        let cut = clean(&wide, 7);
        assert_eq!(cut, "ééé…");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("ana\n\r\tx", 64), "ana\\n\\r\\tx");
        assert_eq!(clean("\u{1b}[2J\u{7f}", 64), "\\x1b[2J\\x7f");
        assert_eq!(clean("a\u{85}b\u{202e}c", 64), "a\\u{85}b\\u{202e}c");
        assert_eq!(clean("back\\slash", 64), "back\\\\slash");
        assert_eq!(clean("naïve ☕", 64), "naïve ☕");
        // An escape that would cross the bound is left out whole.
        assert_eq!(clean("abc\u{1b}", 5), "abc…");
    }

    #[test]
    fn key_shaped_runs_keep_only_their_display_prefix() {
        let k = key::generate().expect("rng");
        let key = k.key.expose();
        let shown = format!("{}…", k.prefix);
        assert_eq!(clean(&format!("/{key}"), MAX_PATH), format!("/{shown}"));
        assert_eq!(
            clean(&format!("/v1/x{key}/y?{key}"), MAX_PATH),
            format!("/v1/x{shown}/y?{shown}")
        );
        let upper = key.replacen("aig_", "AIG_", 1);
        assert_eq!(clean(&upper, MAX_PATH), shown);
        let encoded = key.replacen("aig_", "aig%5F", 1);
        assert_eq!(clean(&encoded, MAX_PATH), shown);
        // A key past the bound is not half-kept either.
        let late = format!("/{}{key}", "b".repeat(190));
        let cut = clean(&late, MAX_PATH);
        assert!(!cut.contains(&key[..14]), "{cut}");
        // Short runs are shown as they are; a lone prefix is just text.
        assert_eq!(clean("/aig_abc/aig_", MAX_PATH), "/aig_abc/aig_");
        assert_eq!(clean("aig_a\nb", 64), "aig_a\\nb");
    }
}
