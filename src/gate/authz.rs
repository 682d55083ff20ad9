//! What an authenticated caller may do: admin-only routes, and the models a request
//! names against the tier's allow-list.

use super::State;
use super::authn::Principal;
use super::error::GateError;
use super::metrics::KindLabel;

/// `Ok` if `p` may use an admin-only route.
pub fn require_admin(p: &Principal) -> Result<(), GateError> {
    if p.admin {
        Ok(())
    } else {
        Err(GateError::AdminOnly(p.tier.clone()))
    }
}

/// `Ok` if every model in `models` is allowed for `p` (always, without an allow-list).
pub fn check_models(state: &State, p: &Principal, models: &[String]) -> Result<(), GateError> {
    let Some(filter) = p.models.as_ref() else {
        return Ok(());
    };
    match models.iter().find(|m| !filter.allows(m)) {
        None => Ok(()),
        Some(m) => {
            state
                .metrics
                .rejections
                .get_or_create(&KindLabel { kind: "model" })
                .inc();
            Err(GateError::ModelNotAllowed {
                model: m.clone(),
                tier: p.tier.clone(),
            })
        }
    }
}
