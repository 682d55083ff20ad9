//! What the gate writes into a request body: the generation cap of a caller with a
//! daily token quota (Ollama's `options.num_predict`, OpenAI's `max_tokens`), so that a
//! request cannot generate past what is left, and the options the operator pinned for
//! a model (`options.num_ctx`, `keep_alive`), so that clients cannot make a host reload
//! it.

use bytes::Bytes;

use super::body::Set;

/// Which API a route speaks, if it is one the gate writes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/generate`, `/api/chat`: `options.num_predict`, `options.num_ctx`,
    /// `keep_alive`.
    Generate,
    /// `/api/embed`, `/api/embeddings`: `options.num_ctx`, `keep_alive`.
    Embed,
    /// `/v1/chat/completions`, `/v1/completions`: `max_tokens`.
    OpenAi,
}

impl Api {
    /// The API of `path`, if the gate writes into its bodies.
    pub fn of_path(path: &str) -> Option<Api> {
        match path {
            "/api/generate" | "/api/chat" => Some(Api::Generate),
            "/api/embed" | "/api/embeddings" => Some(Api::Embed),
            "/v1/chat/completions" | "/v1/completions" => Some(Api::OpenAi),
            _ => None,
        }
    }

    /// Whether the route generates, so that a token quota caps it.
    pub fn generates(self) -> bool {
        self != Api::Embed
    }
}

/// What to write. Edits an API has no field for are not made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Edits {
    /// Generate at most this many tokens (a smaller limit the client set is kept).
    pub max_tokens: Option<u64>,
    /// Ollama's context size, whatever the client asked.
    pub num_ctx: Option<u32>,
    /// Ollama's `keep_alive` in seconds (negative: keep loaded), whatever the client
    /// asked.
    pub keep_alive: Option<i64>,
}

impl Edits {
    /// The edits `api` has fields for.
    fn for_api(self, api: Api) -> Edits {
        match api {
            Api::Generate => self,
            Api::Embed => Edits {
                max_tokens: None,
                ..self
            },
            Api::OpenAi => Edits {
                max_tokens: self.max_tokens,
                ..Edits::default()
            },
        }
    }

    fn is_empty(self) -> bool {
        self == Edits::default()
    }
}

/// `body` with `edits` written in: Ollama's `options.num_predict` (the cap),
/// `options.num_ctx` and `keep_alive` (pins); OpenAI's `max_tokens` (and
/// `max_completion_tokens` when given). Keys are matched regardless of case and their
/// other spellings dropped, as Go's decoder would take any of them. `set` is what
/// [`super::body::fields_of`] found in `body`, which it read as one JSON object.
/// `None`: the body needs no change (not a JSON object, nothing to write, already
/// within the cap).
pub fn rewrite(body: &[u8], api: Api, set: Set, edits: Edits) -> Option<Bytes> {
    use serde_json::value::RawValue;
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;
    let edits = edits.for_api(api);
    if edits.is_empty() {
        return None;
    }
    let ollama = api != Api::OpenAi;
    let touches_options = edits.max_tokens.is_some() || edits.num_ctx.is_some();
    let conflicts = if ollama {
        (touches_options && set.options) || (edits.keep_alive.is_some() && set.keep_alive)
    } else {
        set.max_tokens || set.max_completion_tokens
    };
    if !conflicts && let Some(appended) = appended(body, ollama, edits) {
        return Some(appended);
    }
    // Only the top level is parsed; every value stays the text it came as (the
    // messages above all), so the rewrite costs little more than a copy. Of duplicate
    // keys the last is kept, as Go keeps it.
    let mut doc: BTreeMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    let cap = edits.max_tokens.map(|n| n.min(i64::MAX as u64) as i64);
    let spellings = |doc: &BTreeMap<String, &RawValue>, key: &str| -> Vec<String> {
        doc.keys()
            .filter(|k| k.eq_ignore_ascii_case(key))
            .cloned()
            .collect()
    };
    // The value to send for a limit (at most `cap`), given the client's.
    let limit = |cap: i64, current: Option<i64>| match current {
        // Ollama reads num_predict -1 (or -2) as "no limit".
        Some(n) if n > 0 && n <= cap => n,
        _ => cap,
    };
    let mut written: Vec<(String, String)> = Vec::new();
    if ollama {
        if touches_options {
            let mut options = Map::new();
            for k in spellings(&doc, "options") {
                if let Some(raw) = doc.remove(&k)
                    && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(raw.get())
                {
                    options.extend(o);
                }
            }
            let mut take = |key: &str| -> Option<i64> {
                let given: Vec<String> = options
                    .keys()
                    .filter(|k| k.eq_ignore_ascii_case(key))
                    .cloned()
                    .collect();
                let current = given
                    .iter()
                    .filter_map(|k| options.get(k))
                    .filter_map(Value::as_i64)
                    .next_back();
                for k in &given {
                    options.remove(k);
                }
                current
            };
            let predicted = take("num_predict");
            let ctx = take("num_ctx");
            match cap {
                Some(cap) => {
                    options.insert("num_predict".into(), Value::from(limit(cap, predicted)));
                }
                None => {
                    if let Some(n) = predicted {
                        options.insert("num_predict".into(), Value::from(n));
                    }
                }
            }
            if let Some(n) = edits.num_ctx.map(i64::from).or(ctx) {
                options.insert("num_ctx".into(), Value::from(n));
            }
            written.push(("options".into(), Value::Object(options).to_string()));
        }
        if let Some(secs) = edits.keep_alive {
            for k in spellings(&doc, "keep_alive") {
                doc.remove(&k);
            }
            written.push(("keep_alive".into(), secs.to_string()));
        }
    } else if let Some(cap) = cap {
        for (key, always) in [("max_tokens", true), ("max_completion_tokens", false)] {
            let given = spellings(&doc, key);
            let current = given
                .iter()
                .filter_map(|k| doc.get(k))
                .filter_map(|raw| raw.get().parse::<i64>().ok())
                .next_back();
            let n = limit(cap, current);
            if (given.is_empty() && !always)
                || (given.len() == 1 && given[0] == key && current == Some(n))
            {
                continue;
            }
            for k in &given {
                doc.remove(k);
            }
            written.push((key.into(), n.to_string()));
        }
    }
    if written.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 32);
    out.push(b'{');
    let fields = doc
        .iter()
        .map(|(k, v)| (k.as_str(), v.get()))
        .chain(written.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (i, (k, v)) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k).ok()?;
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
    Some(Bytes::from(out))
}

/// The edits for a body that sets none of the keys they write, made without parsing:
/// the fields appended before the object's closing brace. `None` when the body does not
/// end its object.
fn appended(body: &[u8], ollama: bool, edits: Edits) -> Option<Bytes> {
    let inner = body.trim_ascii_end().strip_suffix(b"}")?.trim_ascii_end();
    let mut out = Vec::with_capacity(inner.len() + 64);
    out.extend_from_slice(inner);
    let mut first = inner.trim_ascii_start() == b"{";
    let mut field = |out: &mut Vec<u8>, text: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(text);
    };
    let mut digits = itoa::Buffer::new();
    if !ollama {
        let cap = edits.max_tokens?.min(i64::MAX as u64);
        field(&mut out, br#""max_tokens":"#);
        out.extend_from_slice(digits.format(cap).as_bytes());
    } else {
        if edits.max_tokens.is_some() || edits.num_ctx.is_some() {
            field(&mut out, br#""options":{"#);
            if let Some(cap) = edits.max_tokens {
                out.extend_from_slice(br#""num_predict":"#);
                out.extend_from_slice(digits.format(cap.min(i64::MAX as u64)).as_bytes());
            }
            if let Some(ctx) = edits.num_ctx {
                if edits.max_tokens.is_some() {
                    out.push(b',');
                }
                out.extend_from_slice(br#""num_ctx":"#);
                out.extend_from_slice(digits.format(ctx).as_bytes());
            }
            out.push(b'}');
        }
        if let Some(secs) = edits.keep_alive {
            field(&mut out, br#""keep_alive":"#);
            out.extend_from_slice(digits.format(secs).as_bytes());
        }
    }
    out.push(b'}');
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_capped_to_the_budget() {
        let edited = |b: &str, path: &str| {
            let set = crate::gate::body::fields_of(b.as_bytes()).ok()?.set;
            let edits = Edits {
                max_tokens: Some(100),
                ..Edits::default()
            };
            rewrite(b.as_bytes(), Api::of_path(path)?, set, edits)
        };
        let cap = |b: &str, path: &str| {
            edited(b, path).map(|b| serde_json::from_slice::<serde_json::Value>(&b).expect("json"))
        };
        let v = cap(
            r#"{"model":"m","options":{"num_predict":5000,"temperature":1}}"#,
            "/api/chat",
        )
        .expect("capped");
        assert_eq!(v["options"]["num_predict"], 100);
        assert_eq!(v["options"]["temperature"], 1);
        let v = cap(
            r#"{"model":"m","Options":{"NUM_PREDICT":-1}}"#,
            "/api/generate",
        )
        .expect("capped");
        assert_eq!(v["options"], serde_json::json!({"num_predict": 100}));
        let v = cap(r#"{"model":"m"}"#, "/api/generate").expect("capped");
        assert_eq!(v["options"]["num_predict"], 100);
        let v =
            cap(r#"{"model":"m","options":{"num_predict":7}}"#, "/api/chat").expect("canonical");
        assert_eq!(v["options"]["num_predict"], 7, "a smaller limit is kept");
        let v = cap(
            r#"{"model":"m","max_tokens":30000,"Max_Tokens":1}"#,
            "/v1/chat/completions",
        )
        .expect("capped");
        assert_eq!(v["max_tokens"], 100);
        assert!(v.get("Max_Tokens").is_none());
        let v = cap(
            r#"{"model":"m","max_completion_tokens":900}"#,
            "/v1/chat/completions",
        )
        .expect("capped");
        assert_eq!(
            (v["max_tokens"].clone(), v["max_completion_tokens"].clone()),
            (100.into(), 100.into())
        );
        assert_eq!(
            cap(r#"{"model":"m","max_tokens":50}"#, "/v1/completions"),
            None
        );
        assert_eq!(cap(r#"{"model":"m"}"#, "/api/embed"), None);
        assert_eq!(cap("[1]", "/api/chat"), None);
        // The common case is appended, not parsed: the same document.
        let raw = |b: &str, path: &str| edited(b, path).expect("capped");
        assert_eq!(
            &raw(r#"{"model":"m","prompt":"hi"} "#, "/api/generate")[..],
            br#"{"model":"m","prompt":"hi","options":{"num_predict":100}}"#
        );
        assert_eq!(
            &raw("{ }", "/api/chat")[..],
            br#"{"options":{"num_predict":100}}"#
        );
        assert_eq!(
            &raw(r#"{"model":"m","messages":[]}"#, "/v1/chat/completions")[..],
            br#"{"model":"m","messages":[],"max_tokens":100}"#
        );
        // A key spelled with an escape is found all the same.
        let v = cap(r#"{"model":"m","m\u0061x_tokens":9000}"#, "/v1/completions").expect("capped");
        assert_eq!(v["max_tokens"], 100);
    }

    #[test]
    fn pinned_options_replace_the_clients() {
        let pins = Edits {
            max_tokens: None,
            num_ctx: Some(8192),
            keep_alive: Some(1800),
        };
        let edited = |b: &str, path: &str, e: Edits| {
            let set = crate::gate::body::fields_of(b.as_bytes())
                .expect("json")
                .set;
            rewrite(b.as_bytes(), Api::of_path(path).expect("api"), set, e)
        };
        let out = edited(r#"{"model":"m"}"#, "/api/chat", pins).expect("pinned");
        assert_eq!(
            &out[..],
            br#"{"model":"m","options":{"num_ctx":8192},"keep_alive":1800}"#
        );
        let both = Edits {
            max_tokens: Some(5),
            ..pins
        };
        let out = edited(r#"{"model":"m"}"#, "/api/generate", both).expect("pinned");
        assert_eq!(
            &out[..],
            br#"{"model":"m","options":{"num_predict":5,"num_ctx":8192},"keep_alive":1800}"#
        );
        let out = edited(
            r#"{"model":"m","Options":{"NUM_CTX":2048,"seed":1,"num_predict":3},"KEEP_ALIVE":"5m"}"#,
            "/api/chat",
            pins,
        )
        .expect("pinned");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"model":"m","options":{"num_ctx":8192,"seed":1,"num_predict":3},"keep_alive":1800})
        );
        // Embeddings have no generation to cap; OpenAI's routes no pinned options.
        let out = edited(r#"{"model":"m","input":"x"}"#, "/api/embed", both).expect("pinned");
        assert_eq!(
            &out[..],
            br#"{"model":"m","input":"x","options":{"num_ctx":8192},"keep_alive":1800}"#
        );
        assert_eq!(
            edited(r#"{"model":"m"}"#, "/v1/chat/completions", pins),
            None
        );
    }
}
