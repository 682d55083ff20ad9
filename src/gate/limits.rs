//! A caller's limits: requests per minute as a sliding window, requests in flight, and
//! tokens per UTC day. All in memory, in a [`LimitState`] that outlives cache refreshes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::store::{now, usage::DAY};

/// The limits that apply to a caller (`None`: unlimited).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
    pub tokens_per_day: Option<u64>,
}

/// A caller with limits and the counters they are checked against.
pub trait Budgeted {
    /// The limits that apply.
    fn limits(&self) -> &Limits;
    /// The counters, shared by every credential of one budget.
    fn counters(&self) -> &LimitState;
}

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
pub struct Admitted<P: Budgeted> {
    caller: Arc<P>,
    slot: bool,
}

impl<P: Budgeted> Admitted<P> {
    /// The caller.
    pub fn caller(&self) -> &Arc<P> {
        &self.caller
    }
}

impl<P: Budgeted> Drop for Admitted<P> {
    fn drop(&mut self) {
        if self.slot {
            self.caller
                .counters()
                .inflight
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Admits a request outside every limit (model lists, version, show: what a client
/// such as Open WebUI asks on every page load, and which must keep working when the
/// caller's budget is spent so that the budget's own message reaches the chat).
pub fn unmetered<P: Budgeted>(caller: Arc<P>) -> Admitted<P> {
    Admitted {
        caller,
        slot: false,
    }
}

fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Admits a request under `caller`'s limits, or says why not. The token quota is
/// checked first (it has no side effect), then a concurrency slot is taken, then the
/// request is counted against the rate.
pub fn admit<P: Budgeted>(caller: Arc<P>) -> Result<Admitted<P>, Rejection> {
    admit_with(caller, true)
}

/// [`admit`] for a request that waits in the queue for a slot: its concurrency limit is
/// the queue's to keep (it holds the request until one of the caller's ends).
pub fn admit_queued<P: Budgeted>(caller: Arc<P>) -> Result<Admitted<P>, Rejection> {
    admit_with(caller, false)
}

fn admit_with<P: Budgeted>(caller: Arc<P>, concurrency: bool) -> Result<Admitted<P>, Rejection> {
    if let Some(limit) = caller.limits().tokens_per_day {
        let today = now().div_euclid(DAY);
        if caller.counters().tokens_on(today) >= limit {
            let retry_after = ((today + 1) * DAY - now()).max(1) as u64;
            return Err(Rejection::Tokens { retry_after, limit });
        }
    }
    let mut admitted = Admitted {
        caller,
        slot: false,
    };
    let (concurrency, rpm) = {
        let l = admitted.caller.limits();
        (l.concurrency.filter(|_| concurrency), l.rpm)
    };
    if let Some(limit) = concurrency {
        let before = admitted
            .caller
            .counters()
            .inflight
            .fetch_add(1, Ordering::AcqRel);
        // Taken even when refused: dropping `admitted` gives it back.
        admitted.slot = true;
        if before >= limit {
            return Err(Rejection::Concurrency { limit });
        }
    }
    if let Some(limit) = rpm {
        rate(admitted.caller.counters(), limit, millis())?;
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

/// Adds the tokens of a finished response to `state`'s daily count.
pub fn add_tokens(state: &LimitState, tokens: u64) {
    state.add_tokens(now().div_euclid(DAY), tokens);
}

/// The live counters of one budget (a user, or a key without a user).
#[derive(Debug, Default)]
pub struct LimitState {
    /// Requests in flight.
    pub inflight: std::sync::atomic::AtomicU32,
    /// Sliding-window request counter: (the current minute's index, counted from the
    /// gate's start; requests in it; requests in the minute before).
    pub window: Mutex<(u64, u32, u32)>,
    /// Tokens used today: the UTC day in the top 20 bits, the count in the low 44, in
    /// one word, so that a request reads it with a load and adds to it with one
    /// compare-and-swap (no lock shared by the workers). Seeded from the usage table on
    /// first sight.
    tokens: std::sync::atomic::AtomicU64,
}

const TOKEN_BITS: u32 = 44;
const TOKEN_MAX: u64 = (1 << TOKEN_BITS) - 1;

fn pack_tokens(day: i64, used: u64) -> u64 {
    ((day as u64) << TOKEN_BITS) | used.min(TOKEN_MAX)
}

impl LimitState {
    /// A state whose count for `day` starts at `used`.
    pub fn with_tokens(day: i64, used: u64) -> LimitState {
        LimitState {
            tokens: pack_tokens(day, used).into(),
            ..LimitState::default()
        }
    }

    /// Tokens used on `day` (0 once the stored day is another). Counts stop at 2^44.
    pub fn tokens_on(&self, day: i64) -> u64 {
        let t = self.tokens.load(Ordering::Acquire);
        if t >> TOKEN_BITS == pack_tokens(day, 0) >> TOKEN_BITS {
            t & TOKEN_MAX
        } else {
            0
        }
    }

    /// Adds `n` tokens to `day`'s count, starting it over when the day changed.
    pub fn add_tokens(&self, day: i64, n: u64) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                let base = pack_tokens(day, 0);
                let used = if t >> TOKEN_BITS == base >> TOKEN_BITS {
                    t & TOKEN_MAX
                } else {
                    0
                };
                Some(pack_tokens(day, used.saturating_add(n)))
            });
    }
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
