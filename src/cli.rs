//! The command line, as clap types only. Their doc comments are the help text, and the
//! single source of `man/` and `completions/`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::store::hosts::MAX_SLOTS;
use crate::store::model_pins::{KeepAlive, MAX_NUM_CTX, parse_keep_alive};
use crate::store::tiers::Change;
use crate::units::{parse_duration, parse_size};

/// Authentication, tiers and usage accounting in front of a local LLM server.
///
/// aigate keeps API keys, users and tiers in one SQLite file. The admin commands change
/// it directly; `aigate serve` is the proxy that checks every request against it.
#[derive(Debug, Parser)]
#[command(
    name = "aigate",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]
    #[arg(long, global = true, env = "AIGATE_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments like [`Parser::parse`] (exiting on `--help` or a
    /// usage error), with the tip of [`Cli::try_parse_with_tips`].
    pub fn parse_with_tips() -> Cli {
        Cli::try_parse_with_tips(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Parser::try_parse_from`], plus a "similar subcommand" tip where clap has none,
    /// and the usage errors clap cannot express (see [`Cli::checked`]).
    ///
    /// clap suggests a subcommand whose Jaro similarity to the mistyped one is above 0.7.
    /// For a three-letter name Jaro only matches letters in the same place, so `kye`
    /// scores 0.56 against `key` and gets no tip while `key lsit` (0.92 against `list`)
    /// does. Where clap found nothing, this adds the subcommands of the same level within
    /// one edit (a swapped pair of letters counts as one) of what was typed.
    pub fn try_parse_with_tips<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        Cli::try_parse_from(&args)
            .map_err(|e| with_subcommand_tip(e, &args))?
            .checked()
    }

    /// Refuses what clap's attributes cannot: `top` with neither `--metrics` nor
    /// `AIGATE_METRICS_LISTEN` (a required argument's error would not name the variable).
    fn checked(self) -> Result<Cli, clap::Error> {
        use clap::CommandFactory;
        if let Command::Top(top) = &self.command
            && top.metrics.is_none()
        {
            let mut root = Cli::command();
            root.build();
            let err = match root.find_subcommand_mut("top") {
                Some(cmd) => cmd.error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    NO_METRICS_ADDR,
                ),
                None => root.error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    NO_METRICS_ADDR,
                ),
            };
            return Err(err);
        }
        Ok(self)
    }
}

fn with_subcommand_tip(mut err: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::InvalidSubcommand {
        return err;
    }
    if let Some(ContextValue::Strings(tips)) = err.get(ContextKind::SuggestedSubcommand)
        && !tips.is_empty()
    {
        return err;
    }
    let Some(ContextValue::String(typed)) = err.get(ContextKind::InvalidSubcommand) else {
        return err;
    };
    let typed = typed.clone();
    let mut root = Cli::command();
    root.build();
    // Follow the subcommands named before the mistyped one, skipping option values
    // (`--db key kye` is about the top level).
    let mut cmd = &root;
    let mut words = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(word) = words.next() {
        if word == typed {
            break;
        }
        if let Some(long) = word.strip_prefix("--") {
            let takes_value = !long.contains('=')
                && cmd
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes_value {
                words.next();
            }
        } else if let Some(sub) = cmd.find_subcommand(word) {
            cmd = sub;
        }
    }
    let mut near: Vec<(usize, String)> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .flat_map(|s| std::iter::once(s.get_name()).chain(s.get_visible_aliases()))
        .filter_map(|name| {
            let d = edit_distance(&typed, name);
            (d <= 1).then(|| (d, name.to_string()))
        })
        .collect();
    near.sort();
    if !near.is_empty() {
        err.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(near.into_iter().map(|(_, n)| n).collect()),
        );
    }
    err
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`: the optimal
/// string alignment distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database (if missing) and bring its schema up to date
    Init,
    /// Create, list, show, rotate and revoke API keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Add, list and manage users who log in for a token
    #[command(subcommand)]
    User(UserCommand),
    /// List tiers and set their limits
    #[command(subcommand)]
    Tier(TierCommand),
    /// Add, list, drain and remove the model servers behind the gate
    #[command(subcommand)]
    Host(HostCommand),
    /// Pin per-model options (num_ctx, keep_alive) that clients may not change
    #[command(subcommand)]
    Model(ModelCommand),
    /// Requests and tokens by key, user or model
    Usage(UsageArgs),
    /// Authentication failures and admin actions; prune old ones
    Audit(AuditArgs),
    /// Version, database path, schema version and counts
    Status(JsonArg),
    /// Run the authenticating proxy in front of Ollama
    Serve(Box<ServeArgs>),
    /// Show a running gate live: hosts, requests waiting and in flight, tokens per second
    Top(TopArgs),
    /// Print a shell completion script
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--json` alone.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// How a new key is printed: `--json`, `--quiet` or a human summary.
#[derive(Debug, Args)]
pub struct KeyOutput {
    /// Print the key as one JSON document
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Print only the raw key, for KEY=$(aigate key create --quiet)
    #[arg(long, short)]
    pub quiet: bool,
}

/// Per-key overrides of the tier's limits.
#[derive(Debug, Args, Default)]
pub struct KeyLimits {
    /// Requests per minute for this key ('tier' for the tier's)
    #[arg(long, value_name = "N", value_parser = parse_key_limit::<u32>)]
    pub rpm: Option<Change<u32>>,
    /// Requests in flight for this key ('tier' for the tier's)
    #[arg(long, value_name = "N", value_parser = parse_key_limit::<u32>)]
    pub concurrency: Option<Change<u32>>,
    /// Prompt + completion tokens per UTC day for this key ('tier' for the tier's)
    #[arg(long, value_name = "N", value_parser = parse_key_limit::<u64>)]
    pub tokens_per_day: Option<Change<u64>>,
    /// Models this key may use, comma-separated globs ('tier' for the tier's)
    #[arg(long, value_name = "GLOB,...")]
    pub models: Option<String>,
}

/// `aigate key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; it is shown this once
    Create {
        /// The tier [default: the user's tier, else free]
        #[arg(long, value_name = "T")]
        tier: Option<String>,
        /// The user who owns the key
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// A label to recognise the key by
        #[arg(long, value_name = "LABEL")]
        name: Option<String>,
        /// Expire the key after this long (30s, 15m, 24h, 7d)
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        limits: KeyLimits,
        #[command(flatten)]
        output: KeyOutput,
    },
    /// List keys (usable ones; --all adds revoked and expired)
    List {
        /// Include revoked and expired keys
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show one key
    Show {
        /// The key's id
        id: i64,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Replace a key: a new key with the same user, tier, name and limits; the old one
    /// keeps working for the grace period
    Rotate {
        /// The key's id
        id: i64,
        /// How long the old key keeps working
        #[arg(long, value_name = "DUR", default_value = "7d", value_parser = parse_duration)]
        grace: Duration,
        #[command(flatten)]
        output: KeyOutput,
    },
    /// Revoke a key at once; a running serve refuses it within a second
    Revoke {
        /// The key's id
        id: i64,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
    /// Change a key's tier, label or per-key limits
    Set {
        /// The key's id
        id: i64,
        /// The new tier
        #[arg(long, value_name = "T")]
        tier: Option<String>,
        /// The new label
        #[arg(long, value_name = "LABEL")]
        name: Option<String>,
        #[command(flatten)]
        limits: KeyLimits,
        #[command(flatten)]
        json: JsonArg,
    },
}

/// How a password is read.
#[derive(Debug, Args)]
pub struct PasswordArg {
    /// Read the password from standard input instead of a prompt
    #[arg(long)]
    pub password_stdin: bool,
}

/// `aigate user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (asks for the password twice on a terminal)
    Add {
        /// The username
        name: String,
        /// The user's tier
        #[arg(long, value_name = "T", default_value = "free")]
        tier: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// List users
    List(JsonArg),
    /// Change a user's password; tokens issued before stop working
    Passwd {
        /// The username
        name: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Disable a user: no login, their tokens and keys are refused
    Disable {
        /// The username
        name: String,
    },
    /// Enable a disabled user
    Enable {
        /// The username
        name: String,
    },
    /// Remove a user and revoke their keys
    Remove {
        /// The username
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
    /// Move a user to another tier (their keys keep their own tier)
    SetTier {
        /// The username
        name: String,
        /// The new tier
        tier: String,
    },
}

/// `aigate tier …`
#[derive(Debug, Subcommand)]
pub enum TierCommand {
    /// List tiers and their limits
    List(JsonArg),
    /// Create a tier or change its limits ('unlimited' clears a limit)
    Set {
        /// The tier's name
        name: String,
        /// Requests per minute per key
        #[arg(long, value_name = "N", value_parser = parse_tier_limit::<u32>)]
        rpm: Option<Change<u32>>,
        /// Requests in flight per key
        #[arg(long, value_name = "N", value_parser = parse_tier_limit::<u32>)]
        concurrency: Option<Change<u32>>,
        /// Prompt + completion tokens per key per UTC day
        #[arg(long, value_name = "N", value_parser = parse_tier_limit::<u64>)]
        tokens_per_day: Option<Change<u64>>,
        /// Models the tier may use, comma-separated globs (e.g. 'llama3*,qwen2.5:7b')
        #[arg(long, value_name = "GLOB,...")]
        models: Option<String>,
        /// The tier may use /admin/* and Ollama's model management
        #[arg(long, conflicts_with = "no_admin")]
        admin: bool,
        /// The tier may not administer
        #[arg(long)]
        no_admin: bool,
        /// When requests wait for a free slot, a higher priority is always served first
        /// (-1000 to 1000; a new tier has 0)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Share of the slots among waiting callers of one priority: a caller of weight 3
        /// gets three turns for every one of a caller of weight 1 (1 to 1000; a new tier
        /// has 1)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        weight: Option<u32>,
        /// How long a request may wait for a free slot before it gets 503 with
        /// Retry-After (1s to 1d, e.g. 30s or 5m; a new tier has no bound)
        #[arg(long, value_name = "DUR", value_parser = parse_max_wait)]
        max_wait: Option<Change<u64>>,
        /// Requests one user (or one key without a user) may have waiting; one more gets
        /// 429 at once (0 to 100000; 0 never waits; a new tier has no bound)
        #[arg(
            long,
            value_name = "N",
            allow_negative_numbers = true,
            value_parser = parse_tier_limit::<u32>
        )]
        max_queued: Option<Change<u32>>,
        #[command(flatten)]
        json: JsonArg,
    },
}

/// How `aigate usage` groups.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UsageBy {
    Key,
    User,
    Model,
}

/// `aigate usage`
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only usage from this long ago on, counted in whole UTC days [default: all]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Group by key, user or model [default: key, user and model]
    #[arg(long, value_enum)]
    pub by: Option<UsageBy>,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `aigate audit`: lists entries, or with `--prune-older-than` deletes old ones.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries from this long ago on
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub json: JsonArg,
    /// Delete the entries older than this (e.g. 90d) instead of listing; asks first on a
    /// terminal
    #[arg(
        long,
        value_name = "DUR",
        value_parser = parse_duration,
        conflicts_with_all = ["since", "json"]
    )]
    pub prune_older_than: Option<Duration>,
    /// Do not ask before pruning
    #[arg(long, short, requires = "prune_older_than")]
    pub yes: bool,
}

/// What a host speaks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HostKind {
    /// Ollama (/api/tags, /api/ps)
    Ollama,
    /// An OpenAI-compatible server: llama.cpp's server, vLLM, LM Studio (/v1/models)
    Openai,
}

/// `aigate host …`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add a model server; a running serve uses it within a second
    ///
    /// The name and the URL must both be new. The port must be given: Ollama listens on
    /// 11434, llama.cpp's server on 8080, vLLM on 8000, LM Studio on 1234.
    Add {
        /// The server: http://HOST:PORT, or HOST:PORT (Ollama listens on 11434)
        url: String,
        /// The name to refer to it by [default: HOST:PORT of the URL]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// What the server speaks
        #[arg(long, value_enum, default_value = "ollama")]
        kind: HostKind,
        /// Requests it generates at once (Ollama's OLLAMA_NUM_PARALLEL)
        #[arg(
            long,
            value_name = "N",
            default_value_t = 1,
            value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS))
        )]
        slots: u32,
    },
    /// List hosts and the state a running serve last saw
    ///
    /// STATE is up or down as a running serve last saw it, draining after `host drain`,
    /// or unknown when no serve has written about the host for 10 s (then LOADED and IN
    /// FLIGHT are not known either).
    List(JsonArg),
    /// Send a host no new requests; those in flight finish
    Drain {
        /// The host's name
        name: String,
    },
    /// Send a drained host requests again
    Undrain {
        /// The host's name
        name: String,
    },
    /// Remove a host; a running serve stops using it within a second
    Remove {
        /// The host's name
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
}

/// `aigate model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Pin a model's options, so that clients cannot make a host reload it
    ///
    /// A client asking for another num_ctx or keep_alive makes Ollama reload the model;
    /// pinned, the gate sends the pinned value whatever the client asked. Options not
    /// given keep their pin; `model unpin` removes them all.
    #[command(group(
        clap::ArgGroup::new("options")
            .args(["num_ctx", "keep_alive"])
            .required(true)
            .multiple(true)
    ))]
    Pin {
        /// The model (llama3.2 means llama3.2:latest)
        model: String,
        /// Context length, in tokens
        #[arg(
            long,
            value_name = "N",
            value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_NUM_CTX))
        )]
        num_ctx: Option<u32>,
        /// How long the model stays loaded after a request (30m, 24h; 0 unloads at once,
        /// -1 or forever keeps it)
        #[arg(
            long,
            value_name = "DUR",
            allow_hyphen_values = true,
            value_parser = parse_keep_alive
        )]
        keep_alive: Option<KeepAlive>,
    },
    /// Remove a model's pinned options; clients choose them again
    Unpin {
        /// The model (llama3.2 means llama3.2:latest)
        model: String,
    },
    /// List pinned models and their options
    List(JsonArg),
}

/// `aigate serve`. Every option also reads the `AIGATE_*` variable named in its help.
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "The JWT secret comes from $AIGATE_JWT_SECRET or --jwt-secret-file \
    (at least 32 bytes). Every option also reads the AIGATE_* variable shown beside it; \
    AIGATE_NO_LOGIN takes 1/0, true/false, yes/no or on/off.\n\n\
    Logins (POST /auth/login, JSON or a form): at most 5 failed attempts per minute per \
    client address (an IPv6 /64 is one address), and 10 per 15 minutes per account from \
    one address; then 429 with Retry-After. Successful and malformed attempts do not \
    count. At most one password check per two CPUs runs at once; logins beyond a short \
    queue get 503 with Retry-After.\n\n\
    Generation waits in the gate for a free slot on a host stored with `aigate host add \
    --slots N`: higher tier priority first, then users in turn by tier weight; a request \
    past its tier's max-queued gets 429, one that waits its max-wait gets 503 with \
    Retry-After (`aigate tier set`). Hosts given by --upstream have no declared slots: \
    Ollama queues their requests. `aigate top` shows the queue live."
)]
pub struct ServeArgs {
    /// Address to listen on (IP:PORT, or HOST:PORT resolved at start)
    #[arg(
        long,
        env = "AIGATE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        value_parser = parse_addr
    )]
    pub listen: SocketAddr,
    /// An Ollama host for this run, beside those of `aigate host add`; repeat (or
    /// separate with commas) for several [default: http://127.0.0.1:11434 when no host
    /// is stored]
    #[arg(
        long,
        env = "AIGATE_UPSTREAM",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,
    /// How often each host is asked for its models and health
    #[arg(long, env = "AIGATE_PROBE_INTERVAL", default_value = "2s", value_name = "DUR", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// PEM certificate chain: serve HTTPS (with --tls-key)
    #[arg(
        long,
        env = "AIGATE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(
        long,
        env = "AIGATE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Lifetime of tokens issued by /auth/login
    #[arg(long, env = "AIGATE_TOKEN_TTL", default_value = "24h", value_name = "DUR", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// File holding the JWT secret (instead of $AIGATE_JWT_SECRET)
    #[arg(long, env = "AIGATE_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Serve API keys only: no /auth/login, no JWTs
    // The variable takes 1/0, true/false, yes/no, on/off (clap's documented way to read a
    // flag from the environment); anything else is a usage error, not a silent "on".
    #[arg(
        long,
        env = "AIGATE_NO_LOGIN",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub no_login: bool,
    /// Peers whose X-Forwarded-For names the client (repeatable CIDR); that client
    /// address is also what the login limits count
    #[arg(
        long,
        env = "AIGATE_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// Largest request body accepted (bytes; K, M, G suffixes, powers of 1024)
    #[arg(long, env = "AIGATE_MAX_BODY", default_value = "32M", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: u64,
    /// Time to connect to the upstream
    #[arg(long, env = "AIGATE_CONNECT_TIMEOUT", default_value = "5s", value_name = "DUR", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time for the upstream to start answering (a model may take minutes to load)
    #[arg(long, env = "AIGATE_RESPONSE_TIMEOUT", default_value = "10m", value_name = "DUR", value_parser = parse_duration)]
    pub response_timeout: Duration,
    /// Longest silence between two chunks of a streamed response
    #[arg(long, env = "AIGATE_IDLE_TIMEOUT", default_value = "5m", value_name = "DUR", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to send its request head (slowloris guard)
    #[arg(long, env = "AIGATE_HEADER_TIMEOUT", default_value = "30s", value_name = "DUR", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest silence between two pieces of a request body (a stalled upload is
    /// answered 408)
    #[arg(long, env = "AIGATE_BODY_TIMEOUT", default_value = "30s", value_name = "DUR", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    #[arg(long, env = "AIGATE_SHUTDOWN_TIMEOUT", default_value = "30s", value_name = "DUR", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Serve Prometheus metrics (/metrics) and the live status `aigate top` reads
    /// (/status) on this separate address, IP:PORT or HOST:PORT (off by default)
    #[arg(long, env = "AIGATE_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    pub metrics_listen: Option<SocketAddr>,
    /// Worker threads, each with its own listener (SO_REUSEPORT), runtime and upstream
    /// connections [default: one per CPU]
    #[arg(long, env = "AIGATE_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Answer CORS preflight for this browser origin (repeatable)
    #[arg(
        long,
        env = "AIGATE_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    // What clients can hold open and leave behind.
    /// Most open connections from one client address (an IPv6 /64 is one address;
    /// --trusted-proxy peers are exempt)
    #[arg(long, env = "AIGATE_MAX_CONNS_PER_IP", default_value = "256", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns_per_ip: u32,
    /// Most open client connections in all [default: the open-files limit, raised to its
    /// hard limit, less a reserve for upstream connections and the database]
    #[arg(long, env = "AIGATE_MAX_CONNS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: Option<u32>,
    /// How long audit rows are kept (pruned hourly); `off` or 0 keeps them forever
    #[arg(long, env = "AIGATE_AUDIT_RETENTION", default_value = "90d", value_name = "DUR", value_parser = parse_retention)]
    pub audit_retention: Duration,
}

/// `aigate top`: what a running `aigate serve` shows at `GET /status` on its metrics
/// listener. Reads no database.
#[derive(Debug, Args)]
#[command(
    after_help = "The view is redrawn in place every --interval until Ctrl-C. When \
    standard output is not a terminal, top prints one view and exits, as with --once. \
    SLOTS is requests generating / the slots declared with `aigate host add --slots` (- for a \
    host given by --upstream, which queues for itself). TOK/S counts completion tokens over \
    the last 10 s, as responses end."
)]
pub struct TopArgs {
    /// The gate's metrics listener (its --metrics-listen), IP:PORT or HOST:PORT
    #[arg(long, env = "AIGATE_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// How often the view is redrawn (100ms to 1h)
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one view and exit
    #[arg(long)]
    pub once: bool,
    /// Print the gate's status document as JSON and exit
    #[arg(long)]
    pub json: bool,
}

/// What `aigate top` says when it has no address to ask.
pub const NO_METRICS_ADDR: &str = "no address for the gate's metrics listener: pass --metrics \
    ADDR or set AIGATE_METRICS_LISTEN (what `aigate serve --metrics-listen` was given)";

/// How often `aigate top` redraws: a duration from 100ms to 1h.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
        return Err("the interval must be from 100ms to 1h".into());
    }
    Ok(d)
}

/// A retention: a duration, or `off`/`0` (as [`Duration::ZERO`]) for none.
fn parse_retention(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" => Ok(Duration::ZERO),
        t if t.eq_ignore_ascii_case("off") => Ok(Duration::ZERO),
        t => parse_duration(t),
    }
}

/// An address to listen on or connect to: `IP:PORT`, or `HOST:PORT` resolved now to the
/// first address the resolver gives (`localhost:8080`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = |why: String| format!("expected IP:PORT or HOST:PORT (e.g. 127.0.0.1:8080): {why}");
    s.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad(format!("{s} resolves to no address")))
}

fn parse_limit<T: std::str::FromStr>(s: &str, clear: &str) -> Result<Change<T>, String> {
    if s.eq_ignore_ascii_case(clear) {
        return Ok(Change::Unlimited);
    }
    s.parse()
        .map(Change::Set)
        .map_err(|_| format!("expected a whole number or '{clear}'"))
}

/// A tier limit: a number, or `unlimited`.
pub fn parse_tier_limit<T: std::str::FromStr>(s: &str) -> Result<Change<T>, String> {
    parse_limit(s, "unlimited")
}

/// A tier's bound on how long a request waits for a slot, in whole seconds: a duration
/// of at least 1s, or `unlimited`. The range above is the store's to check.
pub fn parse_max_wait(s: &str) -> Result<Change<u64>, String> {
    if s.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(Change::Unlimited);
    }
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("a wait must be at least 1s ('unlimited' for no bound)".into());
    }
    if d.subsec_nanos() != 0 {
        return Err("a wait must be whole seconds".into());
    }
    Ok(Change::Set(d.as_secs()))
}

/// A per-key limit: a number, or `tier` to use the tier's.
pub fn parse_key_limit<T: std::str::FromStr>(s: &str) -> Result<Change<T>, String> {
    parse_limit(s, "tier")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn max_waits_are_whole_seconds_or_unlimited() {
        assert_eq!(parse_max_wait("2m"), Ok(Change::Set(120)));
        assert_eq!(parse_max_wait(" 1s "), Ok(Change::Set(1)));
        assert_eq!(parse_max_wait("1h30m"), Ok(Change::Set(5400)));
        assert_eq!(parse_max_wait("Unlimited"), Ok(Change::Unlimited));
        for (bad, why) in [
            ("0s", "at least 1s"),
            ("999ms", "at least 1s"),
            ("1500ms", "whole seconds"),
            ("soon", "try 30s"),
            ("", "try 30s"),
        ] {
            let e = parse_max_wait(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    /// The subcommands a usage error suggests.
    fn tips(args: &[&str]) -> Vec<String> {
        use clap::error::{ContextKind, ContextValue};
        let argv = std::iter::once("aigate").chain(args.iter().copied());
        let e = Cli::try_parse_with_tips(argv).expect_err("a usage error");
        match e.get(ContextKind::SuggestedSubcommand) {
            Some(ContextValue::Strings(s)) => s.clone(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_mistyped_subcommand_gets_a_tip_at_its_level() {
        assert_eq!(tips(&["kye"]), ["key"]);
        assert_eq!(tips(&["ky", "list"]), ["key"]);
        assert_eq!(tips(&["--db", "key", "kye"]), ["key"]);
        assert_eq!(tips(&["--db=x.db", "usr", "list"]), ["user"]);
        assert_eq!(tips(&["user", "ad", "bob"]), ["add"]);
        assert_eq!(tips(&["key", "st", "1"]), ["set"]);
        // What clap finds itself stays as it is.
        assert_eq!(tips(&["key", "lsit"]), ["set", "list"]);
        assert_eq!(tips(&["stauts"]), ["audit", "status"]);
        // Nothing near: no tip.
        assert!(tips(&["frobnicate"]).is_empty());
        let e = Cli::try_parse_with_tips(["aigate", "kye"]).expect_err("a usage error");
        assert!(
            e.to_string()
                .contains("tip: a similar subcommand exists: 'key'"),
            "{e}"
        );
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        assert_eq!(edit_distance("kye", "key"), 1);
        assert_eq!(edit_distance("key", "key"), 0);
        assert_eq!(edit_distance("ky", "key"), 1);
        assert_eq!(edit_distance("tier", "user"), 2);
        assert_eq!(edit_distance("", "key"), 3);
    }

    fn top(args: &[&str]) -> Result<TopArgs, clap::Error> {
        let argv = ["aigate", "top"].iter().chain(args);
        match Cli::try_parse_with_tips(argv)?.command {
            Command::Top(a) => Ok(a),
            other => panic!("not top: {other:?}"),
        }
    }

    #[test]
    fn top_takes_an_address_and_an_interval_it_can_keep() {
        let a = top(&[
            "--metrics",
            "localhost:9090",
            "--interval",
            "250ms",
            "--once",
        ])
        .expect("parse");
        let addr = a.metrics.expect("an address");
        assert!(addr.ip().is_loopback() && addr.port() == 9090, "{addr}");
        assert_eq!(a.interval, Duration::from_millis(250));
        assert!(a.once && !a.json);
        let a = top(&["--metrics", "127.0.0.1:9090"]).expect("parse");
        assert_eq!(a.interval, Duration::from_secs(1));
        for bad in ["0s", "99ms", "1h1s", "soon"] {
            let e = top(&["--metrics", "127.0.0.1:9090", "--interval", bad]).expect_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        // The environment of `cargo test` may set the variable serve and top read.
        if std::env::var_os("AIGATE_METRICS_LISTEN").is_none() {
            let e = top(&["--json"]).expect_err("no address");
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
            let text = e.to_string();
            assert!(text.contains(NO_METRICS_ADDR), "{text}");
            assert!(text.contains("Usage: aigate top"), "{text}");
        }
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["aigate", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(a) => Ok(*a),
            other => panic!("not serve: {other:?}"),
        }
    }

    /// Set by [`bool_env_values_parse`] in the runs of this test binary it starts.
    const CHILD: &str = "AIGATE_TEST_PARSE_CHILD";

    /// What `aigate serve` makes of the environment it runs in: `no_login=…` or the
    /// kind of usage error. Run only as a child of [`bool_env_values_parse`]: in edition
    /// 2024 `set_var` is unsafe (and this crate forbids unsafe code), so each
    /// environment gets a process of its own.
    #[test]
    fn parse_serve_in_this_environment() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        match serve(&[]) {
            Ok(a) => println!("PARSED no_login={}", a.no_login),
            Err(e) => println!("PARSED error={:?}", e.kind()),
        }
    }

    /// `serve`'s parse with `AIGATE_NO_LOGIN` set to `value` (None: unset).
    fn no_login_from_env(value: Option<&str>) -> String {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child
            .args([
                "--exact",
                "cli::tests::parse_serve_in_this_environment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env_remove("AIGATE_LISTEN")
            .env_remove("AIGATE_METRICS_LISTEN");
        match value {
            Some(v) => child.env("AIGATE_NO_LOGIN", v),
            None => child.env_remove("AIGATE_NO_LOGIN"),
        };
        let out = child.output().expect("run the test binary");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.split_once("PARSED ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no result from the child: {stdout}"))
            .to_string()
    }

    #[test]
    fn bool_env_values_parse() {
        for v in ["1", "true", "yes", "on", "TRUE", "Yes", "ON"] {
            assert_eq!(no_login_from_env(Some(v)), "no_login=true", "{v:?}");
        }
        for v in ["0", "false", "no", "off", "False", "NO", "Off"] {
            assert_eq!(no_login_from_env(Some(v)), "no_login=false", "{v:?}");
        }
        assert_eq!(no_login_from_env(None), "no_login=false");
        // A typo is refused rather than read as "on".
        for v in ["maybe", "2", ""] {
            assert_eq!(no_login_from_env(Some(v)), "error=ValueValidation", "{v:?}");
        }
    }

    #[test]
    fn no_login_flag_still_works() {
        // The environment of `cargo test` may set AIGATE_NO_LOGIN: the flag wins anyway.
        assert!(serve(&["--no-login"]).expect("parse").no_login);
    }

    #[test]
    fn listen_addresses_take_host_names() {
        let a = serve(&["--listen", "localhost:0", "--metrics-listen", "localhost:9"])
            .expect("localhost resolves");
        assert!(a.listen.ip().is_loopback(), "{}", a.listen);
        assert_eq!(a.listen.port(), 0);
        let m = a.metrics_listen.expect("metrics address");
        assert!(m.ip().is_loopback(), "{m}");
        assert_eq!(m.port(), 9);

        let a = serve(&["--listen", "[::1]:8086", "--metrics-listen", "0.0.0.0:9090"])
            .expect("literal addresses");
        assert_eq!(a.listen, "[::1]:8086".parse::<SocketAddr>().expect("addr"));
        assert_eq!(
            a.metrics_listen,
            Some("0.0.0.0:9090".parse().expect("addr"))
        );

        // Only malformed values: a name that does not resolve would need a resolver.
        for bad in ["localhost", "127.0.0.1", ":8080", "localhost:http", "[::1]"] {
            let e = serve(&["--listen", bad]).expect_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }
}
