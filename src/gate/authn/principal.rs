//! Who a request is from: the [`Principal`] a key or a user resolves to, with the limits
//! and model allow-list of its tier (a key's own overrides first), and whether it may
//! be used now.

use std::collections::HashMap;
use std::sync::Arc;

use super::AuthError;
use crate::auth::jwt::{self, Claims};
use crate::gate::limits::{Budgeted, LimitState, Limits};
use crate::gate::models::ModelFilter;
use crate::gate::queue::Class;
use crate::store::keys::AuthRow;
use crate::store::tiers::Tier;
use crate::store::{now, users};

/// Who is calling, resolved with the limits that apply.
#[derive(Debug)]
pub struct Principal {
    /// The key's id, or `None` for a JWT caller.
    pub key_id: Option<i64>,
    /// The key's display prefix, empty for a JWT caller.
    pub prefix: String,
    /// The owning or logged-in user, if any.
    pub user: Option<String>,
    pub tier: String,
    pub admin: bool,
    pub limits: Limits,
    /// How its requests wait for a slot (its tier's).
    pub class: Class,
    /// The model allow-list; `None`: every model is allowed.
    pub models: Option<ModelFilter>,
    /// When the key stops working (`None`: never).
    pub expires_at: Option<i64>,
    /// Refused: revoked key, or its user is disabled.
    pub refused: bool,
    /// The JWT token version this principal accepts (users only).
    pub token_version: i64,
    /// The fingerprint of the user's password hash its tokens must carry (users only):
    /// a user removed and added again has a new hash, so their old tokens fail.
    pub token_fp: String,
    /// Live counters for the limits; carried over when the entry is refreshed.
    pub state: Arc<LimitState>,
}

impl Budgeted for Principal {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn counters(&self) -> &LimitState {
        &self.state
    }
}

/// How a tier's requests wait for a slot; a tier that vanished never gets this far.
fn class_of(tier: Option<&Tier>) -> Class {
    tier.map_or_else(Class::default, |t| Class {
        priority: t.priority,
        weight: t.weight.max(1),
        max_wait: t.max_wait.map(std::time::Duration::from_secs),
        max_queued: t.max_queued,
    })
}

/// The principal of a key row: the key's overrides over its tier's limits.
pub fn resolve(row: &AuthRow, tiers: &HashMap<String, Tier>, state: Arc<LimitState>) -> Principal {
    let k = &row.key;
    let tier = tiers.get(&k.tier);
    let o = &k.overrides;
    let models = o
        .models
        .clone()
        .or_else(|| tier.map(|t| t.models.clone()))
        .unwrap_or_default();
    Principal {
        key_id: Some(k.id),
        prefix: k.prefix.clone(),
        user: k.user.clone(),
        tier: k.tier.clone(),
        admin: tier.is_some_and(|t| t.admin),
        limits: Limits {
            rpm: o.rpm.or(tier.and_then(|t| t.rpm)),
            concurrency: o.concurrency.or(tier.and_then(|t| t.concurrency)),
            tokens_per_day: o.tokens_per_day.or(tier.and_then(|t| t.tokens_per_day)),
        },
        class: class_of(tier),
        models: ModelFilter::new(&models),
        expires_at: k.expires_at,
        // A key whose tier vanished is refused rather than given unknown limits.
        refused: k.revoked_at.is_some() || row.user_disabled || tier.is_none(),
        token_version: 0,
        token_fp: String::new(),
        state,
    }
}

/// The principal of a logged-in user: the tier's limits.
pub fn resolve_user(
    u: &users::User,
    password_hash: &str,
    tiers: &HashMap<String, Tier>,
    state: Arc<LimitState>,
) -> Principal {
    let tier = tiers.get(&u.tier);
    Principal {
        key_id: None,
        prefix: String::new(),
        user: Some(u.username.clone()),
        tier: u.tier.clone(),
        admin: tier.is_some_and(|t| t.admin),
        limits: Limits {
            rpm: tier.and_then(|t| t.rpm),
            concurrency: tier.and_then(|t| t.concurrency),
            tokens_per_day: tier.and_then(|t| t.tokens_per_day),
        },
        class: class_of(tier),
        models: ModelFilter::new(&tier.map(|t| t.models.clone()).unwrap_or_default()),
        expires_at: None,
        refused: u.disabled || tier.is_none(),
        token_version: u.token_version,
        token_fp: jwt::fingerprint(password_hash),
        state,
    }
}

/// `p` if its key may be used now.
pub fn judge(p: &Arc<Principal>) -> Result<Arc<Principal>, AuthError> {
    if p.refused {
        return Err(AuthError::RevokedKey);
    }
    if p.expires_at.is_some_and(|e| e <= now()) {
        return Err(AuthError::ExpiredKey);
    }
    Ok(p.clone())
}

/// `p` if a token with `claims` is still good for it.
pub fn judge_user(p: &Arc<Principal>, claims: &Claims) -> Result<Arc<Principal>, AuthError> {
    if p.refused || p.token_version != claims.ver || p.token_fp != claims.fp {
        return Err(AuthError::InvalidToken);
    }
    Ok(p.clone())
}
