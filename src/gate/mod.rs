//! `aigate serve`: the authenticating reverse proxy.
