//! What the gate writes into a request body: the generation cap of a caller with a
//! daily token quota (Ollama's `options.num_predict`, OpenAI's `max_tokens`), so that a
//! request cannot generate past what is left, and the options the operator pinned for
//! a model (`options.num_ctx`, `keep_alive`), so that clients cannot make a host reload
//! it.

use bytes::Bytes;

use serde_json::value::RawValue;

use super::body::{Set, go_key_eq};

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
    /// `/v1/responses`: `max_output_tokens`.
    Responses,
}

impl Api {
    /// The API of `path`, if the gate writes into its bodies.
    pub fn of_path(path: &str) -> Option<Api> {
        match path {
            "/api/generate" | "/api/chat" => Some(Api::Generate),
            "/api/embed" | "/api/embeddings" => Some(Api::Embed),
            "/v1/chat/completions" | "/v1/completions" => Some(Api::OpenAi),
            "/v1/responses" => Some(Api::Responses),
            _ => None,
        }
    }

    /// Whether the route takes pinned options (Ollama's own API).
    pub fn takes_pins(self) -> bool {
        matches!(self, Api::Generate | Api::Embed)
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
            Api::OpenAi | Api::Responses => Edits {
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
    use serde_json::{Map, Value};
    let edits = edits.for_api(api);
    if edits.is_empty() {
        return None;
    }
    let ollama = matches!(api, Api::Generate | Api::Embed);
    let touches_options = edits.max_tokens.is_some() || edits.num_ctx.is_some();
    let conflicts = match api {
        Api::Generate | Api::Embed => {
            (touches_options && set.options) || (edits.keep_alive.is_some() && set.keep_alive)
        }
        Api::OpenAi => set.max_tokens || set.max_completion_tokens || set.n_predict,
        Api::Responses => set.max_output_tokens,
    };
    if !conflicts && let Some(appended) = appended(body, api, edits) {
        return Some(appended);
    }
    // Only the top level is parsed, in order and with its duplicates; every value
    // stays the text it came as (the messages above all), so the rewrite costs little
    // more than a copy.
    let mut doc = top_level(body)?;
    let cap = edits.max_tokens.map(|n| n.min(i64::MAX as u64) as i64);
    // The values of every spelling of `key` Go's decoder takes, in order; removed.
    let take = |doc: &mut Vec<(String, &RawValue)>, key: &str| -> Vec<String> {
        let mut taken = Vec::new();
        doc.retain(|(k, v)| {
            let hit = go_key_eq(k, key);
            if hit {
                taken.push(v.get().to_string());
            }
            !hit
        });
        taken
    };
    // The value to send for a limit (at most `cap`), given the client's.
    let limit = |cap: i64, current: Option<i64>| match current {
        // Ollama reads num_predict -1 (or -2) as "no limit".
        Some(n) if n > 0 && n <= cap => n,
        _ => cap,
    };
    let mut written: Vec<(&str, String)> = Vec::new();
    if ollama {
        if touches_options {
            // Go decodes each spelling into the same map, later keys over earlier.
            let mut options = Map::new();
            for raw in take(&mut doc, "options") {
                if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&raw) {
                    options.extend(o);
                }
            }
            // Ollama reads options by their exact names; other spellings it ignores,
            // and so does the gate.
            if let Some(cap) = cap {
                let asked = options.get("num_predict").and_then(Value::as_i64);
                options.insert("num_predict".into(), Value::from(limit(cap, asked)));
            }
            if let Some(n) = edits.num_ctx {
                options.insert("num_ctx".into(), Value::from(n));
            }
            written.push(("options", Value::Object(options).to_string()));
        }
        if let Some(secs) = edits.keep_alive {
            take(&mut doc, "keep_alive");
            written.push(("keep_alive", secs.to_string()));
        }
    } else if let Some(cap) = cap {
        let mut changed = false;
        // `n_predict` is llama.cpp's own name, which it reads before `max_tokens`.
        let keys: &[(&str, bool)] = if api == Api::Responses {
            &[("max_output_tokens", true)]
        } else {
            &[
                ("max_tokens", true),
                ("max_completion_tokens", false),
                ("n_predict", false),
            ]
        };
        for &(key, always) in keys {
            let spellings: Vec<&str> = doc
                .iter()
                .filter(|(k, _)| go_key_eq(k, key))
                .map(|(k, _)| k.as_str())
                .collect();
            let exact_one = spellings == [key];
            let given = take(&mut doc, key);
            // Go keeps the last value it reads.
            let current = given
                .iter()
                .filter_map(|v| v.parse::<i64>().ok())
                .next_back();
            if given.is_empty() && !always {
                continue;
            }
            let n = limit(cap, current);
            changed |= !(exact_one && current == Some(n));
            written.push((key, n.to_string()));
        }
        if !changed {
            // Every limit is already within the cap, spelled once and exactly.
            return None;
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
        .chain(written.iter().map(|(k, v)| (*k, v.as_str())));
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

/// The top level of a JSON object: its keys (unescaped) and raw values, in order, with
/// duplicates.
fn top_level(body: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                pairs.push(entry);
            }
            Ok(pairs)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let pairs = de.deserialize_map(Pairs).ok()?;
    de.end().ok()?;
    Some(pairs)
}

/// The edits for a body that sets none of the keys they write, made without parsing:
/// the fields appended before the object's closing brace. `None` when the body does not
/// end its object.
fn appended(body: &[u8], api: Api, edits: Edits) -> Option<Bytes> {
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
    if let Api::OpenAi | Api::Responses = api {
        let cap = edits.max_tokens?.min(i64::MAX as u64);
        field(
            &mut out,
            if api == Api::Responses {
                br#""max_output_tokens":"#
            } else {
                br#""max_tokens":"#
            },
        );
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
        // Inside `options` Ollama reads exact names only: other spellings stay, unread.
        assert_eq!(
            v["options"],
            serde_json::json!({"NUM_PREDICT": -1, "num_predict": 100})
        );
        // Spellings of `options` merge in order, later keys over earlier, as in Go.
        let v = cap(
            r#"{"model":"m","options":{"seed":1,"num_predict":9},"Option\u017F":{"seed":2}}"#,
            "/api/chat",
        )
        .expect("capped");
        assert_eq!(
            v["options"],
            serde_json::json!({"seed": 2, "num_predict": 9})
        );
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
        // Go keeps the last value it reads: 1, within the cap, written once.
        assert_eq!(v["max_tokens"], 1);
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
        assert_eq!(
            &raw(r#"{"model":"m","input":"hi"}"#, "/v1/responses")[..],
            br#"{"model":"m","input":"hi","max_output_tokens":100}"#
        );
        let v = cap(r#"{"model":"m","max_output_tokens":5000}"#, "/v1/responses").expect("capped");
        assert_eq!(v["max_output_tokens"], 100);
        // llama.cpp's `n_predict` is capped too; a Kelvin-sign spelling is Go's `k`.
        let v = cap(
            r#"{"model":"m","n_predict":-1,"max_tokens":1,"max_to\u212Aens":900}"#,
            "/v1/chat/completions",
        )
        .expect("capped");
        assert_eq!(
            (v["n_predict"].clone(), v["max_tokens"].clone()),
            (100.into(), 100.into())
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
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
            serde_json::json!({"model":"m","options":{"NUM_CTX":2048,"num_ctx":8192,"seed":1,"num_predict":3},"keep_alive":1800})
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
