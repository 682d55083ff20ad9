//! The command line, as clap types only. Their doc comments are the help text, and the
//! single source of `man/` and `completions/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Requests and tokens by key, user or model
    Usage(UsageArgs),
    /// Authentication failures and admin actions
    Audit(AuditArgs),
    /// Version, database path, schema version and counts
    Status(JsonArg),
    /// Run the authenticating proxy in front of Ollama
    Serve(Box<ServeArgs>),
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

/// `aigate audit`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries from this long ago on
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `aigate serve`. Every option also reads the `AIGATE_*` variable named in its help.
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "The JWT secret comes from $AIGATE_JWT_SECRET or --jwt-secret-file \
    (at least 32 bytes). Every option also reads the AIGATE_* variable shown beside it."
)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(
        long,
        env = "AIGATE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// Ollama's URL; repeat (or separate with commas) to spread requests round-robin
    #[arg(
        long,
        env = "AIGATE_UPSTREAM",
        default_value = "http://127.0.0.1:11434",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,
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
    #[arg(long, env = "AIGATE_NO_LOGIN")]
    pub no_login: bool,
    /// Peers whose X-Forwarded-For names the client (repeatable CIDR)
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
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    #[arg(long, env = "AIGATE_SHUTDOWN_TIMEOUT", default_value = "30s", value_name = "DUR", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Serve Prometheus metrics on this separate address (off by default)
    #[arg(long, env = "AIGATE_METRICS_LISTEN", value_name = "ADDR")]
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

/// A retention: a duration, or `off`/`0` (as [`Duration::ZERO`]) for none.
fn parse_retention(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" => Ok(Duration::ZERO),
        t if t.eq_ignore_ascii_case("off") => Ok(Duration::ZERO),
        t => parse_duration(t),
    }
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
}
