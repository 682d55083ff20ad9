//! CORS, only for the origins given with `--cors-origin`: a preflight is answered by the
//! gate without credentials, and answers to those origins name them. Without
//! `--cors-origin` no CORS header is added and a preflight is an ordinary request.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::respond::{self, Body};

/// The request's `Origin` if it is one of `allowed`.
pub fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    if allowed.is_empty() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let s = origin.to_str().ok()?;
    allowed.iter().any(|o| o == s).then(|| origin.clone())
}

/// A CORS preflight from an allowed origin, answered without credentials.
pub fn preflight(req: &Request<Incoming>, origin: Option<&HeaderValue>) -> Option<Response<Body>> {
    if req.method() != Method::OPTIONS
        || origin.is_none()
        || !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut r = Response::new(respond::full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Some(r)
}

/// Names `origin` on a response to it.
pub fn allow(resp: &mut Response<Body>, origin: HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}
