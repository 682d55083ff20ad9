//! The `aigate` binary: parse the command line, set up logging, run, and map errors to
//! exit codes (0 success, also when the reader of stdout has gone; 1 failure with one
//! `error:` line; 2 usage error by clap).

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = aigate::cli::Cli::parse_with_tips();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match aigate::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`aigate key list | head -1`): it has all it
        // wanted, so end quietly, as ripgrep does, rather than report an error nobody asked about.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors may quote what a client chose: escape it like all other output.
            eprintln!("error: {}", aigate::output::escape(&chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Whether a write failed because the other end of a pipe was closed.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, each cause once.
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
