//! Behaviour tests of the admin CLI: the real `aigate` binary against temporary
//! databases, checked through its output, its exit codes and the SQLite file itself.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use assert_cmd::Command;
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A command that hangs (e.g. waiting for input) fails the test instead of the suite.
const TIMEOUT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

const KEY_FIELDS: &[&str] = &[
    "id",
    "prefix",
    "name",
    "user",
    "tier",
    "status",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
];
const USER_FIELDS: &[&str] = &["id", "username", "tier", "status", "created_at"];
const USAGE_FIELDS: &[&str] = &[
    "key_id",
    "user",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
];
const AUDIT_FIELDS: &[&str] = &["at", "kind", "ip", "reason", "key_prefix", "user", "detail"];
const STATUS_FIELDS: &[&str] = &[
    "version",
    "db_path",
    "schema_version",
    "keys",
    "usable_keys",
    "users",
    "tiers",
    "hosts",
    "draining_hosts",
    "model_pins",
];
const TIER_FIELDS: &[&str] = &[
    "name",
    "rpm",
    "concurrency",
    "tokens_per_day",
    "models",
    "admin",
    "priority",
    "weight",
    "max_wait_secs",
    "max_queued",
];

/// What a finished command left behind.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts exit 0 and returns self.
    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        self
    }

    /// Asserts exit 1 with exactly one `error:` line on stderr that contains `needle`.
    #[track_caller]
    fn fails(self, needle: &str) -> Out {
        assert_eq!(self.code, Some(1), "expected failure: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        assert!(
            lines[0].contains(needle),
            "expected {needle:?} in: {self:#?}"
        );
        self
    }

    /// Asserts a clap usage error: exit 2, nothing on stdout.
    #[track_caller]
    fn usage_error(self) -> Out {
        assert_eq!(self.code, Some(2), "expected a usage error: {self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        // clap explains what was wrong, or shows the help of a command given no subcommand.
        assert!(
            self.stderr.contains("error:") || self.stderr.contains("Usage: aigate"),
            "{self:#?}"
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }
}

/// The binary with a clean environment: no database, log or XDG settings from outside,
/// and `tester` as the operator that audit rows name (as sudo names the person behind it).
fn bin() -> Command {
    let mut c = Command::cargo_bin("aigate").expect("the aigate binary");
    for var in ["AIGATE_DB", "AIGATE_LOG", "XDG_DATA_HOME", "USER"] {
        c.env_remove(var);
    }
    c.env("NO_COLOR", "1")
        .env("SUDO_USER", "tester")
        .timeout(TIMEOUT);
    c
}

fn run(mut c: Command) -> Out {
    let o = c.output().expect("run aigate");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8(o.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(o.stderr).expect("utf-8 stderr"),
    }
}

/// A temporary folder and a database path in it.
struct Env {
    dir: TempDir,
    db: PathBuf,
}

impl Env {
    /// A path where no database exists yet.
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("aigate.db");
        Env { dir, db }
    }

    /// A database made by `aigate init`.
    fn init() -> Env {
        let env = Env::new();
        env.ok(&["init"]);
        env
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bin();
        c.arg("--db").arg(&self.db).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        run(self.cmd(args))
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Out {
        self.run(args).ok()
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        self.ok(args).json()
    }

    /// Runs with `stdin` as standard input.
    fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut c = self.cmd(args);
        c.write_stdin(stdin.to_string());
        run(c)
    }

    #[track_caller]
    fn add_user(&self, name: &str, tier: &str) {
        self.run_stdin(
            &["user", "add", name, "--tier", tier, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )
        .ok();
    }

    /// Creates a key and returns (id, raw key).
    #[track_caller]
    fn key(&self, extra: &[&str]) -> (i64, String) {
        let mut args = vec!["key", "create", "--json"];
        args.extend_from_slice(extra);
        let v = self.json(&args);
        (
            v["id"].as_i64().expect("id"),
            v["key"].as_str().expect("key").to_string(),
        )
    }

    fn conn(&self) -> Connection {
        Connection::open(&self.db).expect("open the test database")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Unix seconds of an RFC 3339 UTC time in JSON.
#[track_caller]
fn secs(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    assert!(s.ends_with('Z'), "not UTC: {s}");
    humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339: {s}: {e}"))
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[track_caller]
fn assert_near(actual: i64, expected: i64) {
    assert!(
        (actual - expected).abs() <= 5,
        "{actual} is not within 5 s of {expected}"
    );
}

#[track_caller]
fn assert_fields(v: &Value, expected: &[&str]) {
    let got: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, want, "fields of {v}");
}

#[track_caller]
fn array(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

/// `^aig_[A-Za-z0-9_-]{70}$`
fn is_key(s: &str) -> bool {
    s.len() == 74
        && s.starts_with("aig_")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

// ---------------------------------------------------------------- the database file

#[test]
fn init_creates_the_database_0600_in_wal_and_says_so() {
    let env = Env::new();
    let db = env.path("sub/dir/aigate.db");
    let mut c = bin();
    c.arg("--db").arg(&db).arg("init");
    let out = run(c).ok();
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert_eq!(
        out.stderr.trim(),
        format!("created database {}", db.display())
    );
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&env.path("sub/dir")), 0o700);

    let conn = Connection::open(&db).expect("open");
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(journal, "wal");
    assert_eq!(
        count(&conn, "PRAGMA user_version"),
        aigate::store::latest_version()
    );
    let tiers: Vec<String> = conn
        .prepare("SELECT name FROM tiers ORDER BY name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(tiers, ["admin", "free", "pro"]);

    // A second init changes nothing and says the database is ready.
    let mut c = bin();
    c.arg("--db").arg(&db).arg("init");
    let again = run(c).ok();
    assert!(again.stderr.contains("is ready"), "{again:#?}");
    assert!(!again.stderr.contains("created"), "{again:#?}");
}

#[test]
fn key_create_and_user_add_create_a_missing_database() {
    let env = Env::new();
    let out = env.ok(&["key", "create", "--quiet"]);
    assert!(is_key(out.stdout.trim()), "{out:#?}");
    assert_eq!(
        out.stderr.trim(),
        format!("created database {}", env.db.display())
    );
    assert_eq!(mode(&env.db), 0o600);

    let db = env.path("users.db");
    let mut c = bin();
    c.arg("--db")
        .arg(&db)
        .args(["user", "add", "alice", "--password-stdin"])
        .write_stdin(format!("{PASSWORD}\n"));
    let out = run(c).ok();
    assert!(
        out.stderr
            .contains(&format!("created database {}", db.display())),
        "{out:#?}"
    );
    assert_eq!(mode(&db), 0o600);

    // A refused password is refused before anything is created.
    let db = env.path("short.db");
    let mut c = bin();
    c.arg("--db")
        .arg(&db)
        .args(["user", "add", "bob", "--password-stdin"])
        .write_stdin("short\n");
    run(c).fails("at least 8");
    assert!(!db.exists());
}

#[test]
fn other_commands_refuse_a_missing_database_and_create_nothing() {
    let env = Env::new();
    let db = env.path("missing/aigate.db");
    let commands: &[&[&str]] = &[
        &["key", "list"],
        &["key", "list", "--all", "--json"],
        &["key", "show", "1"],
        &["key", "rotate", "1"],
        &["key", "revoke", "1", "--yes"],
        &["key", "set", "1", "--name", "x"],
        &["user", "list"],
        &["user", "passwd", "alice", "--password-stdin"],
        &["user", "disable", "alice"],
        &["user", "enable", "alice"],
        &["user", "remove", "alice", "--yes"],
        &["user", "set-tier", "alice", "pro"],
        &["tier", "list"],
        &["tier", "set", "gold", "--rpm", "1"],
        &["usage"],
        &["audit"],
        &["status", "--json"],
    ];
    for args in commands {
        let mut c = bin();
        c.arg("--db").arg(&db).args(*args).write_stdin(PASSWORD);
        let out = run(c);
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        out.fails(&db.display().to_string());
        assert!(
            !env.path("missing").exists(),
            "{args:?} created the database folder"
        );
    }
}

#[test]
fn database_path_from_env_and_xdg_data_home() {
    let env = Env::new();

    // $AIGATE_DB
    let from_env = env.path("env.db");
    let mut c = bin();
    c.env("AIGATE_DB", &from_env).arg("init");
    run(c).ok();
    assert!(from_env.exists());
    let mut c = bin();
    c.env("AIGATE_DB", &from_env).args(["status", "--json"]);
    let v = run(c).ok().json();
    assert_eq!(v["db_path"], json!(from_env.display().to_string()));

    // --db wins over $AIGATE_DB
    let flag = env.path("flag.db");
    let mut c = bin();
    c.env("AIGATE_DB", &from_env)
        .arg("--db")
        .arg(&flag)
        .arg("init");
    run(c).ok();
    assert!(flag.exists());

    // Neither: $XDG_DATA_HOME/aigate/aigate.db, its folder made 0700.
    let xdg = env.path("xdg");
    let mut c = bin();
    c.env("XDG_DATA_HOME", &xdg).arg("init");
    let out = run(c).ok();
    let default = xdg.join("aigate/aigate.db");
    assert!(
        out.stderr.contains(&default.display().to_string()),
        "{out:#?}"
    );
    assert_eq!(mode(&default), 0o600);
    assert_eq!(mode(&xdg.join("aigate")), 0o700);
}

#[test]
fn a_database_newer_than_the_binary_is_refused() {
    let env = Env::init();
    let newer = aigate::store::latest_version() + 1;
    env.conn()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .expect("set user_version");
    for args in [
        &["key", "list"][..],
        &["key", "create"],
        &["init"],
        &["status"],
        &["tier", "set", "free", "--rpm", "1"],
    ] {
        let out = env.run(args).fails(&format!("schema version {newer}"));
        assert!(out.stderr.contains("newer"), "{out:#?}");
        assert!(out.stderr.contains("upgrade aigate"), "{out:#?}");
        assert!(
            out.stderr.contains(&env.db.display().to_string()),
            "{out:#?}"
        );
    }
    let conn = env.conn();
    assert_eq!(count(&conn, "PRAGMA user_version"), newer);
    assert_eq!(count(&conn, "SELECT count(*) FROM api_keys"), 0);
}

#[test]
fn raw_keys_and_passwords_never_reach_the_database_files() {
    let env = Env::init();
    // An open connection that has read from the WAL keeps the CLI's last close from
    // checkpointing and deleting it, so the -wal and -shm files can be inspected.
    let watcher = env.conn();
    count(&watcher, "SELECT count(*) FROM tiers");

    env.add_user("alice", "free");
    let second = "another fine password";
    env.run_stdin(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{second}\n"),
    )
    .ok();
    let (id, created) = env.key(&["--user", "alice", "--name", "laptop"]);
    let quiet = env
        .ok(&["key", "create", "--quiet"])
        .stdout
        .trim()
        .to_string();
    let rotated = env
        .json(&["key", "rotate", &id.to_string(), "--json"])
        .get("key")
        .and_then(Value::as_str)
        .expect("rotated key")
        .to_string();
    let human = env.ok(&["key", "create"]).stdout.trim().to_string();
    let keys = [&created, &quiet, &rotated, &human];
    for k in keys {
        assert!(is_key(k), "{k}");
    }

    let wal = env.path("aigate.db-wal");
    let shm = env.path("aigate.db-shm");
    assert!(
        std::fs::metadata(&wal).expect("-wal").len() > 0,
        "the WAL was checkpointed away; the test would prove nothing"
    );
    for f in [&env.db, &wal, &shm] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let mut bytes = Vec::new();
    for f in [&env.db, &wal, &shm] {
        bytes.extend(std::fs::read(f).expect("read database file"));
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for k in keys {
        assert!(!contains(k.as_bytes()), "a raw key is stored");
        assert!(
            !contains(&k.as_bytes()[4..40]),
            "part of a raw key is stored"
        );
        // What is stored is the hash: proof the files were the right ones to search.
        let hash = aigate::auth::key::parse(k).expect("valid key").hex();
        assert!(contains(hash.as_bytes()), "the key's hash is missing");
    }
    for p in [PASSWORD, second] {
        assert!(!contains(p.as_bytes()), "a password is stored");
    }
    drop(watcher);
}

#[test]
fn four_processes_creating_keys_at_once_all_succeed() {
    let env = Env::init();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let db = env.db.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| {
                        let mut c = bin();
                        c.arg("--db").arg(&db).args(["key", "create", "--quiet"]);
                        let out = run(c).ok();
                        assert!(out.stderr.is_empty(), "{out:#?}");
                        out.stdout.trim().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut raw = BTreeSet::new();
    for t in threads {
        for k in t.join().expect("a thread panicked") {
            assert!(is_key(&k), "{k}");
            raw.insert(k);
        }
    }
    assert_eq!(raw.len(), 200);
    let list = env.json(&["key", "list", "--json"]);
    let ids: BTreeSet<i64> = array(&list)
        .iter()
        .map(|k| k["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, (1..=200).collect());
}

#[test]
fn processes_racing_to_create_the_database_all_succeed() {
    let env = Env::new();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let db = env.db.clone();
            std::thread::spawn(move || {
                let mut c = bin();
                c.arg("--db").arg(&db).args(["key", "create", "--quiet"]);
                run(c).ok()
            })
        })
        .collect();
    let outs: Vec<Out> = threads
        .into_iter()
        .map(|t| t.join().expect("a thread panicked"))
        .collect();
    let created = outs
        .iter()
        .filter(|o| o.stderr.contains("created database"))
        .count();
    assert_eq!(created, 1, "{outs:#?}");
    assert_eq!(array(&env.json(&["key", "list", "--json"])).len(), 4);
}

// ---------------------------------------------------------------- command line

#[test]
fn usage_errors_exit_2() {
    let env = Env::init();
    let commands: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["key"],
        &["key", "create", "--json", "--quiet"],
        &["key", "create", "--expires-in", "soon"],
        &["key", "create", "--rpm", "many"],
        &["key", "show"],
        &["key", "show", "abc"],
        &["key", "rotate", "1", "--grace", "forever"],
        &["key", "rotate", "1", "--json", "--quiet"],
        &["key", "revoke", "1", "--force"],
        &["user", "add"],
        &["user", "set-tier", "alice"],
        &["tier", "set", "gold", "--rpm", "-1"],
        &["tier", "set", "gold", "--rpm", "tier"],
        &["tier", "set", "gold", "--admin", "--no-admin"],
        &["usage", "--by", "day"],
        &["usage", "--since", "yesterday"],
        &["audit", "--since", "1y2"],
        &["completions"],
        &["completions", "tcsh"],
    ];
    for args in commands {
        let out = env.run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        out.usage_error();
    }
    // Nothing was written by any of them.
    assert_eq!(count(&env.conn(), "SELECT count(*) FROM api_keys"), 0);
}

#[test]
fn a_mistyped_command_gets_a_similar_subcommand_tip() {
    let env = Env::init();
    let cases: &[(&[&str], &str)] = &[
        (&["kye", "list"], "tip: a similar subcommand exists: 'key'"),
        (&["usr", "list"], "tip: a similar subcommand exists: 'user'"),
        (&["stauts"], "'status'"),
        (&["key", "lsit"], "'list'"),
        (&["key", "sohw", "1"], "'show'"),
        (
            &["user", "ad", "bob"],
            "tip: a similar subcommand exists: 'add'",
        ),
    ];
    for (args, tip) in cases {
        let out = env.run(args).usage_error();
        assert!(out.stderr.contains("unrecognized subcommand"), "{out:#?}");
        assert!(out.stderr.contains(tip), "{args:?}: {out:#?}");
    }
    let out = env.run(&["frobnicate"]).usage_error();
    assert!(!out.stderr.contains("tip:"), "{out:#?}");
}

#[test]
fn help_and_version() {
    let out = run({
        let mut c = bin();
        c.arg("--version");
        c
    })
    .ok();
    assert_eq!(
        out.stdout.trim(),
        format!("aigate {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        &["--help"][..],
        &["key", "--help"],
        &["key", "create", "--help"],
        &["tier", "set", "--help"],
        &["serve", "--help"],
    ] {
        let mut c = bin();
        c.args(args);
        let out = run(c).ok();
        assert!(out.stdout.contains("Usage: aigate"), "{args:?}: {out:#?}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    use clap::CommandFactory;
    for (name, shell) in [
        ("bash", clap_complete::Shell::Bash),
        ("zsh", clap_complete::Shell::Zsh),
        ("fish", clap_complete::Shell::Fish),
        ("powershell", clap_complete::Shell::PowerShell),
        ("elvish", clap_complete::Shell::Elvish),
    ] {
        let mut c = bin();
        c.args(["completions", name]);
        let out = run(c).ok();
        let mut expected = Vec::new();
        let mut cmd = aigate::cli::Cli::command();
        clap_complete::generate(shell, &mut cmd, "aigate", &mut expected);
        assert_eq!(out.stdout.as_bytes(), expected, "{name}");
        for word in ["aigate", "rotate", "password-stdin", "tokens-per-day"] {
            assert!(out.stdout.contains(word), "{name} lacks {word}");
        }
    }
    // Completions need no database.
    let env = Env::new();
    env.ok(&["completions", "bash"]);
    assert!(!env.db.exists());
}

// ---------------------------------------------------------------- keys

#[test]
fn key_create_quiet_prints_only_a_well_formed_key() {
    let env = Env::init();
    let out = env.ok(&["key", "create", "--quiet"]);
    assert!(out.stderr.is_empty(), "{out:#?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:#?}");
    assert!(out.stdout.ends_with('\n'));
    let key = out.stdout.trim_end();
    assert!(is_key(key), "{key}");
    let short = env.ok(&["key", "create", "-q"]);
    assert!(is_key(short.stdout.trim_end()), "{short:#?}");

    let hash = aigate::auth::key::parse(key).expect("a created key parses");
    let stored: String = env
        .conn()
        .query_row("SELECT key_hash FROM api_keys WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("stored hash");
    assert_eq!(stored, hash.hex());

    // One character changed anywhere after the prefix fails the checksum.
    for i in [4, 20, 50, 67, 68, 73] {
        let mut b = key.as_bytes().to_vec();
        b[i] = if b[i] == b'x' { b'y' } else { b'x' };
        let changed = String::from_utf8(b).expect("ascii");
        assert_eq!(
            aigate::auth::key::parse(&changed),
            Err(aigate::auth::key::KeyFormatError::Checksum),
            "position {i}"
        );
    }
}

#[test]
fn key_create_json_and_human_output() {
    let env = Env::init();
    env.add_user("carol", "pro");
    let before = now();
    let v = env.json(&[
        "key",
        "create",
        "--user",
        "carol",
        "--name",
        "laptop",
        "--expires-in",
        "1h",
        "--json",
    ]);
    let mut fields = KEY_FIELDS.to_vec();
    fields.push("key");
    assert_fields(&v, &fields);
    let raw = v["key"].as_str().expect("key");
    assert!(is_key(raw));
    let prefix = v["prefix"].as_str().expect("prefix");
    assert!(raw.starts_with(prefix) && prefix.starts_with("aig_") && prefix.len() < 20);
    assert_eq!(v["id"], json!(1));
    assert_eq!(v["name"], json!("laptop"));
    assert_eq!(v["user"], json!("carol"));
    assert_eq!(v["tier"], json!("pro"), "the tier defaults to the user's");
    assert_eq!(v["status"], json!("expiring"));
    assert_near(secs(&v["created_at"]), before);
    assert_near(secs(&v["expires_at"]), before + 3600);
    assert_eq!(v["revoked_at"], Value::Null);
    assert_eq!(v["last_used_at"], Value::Null);

    // --tier wins over the user's tier; no expiry is active.
    let v = env.json(&[
        "key", "create", "--user", "carol", "--tier", "free", "--json",
    ]);
    assert_eq!(v["tier"], json!("free"));
    assert_eq!(v["status"], json!("active"));
    assert_eq!(v["expires_at"], Value::Null);
    assert_eq!(v["name"], Value::Null);
    let v = env.json(&["key", "create", "--expires-in", "30d", "--json"]);
    assert_eq!(v["status"], json!("active"));
    assert_eq!(v["user"], Value::Null);
    assert_eq!(v["tier"], json!("free"));

    // Human: the key on stdout, a note on stderr.
    let out = env.ok(&["key", "create", "--name", "ci"]);
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(is_key(out.stdout.trim()));
    assert!(out.stderr.contains("created key 4"), "{out:#?}");
    assert!(out.stderr.contains("shown only this once"), "{out:#?}");

    // show --json: the same shape without the key.
    let shown = env.json(&["key", "show", "1", "--json"]);
    assert_fields(&shown, KEY_FIELDS);
    assert_eq!(shown["prefix"], json!(prefix));
    let out = env.ok(&["key", "show", "1"]);
    for s in ["laptop", "carol", "pro", "expiring", "tier's", prefix] {
        assert!(out.stdout.contains(s), "{s}: {out:#?}");
    }
    assert!(!out.stdout.contains(raw));

    // list: every key, the spec's fields, never the raw key.
    let list = env.json(&["key", "list", "--json"]);
    assert_eq!(array(&list).len(), 4);
    for k in array(&list) {
        assert_fields(k, KEY_FIELDS);
    }
    let out = env.ok(&["key", "list"]);
    assert!(out.stdout.contains("PREFIX"), "{out:#?}");
    assert!(out.stdout.contains(&format!("{prefix}…")), "{out:#?}");
    assert!(!out.stdout.contains(raw));
    assert_eq!(out.stdout.lines().count(), 2 + 4, "{out:#?}");
}

#[test]
fn key_create_with_limits_and_key_set() {
    let env = Env::init();
    let (id, _) = env.key(&[
        "--rpm",
        "5",
        "--concurrency",
        "2",
        "--tokens-per-day",
        "1000",
        "--models",
        "llama3*,qwen2.5:7b",
    ]);
    let conn = env.conn();
    let limits = |conn: &Connection| {
        let c = key_columns(conn, id);
        (c.0, c.1, c.2, c.3)
    };
    assert_eq!(
        limits(&conn),
        (
            Some(5),
            Some(2),
            Some(1000),
            Some("llama3*,qwen2.5:7b".into())
        )
    );
    let out = env.ok(&["key", "show", "1"]);
    assert!(out.stdout.contains("llama3*,qwen2.5:7b"), "{out:#?}");

    let v = env.json(&[
        "key",
        "set",
        "1",
        "--tier",
        "pro",
        "--name",
        "renamed",
        "--rpm",
        "tier",
        "--concurrency",
        "7",
        "--tokens-per-day",
        "tier",
        "--models",
        "tier",
        "--json",
    ]);
    assert_fields(&v, KEY_FIELDS);
    assert_eq!(v["tier"], json!("pro"));
    assert_eq!(v["name"], json!("renamed"));
    assert_eq!(limits(&conn), (None, Some(7), None, None));

    // A failed set changes nothing, even the parts that came before the failure.
    env.run(&["key", "set", "1", "--name", "x", "--models", "["])
        .fails("bad model pattern");
    env.run(&["key", "set", "1", "--name", "x", "--tier", "gold"])
        .fails("gold");
    let name: String = conn
        .query_row("SELECT name FROM api_keys WHERE id = 1", [], |r| r.get(0))
        .expect("name");
    assert_eq!(name, "renamed");

    // Human output of set: the details.
    let out = env.ok(&["key", "set", "1", "--rpm", "3"]);
    assert!(out.stdout.contains("renamed"), "{out:#?}");
    assert_eq!(limits(&conn).0, Some(3));

    // A key made with --models tier keeps the tier's models; bad patterns make no key.
    env.key(&["--models", "tier"]);
    assert_eq!(limits_of(&conn, 2), None);
    env.run(&["key", "create", "--models", "["])
        .fails("bad model pattern");
    env.run(&["key", "create", "--models", ","])
        .fails("at least one pattern");
    assert_eq!(count(&conn, "SELECT count(*) FROM api_keys"), 2);
}

fn limits_of(conn: &Connection, id: i64) -> Option<String> {
    conn.query_row("SELECT models FROM api_keys WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .expect("models")
}

#[test]
fn key_list_all_includes_revoked_and_expired() {
    let env = Env::init();
    for _ in 0..3 {
        env.key(&[]);
    }
    env.conn()
        .execute(
            "UPDATE api_keys SET expires_at = ?1 WHERE id = 2",
            [now() - 10],
        )
        .expect("expire key 2");
    let out = env.ok(&["key", "revoke", "3", "--yes"]);
    assert!(out.stderr.contains("revoked key 3"), "{out:#?}");

    let usable = env.json(&["key", "list", "--json"]);
    let ids: Vec<i64> = array(&usable)
        .iter()
        .map(|k| k["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [1]);

    let all = env.json(&["key", "list", "--all", "--json"]);
    let statuses: Vec<&str> = array(&all)
        .iter()
        .map(|k| k["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["active", "expired", "revoked"]);
    let revoked = &array(&all)[2];
    assert_near(secs(&revoked["revoked_at"]), now());

    let out = env.ok(&["key", "list", "--all"]);
    for s in ["active", "expired", "revoked"] {
        assert!(out.stdout.contains(s), "{s}: {out:#?}");
    }

    // Revoking again is not an error and changes nothing.
    let out = env.ok(&["key", "revoke", "3", "-y"]);
    assert!(out.stderr.contains("already revoked"), "{out:#?}");
    let st = env.json(&["status", "--json"]);
    assert_eq!(st["keys"], json!(3));
    assert_eq!(st["usable_keys"], json!(1));

    // No usable keys: a short line, not an empty table.
    env.ok(&["key", "revoke", "1", "--yes"]);
    let out = env.ok(&["key", "list"]);
    assert_eq!(out.stdout.trim(), "no keys");
    assert_eq!(env.json(&["key", "list", "--json"]), json!([]));
}

/// rpm, concurrency, tokens_per_day, models, user_id, rotated_from
type KeyColumns = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn key_columns(conn: &Connection, id: i64) -> KeyColumns {
    conn.query_row(
        "SELECT rpm, concurrency, tokens_per_day, models, user_id, rotated_from
         FROM api_keys WHERE id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )
    .expect("key row")
}

#[test]
fn rotation_keeps_the_old_key_until_the_grace_and_copies_everything() {
    let env = Env::init();
    env.add_user("carol", "free");
    let orig_expiry = now() + 30 * 86_400;
    let (old_id, old_raw) = env.key(&[
        "--user",
        "carol",
        "--tier",
        "pro",
        "--name",
        "laptop",
        "--rpm",
        "9",
        "--concurrency",
        "3",
        "--tokens-per-day",
        "777",
        "--models",
        "llama3*",
        "--expires-in",
        "30d",
    ]);
    assert_eq!(old_id, 1);
    let t0 = now();
    let new = env.json(&["key", "rotate", "1", "--grace", "2d", "--json"]);
    let mut fields = KEY_FIELDS.to_vec();
    fields.push("key");
    assert_fields(&new, &fields);
    let new_raw = new["key"].as_str().expect("key").to_string();
    assert!(is_key(&new_raw));
    assert_ne!(new_raw, old_raw);
    assert_eq!(new["id"], json!(2));
    assert_eq!(new["user"], json!("carol"));
    assert_eq!(new["tier"], json!("pro"));
    assert_eq!(new["name"], json!("laptop"));
    assert_eq!(new["status"], json!("active"));
    // The new key inherits the old key's lifetime.
    assert_near(secs(&new["expires_at"]), orig_expiry);

    let old = env.json(&["key", "show", "1", "--json"]);
    assert_eq!(old["status"], json!("expiring"));
    assert_eq!(old["revoked_at"], Value::Null);
    assert_near(secs(&old["expires_at"]), t0 + 2 * 86_400);

    let conn = env.conn();
    let copied = |id: i64| key_columns(&conn, id);
    assert_eq!(
        copied(2),
        (
            Some(9),
            Some(3),
            Some(777),
            Some("llama3*".into()),
            Some(1),
            Some(1)
        )
    );
    assert_eq!(copied(1).5, None);

    // Both keys still authenticate: the old one until its grace ends.
    for (raw, id) in [(&old_raw, 1), (&new_raw, 2)] {
        let hash = aigate::auth::key::parse(raw).expect("valid");
        let row = aigate::store::keys::find_by_hash(&conn, &hash)
            .expect("lookup")
            .expect("the key is found");
        assert_eq!(row.key.id, id);
        assert_eq!(row.key.revoked_at, None);
        assert!(row.key.expires_at.expect("expiry") > now());
        assert!(!row.user_disabled);
    }
    let usable = env.json(&["key", "list", "--json"]);
    assert_eq!(array(&usable).len(), 2);

    // Default grace (7d) with --quiet: only the key; the expiry is the sooner of the two.
    let out = env.ok(&["key", "rotate", "2", "--quiet"]);
    assert!(out.stderr.is_empty(), "{out:#?}");
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(is_key(out.stdout.trim()));
    let two = env.json(&["key", "show", "2", "--json"]);
    assert_eq!(two["status"], json!("expiring"));
    assert_near(secs(&two["expires_at"]), now() + 7 * 86_400);
    assert_eq!(copied(3).5, Some(2));

    // Human output names the old key and until when it works.
    let out = env.ok(&["key", "rotate", "3", "--grace", "1h"]);
    assert!(is_key(out.stdout.trim()), "{out:#?}");
    assert!(out.stderr.contains("keeps working until"), "{out:#?}");
    assert!(out.stderr.contains("rotated key 4"), "{out:#?}");

    // A revoked or expired key cannot be rotated.
    env.ok(&["key", "revoke", "4", "--yes"]);
    env.run(&["key", "rotate", "4"]).fails("revoked");
    conn.execute(
        "UPDATE api_keys SET expires_at = ?1 WHERE id = 3",
        [now() - 1],
    )
    .expect("expire");
    env.run(&["key", "rotate", "3"]).fails("expired");
    assert_eq!(count(&conn, "SELECT count(*) FROM api_keys"), 4);
}

#[test]
fn destructive_commands_without_a_terminal_need_yes_and_change_nothing() {
    let env = Env::init();
    env.key(&[]);
    env.add_user("dave", "free");
    env.key(&["--user", "dave"]);
    // Even with an answer waiting on stdin, nothing reads it.
    for (args, needle) in [
        (&["key", "revoke", "1"][..], "--yes"),
        (&["user", "remove", "dave"], "--yes"),
    ] {
        let out = env.run_stdin(args, "y\n").fails(needle);
        assert!(out.stdout.is_empty());
    }
    let conn = env.conn();
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"
        ),
        2
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM users"), 1);
    let kinds = count(
        &conn,
        "SELECT count(*) FROM audit WHERE kind IN ('key_revoke', 'user_remove')",
    );
    assert_eq!(kinds, 0);

    // A password is never prompted for without a terminal.
    env.run(&["user", "add", "erin"]).fails("--password-stdin");
    env.run(&["user", "passwd", "dave"])
        .fails("--password-stdin");
    assert_eq!(count(&conn, "SELECT count(*) FROM users"), 1);
}

#[test]
fn unknown_ids_and_names_fail_naming_them() {
    let env = Env::init();
    env.add_user("frank", "free");
    let cases: &[(&[&str], &str)] = &[
        (&["key", "show", "999"], "999"),
        (&["key", "show", "999", "--json"], "999"),
        (&["key", "rotate", "999"], "999"),
        (&["key", "revoke", "999", "--yes"], "999"),
        (&["key", "revoke", "999"], "999"),
        (&["key", "set", "999", "--name", "x"], "999"),
        (&["key", "create", "--user", "ghost"], "ghost"),
        (&["key", "create", "--tier", "gold"], "gold"),
        (&["user", "passwd", "ghost", "--password-stdin"], "ghost"),
        (&["user", "disable", "ghost"], "ghost"),
        (&["user", "enable", "ghost"], "ghost"),
        (&["user", "remove", "ghost", "--yes"], "ghost"),
        (&["user", "remove", "ghost"], "ghost"),
        (&["user", "set-tier", "ghost", "pro"], "ghost"),
        (&["user", "set-tier", "frank", "gold"], "gold"),
        (
            &["user", "add", "grace", "--tier", "gold", "--password-stdin"],
            "gold",
        ),
    ];
    for (args, needle) in cases {
        let out = env.run_stdin(args, &format!("{PASSWORD}\n"));
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
        out.fails(needle);
    }
    let conn = env.conn();
    assert_eq!(count(&conn, "SELECT count(*) FROM api_keys"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM users"), 1);
    // Only init's absence of actions and the one user_add: failures are not audited.
    assert_eq!(count(&conn, "SELECT count(*) FROM audit"), 1);
}

// ---------------------------------------------------------------- users

#[test]
fn user_lifecycle() {
    let env = Env::init();
    let conn = env.conn();
    let user = |name: &str| -> (i64, Option<i64>, String, String) {
        conn.query_row(
            "SELECT token_version, disabled_at, password_hash, tier FROM users WHERE username = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("user row")
    };

    // add: the password from stdin, one trailing newline dropped, argon2id stored.
    let before = now();
    let out = env.run_stdin(
        &["user", "add", "alice", "--tier", "pro", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    let out = out.ok();
    assert!(out.stderr.contains("added user alice"), "{out:#?}");
    let (tv, disabled, hash, tier) = user("alice");
    assert_eq!((tv, disabled, tier.as_str()), (0, None, "pro"));
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(aigate::auth::password::verify(PASSWORD, &hash));

    env.run_stdin(&["user", "add", "alice", "--password-stdin"], PASSWORD)
        .fails("already exists");
    env.run_stdin(&["user", "add", "bob", "--password-stdin"], "seven77\n")
        .fails("at least 8");
    env.run_stdin(&["user", "add", "bad name", "--password-stdin"], PASSWORD)
        .fails("bad username");
    assert_eq!(count(&conn, "SELECT count(*) FROM users"), 1);

    let list = env.json(&["user", "list", "--json"]);
    assert_eq!(array(&list).len(), 1);
    let alice = &array(&list)[0];
    assert_fields(alice, USER_FIELDS);
    assert_eq!(alice["username"], json!("alice"));
    assert_eq!(alice["tier"], json!("pro"));
    assert_eq!(alice["status"], json!("active"));
    assert_near(secs(&alice["created_at"]), before);
    let out = env.ok(&["user", "list"]);
    assert!(out.stdout.contains("USERNAME") && out.stdout.contains("alice"));

    // passwd: a short password changes nothing; a good one bumps the token version.
    env.run_stdin(&["user", "passwd", "alice", "--password-stdin"], "short\n")
        .fails("at least 8");
    assert_eq!(user("alice").0, 0);
    let newpw = "a new password";
    let out = env
        .run_stdin(
            &["user", "passwd", "alice", "--password-stdin"],
            &format!("{newpw}\r\n"),
        )
        .ok();
    assert!(out.stderr.contains("no longer work"), "{out:#?}");
    let (tv, _, hash, _) = user("alice");
    assert_eq!(tv, 1);
    assert!(aigate::auth::password::verify(newpw, &hash));
    assert!(!aigate::auth::password::verify(PASSWORD, &hash));

    // disable bumps the version again; enable does not bring old tokens back.
    env.ok(&["user", "disable", "alice"]);
    let (tv, disabled, _, _) = user("alice");
    assert_eq!(tv, 2);
    assert!(disabled.is_some());
    assert_eq!(
        env.json(&["user", "list", "--json"])[0]["status"],
        json!("disabled")
    );
    env.ok(&["user", "enable", "alice"]);
    let (tv, disabled, _, _) = user("alice");
    assert_eq!((tv, disabled), (2, None));
    assert_eq!(
        env.json(&["user", "list", "--json"])[0]["status"],
        json!("active")
    );

    // set-tier: the user's tier, which new keys then default to.
    let out = env.ok(&["user", "set-tier", "alice", "admin"]);
    assert!(out.stderr.contains("admin"), "{out:#?}");
    assert_eq!(user("alice").3, "admin");
    let (k1, _) = env.key(&["--user", "alice"]);
    assert_eq!(
        env.json(&["key", "show", &k1.to_string(), "--json"])["tier"],
        json!("admin")
    );
    let (k2, _) = env.key(&["--user", "alice"]);
    env.ok(&["key", "revoke", &k2.to_string(), "--yes"]);
    let (other, _) = env.key(&[]);

    // remove: revokes their keys, keeps the rows for the record.
    let out = env.ok(&["user", "remove", "alice", "--yes"]);
    assert!(out.stderr.contains("revoked 1 key"), "{out:#?}");
    assert_eq!(count(&conn, "SELECT count(*) FROM users"), 0);
    let all = env.json(&["key", "list", "--all", "--json"]);
    for k in array(&all) {
        let id = k["id"].as_i64().expect("id");
        let expected = if id == other { "active" } else { "revoked" };
        assert_eq!(k["status"], json!(expected), "{k}");
        assert_eq!(k["user"], Value::Null, "{k}");
    }
    assert_eq!(env.ok(&["user", "list"]).stdout.trim(), "no users");
    assert_eq!(env.json(&["user", "list", "--json"]), json!([]));

    // Every admin action is audited, with the operator.
    let audit = env.json(&["audit", "--json"]);
    let kinds: Vec<&str> = array(&audit)
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "user_add",
        "user_passwd",
        "user_disable",
        "user_enable",
        "user_set_tier",
        "user_remove",
        "key_create",
        "key_revoke",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let removed = array(&audit)
        .iter()
        .find(|e| e["kind"] == json!("user_remove"))
        .expect("user_remove");
    assert_eq!(removed["user"], json!("alice"));
    assert!(
        removed["detail"]
            .as_str()
            .expect("detail")
            .contains("by=tester"),
        "{removed}"
    );
}

// ---------------------------------------------------------------- tiers

#[track_caller]
fn tier<'a>(list: &'a Value, name: &str) -> &'a Value {
    array(list)
        .iter()
        .find(|t| t["name"] == json!(name))
        .unwrap_or_else(|| panic!("no tier {name} in {list}"))
}

#[test]
fn tier_list_and_set() {
    let env = Env::init();
    let list = env.json(&["tier", "list", "--json"]);
    for t in array(&list) {
        assert_fields(t, TIER_FIELDS);
    }
    assert_eq!(
        list,
        json!([
            {"name": "admin", "rpm": null, "concurrency": null, "tokens_per_day": null, "models": ["*"], "admin": true,
             "priority": 20, "weight": 1, "max_wait_secs": null, "max_queued": null},
            {"name": "free", "rpm": 20, "concurrency": 1, "tokens_per_day": 50000, "models": ["*"], "admin": false,
             "priority": 0, "weight": 1, "max_wait_secs": 60, "max_queued": 4},
            {"name": "pro", "rpm": 300, "concurrency": 4, "tokens_per_day": 2000000, "models": ["*"], "admin": false,
             "priority": 10, "weight": 1, "max_wait_secs": 300, "max_queued": 32},
        ])
    );
    let out = env.ok(&["tier", "list"]);
    for s in ["TIER", "unlimited", "free", "50000"] {
        assert!(out.stdout.contains(s), "{s}: {out:#?}");
    }

    let gold = env.json(&[
        "tier",
        "set",
        "gold",
        "--rpm",
        "100",
        "--concurrency",
        "3",
        "--tokens-per-day",
        "5000000000",
        "--models",
        "llama3*, qwen2.5:7b",
        "--admin",
        "--json",
    ]);
    assert_eq!(
        gold,
        json!({"name": "gold", "rpm": 100, "concurrency": 3, "tokens_per_day": 5_000_000_000u64,
               "models": ["llama3*", "qwen2.5:7b"], "admin": true,
               "priority": 0, "weight": 1, "max_wait_secs": null, "max_queued": null})
    );
    let out = env.ok(&[
        "tier",
        "set",
        "gold",
        "--rpm",
        "unlimited",
        "--concurrency",
        "UNLIMITED",
        "--tokens-per-day",
        "unlimited",
        "--no-admin",
    ]);
    assert!(out.stderr.contains("updated tier gold"), "{out:#?}");
    assert!(out.stdout.contains("unlimited"), "{out:#?}");
    let list = env.json(&["tier", "list", "--json"]);
    assert_eq!(
        *tier(&list, "gold"),
        json!({"name": "gold", "rpm": null, "concurrency": null, "tokens_per_day": null,
               "models": ["llama3*", "qwen2.5:7b"], "admin": false,
               "priority": 0, "weight": 1, "max_wait_secs": null, "max_queued": null})
    );

    // Flags not given keep their values; a new tier starts unlimited with every model.
    env.ok(&["tier", "set", "free", "--rpm", "30"]);
    let list = env.json(&["tier", "list", "--json"]);
    let free = tier(&list, "free");
    assert_eq!(free["rpm"], json!(30));
    assert_eq!(free["concurrency"], json!(1));
    assert_eq!(free["tokens_per_day"], json!(50000));
    let out = env.ok(&["tier", "set", "basic"]);
    assert!(out.stderr.contains("created tier basic"), "{out:#?}");
    let basic = env.json(&["tier", "set", "basic", "--json"]);
    assert_eq!(
        basic,
        json!({"name": "basic", "rpm": null, "concurrency": null, "tokens_per_day": null,
               "models": ["*"], "admin": false,
               "priority": 0, "weight": 1, "max_wait_secs": null, "max_queued": null})
    );
    env.key(&["--tier", "gold"]);

    env.run(&["tier", "set", "bad name"]).fails("bad tier name");
    env.run(&["tier", "set", "free", "--models", ""])
        .fails("at least one pattern");
    env.run(&["tier", "set", "free", "--models", "llama[", "--rpm", "1"])
        .fails("bad model pattern");
    assert_eq!(
        tier(&env.json(&["tier", "list", "--json"]), "free")["rpm"],
        json!(30)
    );

    let audit = env.json(&["audit", "--json"]);
    let sets = array(&audit)
        .iter()
        .filter(|e| e["kind"] == json!("tier_set"))
        .count();
    assert_eq!(sets, 5);
}

/// (priority, weight, max_wait_secs, max_queued) of a tier in JSON.
#[track_caller]
fn queue(t: &Value) -> Value {
    json!([
        t["priority"],
        t["weight"],
        t["max_wait_secs"],
        t["max_queued"]
    ])
}

#[test]
fn init_seeds_the_queue_settings_of_the_tiers() {
    let env = Env::init();
    let list = env.json(&["tier", "list", "--json"]);
    assert_eq!(queue(tier(&list, "free")), json!([0, 1, 60, 4]));
    assert_eq!(queue(tier(&list, "pro")), json!([10, 1, 300, 32]));
    assert_eq!(queue(tier(&list, "admin")), json!([20, 1, null, null]));
    let conn = env.conn();
    assert_eq!(
        count(&conn, "SELECT max_wait FROM tiers WHERE name = 'pro'"),
        300
    );
}

#[test]
fn tier_set_queue_settings_and_clear_them() {
    let env = Env::init();
    let gold = env.json(&[
        "tier",
        "set",
        "gold",
        "--priority",
        "5",
        "--weight",
        "3",
        "--max-wait",
        "2m",
        "--max-queued",
        "10",
        "--json",
    ]);
    assert_fields(&gold, TIER_FIELDS);
    assert_eq!(queue(&gold), json!([5, 3, 120, 10]));

    // Flags not given keep their values; a negative priority is a value, not a flag.
    let gold = env.json(&["tier", "set", "gold", "--priority", "-5", "--json"]);
    assert_eq!(queue(&gold), json!([-5, 3, 120, 10]));
    let gold = env.json(&["tier", "set", "gold", "--rpm", "7", "--json"]);
    assert_eq!(queue(&gold), json!([-5, 3, 120, 10]));

    let gold = env.json(&[
        "tier",
        "set",
        "gold",
        "--max-wait",
        "unlimited",
        "--max-queued",
        "UNLIMITED",
        "--json",
    ]);
    assert_eq!(queue(&gold), json!([-5, 3, null, null]));
    assert_eq!(
        queue(tier(&env.json(&["tier", "list", "--json"]), "gold")),
        json!([-5, 3, null, null])
    );

    // 0 queued is a bound (never wait), not "unlimited"; a day is the longest wait.
    let gold = env.json(&[
        "tier",
        "set",
        "gold",
        "--max-queued",
        "0",
        "--max-wait",
        "24h",
        "--json",
    ]);
    assert_eq!(queue(&gold), json!([-5, 3, 86400, 0]));
}

#[test]
fn the_tier_table_shows_the_queue_settings() {
    let env = Env::init();
    let out = env.ok(&["tier", "list"]);
    let header = out.stdout.lines().next().expect("a header");
    for column in ["PRIORITY", "WEIGHT", "MAX WAIT", "MAX QUEUED"] {
        assert!(header.contains(column), "{column}: {out:#?}");
    }
    // One row per tier, in the same order as its columns after ADMIN.
    let cells = |name: &str| -> Vec<String> {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {out:#?}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells[cells.len() - 4..]
            .iter()
            .map(|c| c.to_string())
            .collect()
    };
    assert_eq!(cells("free"), ["0", "1", "1m", "4"]);
    assert_eq!(cells("pro"), ["10", "1", "5m", "32"]);
    assert_eq!(cells("admin"), ["20", "1", "unlimited", "unlimited"]);

    let out = env.ok(&["tier", "set", "gold", "--max-wait", "90s", "--weight", "2"]);
    assert!(out.stderr.contains("created tier gold"), "{out:#?}");
    let row = out.stdout.lines().nth(2).expect("a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[cells.len() - 4..],
        ["0", "2", "90s", "unlimited"],
        "{out:#?}"
    );
}

#[test]
fn tier_set_refuses_bad_queue_settings_and_changes_nothing() {
    let env = Env::init();
    let before = env.json(&["tier", "list", "--json"]);
    let bad: &[(&[&str], &str)] = &[
        (&["--weight", "0"], "--weight 0 is out of range"),
        (&["--weight", "1001"], "--weight 1001 is out of range"),
        (&["--weight", "-1"], "--weight"),
        (&["--weight", "heavy"], "--weight"),
        (&["--priority", "5000"], "--priority 5000 is out of range"),
        (&["--priority", "-1001"], "--priority -1001 is out of range"),
        (&["--priority", "high"], "--priority"),
        (&["--max-wait", "0s"], "at least 1s"),
        (&["--max-wait", "500ms"], "at least 1s"),
        (&["--max-wait", "1500ms"], "whole seconds"),
        (&["--max-wait", "2d"], "--max-wait 172800s is out of range"),
        (&["--max-wait", "soon"], "--max-wait"),
        (&["--max-queued", "-1"], "--max-queued"),
        (
            &["--max-queued", "100001"],
            "--max-queued 100001 is out of range",
        ),
        (&["--max-queued", "lots"], "unlimited"),
    ];
    for (flags, why) in bad {
        for name in ["free", "gold"] {
            // A valid flag beside the bad one is not applied either.
            let mut args = vec!["tier", "set", name, "--rpm", "7"];
            args.extend_from_slice(flags);
            let out = env.run(&args);
            assert!(
                matches!(out.code, Some(1 | 2)),
                "{args:?}: expected exit 1 or 2: {out:#?}"
            );
            assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
            let errors: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("error: "))
                .collect();
            assert_eq!(errors.len(), 1, "{args:?}: one error line: {out:#?}");
            assert!(
                errors[0].contains(why),
                "{args:?}: expected {why:?}: {out:#?}"
            );
        }
    }
    assert_eq!(env.json(&["tier", "list", "--json"]), before);
    let audit = env.json(&["audit", "--json"]);
    assert!(
        array(&audit).iter().all(|e| e["kind"] != json!("tier_set")),
        "{audit}"
    );
}

#[test]
fn the_tier_set_audit_row_records_the_queue_settings() {
    let env = Env::init();
    env.ok(&[
        "tier",
        "set",
        "gold",
        "--priority",
        "-5",
        "--weight",
        "3",
        "--max-wait",
        "2m",
        "--max-queued",
        "10",
    ]);
    env.ok(&[
        "tier",
        "set",
        "gold",
        "--max-wait",
        "unlimited",
        "--max-queued",
        "unlimited",
    ]);
    let audit = env.json(&["audit", "--json"]);
    let details: Vec<&str> = array(&audit)
        .iter()
        .filter(|e| e["kind"] == json!("tier_set"))
        .map(|e| e["detail"].as_str().expect("a detail"))
        .collect();
    let set = "tier=gold rpm=- concurrency=- tokens_per_day=- models=* admin=false";
    assert_eq!(
        details,
        [
            format!("{set} priority=-5 weight=3 max_wait=120s max_queued=10 by=tester"),
            format!("{set} priority=-5 weight=3 max_wait=- max_queued=- by=tester"),
        ]
    );
}

// ---------------------------------------------------------------- usage and audit

#[test]
fn usage_groups_and_nulls() {
    let env = Env::init();
    assert_eq!(env.ok(&["usage"]).stdout.trim(), "no usage recorded");
    assert_eq!(env.json(&["usage", "--json"]), json!([]));

    let today = now() / 86_400;
    let conn = env.conn();
    let rows: &[(i64, i64, &str, &str, i64, i64, i64)] = &[
        (today, 1, "alice", "llama3", 2, 10, 20),
        (today, 1, "alice", "qwen", 1, 5, 5),
        (today, 2, "", "llama3", 3, 100, 1),
        (today, 0, "bob", "llama3", 1, 1, 1),
        (today - 10, 1, "alice", "llama3", 100, 1000, 1000),
    ];
    for r in rows {
        conn.execute(
            "INSERT INTO usage (day, key_id, user, model, requests, prompt_tokens, completion_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![r.0, r.1, r.2, r.3, r.4, r.5, r.6],
        )
        .expect("insert usage");
    }
    let row = |k: Value, u: Value, m: Value, req: i64, p: i64, c: i64| {
        json!({"key_id": k, "user": u, "model": m, "requests": req,
               "prompt_tokens": p, "completion_tokens": c})
    };
    let n = Value::Null;

    let all = env.json(&["usage", "--json"]);
    for r in array(&all) {
        assert_fields(r, USAGE_FIELDS);
    }
    assert_eq!(
        all,
        json!([
            row(json!(1), json!("alice"), json!("llama3"), 102, 1010, 1020),
            row(json!(2), n.clone(), json!("llama3"), 3, 100, 1),
            row(json!(1), json!("alice"), json!("qwen"), 1, 5, 5),
            row(n.clone(), json!("bob"), json!("llama3"), 1, 1, 1),
        ])
    );
    let recent = env.json(&["usage", "--since", "1d", "--json"]);
    assert_eq!(
        array(&recent)[0],
        row(json!(2), n.clone(), json!("llama3"), 3, 100, 1)
    );
    assert_eq!(array(&recent).len(), 4);

    assert_eq!(
        env.json(&["usage", "--since", "24h", "--by", "key", "--json"]),
        json!([
            row(json!(2), n.clone(), n.clone(), 3, 100, 1),
            row(json!(1), n.clone(), n.clone(), 3, 15, 25),
            row(n.clone(), n.clone(), n.clone(), 1, 1, 1),
        ])
    );
    assert_eq!(
        env.json(&["usage", "--since", "1d", "--by", "user", "--json"]),
        json!([
            row(n.clone(), n.clone(), n.clone(), 3, 100, 1),
            row(n.clone(), json!("alice"), n.clone(), 3, 15, 25),
            row(n.clone(), json!("bob"), n.clone(), 1, 1, 1),
        ])
    );
    assert_eq!(
        env.json(&["usage", "--since", "1d", "--by", "model", "--json"]),
        json!([
            row(n.clone(), n.clone(), json!("llama3"), 6, 111, 22),
            row(n.clone(), n.clone(), json!("qwen"), 1, 5, 5),
        ])
    );
    assert_eq!(
        env.json(&["usage", "--by", "model", "--json"]),
        json!([
            row(n.clone(), n.clone(), json!("llama3"), 106, 1111, 1022),
            row(n.clone(), n.clone(), json!("qwen"), 1, 5, 5),
        ])
    );

    // Grouped by user, the table has no KEY or MODEL column (see
    // usage_tables_show_only_the_grouped_columns).
    let out = env.ok(&["usage", "--by", "user"]);
    for s in ["USER", "REQUESTS", "alice", "bob", "1015"] {
        assert!(out.stdout.contains(s), "{s}: {out:#?}");
    }
}

#[test]
fn usage_tables_show_only_the_grouped_columns() {
    let env = Env::init();
    let today = now() / 86_400;
    let conn = env.conn();
    for (key, user, model, requests) in [(1, "alice", "llama3", 2), (2, "", "qwen", 5)] {
        conn.execute(
            "INSERT INTO usage (day, key_id, user, model, requests, prompt_tokens, completion_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, 10, 20)",
            rusqlite::params![today, key, user, model, requests],
        )
        .expect("insert usage");
    }
    // Each table as words per line: the header (its words) and the rows.
    let table = |args: &[&str]| -> Vec<Vec<String>> {
        let mut full = vec!["usage"];
        full.extend_from_slice(args);
        env.ok(&full)
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains('─'))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    let counts = ["REQUESTS", "PROMPT", "TOKENS", "COMPLETION", "TOKENS"];
    let header = |grouped: &[&str]| -> Vec<String> {
        grouped
            .iter()
            .chain(&counts)
            .map(|s| s.to_string())
            .collect()
    };
    let words = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };

    assert_eq!(
        table(&["--by", "model"]),
        [
            header(&["MODEL"]),
            words("qwen 5 10 20"),
            words("llama3 2 10 20")
        ]
    );
    assert_eq!(
        table(&["--by", "key"]),
        [header(&["KEY"]), words("2 5 10 20"), words("1 2 10 20")]
    );
    assert_eq!(
        table(&["--by", "user"]),
        [
            header(&["USER"]),
            words("- 5 10 20"),
            words("alice 2 10 20")
        ]
    );
    // Without --by, as before: every column.
    assert_eq!(
        table(&[]),
        [
            header(&["KEY", "USER", "MODEL"]),
            words("2 - qwen 5 10 20"),
            words("1 alice llama3 2 10 20")
        ]
    );
    // JSON keeps every field, null where not grouped by.
    let v = env.json(&["usage", "--by", "model", "--json"]);
    for r in array(&v) {
        assert_fields(r, USAGE_FIELDS);
        assert_eq!(r["key_id"], Value::Null);
        assert_eq!(r["user"], Value::Null);
    }
}

#[test]
fn audit_shows_admin_actions_and_auth_failures_by_time() {
    let env = Env::init();
    assert_eq!(
        env.ok(&["audit"]).stdout.trim(),
        "no audit entries in that period"
    );
    let (id, raw) = env.key(&["--name", "ci"]);
    let prefix = env.json(&["key", "show", &id.to_string(), "--json"])["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    env.ok(&["key", "set", "1", "--rpm", "4"]);
    env.ok(&["key", "rotate", "1", "--quiet"]);
    env.ok(&["key", "revoke", "2", "--yes"]);
    env.ok(&["tier", "set", "free", "--rpm", "10"]);

    let conn = env.conn();
    let t = now();
    for (at, ip) in [(t - 2 * 86_400, "10.0.0.1"), (t - 60, "10.0.0.2")] {
        conn.execute(
            "INSERT INTO audit (at, kind, ip, reason, key_prefix) VALUES (?1, 'auth_failure', ?2, 'invalid key', 'aig_XXXXXXXX')",
            rusqlite::params![at, ip],
        )
        .expect("insert audit");
    }

    let recent = env.json(&["audit", "--json"]);
    for e in array(&recent) {
        assert_fields(e, AUDIT_FIELDS);
        assert!(secs(&e["at"]) >= t - 86_400 - 5, "{e}");
    }
    let kinds: Vec<&str> = array(&recent)
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "key_create",
        "key_set",
        "key_rotate",
        "key_revoke",
        "tier_set",
        "auth_failure",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "auth_failure").count(), 1);
    let created = array(&recent)
        .iter()
        .find(|e| e["kind"] == json!("key_create"))
        .expect("key_create");
    assert_eq!(created["key_prefix"], json!(prefix));
    assert_eq!(created["ip"], Value::Null);
    assert_eq!(created["reason"], Value::Null);
    assert_near(secs(&created["at"]), t);
    let failure = array(&recent)
        .iter()
        .find(|e| e["kind"] == json!("auth_failure"))
        .expect("auth_failure");
    assert_eq!(failure["ip"], json!("10.0.0.2"));
    assert_eq!(failure["reason"], json!("invalid key"));
    assert_eq!(failure["key_prefix"], json!("aig_XXXXXXXX"));
    assert!(!recent.to_string().contains(&raw), "a raw key in the audit");

    let older = env.json(&["audit", "--since", "3d", "--json"]);
    assert_eq!(array(&older).len(), array(&recent).len() + 1);
    assert_eq!(array(&older)[0]["ip"], json!("10.0.0.1"), "oldest first");
    let last_minute = env.json(&["audit", "--since", "30s", "--json"]);
    assert!(
        !last_minute.to_string().contains("10.0.0.2"),
        "{last_minute}"
    );

    let out = env.ok(&["audit", "--since", "7d"]);
    for s in [
        "KIND",
        "auth_failure",
        "10.0.0.1",
        "key_revoke",
        "by=tester",
    ] {
        assert!(out.stdout.contains(s), "{s}: {out:#?}");
    }
}

#[test]
fn status_reports_version_path_schema_and_counts() {
    let env = Env::init();
    env.key(&[]);
    env.key(&[]);
    env.ok(&["key", "revoke", "2", "--yes"]);
    let v = env.json(&["status", "--json"]);
    assert_fields(&v, STATUS_FIELDS);
    assert_eq!(
        v,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "db_path": env.db.display().to_string(),
            "schema_version": aigate::store::latest_version(),
            "keys": 2,
            "usable_keys": 1,
            "users": 0,
            "tiers": 3,
            "hosts": 0,
            "draining_hosts": 0,
            "model_pins": 0,
        })
    );
    let out = env.ok(&["status"]);
    assert!(
        out.stdout
            .contains(&format!("aigate {}", env!("CARGO_PKG_VERSION")))
    );
    assert!(out.stdout.contains("2 (1 usable)"), "{out:#?}");
    assert!(out.stdout.contains(&env.db.display().to_string()));
}

#[test]
fn a_failed_write_to_stdout_is_one_error_line_not_a_panic() {
    let env = Env::init();
    env.key(&[]);
    let cases: &[(&[&str], &str)] = &[
        (&["key", "create"], "revoke it with `aigate key revoke 2`"),
        (&["key", "create", "--quiet"], "key 3 was created"),
        (&["key", "rotate", "1", "--json"], "key 4 was rotated"),
        (&["key", "show", "1"], "No space left"),
        (&["key", "list"], "No space left"),
        (&["key", "list", "--json"], "No space left"),
        (&["status"], "No space left"),
        (&["completions", "zsh"], "No space left"),
    ];
    for (args, needle) in cases {
        let full = std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_aigate"))
            .env_remove("AIGATE_DB")
            .env_remove("RUST_BACKTRACE")
            .arg("--db")
            .arg(&env.db)
            .args(*args)
            .stdin(std::process::Stdio::null())
            .stdout(full)
            .output()
            .expect("run aigate");
        Out {
            code: o.status.code(),
            stdout: String::new(),
            stderr: String::from_utf8(o.stderr).expect("utf-8 stderr"),
        }
        .fails(needle);
    }
}

/// Runs aigate with `--db` and `args`, its stdout a socket whose other end is already
/// closed: every write fails with EPIPE at once, as to a pipe whose reader has gone.
fn run_into_closed_stdout(env: &Env, args: &[&str]) -> Out {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    drop(ours);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_aigate"))
        .env_remove("AIGATE_DB")
        .env_remove("RUST_BACKTRACE")
        .arg("--db")
        .arg(&env.db)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::os::fd::OwnedFd::from(theirs))
        .output()
        .expect("run aigate");
    Out {
        code: o.status.code(),
        stdout: String::new(),
        stderr: String::from_utf8(o.stderr).expect("utf-8 stderr"),
    }
}

/// Adds `n` valid keys straight through the store, in one transaction.
fn bulk_keys(env: &Env, n: usize) {
    use aigate::store::{OpenMode, Store, keys};
    let mut store = Store::open(&env.db, OpenMode::Existing).expect("open the store");
    store
        .write(|tx| {
            for _ in 0..n {
                let new = aigate::auth::key::generate().expect("a key");
                keys::create(tx, &new, &keys::NewKeyParams::default())?;
            }
            Ok(())
        })
        .expect("bulk keys");
}

#[test]
fn a_reader_that_leaves_early_ends_the_command_quietly() {
    let env = Env::init();
    bulk_keys(&env, 1_500);
    // Far more than a pipe holds, so aigate is still writing when the reader leaves.
    for args in [
        &["key", "list"][..],
        &["key", "list", "--json"],
        &["key", "list", "--all"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aigate"))
            .env_remove("AIGATE_DB")
            .env("NO_COLOR", "1")
            .arg("--db")
            .arg(&env.db)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run aigate");
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut reader, &mut first).expect("read a line");
        assert!(!first.is_empty(), "{args:?}: no output");
        drop(reader);
        let o = child.wait_with_output().expect("wait for aigate");
        let stderr = String::from_utf8(o.stderr).expect("utf-8 stderr");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn a_closed_stdout_ends_a_listing_quietly_but_a_new_key_says_to_revoke_it() {
    let env = Env::init();
    env.key(&[]);
    env.ok(&["key", "revoke", "1", "--yes"]);
    env.conn()
        .execute(
            "INSERT INTO usage (day, key_id, user, model, requests) VALUES (?1, 1, '', 'llama3', 1)",
            [now() / 86_400],
        )
        .expect("insert usage");
    for args in [
        &["key", "list", "--all"][..],
        &["key", "list", "--all", "--json"],
        &["key", "show", "1"],
        &["key", "show", "1", "--json"],
        &["audit"],
        &["audit", "--json"],
        &["usage"],
        &["usage", "--json"],
        &["status"],
        &["status", "--json"],
        &["user", "list", "--json"],
        &["tier", "list"],
        &["completions", "bash"],
        &["completions", "zsh"],
    ] {
        let out = run_into_closed_stdout(&env, args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:#?}");
        assert_eq!(out.stderr, "", "{args:?}: {out:#?}");
    }
    // A key nobody saw must be revoked: that stays a failure that names it.
    run_into_closed_stdout(&env, &["key", "create", "--quiet"]).fails("key 2 was created");
    run_into_closed_stdout(&env, &["key", "create", "--json"])
        .fails("revoke it with `aigate key revoke 3`");
}

// ---------------------------------------------------------------- the operator

/// The `detail` of the newest audit row of `kind`.
fn last_detail(env: &Env, kind: &str) -> String {
    env.conn()
        .query_row(
            "SELECT detail FROM audit WHERE kind = ?1 ORDER BY id DESC LIMIT 1",
            [kind],
            |r| r.get(0),
        )
        .expect("an audit row")
}

#[test]
fn audit_names_the_os_user_when_user_and_sudo_user_are_unset() {
    let env = Env::init();
    let id = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("run id -un");
    assert!(id.status.success(), "{id:?}");
    let os_user = String::from_utf8(id.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(!os_user.is_empty());

    // As under cron or systemd: neither variable.
    let mut c = env.cmd(&["key", "create", "--quiet"]);
    c.env_remove("USER").env_remove("SUDO_USER");
    run(c).ok();
    assert!(
        last_detail(&env, "key_create").ends_with(&format!(" by={os_user}")),
        "{}",
        last_detail(&env, "key_create")
    );

    // $USER says anything it likes; the uid is what counts.
    let mut c = env.cmd(&["tier", "set", "free", "--rpm", "7"]);
    c.env("USER", "someone-else").env_remove("SUDO_USER");
    run(c).ok();
    assert!(
        last_detail(&env, "tier_set").ends_with(&format!(" by={os_user}")),
        "{}",
        last_detail(&env, "tier_set")
    );

    // Behind sudo, the person who ran sudo.
    let mut c = env.cmd(&["key", "revoke", "1", "--yes"]);
    c.env("SUDO_USER", "alice");
    run(c).ok();
    assert_eq!(last_detail(&env, "key_revoke"), "id=1 by=alice");
}

// ---------------------------------------------------------------- terminal escapes

/// What a hostile name tries: retitle the window, ring the bell, clear the screen.
const HOSTILE: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
/// How it shows instead.
const HOSTILE_SHOWN: &str = "\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J";

/// Asserts that `text` carries no control byte (other than newline and the table's
/// spaces) and no bidirectional formatting character.
#[track_caller]
fn assert_terminal_safe(text: &str) {
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        let control = c.is_control() && c != '\n';
        assert!(!control && !bidi, "{:?} in {text:?}", c);
    }
}

#[test]
fn text_a_client_chose_never_reaches_the_terminal_as_control_characters() {
    let env = Env::init();
    let (id, _) = env.key(&["--name", HOSTILE]);
    let (other, _) = env.key(&["--name", "\u{202e}txt.exe\u{9b}31m\u{7f}"]);
    let conn = env.conn();
    conn.execute(
        "INSERT INTO audit (at, kind, ip, reason, key_prefix, user, detail)
         VALUES (?1, 'auth_failure', ?2, ?2, 'aig_XXXXXXXX', ?3, ?2)",
        rusqlite::params![now(), "\u{1b}[31m10.0.0.9", "\u{1b}]0;PWNED\u{0007}"],
    )
    .expect("insert audit");
    conn.execute(
        "INSERT INTO usage (day, key_id, user, model, requests) VALUES (?1, ?2, ?3, ?4, 1)",
        rusqlite::params![now() / 86_400, id, "\u{1b}]0;u\u{7}", HOSTILE],
    )
    .expect("insert usage");

    let (id_s, other_s) = (id.to_string(), other.to_string());
    let cases: &[(&[&str], &str)] = &[
        (&["key", "list"], HOSTILE_SHOWN),
        (&["key", "list", "--all"], HOSTILE_SHOWN),
        (&["key", "show", &id_s], HOSTILE_SHOWN),
        (
            &["key", "show", &other_s],
            "\\u{202e}txt.exe\\u{9b}31m\\u{7f}",
        ),
        (&["key", "set", &id_s, "--rpm", "3"], HOSTILE_SHOWN),
        (&["audit"], "\\u{1b}]0;PWNED\\u{7}"),
        (&["audit"], "\\u{1b}[31m10.0.0.9"),
        (&["usage"], HOSTILE_SHOWN),
        (&["usage", "--by", "model"], HOSTILE_SHOWN),
        (&["usage", "--by", "user"], "\\u{1b}]0;u\\u{7}"),
    ];
    for (args, shown) in cases {
        let out = env.ok(args);
        assert_terminal_safe(&out.stdout);
        assert_terminal_safe(&out.stderr);
        assert!(out.stdout.contains(shown), "{args:?}: {out:#?}");
    }

    // JSON escapes them too, and still says exactly what is stored.
    for args in [
        &["key", "list", "--json"][..],
        &["audit", "--json"],
        &["usage", "--json"],
    ] {
        let out = env.ok(args);
        assert_terminal_safe(&out.stdout);
    }
    let list = env.json(&["key", "list", "--json"]);
    assert_eq!(array(&list)[0]["name"], json!(HOSTILE));
    assert_eq!(
        array(&list)[1]["name"],
        json!("\u{202e}txt.exe\u{9b}31m\u{7f}")
    );
    let audit = env.json(&["audit", "--json"]);
    let failure = array(&audit)
        .iter()
        .find(|e| e["kind"] == json!("auth_failure"))
        .expect("the inserted row");
    assert_eq!(failure["user"], json!("\u{1b}]0;PWNED\u{7}"));

    // The question of a refused confirmation quotes the name; it is escaped there too.
    let out = env.run(&["key", "revoke", &id.to_string()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_terminal_safe(&out.stderr);
    assert!(out.stderr.contains(HOSTILE_SHOWN), "{out:#?}");
}

// ---------------------------------------------------------------- audit retention

#[test]
fn audit_prune_older_than_deletes_old_entries_and_records_itself() {
    let env = Env::init();
    env.key(&[]);
    let conn = env.conn();
    let t = now();
    for (at, ip) in [
        (t - 100 * 86_400, "10.0.0.1"),
        (t - 50 * 86_400, "10.0.0.2"),
        (t - 3_600, "10.0.0.3"),
    ] {
        conn.execute(
            "INSERT INTO audit (at, kind, ip, reason) VALUES (?1, 'auth_failure', ?2, 'invalid key')",
            rusqlite::params![at, ip],
        )
        .expect("insert audit");
    }
    let total = |env: &Env| count(&env.conn(), "SELECT count(*) FROM audit");
    assert_eq!(total(&env), 4);

    // Destructive: without a terminal it needs --yes, and changes nothing without it.
    env.run(&["audit", "--prune-older-than", "30d"])
        .fails("pass --yes");
    assert_eq!(total(&env), 4);

    let out = env.ok(&["audit", "--prune-older-than", "30d", "--yes"]);
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.contains("deleted 2 audit entries"), "{out:#?}");
    let left = env.json(&["audit", "--since", "3650d", "--json"]);
    let ips: Vec<&Value> = array(&left).iter().map(|e| &e["ip"]).collect();
    assert_eq!(
        ips,
        [&json!("10.0.0.3"), &Value::Null, &Value::Null],
        "{left}"
    );
    let kinds: Vec<&str> = array(&left)
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["auth_failure", "key_create", "audit_prune"]);
    let prune = &array(&left)[2];
    let detail = prune["detail"].as_str().expect("detail");
    assert!(detail.ends_with(" deleted=2 by=tester"), "{detail}");
    let before = detail
        .strip_prefix("before=")
        .and_then(|d| d.split(' ').next())
        .expect("before=");
    assert_near(secs(&json!(before)), t - 30 * 86_400);

    // Nothing that old left: no question, and the run is still recorded.
    let out = env.ok(&["audit", "--prune-older-than", "30d"]);
    assert!(out.stderr.contains("deleted 0 audit entries"), "{out:#?}");
    assert_eq!(total(&env), 4);

    // The listing's options do not mix with pruning; --yes means nothing without it.
    for args in [
        &["audit", "--prune-older-than", "30d", "--json"][..],
        &["audit", "--prune-older-than", "30d", "--since", "1d"],
        &["audit", "--prune-older-than", "soon", "--yes"],
        &["audit", "--yes"],
    ] {
        env.run(args).usage_error();
    }
    assert_eq!(total(&env), 4);
}

// ---------------------------------------------------------------- hosts and model pins

const HOST_FIELDS: &[&str] = &[
    "name",
    "url",
    "kind",
    "slots",
    "state",
    "draining",
    "loaded_models",
    "in_flight",
    "seen_at",
];
const PIN_FIELDS: &[&str] = &["model", "num_ctx", "keep_alive"];

/// The host called `name` in `host list --json`.
#[track_caller]
fn host<'a>(list: &'a Value, name: &str) -> &'a Value {
    array(list)
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name} in {list}"))
}

/// The kinds of the audit rows of the last day, oldest first.
fn audit_kinds(env: &Env) -> Vec<String> {
    array(&env.json(&["audit", "--json"]))
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect()
}

#[test]
fn host_add_and_list_as_a_table_and_json() {
    let env = Env::init();
    assert_eq!(env.ok(&["host", "list"]).stdout.lines().count(), 1);
    assert_eq!(env.json(&["host", "list", "--json"]), json!([]));

    let out = env.ok(&["host", "add", "gpu1:11434"]);
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(
        out.stderr
            .contains("added host gpu1:11434 (http://gpu1:11434, ollama, 1 slot)"),
        "{out:#?}"
    );
    env.ok(&[
        "host",
        "add",
        "HTTP://10.0.0.5:8080/",
        "--name",
        "llama-cpp",
        "--kind",
        "openai",
        "--slots",
        "4",
    ]);
    env.ok(&["host", "add", "http://[::1]:11434"]);

    let list = env.json(&["host", "list", "--json"]);
    assert_eq!(array(&list).len(), 3);
    for h in array(&list) {
        assert_fields(h, HOST_FIELDS);
    }
    // The order added; no gate has written, so nothing observed is known.
    assert_eq!(
        list[0],
        json!({
            "name": "gpu1:11434",
            "url": "http://gpu1:11434",
            "kind": "ollama",
            "slots": 1,
            "state": "unknown",
            "draining": false,
            "loaded_models": null,
            "in_flight": null,
            "seen_at": null,
        })
    );
    let cpp = host(&list, "llama-cpp");
    assert_eq!(cpp["url"], "http://10.0.0.5:8080");
    assert_eq!(cpp["kind"], "openai");
    assert_eq!(cpp["slots"], 4);
    assert_eq!(host(&list, "[::1]:11434")["url"], "http://[::1]:11434");

    let table = env.ok(&["host", "list"]).stdout;
    let header = table.lines().next().expect("a header");
    for column in [
        "NAME",
        "URL",
        "KIND",
        "SLOTS",
        "STATE",
        "LOADED",
        "IN FLIGHT",
        "SEEN",
    ] {
        assert!(header.contains(column), "{column} in {table}");
    }
    let row = table
        .lines()
        .find(|l| l.contains("llama-cpp"))
        .expect("the llama-cpp row");
    for cell in ["http://10.0.0.5:8080", "openai", "4", "unknown"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }

    let kinds = audit_kinds(&env);
    assert_eq!(kinds, ["host_add", "host_add", "host_add"]);
    assert_eq!(
        last_detail(&env, "host_add"),
        "host=[::1]:11434 url=http://[::1]:11434 kind=ollama slots=1 by=tester"
    );
}

#[test]
fn host_add_refuses_duplicates_and_bad_values_and_writes_nothing() {
    let env = Env::init();
    env.ok(&["host", "add", "gpu1:11434", "--name", "a"]);
    let failures: &[(&[&str], &str)] = &[
        (
            &["host", "add", "gpu2:11434", "--name", "a"],
            "\"a\" already exists",
        ),
        // The same URL spelled otherwise is the same host.
        (
            &["host", "add", "http://GPU1:11434/", "--name", "b"],
            "already has the URL http://gpu1:11434",
        ),
        (&["host", "add", "https://gpu2:11434"], "only http://"),
        (&["host", "add", "http://gpu2:11434/api"], "no path"),
        (&["host", "add", "gpu2"], "no port"),
        (&["host", "add", "gpu2:99999"], "port"),
        (&["host", "add", "::1:11434"], "brackets"),
        (
            &["host", "add", "gpu2:11434", "--name", "has space"],
            "bad host name",
        ),
    ];
    for (args, needle) in failures {
        let out = env.run(args).fails(needle);
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
    }
    for args in [
        &["host", "add", "gpu2:11434", "--kind", "vllm"][..],
        &["host", "add", "gpu2:11434", "--slots", "0"],
        &["host", "add", "gpu2:11434", "--slots", "1025"],
        &["host", "add", "gpu2:11434", "--slots", "many"],
        &["host", "add"],
    ] {
        env.run(args).usage_error();
    }
    let conn = env.conn();
    assert_eq!(count(&conn, "SELECT count(*) FROM hosts"), 1);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM audit WHERE kind = 'host_add'"),
        1
    );
    env.ok(&["host", "add", "gpu2:11434", "--slots", "1024"]);
}

#[test]
fn drain_and_undrain_show_in_the_list_and_are_audited_once() {
    let env = Env::init();
    env.ok(&["host", "add", "gpu1:11434", "--name", "gpu1"]);
    env.ok(&["host", "add", "gpu2:11434", "--name", "gpu2"]);

    let out = env.ok(&["host", "drain", "gpu1"]);
    assert!(out.stderr.contains("draining host gpu1"), "{out:#?}");
    let list = env.json(&["host", "list", "--json"]);
    assert_eq!(host(&list, "gpu1")["state"], "draining");
    assert_eq!(host(&list, "gpu1")["draining"], true);
    assert_eq!(host(&list, "gpu2")["state"], "unknown");
    assert_eq!(host(&list, "gpu2")["draining"], false);
    let row = env.ok(&["host", "list"]).stdout;
    assert!(
        row.lines()
            .any(|l| l.contains("gpu1") && l.contains("draining")),
        "{row}"
    );

    // Again: not an error, and no second audit row.
    let out = env.ok(&["host", "drain", "gpu1"]);
    assert!(out.stderr.contains("already draining"), "{out:#?}");
    env.ok(&["host", "undrain", "gpu1"]);
    let out = env.ok(&["host", "undrain", "gpu1"]);
    assert!(out.stderr.contains("was not draining"), "{out:#?}");
    let list = env.json(&["host", "list", "--json"]);
    assert_eq!(host(&list, "gpu1")["state"], "unknown");
    assert_eq!(host(&list, "gpu1")["draining"], false);

    assert_eq!(
        audit_kinds(&env),
        ["host_add", "host_add", "host_drain", "host_undrain"]
    );
    assert_eq!(last_detail(&env, "host_drain"), "host=gpu1 by=tester");
}

#[test]
fn host_list_shows_what_a_gate_wrote_until_it_is_stale() {
    use aigate::store::hosts::{self, Health};
    use aigate::store::{OpenMode, Store};
    let env = Env::init();
    env.ok(&[
        "host",
        "add",
        "gpu1:11434",
        "--name",
        "gpu1",
        "--slots",
        "2",
    ]);
    env.ok(&["host", "add", "gpu2:11434", "--name", "gpu2"]);
    let mut store = Store::open(&env.db, OpenMode::Existing).expect("open");
    let t = now();
    let loaded = ["llama3.2:latest".to_string(), "qwen2.5:7b".to_string()];
    store
        .write(|tx| {
            hosts::report(tx, "gpu1", Health::Up, &loaded, 2, t)?;
            hosts::report(tx, "gpu2", Health::Down, &[], 0, t - 60)
        })
        .expect("the gate's write-back");

    let list = env.json(&["host", "list", "--json"]);
    let gpu1 = host(&list, "gpu1");
    assert_eq!(gpu1["state"], "up");
    assert_eq!(
        gpu1["loaded_models"],
        json!(["llama3.2:latest", "qwen2.5:7b"])
    );
    assert_eq!(gpu1["in_flight"], 2);
    assert_near(secs(&gpu1["seen_at"]), t);
    // Written a minute ago: no gate is watching it now.
    let gpu2 = host(&list, "gpu2");
    assert_eq!(gpu2["state"], "unknown");
    assert_eq!(gpu2["loaded_models"], Value::Null);
    assert_eq!(gpu2["in_flight"], Value::Null);
    assert_near(secs(&gpu2["seen_at"]), t - 60);

    let table = env.ok(&["host", "list"]).stdout;
    let row = table.lines().find(|l| l.contains("gpu1")).expect("gpu1");
    for cell in ["up", "llama3.2:latest,qwen2.5:7b", " 2 "] {
        assert!(row.contains(cell), "{cell:?} in {row}");
    }

    store
        .write(|tx| hosts::report(tx, "gpu2", Health::Down, &[], 0, t))
        .expect("report");
    assert_eq!(
        host(&env.json(&["host", "list", "--json"]), "gpu2")["state"],
        "down"
    );
    // The gate's observations are not admin actions.
    assert_eq!(audit_kinds(&env), ["host_add", "host_add"]);

    // Model names come from the hosts, which may say anything.
    store
        .write(|tx| hosts::report(tx, "gpu1", Health::Up, &[HOSTILE.to_string()], 0, t))
        .expect("report");
    for args in [&["host", "list"][..], &["host", "list", "--json"]] {
        let out = env.ok(args);
        assert_terminal_safe(&out.stdout);
    }
    assert!(env.ok(&["host", "list"]).stdout.contains(HOSTILE_SHOWN));
}

#[test]
fn host_remove_needs_yes_without_a_terminal() {
    let env = Env::init();
    env.ok(&["host", "add", "gpu1:11434", "--name", "gpu1"]);
    // Even with an answer waiting on stdin, nothing reads it.
    let out = env
        .run_stdin(&["host", "remove", "gpu1"], "y\n")
        .fails("--yes");
    assert!(out.stderr.contains("gpu1"), "{out:#?}");
    assert_eq!(array(&env.json(&["host", "list", "--json"])).len(), 1);

    let out = env.ok(&["host", "remove", "gpu1", "--yes"]);
    assert!(
        out.stderr.contains("removed host gpu1 (http://gpu1:11434)"),
        "{out:#?}"
    );
    assert_eq!(env.json(&["host", "list", "--json"]), json!([]));
    assert_eq!(audit_kinds(&env), ["host_add", "host_remove"]);
    assert_eq!(
        last_detail(&env, "host_remove"),
        "host=gpu1 url=http://gpu1:11434 by=tester"
    );
    // The name and the URL are free again.
    env.ok(&["host", "add", "gpu1:11434", "--name", "gpu1"]);
}

#[test]
fn unknown_hosts_and_pins_fail_naming_them() {
    let env = Env::init();
    env.ok(&["host", "add", "gpu1:11434", "--name", "gpu1"]);
    let cases: &[(&[&str], &str)] = &[
        (&["host", "drain", "ghost"], "no host named \"ghost\""),
        (&["host", "undrain", "ghost"], "no host named \"ghost\""),
        (&["host", "remove", "ghost"], "no host named \"ghost\""),
        (
            &["host", "remove", "ghost", "--yes"],
            "no host named \"ghost\"",
        ),
        (&["model", "unpin", "ghost"], "\"ghost:latest\""),
        (&["model", "unpin", "ghost:7b"], "\"ghost:7b\""),
    ];
    for (args, needle) in cases {
        let out = env.run_stdin(args, "y\n").fails(needle);
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
    }
    assert_eq!(array(&env.json(&["host", "list", "--json"])).len(), 1);
    assert_eq!(audit_kinds(&env), ["host_add"]);
}

#[test]
fn host_and_model_commands_refuse_a_missing_database() {
    let env = Env::new();
    let db = env.path("missing/aigate.db");
    for args in [
        &["host", "add", "gpu1:11434"][..],
        &["host", "list", "--json"],
        &["host", "drain", "gpu1"],
        &["host", "undrain", "gpu1"],
        &["host", "remove", "gpu1", "--yes"],
        &["model", "pin", "llama3.2", "--num-ctx", "8192"],
        &["model", "unpin", "llama3.2"],
        &["model", "list"],
    ] {
        let mut c = bin();
        c.arg("--db").arg(&db).args(args);
        run(c).fails(&db.display().to_string());
        assert!(!env.path("missing").exists(), "{args:?} created it");
    }
}

#[test]
fn model_pins_are_normalized_merged_listed_and_audited() {
    let env = Env::init();
    assert_eq!(env.ok(&["model", "list"]).stdout.trim(), "no pinned models");
    assert_eq!(env.json(&["model", "list", "--json"]), json!([]));

    let out = env.ok(&["model", "pin", "llama3.2", "--num-ctx", "8192"]);
    assert!(
        out.stderr.contains("pinned llama3.2:latest (num_ctx 8192)"),
        "{out:#?}"
    );
    // The same model in another spelling: the options given change, the others stay.
    let out = env.ok(&["model", "pin", "LLAMA3.2:latest", "--keep-alive", "30m"]);
    assert!(
        out.stderr
            .contains("pinned llama3.2:latest (num_ctx 8192, keep_alive 30m)"),
        "{out:#?}"
    );
    env.ok(&["model", "pin", "qwen2.5:7b", "--keep-alive", "-1"]);
    env.ok(&[
        "model",
        "pin",
        "hf.co/me/tiny",
        "--keep-alive=0",
        "--num-ctx",
        "2048",
    ]);

    let list = env.json(&["model", "list", "--json"]);
    for p in array(&list) {
        assert_fields(p, PIN_FIELDS);
    }
    assert_eq!(
        list,
        json!([
            {"model": "hf.co/me/tiny:latest", "num_ctx": 2048, "keep_alive": "0"},
            {"model": "llama3.2:latest", "num_ctx": 8192, "keep_alive": "30m"},
            {"model": "qwen2.5:7b", "num_ctx": null, "keep_alive": "-1"},
        ])
    );
    let table = env.ok(&["model", "list"]).stdout;
    assert!(table.lines().next().expect("header").contains("KEEP_ALIVE"));
    let row = table
        .lines()
        .find(|l| l.contains("qwen2.5:7b"))
        .expect("qwen");
    assert!(row.contains(" - ") && row.contains("-1"), "{row}");
    assert_eq!(count(&env.conn(), "SELECT count(*) FROM model_pins"), 3);

    // What clap refuses, and what the store refuses.
    for args in [
        &["model", "pin", "llama3.2"][..],
        &["model", "pin", "llama3.2", "--num-ctx", "0"],
        &["model", "pin", "llama3.2", "--num-ctx", "lots"],
        &["model", "pin", "llama3.2", "--keep-alive", "soon"],
        &["model", "pin", "llama3.2", "--keep-alive", "-5m"],
        &["model", "pin", "--num-ctx", "1"],
    ] {
        env.run(args).usage_error();
    }
    env.run(&["model", "pin", "llama3.2:", "--num-ctx", "1"])
        .fails("bad model name");
    env.run(&["model", "pin", "bad name", "--num-ctx", "1"])
        .fails("bad model name");

    let out = env.ok(&["model", "unpin", "llama3.2"]);
    assert!(out.stderr.contains("unpinned llama3.2:latest"), "{out:#?}");
    assert_eq!(array(&env.json(&["model", "list", "--json"])).len(), 2);

    assert_eq!(
        audit_kinds(&env),
        [
            "model_pin",
            "model_pin",
            "model_pin",
            "model_pin",
            "model_unpin"
        ]
    );
    assert_eq!(
        last_detail(&env, "model_unpin"),
        "model=llama3.2:latest num_ctx=8192 keep_alive=30m by=tester"
    );
}

#[test]
fn status_counts_hosts_and_pins() {
    let env = Env::init();
    env.ok(&["host", "add", "gpu1:11434", "--name", "gpu1"]);
    env.ok(&["host", "add", "gpu2:11434", "--name", "gpu2"]);
    env.ok(&["host", "drain", "gpu2"]);
    env.ok(&["model", "pin", "llama3.2", "--num-ctx", "8192"]);
    let v = env.json(&["status", "--json"]);
    assert_eq!(v["hosts"], 2);
    assert_eq!(v["draining_hosts"], 1);
    assert_eq!(v["model_pins"], 1);
    let out = env.ok(&["status"]).stdout;
    assert!(out.contains("2 (1 draining)"), "{out}");
}
