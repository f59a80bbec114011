//! Portcullis domain logic: who a request is, what a session is, how signed cookies
//! and secrets are represented and checked.
//!
//! This crate performs no I/O and knows nothing about HTTP servers or databases: every
//! function here is pure or depends only on the injected [`clock::Clock`] and
//! [`secret::Entropy`], so the rules can be tested exhaustively and reused by the
//! store, the gateway and the CLI alike.
#![forbid(unsafe_code)]

pub mod audit;
pub mod basic;
pub mod client;
pub mod clock;
pub mod cookie;
pub mod forwarded;
pub mod identity;
pub mod internal;
pub mod keys;
pub mod metrics;
pub mod oidc;
pub mod redirect;
pub mod routes;
pub mod secret;
pub mod session;
pub mod subprotocol;
pub mod ticket;
