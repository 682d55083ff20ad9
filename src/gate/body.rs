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

/// Every model a JSON body names at its top level, read as Ollama will read it: Go's
/// decoder matches keys regardless of case and, of duplicates, keeps the last non-null
/// one, so each is returned (the last is the one used). `Err` when serde cannot read the
/// body as one JSON document (trailing data, bad escapes, deep nesting), which Go may
/// still accept; with an allow-list such a body is refused rather than guessed at.
pub fn models_of(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// A key, told apart without copying it: is it one that names the model?
    struct ModelKey;
    impl<'de> DeserializeSeed<'de> for ModelKey {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for ModelKey {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, k: &str) -> Result<bool, E> {
            // `name` is the older spelling Ollama still accepts (`/api/show`).
            Ok(k.eq_ignore_ascii_case("model") || k.eq_ignore_ascii_case("name"))
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

    struct Models;
    impl<'de> Visitor<'de> for Models {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut found = Vec::new();
            while let Some(is_model) = map.next_key_seed(ModelKey)? {
                if is_model {
                    found.extend(map.next_value_seed(ModelName)?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    // Anything but an object names no model (and Ollama refuses it).
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(Vec::new());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de.deserialize_map(Models)?;
    de.end()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_read_as_go_reads_them() {
        let m = |b: &str| models_of(b.as_bytes()).ok();
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
}
