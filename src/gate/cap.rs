//! The generation cap: a request of a caller with a daily token quota may generate at
//! most what is left of it (Ollama's `options.num_predict`, OpenAI's `max_tokens`).

use bytes::Bytes;

use super::body::Set;

/// Which API a generation route speaks, if `path` is one the cap applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/generate`, `/api/chat`: `options.num_predict`.
    Ollama,
    /// `/v1/chat/completions`, `/v1/completions`: `max_tokens`.
    OpenAi,
}

impl Api {
    /// The generation API of `path`, if it is a generation route.
    pub fn of_path(path: &str) -> Option<Api> {
        match path {
            "/api/generate" | "/api/chat" => Some(Api::Ollama),
            "/v1/chat/completions" | "/v1/completions" => Some(Api::OpenAi),
            _ => None,
        }
    }
}

/// The request's generation capped at `remaining` tokens, so that one request cannot
/// overrun the caller's daily budget by more than its prompt: Ollama's
/// `options.num_predict` on `/api/generate` and `/api/chat`, OpenAI's `max_tokens` (and
/// `max_completion_tokens` when given) on `/v1/chat/completions` and `/v1/completions`.
/// A smaller limit the client set is kept. Keys are matched regardless of case and their
/// other spellings dropped, as Go's decoder would take any of them. `set` is what
/// [`super::body::fields_of`] found in `body`, which it read as one JSON object.
/// `None`: the body needs no change (not a JSON object, already within the cap).
pub fn generation(body: &[u8], api: Api, set: Set, remaining: u64) -> Option<Bytes> {
    use serde_json::value::RawValue;
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;
    let ollama = api == Api::Ollama;
    let sets_limit = match api {
        Api::Ollama => set.options,
        Api::OpenAi => set.max_tokens || set.max_completion_tokens,
    };
    if !sets_limit && let Some(appended) = appended(body, ollama, remaining) {
        return Some(appended);
    }
    // Only the top level is parsed; every value stays the text it came as (the
    // messages above all), so the rewrite costs little more than a copy. Of duplicate
    // keys the last is kept, as Go keeps it.
    let mut doc: BTreeMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    let cap = remaining.min(i64::MAX as u64) as i64;
    let spellings = |doc: &BTreeMap<String, &RawValue>, key: &str| -> Vec<String> {
        doc.keys()
            .filter(|k| k.eq_ignore_ascii_case(key))
            .cloned()
            .collect()
    };
    // The value to send for `key` (at most `cap`), given the values of its spellings.
    let limit = |current: Option<i64>| match current {
        // Ollama reads num_predict -1 (or -2) as "no limit".
        Some(n) if n > 0 && n <= cap => n,
        _ => cap,
    };
    let mut set: Vec<(String, String)> = Vec::new();
    if ollama {
        let mut options = Map::new();
        for k in spellings(&doc, "options") {
            if let Some(raw) = doc.remove(&k)
                && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(raw.get())
            {
                options.extend(o);
            }
        }
        let given: Vec<String> = options
            .keys()
            .filter(|k| k.eq_ignore_ascii_case("num_predict"))
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
        options.insert("num_predict".into(), Value::from(limit(current)));
        set.push(("options".into(), Value::Object(options).to_string()));
    } else {
        for (key, always) in [("max_tokens", true), ("max_completion_tokens", false)] {
            let given = spellings(&doc, key);
            let current = given
                .iter()
                .filter_map(|k| doc.get(k))
                .filter_map(|raw| raw.get().parse::<i64>().ok())
                .next_back();
            let n = limit(current);
            if (given.is_empty() && !always)
                || (given.len() == 1 && given[0] == key && current == Some(n))
            {
                continue;
            }
            for k in &given {
                doc.remove(k);
            }
            set.push((key.into(), n.to_string()));
        }
        if set.is_empty() {
            return None;
        }
    }
    let mut out = Vec::with_capacity(body.len() + 32);
    out.push(b'{');
    let fields = doc
        .iter()
        .map(|(k, v)| (k.as_str(), v.get()))
        .chain(set.iter().map(|(k, v)| (k.as_str(), v.as_str())));
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

/// The cap for a body that sets no limit of its own, written without parsing: the field
/// appended before the object's closing brace. `None` when the body does not end its
/// object.
fn appended(body: &[u8], ollama: bool, remaining: u64) -> Option<Bytes> {
    let inner = body.trim_ascii_end().strip_suffix(b"}")?.trim_ascii_end();
    let empty = inner.trim_ascii_start() == b"{";
    let cap = remaining.min(i64::MAX as u64);
    let mut out = Vec::with_capacity(inner.len() + 40);
    out.extend_from_slice(inner);
    if !empty {
        out.push(b',');
    }
    let field: &[u8] = if ollama {
        br#""options":{"num_predict":"#
    } else {
        br#""max_tokens":"#
    };
    out.extend_from_slice(field);
    out.extend_from_slice(itoa::Buffer::new().format(cap).as_bytes());
    out.extend_from_slice(if ollama { b"}}" } else { b"}" });
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_capped_to_the_budget() {
        let edited = |b: &str, path: &str| {
            let set = crate::gate::body::fields_of(b.as_bytes()).ok()?.set;
            generation(b.as_bytes(), Api::of_path(path)?, set, 100)
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
}
