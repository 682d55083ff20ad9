//! The gate's database thread. It owns one long-lived connection and, every 100 ms,
//! asks SQLite whether another connection committed (`PRAGMA data_version`) — a CLI
//! revoke, rotation or tier change — and if so refreshes the verifier's cache. Every
//! second (and at shutdown) it writes what the request path recorded in memory: usage,
//! `last_used_at` and audit entries, in one transaction. The request path never waits
//! for SQLite and never writes per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::verifier::Verifier;
use crate::store::usage::{self, Counts, UsageKey};
use crate::store::{OpenMode, Store, audit, now};

/// How often other connections' commits are looked for.
const POLL: Duration = Duration::from_millis(100);
/// How often recorded usage and audit entries are written.
const FLUSH: Duration = Duration::from_secs(1);
/// Audit entries waiting to be written, at most; past it they are dropped and counted,
/// so a flood of bad credentials can neither stall the gate nor grow its memory.
const AUDIT_QUEUE: usize = 4096;

/// Usage rows and `last_used_at` values taken for one flush.
type Batch = (Vec<(UsageKey, Counts)>, Vec<(i64, i64)>);

/// What the request path records, in memory.
pub struct Recorder {
    usage: Mutex<HashMap<UsageKey, Counts>>,
    last_used: Mutex<HashMap<i64, i64>>,
    audit_tx: SyncSender<audit::Entry>,
    audit_rx: Mutex<Option<Receiver<audit::Entry>>>,
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
            usage: Mutex::default(),
            last_used: Mutex::default(),
            audit_tx,
            audit_rx: Mutex::new(Some(audit_rx)),
        }
    }
}

impl Recorder {
    /// Adds one finished request.
    pub fn record(&self, key_id: Option<i64>, user: Option<&str>, model: &str, counts: Counts) {
        let now = now();
        let k = UsageKey {
            day: now.div_euclid(usage::DAY),
            key_id: key_id.unwrap_or(0),
            user: user.unwrap_or("").to_string(),
            model: model.to_string(),
        };
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(k)
            .or_default()
            .add(counts);
        if let Some(id) = key_id {
            self.last_used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, now);
        }
    }

    /// Queues an audit entry; returns false when the queue is full and it was dropped.
    pub fn audit(&self, entry: audit::Entry) -> bool {
        !matches!(self.audit_tx.try_send(entry), Err(TrySendError::Full(_)))
    }

    fn take(&self) -> Batch {
        let usage = std::mem::take(&mut *self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        let used = std::mem::take(&mut *self.last_used.lock().unwrap_or_else(|e| e.into_inner()));
        (usage.into_iter().collect(), used.into_iter().collect())
    }

    fn put_back(&self, usage_rows: Vec<(UsageKey, Counts)>, used: Vec<(i64, i64)>) {
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        for (k, c) in usage_rows {
            u.entry(k).or_default().add(c);
        }
        drop(u);
        let mut l = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        for (id, at) in used {
            let e = l.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

/// The running database thread.
pub struct DbThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DbThread {
    /// Starts the thread over the database at `db`.
    pub fn spawn(
        db: PathBuf,
        verifier: Arc<Verifier>,
        recorder: Arc<Recorder>,
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
                loop {
                    let stopping_now = stopping.load(Ordering::Acquire);
                    match data_version(&store) {
                        Ok(v) if Some(v) != version => match verifier.refresh(store.conn()) {
                            Ok(()) => version = Some(v),
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
