//! The gate's verifier: turns a credential into a [`Principal`] and keeps what it learnt
//! in memory, so that a cached key or token costs no SQLite query. Another process's
//! commit (a CLI revoke, rotation, passwd, tier change…) is noticed by the gate's
//! database thread through `PRAGMA data_version`, which then calls [`Verifier::refresh`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::Connection;

use super::AuthError;
use super::principal::{Principal, judge, judge_user, resolve, resolve_user};
use crate::auth::jwt::{Claims, JwtKeys, TokenError};
use crate::auth::key::{self, KeyHash};
use crate::gate::limits::LimitState;
use crate::store::keys;
use crate::store::tiers::{self, Tier};
use crate::store::{Result as StoreResult, Store, StoreError, now, usage, users};

/// The most credentials kept; past it the cache starts afresh (a flood of distinct
/// keys cannot grow memory without bound).
const MAX_ENTRIES: usize = 50_000;
/// The most well-formed but unknown keys remembered, so that repeating one costs no
/// query; kept apart so that a flood of them cannot push out the known keys.
const MAX_UNKNOWN: usize = 10_000;

/// Whose budget a credential spends: a user's (all of their keys and tokens share one),
/// or a key's own when it has no user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    User(String),
    Key(i64),
}

impl Owner {
    fn of_key(row: &keys::AuthRow) -> Owner {
        match &row.key.user {
            Some(u) => Owner::User(u.clone()),
            None => Owner::Key(row.key.id),
        }
    }
}

/// Fresh counters for `owner`, with today's tokens from the usage table.
fn seeded(conn: &Connection, owner: &Owner) -> StoreResult<Arc<LimitState>> {
    let day = now().div_euclid(usage::DAY);
    let used = match owner {
        Owner::User(u) => usage::tokens_on(conn, day, 0, u)?,
        Owner::Key(id) => usage::tokens_on(conn, day, *id, "")?,
    };
    Ok(Arc::new(LimitState::with_tokens(day, used)))
}

/// The cache is read on every request: its maps hash with foldhash (seeded per process)
/// rather than SipHash, which cost more than the rest of a cached key's check. The
/// keys are SHA-256 digests and the names of existing users, which a caller cannot pick
/// to collide.
#[derive(Default)]
struct Cache {
    keys: foldhash::HashMap<KeyHash, Arc<Principal>>,
    unknown: foldhash::HashSet<KeyHash>,
    users: foldhash::HashMap<String, Arc<Principal>>,
    /// The live counters of every budget seen, shared by its credentials' principals.
    budgets: foldhash::HashMap<Owner, Arc<LimitState>>,
    tiers: HashMap<String, Tier>,
}

impl Cache {
    /// The counters of `owner`: those already shared, else `seeded`.
    fn budget(&mut self, owner: Owner, seeded: Arc<LimitState>) -> Arc<LimitState> {
        if self.budgets.len() >= MAX_ENTRIES && !self.budgets.contains_key(&owner) {
            // Principals keep their counters; only new ones start from the table.
            self.budgets.clear();
        }
        self.budgets.entry(owner).or_insert(seeded).clone()
    }
}

/// Verifies credentials against the cache, falling back to the database on a miss.
pub struct Verifier {
    cache: RwLock<Cache>,
    /// Bumped before every refresh: a lookup that raced a refresh does not cache its
    /// (possibly stale) answer.
    generation: AtomicU64,
    readers: Mutex<Vec<Store>>,
    db: std::path::PathBuf,
    jwt: Option<JwtKeys>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("db", &self.db).finish()
    }
}

impl Verifier {
    /// A verifier over the database at `db`; `jwt` enables token logins.
    pub fn new(db: &std::path::Path, jwt: Option<JwtKeys>) -> StoreResult<Verifier> {
        let store = Store::open(db, crate::store::OpenMode::Existing)?;
        let tiers = load_tiers(store.conn())?;
        Ok(Verifier {
            cache: RwLock::new(Cache {
                tiers,
                ..Cache::default()
            }),
            generation: AtomicU64::new(0),
            readers: Mutex::new(vec![store]),
            db: db.to_path_buf(),
            jwt,
        })
    }

    /// The JWT keys, when logins are on.
    pub fn jwt(&self) -> Option<&JwtKeys> {
        self.jwt.as_ref()
    }

    /// Checks an API key. Returns `Ok(None)` when the answer needs the database (call
    /// [`Verifier::load_key`] off the async runtime), so the common case stays lock-light
    /// and synchronous.
    pub fn check_key(&self, candidate: &str) -> Result<Option<Arc<Principal>>, AuthError> {
        let hash = key::parse(candidate).map_err(|e| match e {
            key::KeyFormatError::Checksum => AuthError::BadChecksum,
            key::KeyFormatError::NotAKey => AuthError::MalformedKey,
        })?;
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        match cache.keys.get(&hash) {
            Some(p) => judge(p).map(Some),
            None if cache.unknown.contains(&hash) => Err(AuthError::InvalidKey),
            None => Ok(None),
        }
    }

    /// Looks a key up in the database and caches the answer. Blocking.
    pub fn load_key(&self, candidate: &str) -> Result<Arc<Principal>, AuthError> {
        let hash = key::parse(candidate).map_err(|_| AuthError::InvalidKey)?;
        let generation = self.generation.load(Ordering::Acquire);
        let found = self
            .with_reader(|conn| {
                let row = keys::find_by_hash(conn, &hash)?;
                match row {
                    Some(row) => {
                        let owner = Owner::of_key(&row);
                        let state = seeded(conn, &owner)?;
                        Ok(Some((row, owner, state)))
                    }
                    None => Ok(None),
                }
            })
            .map_err(|e| {
                tracing::error!("credential lookup failed: {e}");
                AuthError::Unavailable
            })?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // A refresh that ran during the query may have made the answer stale: then it
        // serves this request but is not cached.
        let fresh = self.generation.load(Ordering::Acquire) == generation;
        let Some((row, owner, state)) = found else {
            if fresh {
                if cache.unknown.len() >= MAX_UNKNOWN {
                    cache.unknown.clear();
                }
                cache.unknown.insert(hash);
            }
            return Err(AuthError::InvalidKey);
        };
        // Another request may have loaded the same key meanwhile: keep its counters.
        if let Some(existing) = cache.keys.get(&hash) {
            return judge(existing);
        }
        let state = cache.budget(owner, state);
        let principal = Arc::new(resolve(&row, &cache.tiers, state));
        if fresh {
            if cache.keys.len() >= MAX_ENTRIES {
                cache.keys.clear();
            }
            cache.keys.insert(hash, principal.clone());
        }
        judge(&principal)
    }

    /// Checks a JWT: signature, algorithm and expiry with no I/O, then the user from the
    /// cache. `Ok(None)` means the user must be loaded ([`Verifier::load_user`]).
    pub fn check_token(&self, token: &str) -> Result<(Option<Arc<Principal>>, Claims), AuthError> {
        let keys = self.jwt.as_ref().ok_or(AuthError::InvalidToken)?;
        let claims = keys.verify(token).map_err(|e| match e {
            TokenError::Expired => AuthError::ExpiredToken,
            TokenError::Invalid => AuthError::InvalidToken,
        })?;
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let p = match cache.users.get(&claims.sub) {
            Some(p) => Some(judge_user(p, &claims)?),
            None => None,
        };
        Ok((p, claims))
    }

    /// Loads a user for a verified token and caches it. Blocking.
    pub fn load_user(&self, claims: &Claims) -> Result<Arc<Principal>, AuthError> {
        let name = claims.sub.as_str();
        let generation = self.generation.load(Ordering::Acquire);
        let found = self
            .with_reader(|conn| match users::credentials(conn, name)? {
                Some((u, hash)) => {
                    let owner = Owner::User(u.username.clone());
                    let state = seeded(conn, &owner)?;
                    Ok(Some((u, hash, owner, state)))
                }
                None => Ok(None),
            })
            .map_err(|e| {
                tracing::error!("user lookup failed: {e}");
                AuthError::Unavailable
            })?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        let fresh = self.generation.load(Ordering::Acquire) == generation;
        let Some((user, hash, owner, state)) = found else {
            return Err(AuthError::InvalidToken);
        };
        if let Some(existing) = cache.users.get(name) {
            return judge_user(existing, claims);
        }
        let state = cache.budget(owner, state);
        let principal = Arc::new(resolve_user(&user, &hash, &cache.tiers, state));
        if fresh {
            if cache.users.len() >= MAX_ENTRIES {
                cache.users.clear();
            }
            cache.users.insert(name.to_string(), principal.clone());
        }
        judge_user(&principal, claims)
    }

    /// A user and their password hash, for a login. Blocking.
    pub fn credentials(&self, name: &str) -> StoreResult<Option<(users::User, String)>> {
        self.with_reader(|conn| users::credentials(conn, name))
    }

    /// Re-reads every cached credential and the tiers after another connection
    /// committed. Runs on the gate's database thread, with its connection.
    pub fn refresh(&self, conn: &Connection) -> StoreResult<()> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let tiers = load_tiers(conn)?;
        let (key_ids, user_names, budgets) = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<(KeyHash, i64, Arc<LimitState>)> = cache
                .keys
                .iter()
                .filter_map(|(h, p)| Some((*h, p.key_id?, p.state.clone())))
                .collect();
            let names: Vec<(String, Arc<LimitState>)> = cache
                .users
                .iter()
                .map(|(n, p)| (n.clone(), p.state.clone()))
                .collect();
            (ids, names, cache.budgets.clone())
        };
        let seen_keys: std::collections::HashSet<KeyHash> = key_ids.iter().map(|k| k.0).collect();
        let seen_users: std::collections::HashSet<String> =
            user_names.iter().map(|u| u.0.clone()).collect();
        let mut keys_out =
            foldhash::HashMap::with_capacity_and_hasher(key_ids.len(), Default::default());
        for (hash, id, state) in key_ids {
            if let Some(row) = keys::find_by_id(conn, id)? {
                // A key given to another user spends that user's budget from now on.
                let state = budgets.get(&Owner::of_key(&row)).cloned().unwrap_or(state);
                keys_out.insert(hash, Arc::new(resolve(&row, &tiers, state)));
            }
        }
        let mut users_out =
            foldhash::HashMap::with_capacity_and_hasher(user_names.len(), Default::default());
        for (name, state) in user_names {
            if let Some((u, hash)) = users::credentials(conn, &name)? {
                users_out.insert(name, Arc::new(resolve_user(&u, &hash, &tiers, state)));
            }
        }
        // Unknown keys may have been created meanwhile, so negative entries go.
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // Entries loaded while this ran were read after the commit that started it:
        // they are current, keep them.
        for (h, p) in cache.keys.drain() {
            if !seen_keys.contains(&h) {
                keys_out.insert(h, p);
            }
        }
        for (n, p) in cache.users.drain() {
            if !seen_users.contains(&n) {
                users_out.insert(n, p);
            }
        }
        cache.keys = keys_out;
        cache.unknown.clear();
        cache.users = users_out;
        cache.tiers = tiers;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Forgets everything, for a database that could not be read: the next requests
    /// go to the database and fail closed if it still cannot be read.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Pooled readers would keep answering from their page cache after the file
        // went bad: drop them, so that the next lookups really open the database.
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.keys.clear();
        cache.unknown.clear();
        cache.users.clear();
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let reader = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let store = match reader {
            Some(s) => s,
            None => Store::open(&self.db, crate::store::OpenMode::Existing)?,
        };
        let out = f(store.conn());
        // Keep a few connections for the next misses; a failed one is dropped.
        if out.is_ok() {
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < 4 {
                pool.push(store);
            }
        }
        out
    }
}

fn load_tiers(conn: &Connection) -> Result<HashMap<String, Tier>, StoreError> {
    Ok(tiers::list(conn)?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect())
}
