//! The response body on its way back to the client: each frame passed on as it comes,
//! read by the usage tap, guarded by the idle timeout; the upstream connection returned
//! to the pool when the body ended, and usage recorded once, at the end or when the
//! client leaves.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use super::State;
use super::authn::Principal;
use super::idle::Idle;
use super::limits::{self, Admitted};
use super::queue::Ticket;
use super::respond::BoxError;
use super::tap::{Scanner, Seen};
use super::upstream::Lease;
use crate::store::usage::Counts;

/// What is recorded when a forwarded response ends (or the client leaves).
pub struct Accounting {
    pub state: Arc<State>,
    /// The caller, and its concurrency slot (freed as this drops).
    pub admitted: Admitted<Principal>,
    /// The model the request named, if it was read.
    pub model: Option<String>,
    /// The request body's length, for a prompt the upstream does not count.
    pub request_bytes: u64,
    /// The request's slot on its host, given back (and the next waiting request
    /// dispatched) as this drops, after the caller's concurrency slot.
    pub ticket: Option<Ticket>,
}

/// Bytes of a prompt counted as one token when the upstream reports no counts: about
/// what a tokenizer makes of English text.
const BYTES_PER_TOKEN: u64 = 4;

impl Accounting {
    fn finish(mut self, scanner: Option<Scanner>) {
        let mut seen = Seen::default();
        if let Some(sc) = scanner {
            let (reported, delivered) = (sc.reported(), sc.delivered());
            seen = sc.finish();
            // No count came (an OpenAI stream without `include_usage`, a server that
            // never reports one, a client that left): count what was delivered, one
            // token a chunk, and the prompt by its size.
            if !reported && delivered > 0 {
                seen.completion_tokens = delivered;
                seen.prompt_tokens = self.request_bytes.div_ceil(BYTES_PER_TOKEN);
            }
        }
        if let Some(t) = self.ticket.as_mut() {
            t.tokens = seen.completion_tokens;
        }
        let p = self.admitted.caller();
        let tokens = seen.prompt_tokens + seen.completion_tokens;
        if tokens > 0 {
            limits::add_tokens(&p.state, tokens);
            self.state.counters.tokens(
                &self.state.metrics,
                &p.tier,
                seen.prompt_tokens,
                seen.completion_tokens,
            );
        }
        // Ollama reads `llama3.2` as `llama3.2:latest`; count both under one name.
        let mut model = self.model.or(seen.model).unwrap_or_default();
        if !model.is_empty() && !model.contains(':') {
            model.push_str(":latest");
        }
        self.state.recorder.record(
            p.key_id,
            p.user.as_deref(),
            &model,
            Counts {
                requests: 1,
                prompt_tokens: seen.prompt_tokens,
                completion_tokens: seen.completion_tokens,
            },
        );
        self.state.metrics.streams.dec();
        // The concurrency slot (if any) and then the host's slot are released here, as
        // `self` drops.
    }
}

/// How a streamed response frames its records, so that an error can be written as one
/// more record when the upstream fails mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Ollama's `application/x-ndjson`: a line `{"error": "…"}`, which Ollama's clients
    /// raise as the error.
    Ndjson,
    /// OpenAI's `text/event-stream`: an event `data: {"error": {…}}`, which OpenAI's
    /// SDKs raise.
    Sse,
}

impl Framing {
    /// The framing of a response with these headers, if it is a stream of records.
    pub fn of(headers: &hyper::HeaderMap) -> Option<Framing> {
        let ct = headers.get(hyper::header::CONTENT_TYPE)?.as_bytes();
        let end = memchr::memchr(b';', ct).unwrap_or(ct.len());
        let ct = ct[..end].trim_ascii();
        if ct.eq_ignore_ascii_case(b"application/x-ndjson") {
            Some(Framing::Ndjson)
        } else if ct.eq_ignore_ascii_case(b"text/event-stream") {
            Some(Framing::Sse)
        } else {
            None
        }
    }

    /// `message` as one record of this framing.
    fn error(self, message: &str) -> Bytes {
        let record = match self {
            Framing::Ndjson => serde_json::json!({ "error": message }),
            Framing::Sse => serde_json::json!({
                "error": { "message": message, "type": "server_error", "code": null }
            }),
        };
        let mut out = Vec::new();
        if self == Framing::Sse {
            out.extend_from_slice(b"data: ");
        }
        let _ = serde_json::to_writer(&mut out, &record);
        out.extend_from_slice(if self == Framing::Sse { b"\n\n" } else { b"\n" });
        Bytes::from(out)
    }
}

/// A response body on its way to the client: each frame is passed on as it comes,
/// read by the usage tap, and guarded by the idle timeout. Recording happens once, at
/// the end of the stream or when the client goes away (drop).
pub struct Tapped {
    inner: Incoming,
    scanner: Option<Scanner>,
    /// The upstream's silence between two frames, bounded by `--idle-timeout`.
    idle: Idle,
    /// The upstream connection, returned to the pool when the body has ended; dropped
    /// with the body otherwise, which closes it (Ollama stops generating).
    lease: Option<Lease>,
    accounting: Option<Accounting>,
    /// How to tell the client, in the stream, that it ended early.
    framing: Option<Framing>,
    /// The stream ended after an in-band error record.
    ended: bool,
    /// The last byte passed on ended a line (or none was): an error record needs no
    /// line break before it.
    at_line_start: bool,
    /// The last frame ended an SSE stream (`data: [DONE]`).
    done: bool,
}

impl Tapped {
    /// Wraps `inner`; `scan` says whether to read token counts from it; `framing`,
    /// how to end it with an error record if the upstream fails mid-stream (without
    /// one, the response is cut off).
    pub fn new(
        inner: Incoming,
        scan: bool,
        framing: Option<Framing>,
        lease: Lease,
        accounting: Accounting,
    ) -> Tapped {
        accounting.state.metrics.streams.inc();
        Tapped {
            inner,
            scanner: scan.then(Scanner::default),
            idle: Idle::new(accounting.state.config.idle_timeout),
            lease: Some(lease),
            accounting: Some(accounting),
            framing,
            ended: false,
            at_line_start: true,
            done: false,
        }
    }

    /// The response failed midway with `message`: one error record, then the end, when
    /// the framing allows; else the error, which cuts the response off.
    fn fail(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The final record came (Ollama's counts, OpenAI's usage or `[DONE]`): the
        // answer is whole, and ends as if the host had ended it.
        let whole = self.done || self.scanner.as_ref().is_some_and(Scanner::reported);
        self.finish();
        match self.framing {
            _ if whole => {
                self.ended = true;
                Poll::Ready(None)
            }
            Some(framing) => {
                self.ended = true;
                let record = framing.error(&message);
                let record = if self.at_line_start {
                    record
                } else {
                    // After a cut-off line, the record starts a line of its own.
                    let mut joined = Vec::with_capacity(record.len() + 2);
                    joined.extend_from_slice(if framing == Framing::Sse {
                        b"\n\n"
                    } else {
                        b"\n"
                    });
                    joined.extend_from_slice(&record);
                    Bytes::from(joined)
                };
                Poll::Ready(Some(Ok(Frame::data(record))))
            }
            None => Poll::Ready(Some(Err(message.into()))),
        }
    }

    /// The host's name, for messages.
    fn host(&self) -> String {
        self.accounting
            .as_ref()
            .and_then(|a| a.ticket.as_ref())
            .map_or_else(String::new, |s| format!(" {}", s.host().name))
    }

    /// The body was read to the end: its connection can carry another request.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    fn finish(&mut self) {
        if let Some(a) = self.accounting.take() {
            a.finish(self.scanner.take());
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Tapped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let ended = this.inner.is_end_stream();
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    if this.framing.is_some() {
                        this.at_line_start = data.ends_with(b"\n");
                        this.done = this.framing == Some(Framing::Sse)
                            && data.trim_ascii_end().ends_with(b"data: [DONE]");
                    }
                    if let Some(sc) = this.scanner.as_mut() {
                        if ended {
                            sc.feed_last(data);
                        } else {
                            sc.feed(data);
                        }
                    }
                }
                this.idle.touch();
                // hyper stops polling a body that says it has ended, so the connection
                // goes back to the pool here, not only on the final `None`.
                if ended {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Once per response: the upstream died or reset mid-stream.
                let host = this.host();
                tracing::warn!("host{host} ended a response early: {e}");
                this.fail(format!("aigate: the model host{host} failed mid-response"))
            }
            Poll::Ready(None) => {
                this.release();
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending if this.idle.expired(cx) => {
                let (host, timeout) = (this.host(), this.idle.timeout());
                tracing::warn!("host{host} idle for {timeout:?}, ending the response");
                this.fail(format!(
                    "aigate: the model host{host} sent nothing for {timeout:?}"
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.framing.is_some() {
            // An error record may follow.
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}
