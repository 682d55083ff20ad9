//! The usage tap's streaming scanner (`aigate::gate::tap::Scanner`).
//!
//! - A valid Ollama NDJSON or OpenAI SSE stream, built from fuzzer-chosen counts, model
//!   name, reply text (JSON-escaped, so it may spell `"eval_count":999`), number of
//!   chunks and spacing, and cut into chunks at fuzzer-chosen byte positions (empty
//!   chunks included): `Scanner` finds exactly the counts and the model.
//! - Arbitrary bytes cut at arbitrary positions: no panic, and the model it reports is
//!   short and has no quote or backslash.

#![no_main]

use aigate::gate::tap::{Scanner, Seen};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes as a little program.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

/// The scanner's documented range: counts of at most 19 digits.
const MAX_COUNT: u64 = 9_999_999_999_999_999_999;
/// The longest model name the scanner keeps (`tap::MAX_MODEL`).
const MAX_MODEL: usize = 200;
const MODEL_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.:-_/ABCZ";

fn count(r: &mut Reader) -> Option<u64> {
    let raw = r.u64();
    // Mostly small, realistic counts; sometimes the whole range.
    match raw % 4 {
        0 => None,
        1 => Some(raw % MAX_COUNT),
        _ => Some((raw >> 8) % 100_000),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

struct Stream {
    text: Vec<u8>,
    want: Seen,
}

fn build(r: &mut Reader) -> Stream {
    let sse = r.byte() % 2 == 1;
    // `":"` or `": "` between key and value, as different servers write it.
    let colon = if r.byte() % 2 == 1 { ": " } else { ":" };
    let model_len = 1 + r.byte() as usize % MAX_MODEL;
    let model: String = (0..model_len)
        .map(|_| MODEL_CHARS[r.byte() as usize % MODEL_CHARS.len()] as char)
        .collect();
    let prompt = count(r);
    let completion = count(r);
    let chunks = r.byte() % 6;
    let mut text = String::new();
    for _ in 0..chunks {
        let len = r.byte() as usize % 64;
        let content = String::from_utf8_lossy(r.bytes(len)).into_owned();
        if sse {
            text.push_str(&format!(
                "data: {{\"id\"{colon}\"chatcmpl-1\",\"object\"{colon}\"chat.completion.chunk\",\"created\"{colon}1,\"model\"{colon}{},\"choices\"{colon}[{{\"index\"{colon}0,\"delta\"{colon}{{\"role\"{colon}\"assistant\",\"content\"{colon}{}}},\"finish_reason\"{colon}null}}]}}\n\n",
                json_str(&model),
                json_str(&content),
            ));
        } else {
            text.push_str(&format!(
                "{{\"model\"{colon}{},\"created_at\"{colon}\"2025-01-01T00:00:00Z\",\"message\"{colon}{{\"role\"{colon}\"assistant\",\"content\"{colon}{}}},\"done\"{colon}false}}\n",
                json_str(&model),
                json_str(&content),
            ));
        }
    }
    if sse {
        let mut usage = Vec::new();
        if let Some(p) = prompt {
            usage.push(format!("\"prompt_tokens\"{colon}{p}"));
        }
        if let Some(c) = completion {
            usage.push(format!("\"completion_tokens\"{colon}{c}"));
        }
        let total = prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0));
        usage.push(format!("\"total_tokens\"{colon}{total}"));
        text.push_str(&format!(
            "data: {{\"id\"{colon}\"chatcmpl-1\",\"object\"{colon}\"chat.completion.chunk\",\"created\"{colon}1,\"model\"{colon}{},\"choices\"{colon}[{{\"index\"{colon}0,\"delta\"{colon}{{\"role\"{colon}\"assistant\",\"content\"{colon}\"\"}},\"finish_reason\"{colon}\"stop\"}}],\"usage\"{colon}{{{}}}}}\n\ndata: [DONE]\n\n",
            json_str(&model),
            usage.join(","),
        ));
    } else {
        let mut fields = vec![
            format!("\"model\"{colon}{}", json_str(&model)),
            format!("\"created_at\"{colon}\"2025-01-01T00:00:00Z\""),
            format!("\"message\"{colon}{{\"role\"{colon}\"assistant\",\"content\"{colon}\"\"}}"),
            format!("\"done_reason\"{colon}\"stop\""),
            format!("\"done\"{colon}true"),
            format!("\"total_duration\"{colon}5191566416"),
            format!("\"load_duration\"{colon}2154458"),
        ];
        if let Some(p) = prompt {
            fields.push(format!("\"prompt_eval_count\"{colon}{p}"));
            fields.push(format!("\"prompt_eval_duration\"{colon}383809000"));
        }
        if let Some(c) = completion {
            fields.push(format!("\"eval_count\"{colon}{c}"));
            fields.push(format!("\"eval_duration\"{colon}4799921000"));
        }
        text.push_str(&format!("{{{}}}\n", fields.join(",")));
    }
    Stream {
        text: text.into_bytes(),
        want: Seen {
            prompt_tokens: prompt.unwrap_or(0),
            completion_tokens: completion.unwrap_or(0),
            model: Some(model),
        },
    }
}

/// Feeds `text` cut at the positions the rest of the input chooses.
fn scan_split(text: &[u8], r: &mut Reader) -> Seen {
    let mut cuts: Vec<usize> = (0..r.byte() % 24)
        .map(|_| {
            let b = [r.byte(), r.byte()];
            u16::from_le_bytes(b) as usize % (text.len() + 1)
        })
        .collect();
    cuts.push(text.len());
    cuts.sort_unstable();
    // Duplicates stay: they feed empty chunks.
    let mut sc = Scanner::default();
    let mut at = 0;
    let last = cuts.len() - 1;
    for (i, cut) in cuts.into_iter().enumerate() {
        // The gate feeds the chunk that ends a response with `feed_last`.
        if i == last {
            sc.feed_last(&text[at..cut]);
        } else {
            sc.feed(&text[at..cut]);
        }
        at = cut;
    }
    sc.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut r = Reader(rest);
    if mode % 4 == 0 {
        let len = u16::from_le_bytes([r.byte(), r.byte()]) as usize;
        let text = r.bytes(len);
        let seen = scan_split(text, &mut r);
        if let Some(m) = &seen.model {
            assert!(!m.is_empty() && m.len() <= MAX_MODEL);
            assert!(!m.contains('"') && !m.contains('\\'));
        }
        return;
    }
    let stream = build(&mut r);
    let seen = scan_split(&stream.text, &mut r);
    assert_eq!(
        seen,
        stream.want,
        "stream: {}",
        String::from_utf8_lossy(&stream.text)
    );
});
