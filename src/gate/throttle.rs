//! Login attempt counters: at most 5 attempts per minute per client address, and at
//! most 10 failures per 15 minutes per account.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PER_IP: usize = 5;
const IP_WINDOW: Duration = Duration::from_secs(60);
const PER_ACCOUNT: usize = 10;
const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept per map before stale ones are swept.
const SWEEP_AT: usize = 10_000;

/// Sliding-window attempt counters for logins.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    by_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    /// Counts an attempt from `ip`; `Err(seconds to wait)` past the per-address limit.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        hit(&self.by_ip, &ip, PER_IP, IP_WINDOW, true)
    }

    /// Whether `username` may try again; `Err(seconds to wait)` after too many failures.
    pub fn account_open(&self, username: &str) -> Result<(), u64> {
        hit(
            &self.failures,
            &username.to_string(),
            PER_ACCOUNT,
            ACCOUNT_WINDOW,
            false,
        )
    }

    /// Counts a failed login for `username`.
    pub fn failed(&self, username: &str) {
        let _ = hit(
            &self.failures,
            &username.to_string(),
            PER_ACCOUNT,
            ACCOUNT_WINDOW,
            true,
        );
    }
}

/// Counts an event in `map[k]` if fewer than `max` happened within `window`; else
/// returns the seconds until one expires.
fn hit<K: std::hash::Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, VecDeque<Instant>>>,
    k: &K,
    max: usize,
    window: Duration,
    record: bool,
) -> Result<(), u64> {
    let now = Instant::now();
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= SWEEP_AT {
        m.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
    }
    let q = m.entry(k.clone()).or_default();
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
    if q.len() >= max {
        let oldest = q.front().copied().unwrap_or(now);
        let wait = window.saturating_sub(now.duration_since(oldest));
        return Err(wait.as_secs().max(1));
    }
    if record {
        q.push_back(now);
    }
    Ok(())
}
