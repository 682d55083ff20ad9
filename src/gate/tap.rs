//! The usage tap: reads token counts out of a response as its chunks stream past,
//! without holding or delaying any of them. It looks for the last value of Ollama's
//! `"prompt_eval_count"`/`"eval_count"` and OpenAI's `"prompt_tokens"`/
//! `"completion_tokens"`, and for the `"model"` the upstream answered with. A chunk may
//! split anywhere: the last bytes of each chunk are kept to catch a field cut in two.
//!
//! Inside a JSON string a quote is escaped, so the content of a reply can never forge
//! `"eval_count":` — the pattern's quotes only match real keys.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// How many of the stream's last bytes are kept between chunks, and how much of the
/// next chunk is scanned joined to them: at least the longest field matched with its
/// value (`"model": "` and a name of `MAX_MODEL` bytes), so that a field cut by a chunk
/// boundary lies whole in the joined bytes. (96, too short for a long model name, lost
/// the model; found by `fuzz/`.)
const CARRY: usize = MAX_MODEL + 56;
/// Longest model name kept.
const MAX_MODEL: usize = 200;

/// The searched keys, compiled once: building a `Finder` costs more than searching a
/// small chunk with it, and every response is scanned.
struct Patterns {
    /// In both of Ollama's keys: where it is absent, neither is searched for.
    ollama_any: Finder<'static>,
    /// In both of OpenAI's keys.
    openai_any: Finder<'static>,
    prompt_eval_count: Finder<'static>,
    eval_count: Finder<'static>,
    prompt_tokens: Finder<'static>,
    completion_tokens: Finder<'static>,
    model: Finder<'static>,
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    ollama_any: Finder::new(b"eval_count\":"),
    openai_any: Finder::new(b"_tokens\":"),
    prompt_eval_count: Finder::new(b"\"prompt_eval_count\":"),
    eval_count: Finder::new(b"\"eval_count\":"),
    prompt_tokens: Finder::new(b"\"prompt_tokens\":"),
    completion_tokens: Finder::new(b"\"completion_tokens\":"),
    model: Finder::new(b"\"model\":"),
});

/// Token counts and model read from a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub model: Option<String>,
}

/// The scanner's state for one response.
#[derive(Debug, Default)]
pub struct Scanner {
    carry: Vec<u8>,
    /// Records delivered: NDJSON lines, or SSE `data:` events.
    records: Records,
    ollama_prompt: Option<u64>,
    ollama_eval: Option<u64>,
    openai_prompt: Option<u64>,
    openai_completion: Option<u64>,
    model: Option<String>,
}

impl Scanner {
    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_last(chunk);
        if chunk.len() >= CARRY {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - CARRY..]);
        } else {
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..excess);
        }
    }

    /// Feeds the chunk that ends the response: nothing is kept for a next one (most
    /// answers that are not streamed come in one chunk).
    pub fn feed_last(&mut self, chunk: &[u8]) {
        self.records.feed(chunk);
        if !self.carry.is_empty() {
            // Fields cut by the chunk boundary: scan the stream's last bytes joined to
            // the head of this chunk. Fields found whole in either part are found again
            // with the same value, and a number cut short is replaced by its whole.
            let mut joined = std::mem::take(&mut self.carry);
            let carried = joined.len();
            joined.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            self.scan(&joined);
            joined.truncate(carried);
            self.carry = joined;
        }
        self.scan(chunk);
    }

    /// Whether the upstream reported any token count (Ollama's or OpenAI's).
    pub fn reported(&self) -> bool {
        self.ollama_prompt.is_some()
            || self.ollama_eval.is_some()
            || self.openai_prompt.is_some()
            || self.openai_completion.is_some()
    }

    /// The content chunks delivered so far: one per NDJSON line but the final one, or
    /// per SSE `data:` event but `[DONE]`. For a server that streams one token a chunk
    /// (Ollama, llama.cpp) this is the number of tokens generated, which the gate counts
    /// when the upstream reports none (an OpenAI stream without `include_usage`, a
    /// server that never reports, a client that left mid-stream).
    pub fn delivered(&self) -> u64 {
        self.records.count.saturating_sub(1)
    }

    /// What was seen, once the response has ended. Ollama's counts win over OpenAI's
    /// when both appear; a missing count is 0.
    pub fn finish(self) -> Seen {
        let (p, c) = if self.ollama_prompt.is_some() || self.ollama_eval.is_some() {
            (self.ollama_prompt, self.ollama_eval)
        } else {
            (self.openai_prompt, self.openai_completion)
        };
        Seen {
            prompt_tokens: p.unwrap_or(0),
            completion_tokens: c.unwrap_or(0),
            model: self.model,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        // Cheap pre-check: every field of interest contains one of these.
        if memchr::memchr(b'"', buf).is_none() {
            return;
        }
        let p = &*PATTERNS;
        // Most chunks of a stream carry no count at all: one search rules out a pair.
        if p.ollama_any.find(buf).is_some() {
            if let Some(v) = last_number(buf, &p.prompt_eval_count) {
                self.ollama_prompt = Some(v);
            }
            if let Some(v) = last_number(buf, &p.eval_count) {
                self.ollama_eval = Some(v);
            }
        }
        if p.openai_any.find(buf).is_some() {
            if let Some(v) = last_number(buf, &p.prompt_tokens) {
                self.openai_prompt = Some(v);
            }
            if let Some(v) = last_number(buf, &p.completion_tokens) {
                self.openai_completion = Some(v);
            }
        }
        if self.model.is_none()
            && let Some(m) = first_string(buf, &p.model)
        {
            self.model = Some(m);
        }
    }
}

/// Counts records across chunk boundaries: newlines for NDJSON, `data:` at a line
/// start for SSE, told apart by the stream's first bytes.
#[derive(Debug, Default)]
struct Records {
    /// `None` until the first non-blank byte decides: `Some(true)` for SSE.
    sse: Option<bool>,
    count: u64,
    /// For SSE: how many bytes of `\ndata:` the stream ends with (a match cut in two).
    partial: usize,
}

const SSE_EVENT: &[u8] = b"\ndata:";

impl Records {
    fn feed(&mut self, chunk: &[u8]) {
        let sse = match self.sse {
            Some(s) => s,
            None => {
                let Some(start) = chunk.iter().position(|b| !b.is_ascii_whitespace()) else {
                    return;
                };
                let head = &chunk[start..];
                let sse =
                    head.starts_with(b"data:") || (head.len() < 5 && b"data:".starts_with(head));
                self.sse = Some(sse);
                if sse {
                    // The first event has no newline before it.
                    self.count += 1;
                }
                sse
            }
        };
        if !sse {
            self.count += memchr::memchr_iter(b'\n', chunk).count() as u64;
            return;
        }
        // A match cut by the previous boundary: finish it byte by byte.
        let mut i = 0;
        while self.partial > 0 && i < chunk.len() {
            if chunk[i] != SSE_EVENT[self.partial] {
                self.partial = 0;
                break;
            }
            self.partial += 1;
            i += 1;
            if self.partial == SSE_EVENT.len() {
                self.count += 1;
                self.partial = 0;
            }
        }
        if self.partial > 0 {
            return; // the whole chunk continued the cut match
        }
        let rest = &chunk[i..];
        self.count += memchr::memmem::find_iter(rest, SSE_EVENT).count() as u64;
        // The longest tail of `rest` that begins `\ndata:`.
        self.partial = (1..SSE_EVENT.len())
            .rev()
            .find(|&n| rest.ends_with(&SSE_EVENT[..n]))
            .unwrap_or(0);
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// The number after the last complete occurrence of `pat`.
fn last_number(buf: &[u8], pat: &Finder<'_>) -> Option<u64> {
    let mut found = None;
    for at in pat.find_iter(buf) {
        let start = skip_ws(buf, at + pat.needle().len());
        let digits = buf[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        // A number at the very end may continue in the next chunk; the joined scan
        // of the boundary then sees it whole and replaces this value.
        if digits > 0 && digits <= 19 {
            let s = std::str::from_utf8(&buf[start..start + digits]).ok()?;
            found = s.parse().ok().or(found);
        }
    }
    found
}

/// The string after the first complete occurrence of `pat` (no escapes expected in a
/// model name; one with escapes is skipped).
fn first_string(buf: &[u8], pat: &Finder<'_>) -> Option<String> {
    for at in pat.find_iter(buf) {
        let start = skip_ws(buf, at + pat.needle().len());
        if buf.get(start) != Some(&b'"') {
            continue;
        }
        let rest = &buf[start + 1..];
        let end = memchr::memchr(b'"', rest)?;
        let s = &rest[..end];
        if s.contains(&b'\\') || s.is_empty() || s.len() > MAX_MODEL {
            continue;
        }
        return std::str::from_utf8(s).ok().map(String::from);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NDJSON: &str = concat!(
        r#"{"model":"llama3.2:latest","created_at":"x","message":{"role":"assistant","content":"\"eval_count\":999"},"done":false}"#,
        "\n",
        r#"{"model":"llama3.2:latest","created_at":"x","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":1,"prompt_eval_count":26,"prompt_eval_duration":1,"eval_count":298,"eval_duration":1}"#,
        "\n"
    );

    fn scan_split(s: &str, sizes: &[usize]) -> Seen {
        let mut sc = Scanner::default();
        let b = s.as_bytes();
        let mut i = 0;
        let mut k = 0;
        while i < b.len() {
            let n = sizes[k % sizes.len()].max(1).min(b.len() - i);
            sc.feed(&b[i..i + n]);
            i += n;
            k += 1;
        }
        sc.finish()
    }

    #[test]
    fn ndjson_counts_at_any_split() {
        let want = Seen {
            prompt_tokens: 26,
            completion_tokens: 298,
            model: Some("llama3.2:latest".into()),
        };
        for n in 1..NDJSON.len() {
            assert_eq!(scan_split(NDJSON, &[n]), want, "split every {n}");
        }
        assert_eq!(scan_split(NDJSON, &[3, 7, 1, 50]), want);
    }

    #[test]
    fn escaped_content_is_not_counted() {
        let s = r#"{"message":{"content":"\"eval_count\":999"}}"#;
        assert_eq!(scan_split(s, &[1000]).completion_tokens, 0);
    }

    #[test]
    fn openai_usage_chunk() {
        let s = concat!(
            "data: {\"id\":\"1\",\"model\":\"qwen2.5:7b\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\n",
            "data: [DONE]\n\n"
        );
        for n in 1..40 {
            let seen = scan_split(s, &[n]);
            assert_eq!(
                (seen.prompt_tokens, seen.completion_tokens),
                (11, 7),
                "split {n}"
            );
            assert_eq!(seen.model.as_deref(), Some("qwen2.5:7b"));
        }
    }

    /// Found by `fuzz/` (usage_tap): a model name longer than the carried bytes, with
    /// `"model"` cut from its value by a chunk boundary, was never seen.
    #[test]
    fn long_model_cut_after_its_key() {
        let model = "pxaaaaaxcaaxcaixaxcaaxcaixcicaixcZZ8eaaaaaiiaBaacicaixciiaBaaiixcaaaaaduokw6ppxaaaaaxcaaxcaixaxcaaxcaixkw6ppxaaaaaxcaaxcaixaxcaaxcaixcicaixcZZ8eaaaaaii";
        let s = format!(
            "{{\"model\": \"{model}\",\"created_at\": \"2025-01-01T00:00:00Z\",\"message\": {{\"role\": \"assistant\",\"content\": \"\"}},\"done_reason\": \"stop\",\"done\": true,\"total_duration\": 5191566416,\"load_duration\": 2154458}}\n"
        );
        let b = s.as_bytes();
        let want = Seen {
            model: Some(model.into()),
            ..Seen::default()
        };
        // The fuzzer's cuts: three empty chunks, then 8, 119, 55, 35 and 121 bytes.
        let mut sc = Scanner::default();
        for (from, to) in [
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 8),
            (8, 8),
            (8, 127),
            (127, 182),
            (182, 217),
            (217, b.len()),
        ] {
            sc.feed(&b[from..to]);
        }
        assert_eq!(sc.finish(), want);
        // And a name of the longest kept length, cut anywhere.
        let longest = "m".repeat(MAX_MODEL);
        let s = format!("{{\"model\": \"{longest}\",\"done\":true,\"eval_count\":5}}\n");
        for cut in 0..=s.len() {
            let mut sc = Scanner::default();
            sc.feed(&s.as_bytes()[..cut]);
            sc.feed_last(&s.as_bytes()[cut..]);
            let seen = sc.finish();
            assert_eq!(
                seen.model.as_deref(),
                Some(longest.as_str()),
                "cut at {cut}"
            );
            assert_eq!(seen.completion_tokens, 5, "cut at {cut}");
        }
    }

    /// Delivered chunks are counted exactly however the stream is cut: Ollama's NDJSON
    /// lines but the final one, OpenAI SSE events but `[DONE]`.
    #[test]
    fn delivered_chunks_at_any_split() {
        let ndjson = "{\"response\":\"a\",\"done\":false}\n".repeat(7) + "{\"done\":true}\n";
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\n\r\n".repeat(9)
            + "data: [DONE]\r\n\r\n";
        for (body, want) in [(ndjson.as_str(), 7), (sse.as_str(), 9)] {
            for n in 1..body.len() {
                let mut sc = Scanner::default();
                for piece in body.as_bytes().chunks(n) {
                    sc.feed(piece);
                }
                assert_eq!(sc.delivered(), want, "split every {n}");
                assert!(!sc.reported());
            }
        }
        // A client that left after 4 of 7 lines is charged 3: the margin is one token.
        let line = ndjson.find('\n').expect("a line") + 1;
        let mut sc = Scanner::default();
        sc.feed(&ndjson.as_bytes()[..4 * line]);
        assert_eq!(sc.delivered(), 3);
    }

    #[test]
    fn missing_counts_are_zero() {
        assert_eq!(scan_split("{\"done\":true}", &[5]), Seen::default());
    }
}
