//! What the gate is configured with, resolved once from `serve`'s options.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a worker needs to know of its configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    /// How often each host is probed.
    pub probe_interval: Duration,
    pub token_ttl: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_body: u64,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    /// Longest silence between two frames of a request body.
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub cors_origins: Vec<String>,
}
