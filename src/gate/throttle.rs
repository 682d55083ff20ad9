//! Login limits, all in memory: per client address (an IPv6 /64 is one address) at most
//! 5 failed logins a minute; per account *and* address at most 10 failures in 15
//! minutes, so that failures from elsewhere never lock a user out of their own address;
//! and gate-wide at most a few password checks at once, since each holds argon2's 19 MiB
//! and a whole CPU on a blocking thread.
//!
//! An attempt reserves a place in its windows before its password is checked and keeps
//! it only if the check fails: a success, or a request that never reached the check,
//! gives the place back. Concurrent attempts therefore cannot slip past a limit while
//! their checks run, and only failures are counted.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Failed logins allowed per address within [`ADDRESS_WINDOW`].
pub const PER_ADDRESS: usize = 5;
/// The window of [`PER_ADDRESS`].
pub const ADDRESS_WINDOW: Duration = Duration::from_secs(60);
/// Failed logins allowed per account and address within [`ACCOUNT_WINDOW`].
pub const PER_ACCOUNT: usize = 10;
/// The window of [`PER_ACCOUNT`].
pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most password checks at once, whatever the number of CPUs: each holds 19 MiB.
pub const MAX_CHECKS: usize = 4;
/// Logins that may wait for a check slot, per slot; more are refused at once.
const QUEUED_PER_CHECK: usize = 4;
/// The longest a login waits for a check slot.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Entries one window map holds. Past this a new address is not tracked rather than
/// refused: a full map must not lock anyone out, and the check slots still bound the
/// rate of password checks.
const MAX_ENTRIES: usize = 65_536;
/// Below this many entries, stale ones are left for their next use to clear.
const SWEEP_AT: usize = 1024;
/// At most one sweep of a map per this long, so a full map costs no scan per request.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A client address as the limits count it: an IPv4 address, or an IPv6 /64 (one
/// subscriber's prefix). IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net(IpAddr);

impl Net {
    /// The counted address of `ip`.
    pub fn of(ip: IpAddr) -> Net {
        Net(super::addr::counted(ip))
    }
}

/// The login counters and the password-check slots, shared by all workers.
#[derive(Debug)]
pub struct LoginThrottle {
    by_address: Windows<Net>,
    by_account: Windows<(u64, Net)>,
    /// Keys the hash of a typed username, so a client cannot aim at collisions.
    names: foldhash::fast::RandomState,
    checks: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
}

impl Default for LoginThrottle {
    /// One check slot per two CPUs, at least 1 and at most [`MAX_CHECKS`]: a flood of
    /// logins leaves at least half the CPUs to the requests of valid credentials.
    fn default() -> LoginThrottle {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        LoginThrottle::new((cpus / 2).clamp(1, MAX_CHECKS))
    }
}

impl LoginThrottle {
    /// Counters with `checks` password-check slots.
    pub fn new(checks: usize) -> LoginThrottle {
        let checks = checks.max(1);
        LoginThrottle {
            by_address: Windows::new(PER_ADDRESS, ADDRESS_WINDOW),
            by_account: Windows::new(PER_ACCOUNT, ACCOUNT_WINDOW),
            names: foldhash::fast::RandomState::default(),
            checks: Arc::new(Semaphore::new(checks)),
            queued: AtomicUsize::new(0),
            max_queued: checks * QUEUED_PER_CHECK,
        }
    }

    /// Starts an attempt from `ip`; `Err(seconds to wait)` when the address has
    /// failed too often.
    pub fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Attempt, u64> {
        let net = Net::of(ip);
        let tracked = self.by_address.reserve(net)?;
        Ok(Attempt {
            throttle: self.clone(),
            net,
            net_tracked: tracked,
            account: None,
            failed: false,
        })
    }

    /// A password-check slot, waiting briefly for one; `None` when all are busy and
    /// the wait is full or over. The check holds the permit until it ends.
    pub async fn check_slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.checks.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _place = Queued::join(&self.queued, self.max_queued)?;
        tokio::time::timeout(MAX_WAIT, self.checks.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// One login attempt's places in the windows. Dropping it without [`Attempt::failed`]
/// gives them back; it is `Send`, so it can end on the thread that checks the password.
#[derive(Debug)]
#[must_use]
pub struct Attempt {
    throttle: Arc<LoginThrottle>,
    net: Net,
    /// Whether the address window tracks this attempt (it does unless it was full).
    net_tracked: bool,
    /// The account and address, when their window tracks this attempt.
    account: Option<(u64, Net)>,
    failed: bool,
}

impl Attempt {
    /// Adds the account `username` (from this attempt's address); `Err(seconds to
    /// wait)` when it failed too often from here. Unknown and real names count alike,
    /// so the answer does not tell which exist.
    pub fn account(&mut self, username: &str) -> Result<(), u64> {
        let t = &self.throttle;
        let key = (t.names.hash_one(username), self.net);
        if t.by_account.reserve(key)? {
            self.account = Some(key);
        }
        Ok(())
    }

    /// Ends the attempt as a failure: it stays counted in its windows.
    pub fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let t = &self.throttle;
        if self.net_tracked {
            t.by_address.settle(self.net, self.failed);
        }
        if let Some(key) = self.account {
            t.by_account.settle(key, self.failed);
        }
    }
}

/// A place among the logins waiting for a check slot, left on drop.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(count: &'a AtomicUsize, max: usize) -> Option<Queued<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(count))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sliding windows of failures per key, with the attempts still being checked.
#[derive(Debug)]
struct Windows<K> {
    limit: usize,
    span: Duration,
    inner: Mutex<Inner<K>>,
}

#[derive(Debug)]
struct Inner<K> {
    map: HashMap<K, Window>,
    swept: Instant,
}

#[derive(Debug, Default)]
struct Window {
    failures: VecDeque<Instant>,
    pending: usize,
}

impl Window {
    fn prune(&mut self, now: Instant, span: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= span)
        {
            self.failures.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.pending == 0 && self.failures.is_empty()
    }
}

impl<K: Hash + Eq + Copy> Windows<K> {
    fn new(limit: usize, span: Duration) -> Windows<K> {
        Windows {
            limit,
            span,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Reserves a place for an attempt under `k`: `Ok(false)` when the map is full and
    /// `k` is not tracked; `Err(seconds to wait)` when the failures and the attempts
    /// being checked fill the window.
    fn reserve(&self, k: K) -> Result<bool, u64> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { map, swept } = &mut *inner;
        if map.len() >= SWEEP_AT && now.duration_since(*swept) >= SWEEP_EVERY {
            map.retain(|_, w| {
                w.prune(now, self.span);
                !w.idle()
            });
            *swept = now;
        }
        if map.len() >= MAX_ENTRIES && !map.contains_key(&k) {
            return Ok(false);
        }
        let w = map.entry(k).or_default();
        w.prune(now, self.span);
        if w.failures.len() + w.pending >= self.limit {
            // Full of failures: until the oldest expires. Full with checks still
            // running: those end within a second or so.
            let wait = match w.failures.front() {
                Some(oldest) if w.failures.len() >= self.limit => {
                    self.span.saturating_sub(now.duration_since(*oldest))
                }
                _ => Duration::from_secs(1),
            };
            return Err(ceil_secs(wait));
        }
        w.pending += 1;
        Ok(true)
    }

    /// Ends an attempt that [`Windows::reserve`] tracked under `k`; `failed` keeps it
    /// counted.
    fn settle(&self, k: K, failed: bool) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = inner.map.get_mut(&k) else {
            return;
        };
        w.pending = w.pending.saturating_sub(1);
        if failed {
            w.failures.push_back(now);
        }
        w.prune(now, self.span);
        if w.idle() {
            inner.map.remove(&k);
        }
    }
}

/// Whole seconds, rounded up, at least 1: a `Retry-After`.
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn fail(t: &Arc<LoginThrottle>, from: &str, user: &str) {
        let mut a = t.begin(ip(from)).expect("address open");
        a.account(user).expect("account open");
        a.failed();
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_ipv4_is_per_address() {
        assert_eq!(
            Net::of(ip("2001:db8:1:2::1")),
            Net::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Net::of(ip("2001:db8:1:2::1")),
            Net::of(ip("2001:db8:1:3::1"))
        );
        assert_ne!(Net::of(ip("192.0.2.1")), Net::of(ip("192.0.2.2")));
        assert_eq!(Net::of(ip("::ffff:192.0.2.1")), Net::of(ip("192.0.2.1")));

        let t = Arc::new(LoginThrottle::new(1));
        for i in 0..PER_ADDRESS {
            fail(&t, &format!("2001:db8:1:2::{:x}", i + 1), &format!("u{i}"));
        }
        let retry = t
            .begin(ip("2001:db8:1:2:abcd::1"))
            .expect_err("the /64 is full");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(t.begin(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn only_failures_stay_counted() {
        let t = Arc::new(LoginThrottle::new(1));
        for _ in 0..3 * PER_ADDRESS {
            let mut a = t.begin(ip("192.0.2.1")).expect("successes do not count");
            a.account("ana").expect("account open");
            drop(a);
        }
        for _ in 0..PER_ADDRESS {
            fail(&t, "192.0.2.1", "ana");
        }
        assert!(t.begin(ip("192.0.2.1")).is_err());
        // Nothing is left behind for an address whose attempts all succeeded.
        let succeeded = t.begin(ip("192.0.2.9")).expect("open");
        drop(succeeded);
        let inner = t.by_address.inner.lock().expect("lock");
        assert!(!inner.map.contains_key(&Net::of(ip("192.0.2.9"))));
    }

    #[test]
    fn attempts_being_checked_hold_their_place() {
        let t = Arc::new(LoginThrottle::new(1));
        let held: Vec<Attempt> = (0..PER_ADDRESS)
            .map(|_| t.begin(ip("192.0.2.1")).expect("open"))
            .collect();
        assert_eq!(t.begin(ip("192.0.2.1")).expect_err("full"), 1);
        drop(held);
        assert!(t.begin(ip("192.0.2.1")).is_ok(), "given back");
    }

    #[test]
    fn account_failures_count_per_address() {
        let t = Arc::new(LoginThrottle::new(1));
        // Bypass the per-address window to fill the account window of one address.
        for _ in 0..PER_ACCOUNT {
            let net = Net::of(ip("192.0.2.1"));
            let name = t.names.hash_one("ana");
            t.by_account.reserve((name, net)).expect("open");
            t.by_account.settle((name, net), true);
        }
        let mut a = t.begin(ip("192.0.2.1")).expect("address open");
        let retry = a.account("ana").expect_err("ana is closed from here");
        assert!(retry > 60 && retry <= 15 * 60, "{retry}");
        drop(a);
        let mut b = t.begin(ip("198.51.100.7")).expect("address open");
        assert!(b.account("ana").is_ok(), "ana is open from elsewhere");
        let mut c = t.begin(ip("192.0.2.1")).expect("address open");
        assert!(
            c.account("bob").is_ok(),
            "another account from the same address"
        );
    }

    #[test]
    fn a_full_map_tracks_no_new_address_rather_than_refuse_it() {
        let w: Windows<u32> = Windows::new(1, Duration::from_secs(60));
        for k in 0..MAX_ENTRIES as u32 {
            assert_eq!(w.reserve(k), Ok(true));
            w.settle(k, true);
        }
        let extra = MAX_ENTRIES as u32;
        for _ in 0..3 {
            assert_eq!(w.reserve(extra), Ok(false), "untracked, not refused");
        }
        assert!(w.reserve(0).is_err(), "tracked ones stay limited");
    }

    #[tokio::test]
    async fn check_slots_are_bounded_and_so_is_the_wait() {
        let t = LoginThrottle::new(1);
        let held = t.check_slot().await.expect("a free slot");
        // The queue is QUEUED_PER_CHECK long; one more is refused at once.
        let waiting: Vec<_> = (0..QUEUED_PER_CHECK).map(|_| t.check_slot()).collect();
        let mut waiting: Vec<_> = waiting.into_iter().map(Box::pin).collect();
        for w in &mut waiting {
            assert!(futures_poll_once(w.as_mut()).await.is_none(), "waits");
        }
        assert!(t.check_slot().await.is_none(), "the queue is full");
        drop(held);
        assert!(
            waiting.remove(0).await.is_some(),
            "the first in line gets it"
        );
    }

    /// Polls `f` once; `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
