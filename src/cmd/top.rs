//! `aigate top`: a running gate live, from `GET /status` on its metrics listener: hosts
//! and their loaded models, requests waiting and in flight per tier and per user, tokens
//! a second. On a terminal the view is redrawn in place every `--interval` until Ctrl-C,
//! and a failed fetch is shown in place of the tables until the gate answers again;
//! otherwise (and with `--once` or `--json`) one view is printed, or one error. Reads no
//! database.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::{NO_METRICS_ADDR, TopArgs};
use crate::output::{self, Screen, escape};

/// The `User-Agent` of top's requests.
const AGENT: &str = concat!("aigate/", env!("CARGO_PKG_VERSION"), " (top)");

/// The longest one fetch may take, connecting included: a gate that hangs is reported
/// rather than waited on.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest status document read (about 100,000 users).
const MAX_DOCUMENT: usize = 16 << 20;

/// Users listed in a view printed once; the rest are counted (`--json` has them all).
const USERS_ONCE: usize = 20;

/// Runs `aigate top`.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let addr = args.metrics.context(NO_METRICS_ADDR)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if args.json {
        let body = rt.block_on(fetch(addr))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| unreadable(addr, &e))?;
        return output::print_json(&doc);
    }
    if !args.once && Screen::available() {
        // Signals first: from here on Ctrl-C ends the loop (and the screen is restored),
        // never the process with the cursor hidden.
        let stop = {
            let _runtime = rt.enter();
            Signals::new().context("listening for signals")?
        };
        let screen = Screen::open().context("setting up the terminal")?;
        return rt.block_on(live(screen, stop, addr, args.interval));
    }
    let body = rt.block_on(fetch(addr))?;
    let status = parse(addr, &body)?;
    let text = view(&status, addr, SystemTime::now(), None, USERS_ONCE);
    output::print_bytes(format!("{text}\n").as_bytes())
}

/// The signals that matter while the screen is live.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    resize: Signal,
}

/// What a signal asks for.
enum Asked {
    Stop,
    Redraw,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            resize: signal(SignalKind::window_change())?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.interrupt.recv() => Asked::Stop,
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.resize.recv() => Asked::Redraw,
        }
    }
}

/// Redraws the view every `interval` until a signal stops it. A failed fetch takes the
/// tables' place until one succeeds again (the gate may be restarting).
async fn live(
    mut screen: Screen,
    mut signals: Signals,
    addr: SocketAddr,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last fetch and when it was made, which the view shows as its time.
    let mut last: Option<(SystemTime, Result<Status, FetchError>)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let fetching = fetch(addr);
                tokio::pin!(fetching);
                // A resize meanwhile needs nothing more: the draw below follows at once.
                let fetched = loop {
                    tokio::select! {
                        body = &mut fetching => break body,
                        asked = signals.next() => if let Asked::Stop = asked {
                            return Ok(());
                        },
                    }
                };
                last = Some((SystemTime::now(), fetched.and_then(|body| parse(addr, &body))));
            }
            asked = signals.next() => match asked {
                Asked::Stop => return Ok(()),
                Asked::Redraw => {}
            },
        }
        let Some((at, shown)) = &last else { continue };
        let (rows, cols) = screen.size();
        let text = match shown {
            // The screen shows one line fewer than its height.
            Ok(status) => fit(status, addr, *at, rows.saturating_sub(1), cols),
            Err(e) => failed(e, addr, interval, *at, cols),
        };
        screen.draw(&text).context("writing to the terminal")?;
    }
}

/// The gate's status document, as top reads it (`src/gate/status.rs` writes it).
#[derive(Debug, Deserialize)]
struct Status {
    version: String,
    uptime_secs: u64,
    hosts: Vec<HostRow>,
    tiers: Vec<TierRow>,
    users: Vec<UserRow>,
    waiting: u64,
    in_flight: u64,
    tokens_per_second: f64,
}

/// One host: its slots in use and its loaded models.
#[derive(Debug, Deserialize)]
struct HostRow {
    name: String,
    state: String,
    slots: u64,
    /// Whether the slots are declared (requests wait in the gate for them).
    queued: bool,
    in_flight: u64,
    loaded: Vec<String>,
}

/// One tier's requests.
#[derive(Debug, Deserialize)]
struct TierRow {
    tier: String,
    priority: i64,
    waiting: u64,
    in_flight: u64,
    tokens_per_second: f64,
}

/// One user's (or key's, `key PREFIX`) requests.
#[derive(Debug, Deserialize)]
struct UserRow {
    user: String,
    tier: String,
    waiting: u64,
    in_flight: u64,
    tokens_per_second: f64,
}

/// Why the status could not be had. The messages name the address asked (`--metrics`,
/// resolved).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot reach the gate's metrics listener at {addr} ({reason})")]
    Connect { addr: SocketAddr, reason: String },
    #[error(
        "the gate's metrics listener at {addr} did not answer within {}s",
        FETCH_TIMEOUT.as_secs()
    )]
    TimedOut { addr: SocketAddr },
    #[error("the connection to the gate's metrics listener at {addr} failed ({reason})")]
    Broken { addr: SocketAddr, reason: String },
    #[error(
        "http://{addr}/status answered {status}: is {addr} the address of `aigate serve \
         --metrics-listen`?"
    )]
    Status {
        addr: SocketAddr,
        status: StatusCode,
    },
    #[error("the status from {addr} could not be read ({reason})")]
    Unreadable { addr: SocketAddr, reason: String },
}

fn unreadable(addr: SocketAddr, e: &serde_json::Error) -> FetchError {
    FetchError::Unreadable {
        addr,
        reason: e.to_string(),
    }
}

fn parse(addr: SocketAddr, body: &[u8]) -> Result<Status, FetchError> {
    serde_json::from_slice(body).map_err(|e| unreadable(addr, &e))
}

/// `GET /status` from `addr`, its body read whole, within [`FETCH_TIMEOUT`].
async fn fetch(addr: SocketAddr) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get_status(addr))
        .await
        .unwrap_or(Err(FetchError::TimedOut { addr }))
}

async fn get_status(addr: SocketAddr) -> Result<Bytes, FetchError> {
    let stream = tokio::net::TcpStream::connect(reachable(addr))
        .await
        .map_err(|e| FetchError::Connect {
            addr,
            reason: reason(&e),
        })?;
    let broken = |e: &(dyn std::error::Error + 'static)| FetchError::Broken {
        addr,
        reason: reason(e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| broken(&e))?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = hyper::Uri::from_static("/status");
    let headers = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(HOST, host);
    }
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    // The exchange owns the sender: when it ends, the connection closes and `conn`
    // resolves. Both are polled here, so a timeout drops the connection too.
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(|e| broken(&e))?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status {
                addr,
                status: resp.status(),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| broken(&*e))?;
        Ok(body.to_bytes())
    };
    let (fetched, _closed) = tokio::join!(exchange, conn);
    fetched
}

/// Where to connect for `addr`: an unspecified address (`0.0.0.0:9090`, which serve may
/// listen on) is this machine's loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// An error and its sources in a few plain words: `connection refused`, not
/// `Connection refused (os error 111)`.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = plain(&err.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn plain(s: &str) -> String {
    let s = match s.find(" (os error ") {
        Some(i) => &s[..i],
        None => s,
    };
    // A capital that only starts a sentence ("Connection refused"), not an acronym.
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(s.chars().skip(1)).collect()
        }
        _ => s.to_string(),
    }
}

/// The view for a screen of `lines` by `cols`, its users cut to what fits (a view longer
/// even without users is cut by the screen).
fn fit(s: &Status, addr: SocketAddr, now: SystemTime, lines: usize, cols: usize) -> String {
    let mut shown = s.users.len();
    loop {
        let text = view(s, addr, now, Some(cols), shown);
        let over = text.lines().count().saturating_sub(lines);
        if over == 0 || shown == 0 {
            return text;
        }
        // A user takes a line at least; leaving some out adds the line that counts them.
        shown = shown.saturating_sub(over);
    }
}

/// The header and the three tables, at most `max_users` users listed; the header is
/// wrapped to `width` columns, if given (the tables fit a terminal themselves).
fn view(
    s: &Status,
    addr: SocketAddr,
    now: SystemTime,
    width: Option<usize>,
    max_users: usize,
) -> String {
    let header = wrap(
        &[
            format!("aigate {} at {addr}", escape(&s.version)),
            format!("up {}", uptime(s.uptime_secs)),
            format!("{} waiting", s.waiting),
            format!("{} in flight", s.in_flight),
            format!("{} tok/s", rate(s.tokens_per_second)),
            clock(now),
        ],
        " · ",
        width,
    );

    let mut hosts = output::table(&["HOST", "STATE", "SLOTS", "LOADED"]);
    for h in &s.hosts {
        let slots = if h.queued {
            format!("{}/{}", h.in_flight, h.slots)
        } else {
            format!("{}/-", h.in_flight)
        };
        let loaded = if h.loaded.is_empty() {
            "-".to_string()
        } else {
            h.loaded.join(", ")
        };
        hosts.add_row(vec![h.name.clone(), h.state.clone(), slots, loaded]);
    }

    let mut tiers = output::table(&["TIER", "PRIORITY", "WAITING", "IN FLIGHT", "TOK/S"]);
    for t in &s.tiers {
        tiers.add_row(vec![
            t.tier.clone(),
            t.priority.to_string(),
            t.waiting.to_string(),
            t.in_flight.to_string(),
            rate(t.tokens_per_second),
        ]);
    }

    let mut users = output::table(&["USER", "TIER", "WAITING", "IN FLIGHT", "TOK/S"]);
    for u in s.users.iter().take(max_users) {
        users.add_row(vec![
            u.user.clone(),
            u.tier.clone(),
            u.waiting.to_string(),
            u.in_flight.to_string(),
            rate(u.tokens_per_second),
        ]);
    }
    let left_out = s.users.len().saturating_sub(max_users);
    let mut users = if max_users == 0 && left_out > 0 {
        format!("{left_out} users (no room to list them)")
    } else {
        output::table_text(&users, "no recent requests from any user")
    };
    if max_users > 0 && left_out > 0 {
        users.push_str(&format!("\n … {left_out} more"));
    }

    [
        header,
        output::table_text(&hosts, "no hosts"),
        output::table_text(&tiers, "no requests since the gate started"),
        users,
    ]
    .join("\n\n")
}

/// What the screen shows while the gate does not answer, wrapped to `width`.
fn failed(
    e: &FetchError,
    addr: SocketAddr,
    interval: Duration,
    now: SystemTime,
    width: usize,
) -> String {
    let error = format!("error: {}", escape(&e.to_string()));
    let words: Vec<String> = error.split(' ').map(str::to_string).collect();
    format!(
        "{}\n\n{}\ntrying again every {}",
        wrap(
            &[format!("aigate top at {addr}"), clock(now)],
            " · ",
            Some(width)
        ),
        wrap(&words, " ", Some(width)),
        humantime::format_duration(interval),
    )
}

/// `parts` joined by `sep`, on as few lines of at most `width` columns as they allow (a
/// part wider than that has a line of its own); one line when no width is given.
fn wrap(parts: &[String], sep: &str, width: Option<usize>) -> String {
    let cols = |s: &str| s.chars().count();
    let mut out = String::new();
    let mut line = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && width.is_some_and(|w| line + cols(sep) + cols(part) > w) {
            out.push('\n');
            line = 0;
        } else if i > 0 {
            out.push_str(sep);
            line += cols(sep);
        }
        out.push_str(part);
        line += cols(part);
    }
    out
}

/// Seconds as the largest two units: `42s`, `5m 03s`, `2h 05m`, `3d 04h`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Tokens a second, to a tenth.
fn rate(per_second: f64) -> String {
    format!("{per_second:.1}")
}

/// The time of day in UTC, as every time aigate shows is: `15:04:05 UTC`.
fn clock(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    match stamp.get(11..19) {
        Some(hms) => format!("{hms} UTC"),
        None => stamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(users: usize) -> Status {
        let users: Vec<serde_json::Value> = (0..users)
            .map(|i| {
                serde_json::json!({
                    "user": format!("user{i}"), "tier": "free",
                    "waiting": 1, "in_flight": 0, "tokens_per_second": 0.0
                })
            })
            .collect();
        let doc = serde_json::json!({
            "version": "0.1.0",
            "uptime_secs": 303,
            "hosts": [
                {"name": "gpu", "url": "http://127.0.0.1:11434", "kind": "ollama", "slots": 2,
                 "queued": true, "state": "up", "in_flight": 1,
                 "loaded": ["llama3.2:latest", "qwen2.5:7b"]},
                {"name": "spare", "url": "http://127.0.0.1:11435", "kind": "ollama", "slots": 1,
                 "queued": false, "state": "down", "in_flight": 3, "loaded": []}
            ],
            "tiers": [{"tier": "pro", "priority": 10, "waiting": 2, "in_flight": 1,
                       "tokens_per_second": 12.345}],
            "users": users,
            "waiting": 2, "in_flight": 1, "tokens_per_second": 12.345,
            "a_field_from_a_newer_gate": true
        });
        serde_json::from_value(doc).expect("a status document")
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9090".parse().expect("addr")
    }

    fn at_noon() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 365 + 12 * 3600 + 34 * 60 + 56)
    }

    #[test]
    fn the_view_shows_the_header_hosts_tiers_and_users() {
        let text = view(&sample(1), addr(), at_noon(), None, USERS_ONCE);
        let first = text.lines().next().expect("a header");
        assert_eq!(
            first,
            "aigate 0.1.0 at 127.0.0.1:9090 · up 5m 03s · 2 waiting · 1 in flight · 12.3 tok/s · \
             12:34:56 UTC"
        );
        let row = |start: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(start))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("no {start} row in:\n{text}"))
        };
        assert_eq!(row("gpu"), "gpu up 1/2 llama3.2:latest, qwen2.5:7b");
        assert_eq!(row("spare"), "spare down 3/- -");
        assert_eq!(row("pro"), "pro 10 2 1 12.3");
        assert_eq!(row("user0"), "user0 free 1 0 0.0");
        for header in ["HOST", "TIER", "USER"] {
            assert!(text.contains(header), "{header} in:\n{text}");
        }
        assert!(!text.contains("more"), "{text}");
    }

    #[test]
    fn users_beyond_the_cap_are_counted() {
        let text = view(&sample(25), addr(), at_noon(), None, USERS_ONCE);
        assert!(text.contains("user19"), "{text}");
        assert!(!text.contains("user20"), "{text}");
        assert!(text.ends_with(" … 5 more"), "{text}");
    }

    #[test]
    fn fit_lists_the_users_that_fit_the_screen() {
        let s = sample(30);
        let all = view(&s, addr(), at_noon(), Some(120), 30);
        let tall = all.lines().count();
        assert_eq!(fit(&s, addr(), at_noon(), tall, 120), all);
        for lines in [tall - 1, tall - 10, 16] {
            let text = fit(&s, addr(), at_noon(), lines, 120);
            assert!(text.lines().count() <= lines, "{lines}:\n{text}");
            assert!(text.contains(" more"), "{lines}:\n{text}");
            assert!(text.contains("user0"), "{lines}:\n{text}");
        }
        // No room for a single user: they are counted.
        let text = fit(&s, addr(), at_noon(), 3, 120);
        assert!(text.ends_with("30 users (no room to list them)"), "{text}");
    }

    #[test]
    fn empty_tables_say_so() {
        let s = Status {
            hosts: Vec::new(),
            tiers: Vec::new(),
            users: Vec::new(),
            ..sample(0)
        };
        let text = view(&s, addr(), at_noon(), None, USERS_ONCE);
        for empty in [
            "no hosts",
            "no requests since the gate started",
            "no recent requests from any user",
        ] {
            assert!(text.contains(empty), "{empty} in:\n{text}");
        }
    }

    #[test]
    fn text_from_the_gate_is_escaped() {
        let mut s = sample(1);
        s.version = "1\u{1b}[2J".into();
        s.users[0].user = "eve\u{1b}]0;x\u{7}".into();
        let text = view(&s, addr(), at_noon(), None, USERS_ONCE);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("eve\\u{1b}]0;x\\u{7}"), "{text}");
    }

    #[test]
    fn a_narrow_screen_wraps_the_header_between_its_parts() {
        let text = view(&sample(0), addr(), at_noon(), Some(70), USERS_ONCE);
        let lines: Vec<&str> = text.lines().take(2).collect();
        assert_eq!(
            lines,
            [
                "aigate 0.1.0 at 127.0.0.1:9090 · up 5m 03s · 2 waiting · 1 in flight",
                "12.3 tok/s · 12:34:56 UTC",
            ]
        );
        let parts = ["a".to_string(), "much-too-long".into(), "b".into()];
        assert_eq!(wrap(&parts, " ", Some(5)), "a\nmuch-too-long\nb");
        assert_eq!(wrap(&parts, " ", None), "a much-too-long b");
        assert_eq!(wrap(&[], " ", Some(5)), "");
    }

    #[test]
    fn uptimes_show_two_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(60), "1m 00s");
        assert_eq!(uptime(3599), "59m 59s");
        assert_eq!(uptime(3600 + 5 * 60 + 9), "1h 05m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 1), "3d 04h");
    }

    #[test]
    fn reasons_are_plain_words() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(reason(&refused), "connection refused");
        assert_eq!(plain("HTTP parse error"), "HTTP parse error");
        assert_eq!(plain("Broken pipe (os error 32)"), "broken pipe");
        let e = FetchError::Connect {
            addr: "127.0.0.1:9".parse().expect("addr"),
            reason: reason(&refused),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the gate's metrics listener at 127.0.0.1:9 (connection refused)"
        );
    }

    #[test]
    fn an_unspecified_address_is_reached_on_loopback() {
        let at = |s: &str| reachable(s.parse().expect("addr")).to_string();
        assert_eq!(at("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(at("[::]:9090"), "[::1]:9090");
        assert_eq!(at("10.0.0.2:9090"), "10.0.0.2:9090");
    }

    #[test]
    fn the_failure_view_says_what_and_that_it_retries() {
        let e = FetchError::TimedOut { addr: addr() };
        let text = failed(&e, addr(), Duration::from_secs(1), at_noon(), 120);
        assert_eq!(
            text,
            "aigate top at 127.0.0.1:9090 · 12:34:56 UTC\n\nerror: the gate's metrics listener \
             at 127.0.0.1:9090 did not answer within 3s\ntrying again every 1s"
        );
        let narrow = failed(&e, addr(), Duration::from_secs(1), at_noon(), 40);
        assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
        assert!(
            narrow.contains("error: the gate's metrics listener at\n127.0.0.1:9090"),
            "{narrow}"
        );
    }
}
