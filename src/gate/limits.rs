//! Per-key (or per-user, for JWT callers) limits: requests per minute as a sliding
//! window, requests in flight, and tokens per UTC day. All in memory, in the
//! principal's [`LimitState`], which survives cache refreshes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::auth::verifier::{LimitState, Principal};
use crate::store::{now, usage::DAY};

const WINDOW_MS: u64 = 60_000;

/// Why a request was refused, with the seconds to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Rate { retry_after: u64, limit: u32 },
    Concurrency { limit: u32 },
    Tokens { retry_after: u64, limit: u64 },
}

impl Rejection {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Rate { .. } => "rate",
            Rejection::Concurrency { .. } => "concurrency",
            Rejection::Tokens { .. } => "tokens",
        }
    }

    /// The 429 body's detail.
    pub fn detail(&self) -> String {
        match self {
            Rejection::Rate { limit, .. } => {
                format!("Rate limit exceeded: {limit} requests per minute")
            }
            Rejection::Concurrency { limit } => {
                format!("Too many requests in flight: at most {limit} at once")
            }
            Rejection::Tokens { limit, .. } => {
                format!("Daily token quota exceeded: {limit} tokens per UTC day")
            }
        }
    }

    /// Seconds until a retry may succeed.
    pub fn retry_after(&self) -> u64 {
        match self {
            Rejection::Rate { retry_after, .. } | Rejection::Tokens { retry_after, .. } => {
                *retry_after
            }
            Rejection::Concurrency { .. } => 1,
        }
    }
}

/// An admitted request's caller, holding a concurrency slot when its limits count
/// requests in flight; dropping it (the response ended or the client left) frees the
/// slot. It owns the caller rather than sharing it, so admitting a request touches the
/// caller's reference count, which every worker shares, no more than it must.
#[derive(Debug)]
pub struct Admitted {
    pub principal: Arc<Principal>,
    slot: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.slot {
            self.principal.state.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Admits a request under `principal`'s limits, or says why not. The token quota is
/// checked first (it has no side effect), then a concurrency slot is taken, then the
/// request is counted against the rate.
pub fn admit(principal: Arc<Principal>) -> Result<Admitted, Rejection> {
    if let Some(limit) = principal.limits.tokens_per_day {
        let today = now().div_euclid(DAY);
        if principal.state.tokens_on(today) >= limit {
            let retry_after = ((today + 1) * DAY - now()).max(1) as u64;
            return Err(Rejection::Tokens { retry_after, limit });
        }
    }
    let mut admitted = Admitted {
        principal,
        slot: false,
    };
    let (concurrency, rpm) = {
        let l = &admitted.principal.limits;
        (l.concurrency, l.rpm)
    };
    if let Some(limit) = concurrency {
        let before = admitted
            .principal
            .state
            .inflight
            .fetch_add(1, Ordering::AcqRel);
        // Taken even when refused: dropping `admitted` gives it back.
        admitted.slot = true;
        if before >= limit {
            return Err(Rejection::Concurrency { limit });
        }
    }
    if let Some(limit) = rpm {
        rate(&admitted.principal.state, limit, millis())?;
    }
    Ok(admitted)
}

/// Sliding-window counter: the previous minute's count weighted by how much of it the
/// window still covers, plus this minute's. Unlike a fixed window it never lets twice
/// the rate through at a minute boundary.
fn rate(s: &LimitState, limit: u32, now_ms: u64) -> Result<(), Rejection> {
    let mut w = s.window.lock().unwrap_or_else(|e| e.into_inner());
    let index = now_ms / WINDOW_MS;
    let (start, cur, prev) = *w;
    let (cur, prev) = match index.saturating_sub(start) {
        0 => (cur, prev),
        1 => (0, cur),
        _ => (0, 0),
    };
    let elapsed = now_ms % WINDOW_MS;
    let weight = (WINDOW_MS - elapsed) as f64 / WINDOW_MS as f64;
    let estimate = prev as f64 * weight + cur as f64;
    if estimate + 1.0 > limit as f64 {
        // When does prev * (1 - t/60s) + cur + 1 <= limit hold again?
        let wait_ms = if cur + 1 > limit || prev == 0 {
            WINDOW_MS - elapsed
        } else {
            let need = 1.0 - (limit - cur - 1) as f64 / prev as f64;
            ((need * WINDOW_MS as f64) as u64).saturating_sub(elapsed)
        };
        *w = (index, cur, prev);
        return Err(Rejection::Rate {
            retry_after: wait_ms.div_ceil(1000).max(1),
            limit,
        });
    }
    *w = (index, cur + 1, prev);
    Ok(())
}

/// Adds the tokens of a finished response to `p`'s daily count.
pub fn add_tokens(state: &LimitState, tokens: u64) {
    state.add_tokens(now().div_euclid(DAY), tokens);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_never_doubles_at_the_boundary() {
        let s = LimitState::default();
        // 10 per minute, all used at the end of minute 0.
        for _ in 0..10 {
            rate(&s, 10, 59_000).expect("under the limit");
        }
        assert!(rate(&s, 10, 59_500).is_err());
        // Just after the boundary almost all of the previous minute still counts.
        assert!(rate(&s, 10, 60_100).is_err());
        // Halfway through minute 1, half of it counts: 5 more fit.
        let mut ok = 0;
        for _ in 0..10 {
            if rate(&s, 10, 90_000).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
    }

    #[test]
    fn the_token_count_is_per_day_and_survives_races() {
        let s = std::sync::Arc::new(LimitState::with_tokens(20_000, 40));
        assert_eq!(s.tokens_on(20_000), 40);
        assert_eq!(s.tokens_on(20_001), 0, "a new day starts at 0");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        s.add_tokens(20_000, 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(s.tokens_on(20_000), 40 + 4 * 10_000 * 3);
        s.add_tokens(20_001, 5);
        assert_eq!(s.tokens_on(20_001), 5);
        assert_eq!(s.tokens_on(20_000), 0);
        // Counts stop at 2^44 - 1 rather than spill into the day.
        s.add_tokens(20_001, u64::MAX);
        assert_eq!(s.tokens_on(20_001), (1 << 44) - 1);
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        let s = LimitState::default();
        rate(&s, 1, 1_000).expect("first");
        match rate(&s, 1, 1_500) {
            Err(Rejection::Rate { retry_after, .. }) => assert!((1..=60).contains(&retry_after)),
            other => panic!("{other:?}"),
        }
    }
}
