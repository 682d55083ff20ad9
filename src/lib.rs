//! aigate: authentication, tiers, limits and usage accounting in front of a local LLM
//! server. The admin CLI ([`cmd`]) and the proxy ([`gate`]) share [`store`] and [`auth`];
//! neither reaches into the other.

pub mod auth;
pub mod cli;
pub mod cmd;
pub mod gate;
pub mod output;
pub mod store;
pub mod units;
