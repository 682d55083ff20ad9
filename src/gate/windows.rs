//! The rate bounds of failure records: per address (an IPv6 /64 is one) a window of
//! [`FAILURES_PER_ADDRESS`] records a minute, and a budget of [`FAILURES_PER_SECOND`]
//! overall; what they leave out is counted and summarised once per window.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failure records (log line and audit row) one address gets per window.
pub const FAILURES_PER_ADDRESS: u32 = 10;
/// The window of the per-address bound, and of each summary of what it left out.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failure records per second in all (summaries included), and the burst allowed.
pub const FAILURES_PER_SECOND: u32 = 50;
/// Addresses with a failure window at once; failures of further addresses are only
/// counted, in one summary without an address. About 80 bytes each.
pub const FAILURE_ADDRESSES: usize = 10_000;

/// Whether a failure gets its own record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Record,
    /// Counted only; reported in the address's summary.
    Suppress,
}

/// How many failures of one address a window left out; `ip: None` for the failures of
/// addresses there was no room or budget for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// The last address seen (for an IPv6 /64, one of its addresses).
    pub ip: Option<IpAddr>,
    pub count: u64,
}

/// One address's current window.
struct Window {
    start: Instant,
    recorded: u32,
    suppressed: u64,
    last: IpAddr,
}

/// The per-address windows and the global budget (a token bucket).
pub struct FailureWindows {
    by_address: foldhash::HashMap<IpAddr, Window>,
    tokens: f64,
    refilled: Instant,
    /// Failures left out with no window to report them, since `untracked_since`.
    untracked: u64,
    untracked_since: Instant,
}

impl FailureWindows {
    /// No window yet, a full budget.
    pub fn new(now: Instant) -> FailureWindows {
        FailureWindows {
            by_address: foldhash::HashMap::default(),
            tokens: f64::from(FAILURES_PER_SECOND),
            refilled: now,
            untracked: 0,
            untracked_since: now,
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(FAILURES_PER_SECOND);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = self.refilled.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn untrack(&mut self, count: u64, now: Instant) {
        if self.untracked == 0 {
            self.untracked_since = now;
        }
        self.untracked += count;
    }

    /// The summary of an ended window, if it left anything out and the budget allows;
    /// else its count goes to the untracked one.
    fn close(&mut self, w: &Window, now: Instant) -> Option<Suppressed> {
        if w.suppressed == 0 {
            return None;
        }
        if self.take_token(now) {
            Some(Suppressed {
                ip: Some(w.last),
                count: w.suppressed,
            })
        } else {
            self.untrack(w.suppressed, now);
            None
        }
    }

    /// Counts a failure of `ip` (counted as `key`) at `now`: whether it gets its own
    /// record, and the summary of `key`'s window if this failure ended it.
    pub fn failure(
        &mut self,
        key: IpAddr,
        ip: IpAddr,
        now: Instant,
    ) -> (Admit, Option<Suppressed>) {
        let mut closed = None;
        let ended = match self.by_address.get(&key) {
            Some(w) => now.saturating_duration_since(w.start) >= FAILURE_WINDOW,
            None if self.by_address.len() >= FAILURE_ADDRESSES => {
                self.untrack(1, now);
                return (Admit::Suppress, None);
            }
            None => false,
        };
        if ended {
            if let Some(w) = self.by_address.remove(&key) {
                closed = self.close(&w, now);
            }
        }
        let has_budget_left = self
            .by_address
            .get(&key)
            .is_none_or(|w| w.recorded < FAILURES_PER_ADDRESS);
        let admit = if has_budget_left && self.take_token(now) {
            Admit::Record
        } else {
            Admit::Suppress
        };
        let w = self.by_address.entry(key).or_insert(Window {
            start: now,
            recorded: 0,
            suppressed: 0,
            last: ip,
        });
        w.last = ip;
        match admit {
            Admit::Record => w.recorded += 1,
            Admit::Suppress => w.suppressed += 1,
        }
        (admit, closed)
    }

    /// The summaries of the windows ended by `now` (of all of them when `all`), which
    /// are forgotten.
    pub fn ended(&mut self, now: Instant, all: bool) -> Vec<Suppressed> {
        let keys: Vec<IpAddr> = self
            .by_address
            .iter()
            .filter(|(_, w)| all || now.saturating_duration_since(w.start) >= FAILURE_WINDOW)
            .map(|(k, _)| *k)
            .collect();
        let mut ended = Vec::new();
        for k in keys {
            if let Some(w) = self.by_address.remove(&k) {
                ended.extend(self.close(&w, now));
            }
        }
        if self.untracked > 0
            && (all || now.saturating_duration_since(self.untracked_since) >= FAILURE_WINDOW)
        {
            ended.push(Suppressed {
                ip: None,
                count: std::mem::take(&mut self.untracked),
            });
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Feeds `n` failures of `addr`, one every `gap`, from `*t` on; returns how many
    /// were recorded and the summaries of ended windows met on the way.
    fn fail(
        w: &mut FailureWindows,
        addr: &str,
        n: u32,
        t: &mut Instant,
        gap: Duration,
    ) -> (u32, Vec<Suppressed>) {
        let (mut recorded, mut closed) = (0, Vec::new());
        for _ in 0..n {
            let (admit, c) = w.failure(ip(addr), ip(addr), *t);
            recorded += u32::from(admit == Admit::Record);
            closed.extend(c);
            *t += gap;
        }
        (recorded, closed)
    }

    #[test]
    fn an_address_gets_ten_records_a_minute_and_one_summary() {
        let start = Instant::now();
        let mut w = FailureWindows::new(start);
        let mut t = start;
        let gap = Duration::from_millis(100);
        let (recorded, closed) = fail(&mut w, "10.0.0.1", 500, &mut t, gap);
        assert_eq!((recorded, closed.len()), (10, 0), "50 s into the window");
        // Another address is not held back by the first.
        let (recorded, _) = fail(&mut w, "10.0.0.2", 3, &mut t, gap);
        assert_eq!(recorded, 3);
        assert!(w.ended(t, false).is_empty(), "no window has ended yet");
        // The next failure after the minute: the summary, and a fresh window.
        t = start + FAILURE_WINDOW + gap;
        let (recorded, closed) = fail(&mut w, "10.0.0.1", 1, &mut t, gap);
        assert_eq!(recorded, 1);
        let expected = Suppressed {
            ip: Some(ip("10.0.0.1")),
            count: 490,
        };
        assert_eq!(closed, [expected]);
        // The sweep forgets ended windows; the one that left nothing out has no summary.
        let ended = w.ended(t + FAILURE_WINDOW, false);
        assert!(ended.is_empty(), "{ended:?}");
        assert!(w.by_address.is_empty());
    }

    #[test]
    fn all_addresses_share_fifty_records_a_second() {
        let start = Instant::now();
        let mut w = FailureWindows::new(start);
        let mut recorded = 0;
        for i in 0..200u32 {
            let a = format!("10.0.{}.{}", i / 250, i % 250);
            let (admit, _) = w.failure(ip(&a), ip(&a), start);
            recorded += u32::from(admit == Admit::Record);
        }
        assert_eq!(recorded, FAILURES_PER_SECOND);
        // A second later, the budget is back.
        let later = start + Duration::from_secs(1);
        let (admit, _) = w.failure(ip("10.9.9.9"), ip("10.9.9.9"), later);
        assert_eq!(admit, Admit::Record);
        // At shutdown every window with something left out is summarised; past the
        // budget, the rest go into one summary without an address.
        let ended = w.ended(later, true);
        let total: u64 = ended.iter().map(|s| s.count).sum();
        assert_eq!(total, 150);
        assert!(
            ended.len() <= FAILURES_PER_SECOND as usize + 1,
            "{}",
            ended.len()
        );
        assert_eq!(ended.last().map(|s| s.ip), Some(None));
    }

    #[test]
    fn an_ipv6_slash_64_shares_one_window_and_the_windows_are_capped() {
        let start = Instant::now();
        let mut w = FailureWindows::new(start);
        let key = ip("2001:db8::");
        let mut recorded = 0;
        for i in 0..30u32 {
            let addr = ip(&format!("2001:db8::{i:x}"));
            let t = start + Duration::from_secs(1);
            recorded += u32::from(w.failure(key, addr, t).0 == Admit::Record);
        }
        assert_eq!(recorded, FAILURES_PER_ADDRESS);
        let ended = w.ended(start + FAILURE_WINDOW * 2, false);
        assert_eq!(
            ended,
            [Suppressed {
                ip: Some(ip("2001:db8::1d")),
                count: 20
            }]
        );

        // No more windows than the cap; the rest are counted without an address.
        let mut t = start + FAILURE_WINDOW * 3;
        for i in 0..FAILURE_ADDRESSES as u32 + 5 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            w.failure(a, a, t);
            t += Duration::from_micros(1);
        }
        assert_eq!(w.by_address.len(), FAILURE_ADDRESSES);
        let ended = w.ended(t + FAILURE_WINDOW, false);
        assert!(w.by_address.is_empty());
        let untracked: Vec<_> = ended.iter().filter(|s| s.ip.is_none()).collect();
        assert_eq!(untracked.len(), 1);
        let total: u64 = ended.iter().map(|s| s.count).sum();
        let recorded = FAILURES_PER_SECOND as u64; // all within a second's budget
        assert_eq!(total, FAILURE_ADDRESSES as u64 + 5 - recorded);
    }
}
