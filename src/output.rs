//! Everything that talks to a terminal: tables, JSON, confirmations and password
//! prompts. Nothing here ever waits for input without a terminal.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, bail};
use comfy_table::{Attribute, Cell, ContentArrangement, Table};
use serde::Serialize;

/// comfy-table's style string: only the header line and its crossings are drawn.
const HEADER_RULE: &str = "     ──            ";

/// Whether standard input and standard error are both terminals, so a prompt can be
/// answered by a person.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Whether to use colour and text styles: stdout is a terminal and `NO_COLOR` is unset.
pub fn styled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Past this many rows a table is written as plain aligned columns: comfy-table lays out
/// every cell in memory, which takes seconds for 100,000 keys, and nobody reads a table
/// that long wrapped to the terminal anyway.
const PLAIN_ABOVE: usize = 1_000;

/// Rows under a header, printed by [`print_table`].
#[derive(Debug, Default)]
pub struct Rows {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Rows {
    /// Adds a row (one cell per header).
    pub fn add_row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

/// A table with `headers`.
pub fn table(headers: &[&str]) -> Rows {
    Rows {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        rows: Vec::new(),
    }
}

/// Prints a table fitted to the terminal's width (plain columns when very long), or
/// `empty` when it has no rows.
pub fn print_table(t: &Rows, empty: &str) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if t.rows.is_empty() {
        writeln!(out, "{empty}")?;
    } else if t.rows.len() > PLAIN_ABOVE {
        write_plain(&mut out, t)?;
    } else {
        writeln!(out, "{}", comfy(t))?;
    }
    out.flush()?;
    Ok(())
}

fn comfy(t: &Rows) -> Table {
    let mut table = Table::new();
    // No borders, one rule under the header: compact, and easy to read by eye or by awk.
    table
        .load_preset(HEADER_RULE)
        .set_content_arrangement(ContentArrangement::Dynamic);
    let bold = styled();
    table.set_header(t.headers.iter().map(|h| {
        let c = Cell::new(h);
        if bold {
            c.add_attribute(Attribute::Bold)
        } else {
            c
        }
    }));
    if !bold {
        table.force_no_tty();
    }
    for r in &t.rows {
        table.add_row(r);
    }
    table
}

/// The same layout as [`comfy`] without wrapping, streamed.
fn write_plain(out: &mut impl Write, t: &Rows) -> std::io::Result<()> {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = t.headers.iter().map(|h| width(h)).collect();
    for r in &t.rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(c));
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        for (c, w) in cells.iter().zip(&widths) {
            write!(out, " {c}{:pad$} ", "", pad = w - width(c))?;
        }
        writeln!(out)
    };
    line(out, &t.headers)?;
    writeln!(out, "{}", "─".repeat(widths.iter().map(|w| w + 2).sum()))?;
    for r in &t.rows {
        line(out, r)?;
    }
    Ok(())
}

/// Prints `label  value` lines, labels right-aligned to the longest, under an optional
/// title line: the view of one record (`key show`, `status`).
pub fn print_fields(title: Option<&str>, fields: &[(&str, String)]) -> anyhow::Result<()> {
    let width = fields
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(title) = title {
        writeln!(out, "{title}")?;
    }
    for (label, value) in fields {
        writeln!(out, "{label:>width$}  {value}")?;
    }
    out.flush()?;
    Ok(())
}

/// Prints a secret made by aigate (a new key) on a line of its own, for
/// `KEY=$(aigate key create --quiet)`.
pub fn print_secret(secret: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{secret}")?;
    out.flush()?;
    Ok(())
}

/// Prints bytes as they are (a completion script aigate rendered).
pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Writes one status line to standard error: what a command did, for a person reading
/// along. A closed or failing stderr is ignored; the command's outcome does not hang on
/// a remark.
pub fn status(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints one JSON document.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // As an io::Error, so that a closed stdout is seen as one by the caller.
    serde_json::to_writer_pretty(&mut out, v).map_err(std::io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A cell for an optional value: `-` when absent.
pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Asks before a destructive action. `--yes` skips; without a terminal it fails at once
/// rather than wait for input.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !interactive() {
        bail!("{question}: no terminal to confirm on; pass --yes");
    }
    let ok = dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .context("reading the answer")?;
    if !ok {
        bail!("cancelled");
    }
    Ok(())
}

/// Reads a new password: from standard input with `--password-stdin` (one trailing
/// newline removed), else a hidden prompt typed twice. Never prompts without a terminal.
pub fn read_new_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from standard input")?;
        let trimmed = s.strip_suffix('\n').unwrap_or(&s);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
    } else if interactive() {
        dialoguer::Password::new()
            .with_prompt("Password")
            .with_confirmation("Repeat password", "the passwords do not match")
            .interact()
            .context("reading the password")?
    } else {
        bail!("no terminal to ask for a password on; pass --password-stdin");
    };
    crate::auth::password::check_new(&password)?;
    Ok(password)
}
