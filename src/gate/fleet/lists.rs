//! The model lists of several hosts as one (`/api/tags`, `/api/ps`, `/v1/models`): each
//! host asked at once, the answers merged and deduplicated by model name. A host that
//! fails to answer is left out; when none answers, the caller gets the error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::host::{Host, model_key};
use super::join_all;
use super::probe::{self, ProbeError};
use crate::gate::metrics::Metrics;
use crate::gate::upstream::Pool;

/// How long a host may take to list its models for a merged list; one that takes
/// longer is left out.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on every host of `hosts` at once, over worker `worker`'s connections,
/// each within [`LIST_TIMEOUT`].
pub async fn fetch_all(
    pool: &Pool,
    metrics: &Metrics,
    hosts: &[Arc<Host>],
    worker: usize,
    path: &'static str,
) -> Vec<Result<Bytes, ProbeError>> {
    join_all(hosts.iter().map(|h| async move {
        tokio::time::timeout(LIST_TIMEOUT, probe::get(pool, metrics, h, worker, path))
            .await
            .unwrap_or(Err(ProbeError::TimedOut(LIST_TIMEOUT)))
    }))
    .await
}

/// The answers of several hosts to `path` as one list: Ollama's `{"models": […]}`
/// (entries keyed by `name`, or `model`) or OpenAI's `{"object": "list", "data": […]}`
/// (keyed by `id`). Of entries naming the same model (as Ollama reads names) the first
/// is kept. `None` when no answer could be read.
pub fn merge(path: &str, answers: &[Bytes]) -> Option<Value> {
    let openai = path.starts_with("/v1/");
    let (list, keys): (&str, &[&str]) = if openai {
        ("data", &["id"])
    } else {
        ("models", &["name", "model"])
    };
    let mut seen = std::collections::HashSet::new();
    let mut merged = Vec::new();
    let mut read = 0;
    for answer in answers {
        let Ok(mut doc) = serde_json::from_slice::<Value>(answer) else {
            continue;
        };
        let Some(entries) = doc.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        read += 1;
        for entry in entries.drain(..) {
            let name = keys
                .iter()
                .find_map(|k| entry.get(*k).and_then(Value::as_str))
                .map(model_key);
            if name.is_none_or(|n| seen.insert(n)) {
                merged.push(entry);
            }
        }
    }
    if read == 0 {
        return None;
    }
    Some(if openai {
        serde_json::json!({ "object": "list", "data": merged })
    } else {
        serde_json::json!({ "models": merged })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_merged_by_model_name() {
        let a = Bytes::from_static(br#"{"models":[{"name":"a:latest"},{"name":"b:latest"}]}"#);
        let b = Bytes::from_static(br#"{"models":[{"name":"A"},{"name":"c:1b"}]}"#);
        let merged = merge("/api/tags", &[a, b, Bytes::from_static(b"oops")]).expect("list");
        let names: Vec<&str> = merged["models"]
            .as_array()
            .expect("models")
            .iter()
            .map(|m| m["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["a:latest", "b:latest", "c:1b"]);
        let x = Bytes::from_static(br#"{"object":"list","data":[{"id":"tiny"}]}"#);
        let y = Bytes::from_static(br#"{"object":"list","data":[{"id":"tiny"},{"id":"m"}]}"#);
        let merged = merge("/v1/models", &[x, y]).expect("list");
        assert_eq!(merged["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(merge("/api/ps", &[Bytes::from_static(b"{}")]), None);
    }
}
