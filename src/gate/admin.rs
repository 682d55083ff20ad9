//! The admin API (admin tier only): `POST /admin/keys` (201 with the raw key),
//! `GET /admin/keys`, `DELETE /admin/keys/{id}` (204, 404 unknown, 400 not an id) and
//! `POST /admin/keys/{id}/rotate` (201 with the new key). Each change is one write
//! transaction with its audit entry, made off the async runtime.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::authn::Principal;
use super::error::GateError;
use super::respond::{self, Body};
use super::{State, body};
use crate::auth::key;
use crate::store::keys::{self, NewKeyParams};
use crate::store::{OpenMode, Store, StoreError, now};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tier: Option<String>,
    user: Option<String>,
    name: Option<String>,
    /// A duration such as `30d`.
    expires_in: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// A duration such as `7d` (the default).
    grace: Option<String>,
}

enum Action {
    List { all: bool },
    Create(CreateKey),
    Revoke(i64),
    Rotate(i64, Rotate),
}

/// Handles `/admin/…` for an admin principal.
pub async fn handle(
    state: &Arc<State>,
    who: &Principal,
    ip: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, GateError> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.split('/').skip(2).collect(); // after "/admin"
    // Only the canonical spelling names a key: `01`, `+1` and `1/` do not.
    let id_of = |s: &str| {
        s.parse::<i64>()
            .ok()
            .filter(|id| *id > 0 && id.to_string() == s)
            .ok_or_else(|| GateError::BadRequest("Key id must be a positive whole number".into()))
    };
    let action = match (method.clone(), segments.as_slice()) {
        (Method::GET, ["keys"]) => Action::List {
            all: query.split('&').any(|p| p == "all=true" || p == "all=1"),
        },
        (Method::POST, ["keys"]) => {
            Action::Create(json_body::<CreateKey>(req, state.config.body_timeout).await?)
        }
        (Method::DELETE, ["keys", id]) => Action::Revoke(id_of(id)?),
        (Method::POST, ["keys", id, "rotate"]) => {
            let id = id_of(id)?;
            Action::Rotate(
                id,
                json_body::<Rotate>(req, state.config.body_timeout).await?,
            )
        }
        (_, ["keys"]) | (_, ["keys", _]) | (_, ["keys", _, "rotate"]) => {
            return Err(GateError::MethodNotAllowed(None));
        }
        _ => return Err(GateError::NotFound("Not Found".into())),
    };
    let db = state.config.db.clone();
    let by = format!(
        "api:{} ip={ip}",
        who.user
            .clone()
            .unwrap_or_else(|| format!("{}…", who.prefix))
    );
    let verifier = state.verifier.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut store = Store::open(&db, OpenMode::Existing)?;
        let changes = !matches!(action, Action::List { .. });
        let response = run(&mut store, action, &by)?;
        // What this gate changed takes effect before it answers: its cache is re-read
        // now, not when the database thread next notices the commit.
        if changes {
            verifier.refresh(store.conn())?;
        }
        Ok(response)
    })
    .await;
    match result {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(StoreError::NotFound(m))) => Err(GateError::NotFound(m)),
        Ok(Err(StoreError::Invalid(m) | StoreError::Conflict(m))) => Err(GateError::BadRequest(m)),
        Ok(Err(e)) => {
            tracing::error!("admin API: {e}");
            Err(GateError::Unavailable("Database unavailable"))
        }
        Err(_) => Err(GateError::Internal("Internal error")),
    }
}

async fn json_body<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
    idle: std::time::Duration,
) -> Result<T, GateError> {
    let bytes = body::read(req.into_body(), 64 * 1024, idle).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| GateError::BadRequest(format!("Bad JSON body: {e}")))
}

fn duration(s: Option<&str>, default: i64) -> Result<i64, StoreError> {
    match s {
        None => Ok(default),
        Some(s) => crate::units::parse_duration(s)
            .map(|d| d.as_secs() as i64)
            .map_err(StoreError::Invalid),
    }
}

fn run(store: &mut Store, action: Action, by: &str) -> Result<Response<Body>, StoreError> {
    match action {
        Action::List { all } => {
            let list: Vec<_> = keys::list(store.conn(), all)?
                .iter()
                .map(|k| k.shown(None))
                .collect();
            Ok(respond::json(
                StatusCode::OK,
                &serde_json::to_value(list).unwrap_or_default(),
            ))
        }
        Action::Create(c) => {
            let expires_at = match c.expires_in.as_deref() {
                Some(s) => Some(now() + duration(Some(s), 0)?),
                None => None,
            };
            let new =
                key::generate().map_err(|e| StoreError::Invalid(format!("random source: {e}")))?;
            let params = NewKeyParams {
                tier: c.tier,
                user: c.user,
                name: c.name,
                expires_at,
                ..NewKeyParams::default()
            };
            let k = store.write(|tx| keys::create_audited(tx, &new, &params, by))?;
            Ok(respond::json(
                StatusCode::CREATED,
                &serde_json::to_value(k.shown(Some(&new.key))).unwrap_or_default(),
            ))
        }
        Action::Revoke(id) => {
            store.write(|tx| keys::revoke_audited(tx, id, by))?;
            let mut r = Response::new(respond::full(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        Action::Rotate(id, r) => {
            let grace = duration(r.grace.as_deref(), 7 * 86_400)?;
            let new =
                key::generate().map_err(|e| StoreError::Invalid(format!("random source: {e}")))?;
            let (fresh, _) = store.write(|tx| keys::rotate_audited(tx, id, &new, grace, by))?;
            Ok(respond::json(
                StatusCode::CREATED,
                &serde_json::to_value(fresh.shown(Some(&new.key))).unwrap_or_default(),
            ))
        }
    }
}
