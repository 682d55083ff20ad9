//! The prober: every `--probe-interval`, each host is asked for its models (Ollama:
//! `/api/tags` and `/api/ps`; an OpenAI-compatible host: `/v1/models`, all of them
//! loaded). An answer marks it up; failures mark it down ([`super::host::DOWN_AFTER`]).
//! A down host gets no requests, so it costs at most one connect timeout per interval
//! (the circuit breaker); the first answer brings it back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::host::{Host, Kind, Models, model_key};
use super::{Fleet, join_all};
use crate::gate::metrics::Metrics;
use crate::gate::upstream::{Pool, UpstreamError};

/// The probes' `User-Agent`, so that a host's log tells them from clients.
const PROBE_AGENT: &str = concat!("aigate/", env!("CARGO_PKG_VERSION"), " (probe)");

/// The largest model list read from a host.
const MAX_LIST: usize = 16 << 20;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0} answered {1}")]
    Status(&'static str, StatusCode),
    #[error("{0}: the answer could not be read")]
    Unreadable(&'static str),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Probes every host of `fleet` each `interval`, the first round at once, until the
/// task is dropped. A host that does not answer its first probe is said so in the log
/// (a gate in front of nothing otherwise looks healthy until the first 502).
pub async fn run(fleet: Arc<Fleet>, pool: Arc<Pool>, interval: Duration) {
    // The probes' own latencies are not the requests'.
    let metrics = Arc::new(Metrics::default());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        let snapshot = fleet.snapshot();
        let round = snapshot
            .hosts
            .iter()
            .map(|h| probe(&pool, &metrics, h, interval));
        let results = join_all(round).await;
        if first {
            first = false;
            for (host, result) in snapshot.hosts.iter().zip(results) {
                if let Err(e) = result {
                    tracing::warn!(
                        "host {} (http://{}) did not answer its first probe: {e}",
                        host.name,
                        host.upstream.authority
                    );
                }
            }
        }
    }
}

/// The longest a probe may take, whatever the interval: a host that hangs must not
/// hold up the next round of the others for long.
const MAX_PROBE: Duration = Duration::from_secs(10);

/// Probes `host` within `limit` (between a second and [`MAX_PROBE`]); records and
/// returns the outcome.
async fn probe(pool: &Pool, metrics: &Metrics, host: &Host, limit: Duration) -> Result<(), String> {
    let limit = limit.clamp(Duration::from_secs(1), MAX_PROBE);
    let result = tokio::time::timeout(limit, models(pool, metrics, host))
        .await
        .unwrap_or(Err(ProbeError::TimedOut(limit)));
    let failed = result.as_ref().err().map(ToString::to_string);
    observe(host, result);
    failed.map_or(Ok(()), Err)
}

/// Records one probe's outcome on `host`, logging a change of health. A host that
/// answers HTTP without a server error is up, even when its model list cannot be read
/// (which then stays as it was).
pub fn observe(host: &Host, result: Result<Models, ProbeError>) {
    let failure = match result {
        Ok(found) => {
            let loads = host.set_models(found);
            host.metrics.loads.inc_by(loads);
            None
        }
        // A server error (a proxy in front of a dead Ollama, say) is a failure; any
        // other answer means the host is there.
        Err(ProbeError::Status(path, status)) if status.is_server_error() => {
            Some(ProbeError::Status(path, status))
        }
        Err(e @ (ProbeError::Status(..) | ProbeError::Unreadable(_))) => {
            tracing::debug!("host {}: {e}", host.name);
            None
        }
        Err(e) => Some(e),
    };
    match failure {
        None => {
            if host.succeeded() {
                tracing::info!("host {} is up again", host.name);
            }
        }
        Some(e) => {
            let refused = matches!(&e, ProbeError::Upstream(u) if u.refused());
            if host.failed(refused) {
                tracing::warn!("host {} is down: {e}", host.name);
            }
        }
    }
}

/// What `host` serves now.
async fn models(pool: &Pool, metrics: &Metrics, host: &Host) -> Result<Models, ProbeError> {
    match host.kind {
        Kind::Ollama => {
            let installed = names(pool, metrics, host, "/api/tags").await?;
            let loaded = names(pool, metrics, host, "/api/ps").await?;
            Ok(Models {
                installed: installed.iter().map(|n| model_key(n)).collect(),
                loaded: loaded.iter().map(|n| model_key(n)).collect(),
                loaded_names: loaded,
            })
        }
        Kind::Openai => {
            let served = names(pool, metrics, host, "/v1/models").await?;
            let keys: Vec<String> = served.iter().map(|n| model_key(n)).collect();
            Ok(Models {
                installed: keys.clone(),
                loaded: keys,
                loaded_names: served,
            })
        }
    }
}

/// The model names of one list: Ollama's `{"models":[{"name"|"model"}]}` or OpenAI's
/// `{"data":[{"id"}]}`.
pub fn list_names(body: &[u8]) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Entry {
        name: Option<String>,
        model: Option<String>,
        id: Option<String>,
    }
    #[derive(Deserialize)]
    struct List {
        models: Option<Vec<Entry>>,
        data: Option<Vec<Entry>>,
    }
    let list: List = serde_json::from_slice(body).ok()?;
    let entries = list.models.or(list.data)?;
    Some(
        entries
            .into_iter()
            .filter_map(|e| e.name.or(e.model).or(e.id))
            .collect(),
    )
}

async fn names(
    pool: &Pool,
    metrics: &Metrics,
    host: &Host,
    path: &'static str,
) -> Result<Vec<String>, ProbeError> {
    let body = get(pool, metrics, host, host.prober(), path).await?;
    list_names(&body).ok_or(ProbeError::Unreadable(path))
}

/// `GET path` on `host` over the idle connections of worker `worker`, its body read
/// whole (at most [`MAX_LIST`]).
pub async fn get(
    pool: &Pool,
    metrics: &Metrics,
    host: &Host,
    worker: usize,
    path: &'static str,
) -> Result<Bytes, ProbeError> {
    let mut req = Request::new(crate::gate::respond::Body::new(
        Empty::<Bytes>::new().map_err(|never| match never {}),
    ));
    *req.uri_mut() = hyper::Uri::from_static(path);
    req.headers_mut().insert(HOST, host.upstream.host.clone());
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static(PROBE_AGENT));
    let idle = host.idle(worker);
    let (resp, lease) = pool.send(metrics, &host.upstream, idle, req).await?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_LIST)
        .collect()
        .await
        .map_err(|_| ProbeError::Unreadable(path))?
        .to_bytes();
    lease.release();
    if !status.is_success() {
        return Err(ProbeError::Status(path, status));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_both_list_shapes() {
        let ollama = br#"{"models":[{"name":"a:latest","model":"a:latest"},{"model":"b"}]}"#;
        assert_eq!(
            list_names(ollama),
            Some(vec!["a:latest".into(), "b".into()])
        );
        let openai = br#"{"object":"list","data":[{"id":"tiny","object":"model"}]}"#;
        assert_eq!(list_names(openai), Some(vec!["tiny".into()]));
        assert_eq!(list_names(b"[]"), None);
        assert_eq!(list_names(br#"{"error":"x"}"#), None);
    }
}
