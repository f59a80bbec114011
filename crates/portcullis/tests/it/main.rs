//! The integration suite: one test binary (it links once). Every test drives a real
//! gateway over real HTTP in front of a real upstream, on SQLite and on the real
//! PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin_api;
mod api_tokens;
mod browser;
mod fastpath;
mod forwarded;
mod harness;
mod internal;
mod login;
mod magic;
mod metrics;
mod oidc;
mod openapi;
mod pipeline;
mod processes;
mod proxies;
mod proxy;
mod relay;
mod resilience;
mod routes;
mod sessions;
mod soak;
mod store_conformance;
mod supervised;
mod websocket;
