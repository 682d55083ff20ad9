//! Runs the real `aigate serve` binary on port 0 against a temporary database, and a
//! small HTTP client for talking to it. Shared by the gate's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A JWT secret for tests (never used outside them).
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The path of the built `aigate` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aigate"))
}

/// A temporary database folder.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    /// A new, initialised database.
    pub fn new() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("aigate.db");
        let db = Db { dir, path };
        db.cli(&["init"]);
        db
    }

    /// Runs the CLI and returns stdout; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args, None);
        assert!(
            out.status.success(),
            "aigate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Runs the CLI with optional stdin and returns the whole output.
    pub fn cli_raw(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&self.path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aigate");
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(s.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("aigate output")
    }

    /// Creates a key and returns (id, raw key).
    pub fn key(&self, args: &[&str]) -> (i64, String) {
        let mut all = vec!["key", "create", "--json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&self.cli(&all)).expect("json");
        (
            v["id"].as_i64().expect("id"),
            v["key"].as_str().expect("key").to_string(),
        )
    }

    /// Adds a user with `password`.
    pub fn user(&self, name: &str, password: &str, tier: &str) {
        let out = self.cli_raw(
            &["user", "add", name, "--tier", tier, "--password-stdin"],
            Some(password),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A direct connection for checks.
    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open db")
    }
}

/// A running `aigate serve`.
pub struct Gate {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gate {
    /// Starts `aigate serve` on 127.0.0.1:0 with `args`, the test JWT secret in the
    /// environment, and waits for its start line. An empty `upstream` gives no
    /// `--upstream` (the gate serves the stored hosts).
    pub fn start(db: &Path, upstream: &str, args: &[&str]) -> Gate {
        Self::start_with_env(db, upstream, args, &[("AIGATE_JWT_SECRET", SECRET)])
    }

    /// As [`Gate::start`], with an explicit environment.
    pub fn start_with_env(db: &Path, upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Gate {
        let mut cmd = Command::new(bin());
        cmd.arg("--db")
            .arg(db)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(if upstream.is_empty() {
                vec![]
            } else {
                vec!["--upstream", upstream]
            })
            .args(args)
            .env_remove("AIGATE_JWT_SECRET")
            .env("AIGATE_LOG", "info,aigate=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn aigate serve");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let start = line.contains(" listening on ").then(|| line.clone());
                sink.lock().expect("logs").push(line);
                if let Some(l) = start {
                    let _ = tx.send(l);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "aigate serve did not start: {}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        let addr = match line
            .split("://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
        {
            Some(a) => a,
            None => {
                let _ = child.kill();
                panic!("no address in the start line: {line}");
            }
        };
        let metrics = line
            .split("metrics=http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok());
        Gate {
            child,
            addr,
            metrics,
            logs,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id of `aigate serve` (for /proc checks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gate logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `limit`; returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test HTTP client (plain HTTP/1.1, keep-alive).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `detail` of a JSON error body.
    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends a request and reads the whole response.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let resp = open(method, url, headers, body).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a request and returns the response with its body still streaming.
pub async fn open(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    client().request(req).await.expect("request sent")
}

/// `GET url` with an API key.
pub async fn get(url: &str, key: &str) -> Reply {
    send(Method::GET, url, &[("x-api-key", key)], "").await
}

/// `POST url` with a JSON body and a bearer credential.
pub async fn post(url: &str, bearer: &str, body: &str) -> Reply {
    let auth = format!("Bearer {bearer}");
    send(
        Method::POST,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Polls `f` until it returns true or `limit` passes; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
