//! The SQLite file: where it lives, how it is opened (mode 0600, WAL, busy timeout,
//! foreign keys) and how `schema.sql` migrates it. One file per table family beside this.

pub mod audit;
pub mod hosts;
pub mod keys;
pub mod model_pins;
pub mod tiers;
pub mod usage;
pub mod users;

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The schema, embedded so that the binary migrates any database it opens.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// How long a statement waits for another connection's lock before giving up. Writers
/// hold locks for milliseconds; this only matters under heavy contention.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors whose kind decides what the caller does or says.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database at {0} (run `aigate init` first, or pass --db)")]
    Missing(PathBuf),
    #[error(
        "database {path} has schema version {found}, newer than this aigate supports ({supported}); upgrade aigate"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether opening may create the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file (and its folder) when missing.
    Create,
    /// Fail with [`StoreError::Missing`] when the file does not exist; never create it.
    Existing,
}

/// An open database connection with aigate's pragmas set and the schema migrated.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    created: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The database path: `--db`, else `$AIGATE_DB` (both resolved by clap), else
/// `$XDG_DATA_HOME/aigate/aigate.db`, else `~/.local/share/aigate/aigate.db`.
pub fn default_path() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("aigate").join("aigate.db")
}

/// Seconds since the Unix epoch, the unit of every time in the database.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The numbered migrations of `schema.sql`, in order.
pub fn migrations() -> Vec<(i64, &'static str)> {
    let mut out = Vec::new();
    for section in SCHEMA.split("-- migration: ").skip(1) {
        let (num, body) = section.split_once('\n').unwrap_or((section, ""));
        if let Ok(n) = num.trim().parse::<i64>() {
            out.push((n, body));
        }
    }
    out
}

/// The schema version this binary migrates to.
pub fn latest_version() -> i64 {
    migrations().last().map(|(n, _)| *n).unwrap_or(0)
}

impl Store {
    /// Opens (and in [`OpenMode::Create`], creates) the database at `path`, then migrates it.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Store> {
        let mut created = false;
        if !path.exists() {
            if mode == OpenMode::Existing {
                return Err(StoreError::Missing(path.to_path_buf()));
            }
            created = create_file(path)?;
        }
        // Never let SQLite create the file itself: it would use the umask, not 0600.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            created,
        };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(&self) -> Result<()> {
        // Switching to WAL needs a moment of exclusive access, which a concurrent opener
        // may hold; the busy handler does not always cover it, so retry. Bounded by time,
        // not tries: each try may itself wait the busy timeout on a locked file.
        let started = std::time::Instant::now();
        loop {
            match self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            {
                Ok(_) => break,
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;",
        )?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let latest = latest_version();
        let current = self.schema_version()?;
        if current > latest {
            return Err(self.too_new(current, latest));
        }
        if current == latest {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited for the lock.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > latest {
            drop(tx);
            return Err(self.too_new(current, latest));
        }
        for (n, sql) in migrations() {
            if n > current {
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {n}"))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn too_new(&self, found: i64, supported: i64) -> StoreError {
        StoreError::TooNew {
            path: self.path.clone(),
            found,
            supported,
        }
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Whether this open created the file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The connection, for the table modules and the gate's reader and writer threads.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` inside a write transaction taken up front (`BEGIN IMMEDIATE`), so that a
    /// concurrent writer makes this one wait rather than fail with "database is locked".
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Creates the database file with mode 0600 (and its folder with 0700). Returns whether
/// this call created it, as another process may have won the race.
fn create_file(path: &Path) -> Result<bool> {
    let err = |source| StoreError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Formats Unix seconds as RFC 3339 UTC, the form of every time in JSON output.
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let nums: Vec<i64> = migrations().iter().map(|(n, _)| *n).collect();
        assert!(!nums.is_empty());
        for (i, n) in nums.iter().enumerate() {
            assert_eq!(*n, i as i64 + 1);
        }
    }

    #[test]
    fn open_creates_0600_and_migrates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/a.db");
        let store = Store::open(&path, OpenMode::Create).expect("open");
        assert!(store.created());
        assert_eq!(store.schema_version().expect("version"), latest_version());
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        drop(store);
        let again = Store::open(&path, OpenMode::Existing).expect("reopen");
        assert!(!again.created());
    }

    #[test]
    fn missing_is_refused_without_creating() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.db");
        assert!(matches!(
            Store::open(&path, OpenMode::Existing),
            Err(StoreError::Missing(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
