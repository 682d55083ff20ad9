//! `aigate serve`: the authenticating reverse proxy. A request flows one way through
//! these rooms, each one concern:
//!
//! [`server`] (accept, TLS, head deadline) → [`handler`] (the order of the steps) →
//! [`route`] (what the path is) → [`cors`] → [`authn`] (the credential, the verifier
//! and its cache) → [`authz`] (admin routes, the model allow-list, with [`body`] and
//! [`models`]) → [`limits`] → [`forward`] (the host chosen from the [`fleet`], the
//! upstream request over [`upstream`]'s pool, with [`headers`] hygiene and the body's
//! [`rewrite`]: the generation cap, pinned options) → [`stream`] (the
//! response body, read by the usage [`tap`]). Beside the flow: [`login`] and [`admin`]
//! (the gate's own routes), [`failure`] (the record of an auth failure, bounded by
//! [`windows`]), [`throttle`] (login attempts), [`addr`] (the per-address rule),
//! [`recorder`] (the database thread), [`metrics`], and [`error`], the one mapping of
//! every refusal to a status and body.

pub mod addr;
pub mod admin;
pub mod authn;
pub mod authz;
pub mod body;
pub mod config;
pub mod cors;
pub mod error;
pub mod failure;
pub mod fleet;
pub mod forward;
pub mod handler;
pub mod headers;
pub mod idle;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod models;
pub mod queue;
pub mod recorder;
pub mod respond;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod state;
pub mod status;
pub mod stream;
pub mod tap;
pub mod throttle;
pub mod upstream;
pub mod windows;

pub use config::Config;
pub use state::{Shared, State};
pub use upstream::Upstream;
