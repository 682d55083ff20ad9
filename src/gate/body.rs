//! Request bodies: read whole (bounded, with an idle timeout) when the gate must look
//! at them, guarded by the same timeout when streamed on, and the models a JSON body
//! names, read as Ollama's Go decoder reads them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header;

use super::idle::Idle;
use super::respond::BoxError;

use super::error::{GateError, Stalled};

/// The length a request declares (`Content-Length`), if it declares one.
pub fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads the whole request body, at most `limit` bytes, each frame within `idle` of the
/// one before. A body that comes in one frame, as most do, is kept as it came, without
/// a copy.
pub async fn read(mut body: Incoming, limit: u64, idle: Duration) -> Result<Bytes, GateError> {
    let mut first: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(GateError::BodyStalled(Stalled(idle)));
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(GateError::BodyUnreadable)?.into_data() else {
            continue; // trailers
        };
        let len = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
        if len as u64 > limit {
            return Err(GateError::BodyTooLarge(limit));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// A request body streamed on to the upstream, ended with [`Stalled`] when the client
/// goes silent for longer than `idle` between two frames.
pub struct Guarded {
    inner: Incoming,
    idle: Idle,
}

impl Guarded {
    /// `inner` as the upstream request's body, guarded by the idle timeout `idle`.
    pub fn boxed(inner: Incoming, idle: Duration) -> super::respond::Body {
        if inner.is_end_stream() {
            // No body to wait for (a GET): nothing to guard.
            return inner.map_err(Into::into).boxed();
        }
        Guarded {
            inner,
            idle: Idle::new(idle),
        }
        .boxed()
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.idle.touch();
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.idle.expired(cx) => {
                Poll::Ready(Some(Err(Box::new(Stalled(this.idle.timeout())))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the gate reads of a JSON body's top level, in one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    /// Every model named (`model`, or the older `name`), in order: the last is the one
    /// Ollama uses.
    pub models: Vec<String>,
    /// The top-level keys that the gate may rewrite, by any spelling Go's decoder
    /// takes (case-insensitive, escapes decoded).
    pub set: Set,
}

/// Which rewritable keys a body sets at its top level.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Set {
    pub options: bool,
    pub keep_alive: bool,
    pub max_tokens: bool,
    pub max_completion_tokens: bool,
    /// llama.cpp's own generation limit, read before `max_tokens`.
    pub n_predict: bool,
    /// The Responses API's limit.
    pub max_output_tokens: bool,
}

/// Whether Go's JSON decoder takes `key` for the field `name` (lowercase ASCII): it
/// compares names by simple case folding, so besides ASCII case, the Kelvin sign
/// (U+212A) is a `k` and the long s (U+017F) an `s`.
pub fn go_key_eq(key: &str, name: &str) -> bool {
    // A fold to ASCII shortens a character (U+212A is 3 bytes, U+017F 2), so a key of
    // the name's length can only match in ASCII, and a shorter one never.
    match key.len().cmp(&name.len()) {
        std::cmp::Ordering::Equal => return key.eq_ignore_ascii_case(name),
        std::cmp::Ordering::Less => return false,
        std::cmp::Ordering::Greater if key.is_ascii() => return false,
        std::cmp::Ordering::Greater => {}
    }
    let mut want = name.bytes();
    for c in key.chars() {
        let folded = match c {
            '\u{212A}' => b'k',
            '\u{017F}' => b's',
            c if c.is_ascii() => (c as u8).to_ascii_lowercase(),
            _ => return false,
        };
        if want.next() != Some(folded) {
            return false;
        }
    }
    want.next().is_none()
}

/// The [`Fields`] of a JSON body, read as Ollama will read it: Go's decoder matches
/// keys regardless of case and, of duplicates, keeps the last non-null one, so every
/// model is returned (the last is the one used). A body that is not an object has none
/// (and Ollama refuses it). `Err` when serde cannot read the body as one JSON document
/// (trailing data, bad escapes, deep nesting), which Go may still accept; with an
/// allow-list such a body is refused rather than guessed at.
pub fn fields_of(body: &[u8]) -> Result<Fields, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// What a key is, told apart without copying it.
    #[derive(Clone, Copy)]
    enum Key {
        Model,
        Options,
        KeepAlive,
        MaxTokens,
        MaxCompletionTokens,
        NPredict,
        MaxOutputTokens,
        Other,
    }
    /// The keys the gate reads, by the name Go's decoder matches them to. `name` is the
    /// older spelling of `model` Ollama still accepts (`/api/show`).
    const KEYS: [(&str, Key); 8] = [
        ("model", Key::Model),
        ("name", Key::Model),
        ("options", Key::Options),
        ("keep_alive", Key::KeepAlive),
        ("max_tokens", Key::MaxTokens),
        ("max_completion_tokens", Key::MaxCompletionTokens),
        ("n_predict", Key::NPredict),
        ("max_output_tokens", Key::MaxOutputTokens),
    ];
    struct KeySeed;
    impl<'de> DeserializeSeed<'de> for KeySeed {
        type Value = Key;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for KeySeed {
        type Value = Key;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, k: &str) -> Result<Key, E> {
            let found = KEYS.iter().find(|(name, _)| go_key_eq(k, name));
            Ok(found.map_or(Key::Other, |&(_, key)| key))
        }
    }

    /// A model key's value: the name if it is a string; anything else is skipped.
    struct ModelName;
    impl<'de> Visitor<'de> for ModelName {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    impl<'de> DeserializeSeed<'de> for ModelName {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    struct Top;
    impl<'de> Visitor<'de> for Top {
        type Value = Fields;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
            let mut found = Fields::default();
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let set = &mut found.set;
                let flag = match key {
                    Key::Model => {
                        found.models.extend(map.next_value_seed(ModelName)?);
                        continue;
                    }
                    Key::Options => &mut set.options,
                    Key::KeepAlive => &mut set.keep_alive,
                    Key::MaxTokens => &mut set.max_tokens,
                    Key::MaxCompletionTokens => &mut set.max_completion_tokens,
                    Key::NPredict => &mut set.n_predict,
                    Key::MaxOutputTokens => &mut set.max_output_tokens,
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                };
                *flag = true;
                map.next_value::<IgnoredAny>()?;
            }
            Ok(found)
        }
    }
    // Anything but an object names no model (and Ollama refuses it).
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(Fields::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de.deserialize_map(Top)?;
    de.end()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_read_as_go_reads_them() {
        let m = |b: &str| fields_of(b.as_bytes()).ok().map(|f| f.models);
        assert_eq!(m(r#"{"messages":[]}"#), Some(vec![]));
        assert_eq!(m(""), Some(vec![]));
        assert_eq!(
            m(r#"{"model":"a","Model":"b","model":null,"MODEL":5}"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(m(r#"{"mod\u0065l":"a"}"#), Some(vec!["a".into()]));
        assert_eq!(m(r#"{"model":"a"} {"model":"b"}"#), None);
        // Go turns a lone surrogate into U+FFFD; the model is read all the same.
        assert_eq!(m(r#"{"model":"a","x":"\ud800"}"#), Some(vec!["a".into()]));
        assert_eq!(
            m(&format!(r#"{{"model":"a","x":{}}}"#, "[".repeat(200))),
            None
        );
    }

    #[test]
    fn rewritable_keys_are_found_by_any_spelling() {
        let set = |b: &str| fields_of(b.as_bytes()).expect("json").set;
        assert_eq!(
            set(r#"{"model":"m","messages":[{"options":1}]}"#),
            Set::default()
        );
        let s = set(r#"{"OPTIONS":{},"keep_alive":"5m","max_tok\u0065ns":3}"#);
        assert!(s.options && s.keep_alive && s.max_tokens && !s.max_completion_tokens);
        assert!(set(r#"{"Max_Completion_Tokens":null}"#).max_completion_tokens);
        // Go's folding: the Kelvin sign is a k, the long s an s.
        let s = set(r#"{"max_to\u212Aens":1,"option\u017F":{},"N_Predict":2}"#);
        assert!(s.max_tokens && s.options && s.n_predict);
        assert!(!set(r#"{"max_tökens":1}"#).max_tokens);
    }
}
