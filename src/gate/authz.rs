//! What an authenticated caller may do: admin-only routes, and the models a request
//! names against the tier's allow-list.

use super::State;
use super::authn::Principal;
use super::error::GateError;
use super::metrics::KindLabel;
use super::route;

/// `Ok` if `p` may use an admin-only route.
pub fn require_admin(p: &Principal) -> Result<(), GateError> {
    if p.admin {
        Ok(())
    } else {
        Err(GateError::AdminOnly(p.tier.clone()))
    }
}

/// `Ok` if `p` may use a route forwarded as it is (`Route::Proxy`): anyone without a
/// model allow-list; with one, only the routes whose model the gate can check (see
/// [`route::checkable`]); admins always.
pub fn require_checkable(p: &Principal, path: &str) -> Result<(), GateError> {
    if p.admin || p.models.is_none() || route::checkable(path) {
        Ok(())
    } else {
        Err(GateError::Unchecked(p.tier.clone()))
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
