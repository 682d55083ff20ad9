//! Hosts: the model servers behind the gate (`aigate host`). The CLI adds, drains and
//! removes them, each change with its audit row; the gate reads them ([`list`]) and
//! writes back what it observes ([`report`]), which is not audited.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::audit::admin_action;
use super::{Result, StoreError, rfc3339};

/// The most slots a host may have: far more than any GPU generates at once, and small
/// enough that a typo (`--slots 40000`) is caught.
pub const MAX_SLOTS: u32 = 1024;

/// What the gate wrote is believed this long (seconds). The gate probes every few
/// seconds and writes at least that often; past this, no gate is watching the host and
/// its state is `unknown`.
pub const STALE_AFTER: i64 = 10;

/// What a host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Ollama: models from `/api/tags`, loaded ones from `/api/ps`.
    Ollama,
    /// An OpenAI-compatible server (llama.cpp's server, vLLM, LM Studio): models from
    /// `/v1/models`, served on `/v1/*`.
    Openai,
}

impl Kind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ollama => "ollama",
            Kind::Openai => "openai",
        }
    }

    fn from_db(s: &str) -> Kind {
        // The column's CHECK allows only these two.
        if s == "openai" {
            Kind::Openai
        } else {
            Kind::Ollama
        }
    }
}

/// What the gate last saw of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered the last connection or probe.
    Up,
    /// Connections or probes failed.
    Down,
}

impl Health {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// Where a host stands, as `host list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A gate saw it answer within [`STALE_AFTER`].
    Up,
    /// A gate saw it fail within [`STALE_AFTER`].
    Down,
    /// Drained by the operator: no new requests, whatever its health.
    Draining,
    /// No gate has written about it within [`STALE_AFTER`] (none runs, or it has not
    /// probed the host yet).
    Unknown,
}

impl State {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
            State::Unknown => "unknown",
        }
    }
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub id: i64,
    pub name: String,
    /// Canonical `http://host:port`.
    pub url: String,
    pub kind: Kind,
    pub slots: u32,
    pub draining: bool,
    pub created_at: i64,
    /// The gate's last verdict; `None` when no gate ever wrote one.
    pub health: Option<Health>,
    /// Models loaded at the gate's last look.
    pub loaded_models: Vec<String>,
    /// Requests the gate had on the host at its last write.
    pub in_flight: u32,
    /// When the gate last wrote (Unix seconds).
    pub seen_at: Option<i64>,
}

/// A host in the JSON shape of `host list --json`. The observed fields are null when
/// what the gate wrote is older than [`STALE_AFTER`], or it never wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub name: String,
    pub url: String,
    pub kind: Kind,
    pub slots: u32,
    pub state: State,
    pub draining: bool,
    pub loaded_models: Option<Vec<String>>,
    pub in_flight: Option<u32>,
    pub seen_at: Option<String>,
}

impl Host {
    /// Whether what the gate wrote still holds at `now`.
    pub fn observed(&self, now: i64) -> bool {
        self.seen_at.is_some_and(|t| now - t <= STALE_AFTER)
    }

    /// The state at `now`: `draining` when drained, else the gate's fresh verdict, else
    /// `unknown`.
    pub fn state(&self, now: i64) -> State {
        if self.draining {
            return State::Draining;
        }
        match self.health {
            Some(Health::Up) if self.observed(now) => State::Up,
            Some(Health::Down) if self.observed(now) => State::Down,
            _ => State::Unknown,
        }
    }

    /// The JSON shape at `now`.
    pub fn shown(&self, now: i64) -> Shown {
        let fresh = self.observed(now);
        Shown {
            name: self.name.clone(),
            url: self.url.clone(),
            kind: self.kind,
            slots: self.slots,
            state: self.state(now),
            draining: self.draining,
            loaded_models: fresh.then(|| self.loaded_models.clone()),
            in_flight: fresh.then_some(self.in_flight),
            seen_at: self.seen_at.map(rfc3339),
        }
    }
}

/// The authority of a host URL, checked: what [`parse_url`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUrl {
    /// `host:port`, the host lowercased, an IPv6 address in brackets.
    pub authority: String,
}

impl HostUrl {
    /// The canonical URL stored: `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// Reads a host URL by the rule of `serve --upstream`: `http://HOST:PORT`, a bare
/// `HOST:PORT` meaning http, nothing after the authority but one `/`. Stricter in one
/// way: the port must be written, since an Ollama host on the URL's default port 80
/// is rarely what was meant (Ollama listens on 11434).
pub fn parse_url(s: &str) -> Result<HostUrl> {
    let bad = |why: &str| StoreError::Invalid(format!("bad host URL {s:?}: {why}"));
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => {
            return Err(bad(
                "only http:// is supported (hosts are on loopback or a private network)",
            ));
        }
        None => s,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad("no user name or password in a host URL"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("give only scheme, host and port (no path)"));
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing ']'"))?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad("not an IPv6 address"))?;
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("write an IPv6 address in brackets: http://[::1]:11434"));
            }
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (rest.to_ascii_lowercase(), None),
        }
    };
    let port = port.ok_or_else(|| bad("no port (Ollama listens on 11434: http://HOST:11434)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
    if !host_ok {
        return Err(bad("the host must be a name or an IP address"));
    }
    Ok(HostUrl {
        authority: format!("{host}:{port}"),
    })
}

/// Checks that a host name is usable: 1-64 of letters, digits and `.-_:[]` (the last
/// three so that a default `host:port` name is one).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bad host name {name:?}: use 1-64 letters, digits, '.', '-', '_', ':', '[' or ']'"
        )))
    }
}

/// What a new host is made with.
#[derive(Debug, Clone)]
pub struct NewHost {
    /// As the operator wrote it; [`add`] checks and canonicalizes it.
    pub url: String,
    /// `None`: the URL's `host:port`.
    pub name: Option<String>,
    pub kind: Kind,
    pub slots: u32,
}

const COLUMNS: &str = "id, name, url, kind, slots, draining, created_at,
    state, loaded_models, in_flight, seen_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Host> {
    let loaded: String = r.get(8)?;
    Ok(Host {
        id: r.get(0)?,
        name: r.get(1)?,
        url: r.get(2)?,
        kind: Kind::from_db(&r.get::<_, String>(3)?),
        slots: r.get(4)?,
        draining: r.get(5)?,
        created_at: r.get(6)?,
        health: match r.get::<_, Option<String>>(7)?.as_deref() {
            Some("up") => Some(Health::Up),
            Some("down") => Some(Health::Down),
            _ => None,
        },
        // Only the gate writes this, and only for display: a bad value reads as none.
        loaded_models: serde_json::from_str(&loaded).unwrap_or_default(),
        in_flight: r.get(9)?,
        seen_at: r.get(10)?,
    })
}

/// Adds a host. Its name (default: the URL's `host:port`) and its URL must both be new.
pub fn add(conn: &Connection, new: &NewHost) -> Result<Host> {
    let url = parse_url(&new.url)?;
    let name = new.name.clone().unwrap_or_else(|| url.authority.clone());
    check_name(&name)?;
    if !(1..=MAX_SLOTS).contains(&new.slots) {
        return Err(StoreError::Invalid(format!(
            "bad slot count {}: use 1 to {MAX_SLOTS}",
            new.slots
        )));
    }
    if find(conn, &name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a host named {name:?} already exists"
        )));
    }
    let url = url.url();
    let same_url: Option<String> = conn
        .query_row("SELECT name FROM hosts WHERE url = ?1", [&url], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(other) = same_url {
        return Err(StoreError::Conflict(format!(
            "host {other:?} already has the URL {url}"
        )));
    }
    conn.execute(
        "INSERT INTO hosts (name, url, kind, slots, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, url, new.kind.as_str(), new.slots, super::now()],
    )?;
    get(conn, &name)
}

/// The host called `name`, if any.
pub fn find(conn: &Connection, name: &str) -> Result<Option<Host>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM hosts WHERE name = ?1"),
            [name],
            from_row,
        )
        .optional()?)
}

/// The host called `name`, or a failure naming it.
pub fn get(conn: &Connection, name: &str) -> Result<Host> {
    find(conn, name)?.ok_or_else(|| StoreError::NotFound(format!("no host named {name:?}")))
}

/// Every host, in the order they were added. The gate reads this at start and again
/// whenever another connection has committed (`PRAGMA data_version`); drained hosts are
/// included, with `draining` set, so that their requests in flight can finish.
pub fn list(conn: &Connection) -> Result<Vec<Host>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM hosts ORDER BY id"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drains (`true`) or undrains a host. Returns it as it now is, and whether this
/// changed anything: draining a drained host is not an error.
pub fn set_draining(conn: &Connection, name: &str, draining: bool) -> Result<(Host, bool)> {
    get(conn, name)?;
    let changed = conn.execute(
        "UPDATE hosts SET draining = ?1 WHERE name = ?2 AND draining != ?1",
        params![draining, name],
    )? == 1;
    Ok((get(conn, name)?, changed))
}

/// Removes a host and returns it as it was.
pub fn remove(conn: &Connection, name: &str) -> Result<Host> {
    let host = get(conn, name)?;
    conn.execute("DELETE FROM hosts WHERE id = ?1", [host.id])?;
    Ok(host)
}

/// The gate's write-back: what it saw of host `name` at `now` (Unix seconds) —
/// up or down, the models loaded, its requests in flight there. Not audited: it is an
/// observation, not an admin action. Returns `false` when no such host exists (removed
/// since the gate last read the list), which is not an error.
///
/// The caller holds the transaction, so that one write covers every host. Write on the
/// connection that polls `PRAGMA data_version`: a commit from another of the gate's
/// connections would look like a CLI change and make it re-read everything.
pub fn report(
    conn: &Connection,
    name: &str,
    state: Health,
    loaded_models: &[String],
    in_flight: u32,
    now: i64,
) -> Result<bool> {
    let loaded = serde_json::to_string(loaded_models)
        .map_err(|e| StoreError::Invalid(format!("loaded models of {name:?}: {e}")))?;
    let n = conn
        .prepare_cached(
            "UPDATE hosts SET state = ?1, loaded_models = ?2, in_flight = ?3, seen_at = ?4
             WHERE name = ?5",
        )?
        .execute(params![state.as_str(), loaded, in_flight, now, name])?;
    Ok(n == 1)
}

/// (hosts, drained hosts), for `aigate status`.
pub fn counts(conn: &Connection) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT count(*), count(*) FILTER (WHERE draining) FROM hosts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// [`add`] with its `host_add` audit row; `by` names who acted (the caller holds the
/// transaction).
pub fn add_audited(conn: &Connection, new: &NewHost, by: &str) -> Result<Host> {
    let h = add(conn, new)?;
    admin_action(
        conn,
        "host_add",
        None,
        None,
        format!(
            "host={} url={} kind={} slots={} by={by}",
            h.name,
            h.url,
            h.kind.as_str(),
            h.slots
        ),
    )?;
    Ok(h)
}

/// [`set_draining`] with its `host_drain` or `host_undrain` audit row when it changed
/// anything.
pub fn set_draining_audited(
    conn: &Connection,
    name: &str,
    draining: bool,
    by: &str,
) -> Result<(Host, bool)> {
    let (h, changed) = set_draining(conn, name, draining)?;
    if changed {
        let kind = if draining {
            "host_drain"
        } else {
            "host_undrain"
        };
        admin_action(conn, kind, None, None, format!("host={} by={by}", h.name))?;
    }
    Ok((h, changed))
}

/// [`remove`] with its `host_remove` audit row.
pub fn remove_audited(conn: &Connection, name: &str, by: &str) -> Result<Host> {
    let h = remove(conn, name)?;
    admin_action(
        conn,
        "host_remove",
        None,
        None,
        format!("host={} url={} by={by}", h.name, h.url),
    )?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenMode, Store};

    fn authority(s: &str) -> String {
        parse_url(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .authority
    }

    #[test]
    fn urls_are_read_like_upstreams_and_canonicalized() {
        assert_eq!(authority("http://127.0.0.1:11434"), "127.0.0.1:11434");
        assert_eq!(authority("127.0.0.1:11434"), "127.0.0.1:11434");
        assert_eq!(authority("HTTP://GPU-1.lan:11434/"), "gpu-1.lan:11434");
        assert_eq!(authority("http://[::1]:8080"), "[::1]:8080");
        assert_eq!(authority("[0:0::1]:8080"), "[::1]:8080");
        assert_eq!(
            parse_url("gpu1:11434").expect("url").url(),
            "http://gpu1:11434"
        );
        for (bad, why) in [
            ("https://gpu1:11434", "only http://"),
            ("ftp://gpu1:21", "only http://"),
            ("http://gpu1:11434/api", "no path"),
            ("gpu1:11434/v1", "no path"),
            ("http://gpu1:11434?x=1", "no path"),
            ("http://user:pw@gpu1:11434", "user name"),
            ("http://gpu1", "no port"),
            ("gpu1", "no port"),
            ("gpu1:", "port must be"),
            ("gpu1:0", "port must be"),
            ("gpu1:65536", "port must be"),
            ("gpu1:http", "port must be"),
            ("::1:11434", "in brackets"),
            ("[::1:11434", "closing"),
            ("[nope]:1", "IPv6"),
            ("[::1]", "no port"),
            (":11434", "name or an IP"),
            ("gpu 1:11434", "name or an IP"),
            ("", "no port"),
        ] {
            let e = parse_url(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn canonical_urls_are_what_the_gate_reads() {
        // The gate parses stored URLs with the http crate's Uri, as `--upstream`.
        for s in ["gpu1:11434", "http://[::1]:8080", "10.0.0.5:1234"] {
            let url = parse_url(s).expect("url");
            let uri: hyper::Uri = url.url().parse().expect("a URI");
            assert_eq!(uri.scheme_str(), Some("http"));
            assert_eq!(uri.authority().map(|a| a.as_str()), Some(&*url.authority));
            assert_eq!(uri.path(), "/");
        }
    }

    #[test]
    fn a_version_1_database_gains_the_tables_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("create");
            let (n, v1) = crate::store::migrations()[0];
            assert_eq!(n, 1);
            conn.execute_batch(v1).expect("migration 1");
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO users (username, password_hash, created_at) VALUES ('bob', 'h', 0);",
            )
            .expect("an old row");
        }
        let mut store = Store::open(&path, OpenMode::Existing).expect("migrate");
        assert_eq!(
            store.schema_version().expect("version"),
            crate::store::latest_version()
        );
        assert_eq!(crate::store::users::count(store.conn()).expect("users"), 1);
        store
            .write(|tx| add(tx, &new("gpu1:11434", None)).map(drop))
            .expect("a host in the migrated file");
    }

    fn new(url: &str, name: Option<&str>) -> NewHost {
        NewHost {
            url: url.into(),
            name: name.map(String::from),
            kind: Kind::Ollama,
            slots: 1,
        }
    }

    #[test]
    fn report_is_what_list_shows_until_it_goes_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        store
            .write(|tx| add(tx, &new("gpu1:11434", None)).map(drop))
            .expect("add");
        let h = get(store.conn(), "gpu1:11434").expect("by its default name");
        assert_eq!(h.state(100), State::Unknown);
        assert_eq!(h.shown(100).loaded_models, None);

        let loaded = vec!["llama3.2:latest".to_string()];
        let wrote = store
            .write(|tx| report(tx, "gpu1:11434", Health::Up, &loaded, 3, 100))
            .expect("report");
        assert!(wrote);
        let h = &list(store.conn()).expect("list")[0];
        assert_eq!(h.state(100 + STALE_AFTER), State::Up);
        let shown = h.shown(105);
        assert_eq!(shown.loaded_models, Some(loaded.clone()));
        assert_eq!(shown.in_flight, Some(3));
        assert_eq!(shown.seen_at.as_deref(), Some("1970-01-01T00:01:40Z"));
        // No gate has written for too long: unknown, and no stale numbers.
        assert_eq!(h.state(101 + STALE_AFTER), State::Unknown);
        assert_eq!(h.shown(101 + STALE_AFTER).in_flight, None);

        store
            .write(|tx| report(tx, "gpu1:11434", Health::Down, &[], 0, 200))
            .expect("report");
        store
            .write(|tx| set_draining(tx, "gpu1:11434", true).map(drop))
            .expect("drain");
        let h = get(store.conn(), "gpu1:11434").expect("get");
        assert_eq!(h.health, Some(Health::Down));
        assert_eq!(h.state(200), State::Draining);
        assert_eq!(h.shown(200).loaded_models, Some(vec![]));

        // A host removed meanwhile is no error for the gate.
        let wrote = store
            .write(|tx| report(tx, "gone", Health::Up, &[], 0, 200))
            .expect("report");
        assert!(!wrote);
    }

    #[test]
    fn names_and_urls_are_unique_and_refusals_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db"), OpenMode::Create).expect("open");
        store
            .write(|tx| add_audited(tx, &new("gpu1:11434", Some("a")), "op").map(drop))
            .expect("add");
        for (n, why) in [
            (new("gpu2:11434", Some("a")), "already exists"),
            (new("http://GPU1:11434/", Some("b")), "already has the URL"),
            (new("gpu2:11434", Some("bad name")), "bad host name"),
            (
                NewHost {
                    slots: 0,
                    ..new("gpu2:11434", None)
                },
                "slot count",
            ),
            (
                NewHost {
                    slots: MAX_SLOTS + 1,
                    ..new("gpu2:11434", None)
                },
                "slot count",
            ),
        ] {
            let e = store
                .write(|tx| add_audited(tx, &n, "op").map(drop))
                .expect_err(why)
                .to_string();
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(list(store.conn()).expect("list").len(), 1);
        let audit = crate::store::audit::list(store.conn(), 0).expect("audit");
        assert_eq!(audit.len(), 1);
        assert_eq!(
            audit[0].detail.as_deref(),
            Some("host=a url=http://gpu1:11434 kind=ollama slots=1 by=op")
        );
    }
}
