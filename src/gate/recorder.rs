//! The gate's database thread. It owns one long-lived connection and, every 100 ms,
//! asks SQLite whether another connection committed (`PRAGMA data_version`) — a CLI
//! revoke, rotation or tier change — and if so refreshes the verifier's cache. Every
//! second (and at shutdown) it writes what the request path recorded in memory: usage,
//! `last_used_at` and audit entries, in one transaction, and what the gate observed of
//! its hosts. The request path never waits
//! for SQLite and never writes per request. Every hour (and once at start) it deletes
//! audit rows older than the retention.
//!
//! The recorder also keeps the failure windows: how many authentication failures each
//! address had recorded in the current minute, against the per-address and global
//! bounds that [`super::failure`] applies.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::authn::Verifier;
use super::fleet::Fleet;
use super::windows::{Admit, FailureWindows, Suppressed};
use crate::store::usage::{self, Counts, UsageKey};
use crate::store::{OpenMode, Store, audit, now};

/// How often other connections' commits are looked for.
const POLL: Duration = Duration::from_millis(100);
/// How often recorded usage and audit entries are written.
const FLUSH: Duration = Duration::from_secs(1);
/// Audit entries waiting to be written, at most; past it they are dropped and counted,
/// so a flood of bad credentials can neither stall the gate nor grow its memory.
const AUDIT_QUEUE: usize = 4096;
/// How often old audit rows are deleted (and once at start).
const PRUNE: Duration = Duration::from_secs(3600);

/// Usage rows and `last_used_at` values taken for one flush.
type Batch = (Vec<(UsageKey, Counts)>, Vec<(i64, i64)>);

/// Usage by (day, key id), then user, then model: nested so that a request whose row
/// already exists is counted without allocating its key. Hashed with foldhash, seeded
/// per process (a model name comes from the caller, so not a fixed hash either).
type UsageMap =
    foldhash::HashMap<(i64, i64), foldhash::HashMap<String, foldhash::HashMap<String, Counts>>>;

/// Recorded and not yet written.
#[derive(Default)]
struct Pending {
    usage: UsageMap,
    /// `last_used_at` by key id.
    last_used: foldhash::HashMap<i64, i64>,
}

/// What the request path records, in memory.
pub struct Recorder {
    pending: Mutex<Pending>,
    audit_tx: SyncSender<audit::Entry>,
    audit_rx: Mutex<Option<Receiver<audit::Entry>>>,
    failures: Mutex<FailureWindows>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Default for Recorder {
    fn default() -> Self {
        let (audit_tx, audit_rx) = sync_channel(AUDIT_QUEUE);
        Recorder {
            pending: Mutex::default(),
            audit_tx,
            audit_rx: Mutex::new(Some(audit_rx)),
            failures: Mutex::new(FailureWindows::new(Instant::now())),
        }
    }
}

impl Recorder {
    /// Adds one finished request.
    pub fn record(&self, key_id: Option<i64>, user: Option<&str>, model: &str, counts: Counts) {
        let now = now();
        let mut pending = self.lock();
        add(
            &mut pending.usage,
            (now.div_euclid(usage::DAY), key_id.unwrap_or(0)),
            user.unwrap_or(""),
            model,
            counts,
        );
        if let Some(id) = key_id {
            pending.last_used.insert(id, now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failure of `ip` (whose per-address unit is `key`) at `now`: whether it
    /// gets its own record, and the summary of the address's previous window if that
    /// window has just ended.
    pub fn failure(&self, key: IpAddr, ip: IpAddr, now: Instant) -> (Admit, Option<Suppressed>) {
        self.failures().failure(key, ip, now)
    }

    /// The summaries of the failure windows ended by `now` (of all windows when `all`),
    /// which are forgotten: the windows stay as many as the addresses that failed in
    /// the last minute, and at most [`FAILURE_ADDRESSES`](super::windows::FAILURE_ADDRESSES).
    pub fn ended_failure_windows(&self, now: Instant, all: bool) -> Vec<Suppressed> {
        self.failures().ended(now, all)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureWindows> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an audit entry; returns false when the queue is full and it was dropped.
    pub fn audit(&self, entry: audit::Entry) -> bool {
        !matches!(self.audit_tx.try_send(entry), Err(TrySendError::Full(_)))
    }

    fn take(&self) -> Batch {
        let Pending { usage, last_used } = std::mem::take(&mut *self.lock());
        let mut rows = Vec::new();
        for ((day, key_id), users) in usage {
            for (user, models) in users {
                for (model, counts) in models {
                    let key = UsageKey {
                        day,
                        key_id,
                        user: user.clone(),
                        model,
                    };
                    rows.push((key, counts));
                }
            }
        }
        (rows, last_used.into_iter().collect())
    }

    fn put_back(&self, usage_rows: Vec<(UsageKey, Counts)>, used: Vec<(i64, i64)>) {
        let mut pending = self.lock();
        for (k, c) in usage_rows {
            add(&mut pending.usage, (k.day, k.key_id), &k.user, &k.model, c);
        }
        for (id, at) in used {
            let e = pending.last_used.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

fn add(usage: &mut UsageMap, day_key: (i64, i64), user: &str, model: &str, counts: Counts) {
    let users = usage.entry(day_key).or_default();
    let models = match users.get_mut(user) {
        Some(m) => m,
        None => users.entry(user.to_string()).or_default(),
    };
    match models.get_mut(model) {
        Some(c) => c.add(counts),
        None => {
            models.insert(model.to_string(), counts);
        }
    }
}

/// The running database thread.
pub struct DbThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DbThread {
    /// Starts the thread over the database at `db`. With a `retention`, audit rows
    /// older than it are deleted at once and then every hour.
    pub fn spawn(
        db: PathBuf,
        verifier: Arc<Verifier>,
        recorder: Arc<Recorder>,
        fleet: Arc<Fleet>,
        retention: Option<Duration>,
    ) -> anyhow::Result<DbThread> {
        let mut store = Store::open(&db, OpenMode::Existing)?;
        let audit_rx = recorder
            .audit_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the database thread is already running"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name("aigate-db".into())
            .spawn(move || {
                let mut version = data_version(&store).ok();
                let mut last_flush = Instant::now();
                let mut pending_audit: Vec<audit::Entry> = Vec::new();
                let mut last_prune = None::<Instant>;
                loop {
                    let stopping_now = stopping.load(Ordering::Acquire);
                    if let Some(keep) = retention {
                        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE) {
                            last_prune = Some(Instant::now());
                            prune(&mut store, keep);
                        }
                    }
                    match data_version(&store) {
                        Ok(v) if Some(v) != version => match verifier.refresh(store.conn()) {
                            Ok(()) => {
                                version = Some(v);
                                if let Err(e) = fleet.refresh(store.conn()) {
                                    tracing::error!(
                                        "reading the hosts failed, keeping the last: {e}"
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::error!(
                                    "refreshing credentials failed, dropping the cache: {e}"
                                );
                                verifier.clear();
                            }
                        },
                        Ok(_) => {}
                        Err(e) => {
                            // Cannot see revocations: fail closed rather than serve a
                            // stale cache.
                            tracing::error!("cannot read the database, dropping the cache: {e}");
                            verifier.clear();
                            version = None;
                        }
                    }
                    if stopping_now || last_flush.elapsed() >= FLUSH {
                        last_flush = Instant::now();
                        while pending_audit.len() < AUDIT_QUEUE {
                            match audit_rx.try_recv() {
                                Ok(e) => pending_audit.push(e),
                                Err(_) => break,
                            }
                        }
                        flush(&mut store, &recorder, &mut pending_audit);
                        fleet.report(&mut store);
                    }
                    if stopping_now {
                        break;
                    }
                    std::thread::sleep(POLL);
                }
            })?;
        Ok(DbThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Writes what is left and stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for DbThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn data_version(store: &Store) -> rusqlite::Result<i64> {
    store
        .conn()
        .query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// Deletes the audit rows older than `keep`. A failure is logged and tried again at
/// the next hour.
fn prune(store: &mut Store, keep: Duration) {
    let before = now().saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
    match store.write(|tx| audit::prune(tx, before)) {
        Ok(0) => {}
        Ok(n) => tracing::info!("deleted {n} audit rows older than {}", days(keep)),
        Err(e) => tracing::error!("deleting old audit rows failed, will retry in an hour: {e}"),
    }
}

/// A retention as it was likely given: `90d` rather than humantime's months.
pub fn days(d: Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % usage::DAY as u64 == 0 => format!("{}d", s / usage::DAY as u64),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Writes recorded usage, `last_used_at` and audit entries in one transaction. On
/// failure everything is kept for the next try (the audit backlog stays bounded).
fn flush(store: &mut Store, recorder: &Recorder, pending_audit: &mut Vec<audit::Entry>) {
    let (usage_rows, used) = recorder.take();
    if usage_rows.is_empty() && used.is_empty() && pending_audit.is_empty() {
        return;
    }
    let result = store.write(|tx| {
        usage::add(tx, &usage_rows)?;
        usage::touch_keys(tx, &used)?;
        audit::insert(tx, pending_audit)?;
        Ok(())
    });
    match result {
        Ok(()) => pending_audit.clear(),
        Err(e) => {
            tracing::error!(
                "writing usage failed, will retry: {e} ({} usage rows, {} audit entries kept)",
                usage_rows.len(),
                pending_audit.len()
            );
            recorder.put_back(usage_rows, used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64) -> Counts {
        Counts {
            requests,
            prompt_tokens: 2 * requests,
            completion_tokens: 3 * requests,
        }
    }

    /// The rows of a batch in key order, as (key id, user, model, counts).
    fn rows(batch: &Batch) -> Vec<(i64, String, String, Counts)> {
        let mut rows: Vec<_> = batch
            .0
            .iter()
            .map(|(k, c)| (k.key_id, k.user.clone(), k.model.clone(), *c))
            .collect();
        rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        rows
    }

    fn row(id: i64, user: &str, model: &str, n: u64) -> (i64, String, String, Counts) {
        (id, user.to_string(), model.to_string(), counts(n))
    }

    #[test]
    fn requests_add_up_per_row_and_a_failed_flush_loses_nothing() {
        let r = Recorder::default();
        r.record(Some(7), None, "llama3:latest", counts(1));
        r.record(Some(7), None, "llama3:latest", counts(1));
        r.record(Some(7), None, "qwen:latest", counts(1));
        r.record(None, Some("ana"), "llama3:latest", counts(1));
        let batch = r.take();
        assert_eq!(
            rows(&batch),
            [
                row(0, "ana", "llama3:latest", 1),
                row(7, "", "llama3:latest", 2),
                row(7, "", "qwen:latest", 1),
            ]
        );
        assert_eq!(batch.1.iter().map(|u| u.0).collect::<Vec<_>>(), [7]);
        assert!(r.take().0.is_empty(), "taken rows are gone");

        // The write failed: the rows go back, and later requests add to them.
        r.put_back(batch.0, batch.1);
        r.record(Some(7), None, "llama3:latest", counts(1));
        let batch = r.take();
        assert_eq!(
            rows(&batch),
            [
                row(0, "ana", "llama3:latest", 1),
                row(7, "", "llama3:latest", 3),
                row(7, "", "qwen:latest", 1),
            ]
        );
        assert_eq!(batch.1.len(), 1);
    }
}
