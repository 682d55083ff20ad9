//! A real OpenAI-compatible server for tests: llama-cpp-python's `llama_cpp.server`
//! serving a tiny random-weight GGUF model that `tests/llama/make_model.py` writes.
//!
//! The Python packages are installed from PyPI into `target/llama` the first time (pip
//! compiles llama.cpp from source: several minutes on two cores), so `cargo test` alone
//! works on a fresh machine. A stamp file holds the requirement list, so changing a pin
//! below installs afresh.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What pip installs into `target/llama`; the stamp file holds these, one a line.
pub const REQUIREMENTS: &[&str] = &["llama-cpp-python[server]==0.3.36", "gguf==0.17.1"];
/// Written into the install folder once pip has succeeded.
const STAMP: &str = ".aigate-requirements";
/// The name the server gives the model (`--model_alias`).
pub const MODEL: &str = "tiny";
/// The context the server is started with (the model's own length).
pub const N_CTX: u32 = 512;
/// How long the server may take to answer `GET /v1/models` after it is started.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Attempts at starting on a free port (another process may take it in between).
const PORT_TRIES: usize = 3;

/// The install folder, `target/llama` in the crate.
pub fn install_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/llama")
}

/// Installs the packages into [`install_dir`] unless a stamp for the same requirements is
/// there, and returns the folder (for `PYTHONPATH`). Blocking; once per process. pip
/// installs into a fresh sibling folder that is renamed into place only when it is
/// complete, so an interrupted install, or another test process installing at the same
/// time, never leaves a half-filled folder behind.
pub fn install() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = install_dir();
        let want = REQUIREMENTS.join("\n");
        let stamped = |d: &Path| std::fs::read_to_string(d.join(STAMP)).is_ok_and(|s| s == want);
        if stamped(&dir) {
            return dir;
        }
        let partial = dir.with_file_name(format!("llama.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        eprintln!(
            "installing {} into {} (compiles llama.cpp: several minutes)",
            REQUIREMENTS.join(" "),
            dir.display()
        );
        let started = Instant::now();
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args([
                "--root-user-action=ignore",
                "--no-input",
                "--progress-bar=off",
            ])
            .arg("--target")
            .arg(&partial)
            .args(REQUIREMENTS)
            // Two compile jobs at most; the multimodal library is not needed.
            .env("CMAKE_BUILD_PARALLEL_LEVEL", "2")
            .env("CMAKE_ARGS", "-DLLAVA_BUILD=OFF")
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null());
        let out = pip
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 -m pip: {e}"));
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&partial);
            panic!(
                "pip could not install {} ({}):\n{}\n{}",
                REQUIREMENTS.join(" "),
                out.status,
                tail(&String::from_utf8_lossy(&out.stdout), 40),
                tail(&String::from_utf8_lossy(&out.stderr), 80),
            );
        }
        std::fs::write(partial.join(STAMP), &want).expect("write the install stamp");
        // Replace an older install; if another process renamed its own into place in the
        // meantime, keep that one.
        if dir.exists() && !stamped(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
            assert!(
                stamped(&dir),
                "could not move {} into place",
                partial.display()
            );
        }
        eprintln!("installed in {:.0?}", started.elapsed());
        dir
    })
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A Python command with the installed packages importable and an environment that holds
/// nothing else: the server's settings are pydantic `BaseSettings`, which read any
/// variable named like a setting (`API_KEY`, `PORT`, `MODEL`, `N_CTX`, ...).
fn python(site: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONPATH", site)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null());
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    cmd
}

/// Writes the tiny model (`tests/llama/make_model.py`, fixed seed) to `path`.
pub fn make_model(site: &Path, path: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/llama/make_model.py");
    let out = python(site)
        .arg(script)
        .arg(path)
        .output()
        .expect("run make_model.py");
    assert!(
        out.status.success(),
        "make_model.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `python3 -m llama_cpp.server` on 127.0.0.1 with the tiny model.
pub struct LlamaServer {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    /// From the spawn to the first answer of `GET /v1/models`.
    pub startup: Duration,
}

impl LlamaServer {
    /// Installs the packages if needed, writes the model and starts the server with one
    /// thread; returns once `GET /v1/models` answers 200. Blocking.
    pub fn start() -> LlamaServer {
        Self::start_with(&[])
    }

    /// As [`LlamaServer::start`], with extra server arguments (`--flag value` pairs).
    pub fn start_with(args: &[&str]) -> LlamaServer {
        let site = install();
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("tiny.gguf");
        make_model(site, &model);
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            match Self::spawn(site, &model, args) {
                Ok((child, addr, logs, startup)) => {
                    return LlamaServer {
                        child,
                        addr,
                        logs,
                        _dir: dir,
                        startup,
                    };
                }
                Err(Clash(logs)) => last = logs,
            }
        }
        panic!("llama_cpp.server found no free port in {PORT_TRIES} tries:\n{last}");
    }

    /// One start on a port that was free a moment ago. `Err` when the port was taken in
    /// between; any other failure panics with the server's output.
    #[allow(clippy::type_complexity)]
    fn spawn(
        site: &Path,
        model: &Path,
        args: &[&str],
    ) -> Result<(Child, SocketAddr, Arc<Mutex<Vec<String>>>, Duration), Clash> {
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0");
        let started = Instant::now();
        let mut child = python(site)
            .args(["-c", WATCHED_SERVER, "--model"])
            .arg(model)
            .args(["--model_alias", MODEL, "--host", "127.0.0.1"])
            .args(["--port", &addr.port().to_string()])
            .args(["--n_ctx", &N_CTX.to_string()])
            .args(["--n_threads", "1", "--n_threads_batch", "1"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3 -m llama_cpp.server");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().expect("logs").push(line);
                }
            });
        }
        let output = |logs: &Arc<Mutex<Vec<String>>>| logs.lock().expect("logs").join("\n");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                let text = output(&logs);
                if text.contains("address already in use") {
                    return Err(Clash(text));
                }
                panic!("llama_cpp.server exited ({status}) before answering:\n{text}");
            }
            if let Some((200, _)) = raw_get(addr, "/v1/models") {
                return Ok((child, addr, logs, started.elapsed()));
            }
            if started.elapsed() > READY_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "llama_cpp.server did not answer GET /v1/models within {READY_LIMIT:?}:\n{}",
                    output(&logs)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The model name to put in requests.
    pub fn model(&self) -> &'static str {
        MODEL
    }

    /// Everything the server printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 -m llama_cpp.server` that also exits when its standard input closes: the
/// test process holds the other end, so the server goes when the test process goes,
/// even when that is killed and never runs `Drop`.
const WATCHED_SERVER: &str = "\
import os, runpy, sys, threading
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)
";

/// A start that lost its port to another process.
struct Clash(String);

/// A one-shot `GET` over a fresh connection: `(status, body)`, or `None` when nothing
/// answers yet.
pub fn raw_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}
