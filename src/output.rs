//! Everything that talks to a terminal: tables, JSON, confirmations, password prompts
//! and the live screen of `aigate top`. Nothing here ever waits for input without a
//! terminal, and no text reaches one as a control character (see [`escape`]).

use std::borrow::Cow;
use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, bail};
use comfy_table::{Attribute, Cell, ContentArrangement, Table};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

/// Whether `c` must not reach a terminal as it is: a control character (C0, DEL, C1),
/// which can move the cursor, retitle the window or clear the screen, or a
/// bidirectional formatting character (embeddings, overrides, isolates and marks), which
/// can make text read in another order than it is stored.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

/// `s` with every character that is unsafe on a terminal (C0, DEL, C1 and bidi controls) written
/// out visibly as `\u{1b}`. Every cell, field and status line passes through here, so
/// that text a client chose (key and user names, audit details, model names) shows as
/// text.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_on_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_on_terminal(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

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
    /// Adds a row (one cell per header), [escaped](escape): the one way into a table.
    pub fn add_row(&mut self, row: Vec<String>) {
        self.rows.push(row.into_iter().map(cell).collect());
    }
}

fn cell(s: String) -> String {
    match escape(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(escaped) => escaped,
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

/// A table laid out as [`print_table`] prints it (or `empty` when it has no rows), as
/// text without a final newline: for a caller that writes a whole screen at once.
pub fn table_text(t: &Rows, empty: &str) -> String {
    if t.rows.is_empty() {
        empty.to_string()
    } else if t.rows.len() > PLAIN_ABOVE {
        let mut out = Vec::new();
        // Writing into memory cannot fail.
        let _ = write_plain(&mut out, t);
        let text = String::from_utf8_lossy(&out);
        text.trim_end_matches('\n').to_string()
    } else {
        comfy(t).to_string()
    }
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

/// Standard output as a screen redrawn in place from the top (`aigate top`). The cursor
/// is hidden while it lives and shown again when it is dropped, whatever ended its user
/// (an error, a signal, a panic).
pub struct Screen {
    /// Buffered: each [`Screen::draw`] reaches the terminal as one write, so it never
    /// shows half a frame.
    term: console::Term,
    /// The size at the last draw: after a resize the whole screen is cleared once.
    size: (u16, u16),
}

impl Screen {
    /// Whether standard output is a terminal that can move its cursor (not a pipe, a
    /// file, or `TERM=dumb`).
    pub fn available() -> bool {
        console::Term::stdout().is_term() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
    }

    /// The screen on standard output, cleared and with the cursor hidden. Only where
    /// [`Screen::available`].
    pub fn open() -> std::io::Result<Screen> {
        let term = console::Term::buffered_stdout();
        let screen = Screen {
            size: term.size(),
            term,
        };
        screen.term.hide_cursor()?;
        screen.term.clear_screen()?;
        screen.term.flush()?;
        Ok(screen)
    }

    /// Rows and columns now.
    pub fn size(&self) -> (usize, usize) {
        let (rows, cols) = self.term.size();
        (usize::from(rows), usize::from(cols))
    }

    /// Replaces what the screen shows with `text`, cut to fit: lines to the width, and
    /// one line fewer than the height, so that the last newline never scrolls it. Each
    /// line overwrites the old one in place (no blank frame in between), and what is
    /// left below is cleared.
    pub fn draw(&mut self, text: &str) -> std::io::Result<()> {
        let size = self.term.size();
        if size != self.size {
            self.size = size;
            self.term.clear_screen()?;
        }
        let (rows, cols) = (usize::from(size.0), usize::from(size.1));
        self.term.move_cursor_to(0, 0)?;
        for line in text.lines().take(rows.saturating_sub(1).max(1)) {
            self.term.clear_line()?;
            self.term
                .write_str(&console::truncate_str(line, cols, ""))?;
            self.term.write_str("\n")?;
        }
        self.term.clear_to_end_of_screen()?;
        self.term.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // The line under the last frame may hold an echoed ^C: the prompt takes its place.
        let _ = self.term.clear_line();
        let _ = self.term.show_cursor();
        let _ = self.term.flush();
    }
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
        writeln!(out, "{}", escape(title))?;
    }
    for (label, value) in fields {
        writeln!(out, "{label:>width$}  {}", escape(value))?;
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
    let _ = writeln!(std::io::stderr().lock(), "{}", escape(&line.to_string()));
}

/// Prints one JSON document, pretty, with every character that is unsafe on a
/// terminal (C0, DEL, C1 and bidi controls) as a `\u` escape (serde_json escapes only C0): the same
/// document to a parser, and safe to show.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, TerminalSafe(PrettyFormatter::new()));
    // As an io::Error, so that a closed stdout is seen as one by the caller.
    v.serialize(&mut ser).map_err(std::io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// serde_json's pretty formatter, writing DEL, C1 and bidirectional formatting
/// characters in strings as `\uXXXX` too.
struct TerminalSafe<'a>(PrettyFormatter<'a>);

impl Formatter for TerminalSafe<'_> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if unsafe_on_terminal(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                // All of them are in the Basic Multilingual Plane: one \uXXXX each.
                write!(w, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
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
    let question = escape(question);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_controls_and_bidi_as_text() {
        assert!(matches!(escape("laptop ü ✓ 日本"), Cow::Borrowed(_)));
        assert_eq!(
            escape("\u{1b}]0;PWNED\u{7}\u{1b}[2J"),
            "\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J"
        );
        assert_eq!(escape("a\tb\nc\rd\0"), "a\\u{9}b\\u{a}c\\u{d}d\\u{0}");
        assert_eq!(
            escape("\u{7f}\u{80}\u{9b}\u{9f}"),
            "\\u{7f}\\u{80}\\u{9b}\\u{9f}"
        );
        for c in [
            '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}',
        ] {
            let e = escape(&format!("x{c}y")).into_owned();
            assert_eq!(e, format!("x\\u{{{:x}}}y", u32::from(c)));
        }
    }

    #[test]
    fn terminal_safe_json_is_the_same_document() {
        let value = serde_json::json!({
            "name": "\u{1b}]0;PWNED\u{7} \u{7f}\u{9b}\u{202e}\u{2066} ü \\ \"",
            "list": [1, null, "x"],
        });
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, TerminalSafe(PrettyFormatter::new()));
        value.serialize(&mut ser).expect("serialize");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            !text.chars().any(|c| unsafe_on_terminal(c) && c != '\n'),
            "{text:?}"
        );
        for escaped in [
            "\\u001b", "\\u0007", "\\u007f", "\\u009b", "\\u202e", "\\u2066",
        ] {
            assert!(text.contains(escaped), "{escaped} in {text}");
        }
        assert!(text.contains("ü"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back, value);
        // Laid out as serde_json's own pretty printer does.
        assert_eq!(
            text.lines().count(),
            serde_json::to_string_pretty(&value)
                .expect("pretty")
                .lines()
                .count()
        );
    }
}
