//! The one record of a failed authentication or login: a stable log line (for
//! fail2ban: `auth_failure ip=<HOST> …`), the metric, and an audit entry queued for the
//! database thread.

use std::net::IpAddr;

use hyper::Method;

use super::State;
use super::metrics::ReasonLabel;
use crate::store::audit;

/// Records one failure. `key_prefix` is the display prefix of a key-shaped credential,
/// never the credential.
pub fn record(
    state: &State,
    ip: IpAddr,
    reason: &'static str,
    key_prefix: Option<String>,
    user: Option<String>,
    method: &Method,
    path: &str,
) {
    tracing::warn!(
        "auth_failure ip={ip} reason={reason} key={} method={method} path={path}",
        key_prefix.as_deref().unwrap_or("-"),
    );
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let queued = state.recorder.audit(audit::Entry {
        at: crate::store::now(),
        kind: "auth_failure".into(),
        ip: Some(ip.to_string()),
        reason: Some(reason.into()),
        key_prefix,
        user,
        detail: Some(format!("{method} {path}")),
    });
    if !queued {
        state.metrics.audit_dropped.inc();
    }
}
