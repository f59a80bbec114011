//! The Portcullis HTTP server: the login surface under the auth prefix, the one
//! authentication phase every request goes through, and the streaming reverse proxy
//! for everything else.
//!
//! Entry points: [`Gateway::start`] builds the shared state from a validated
//! [`GatewayConfig`] and a [`portcullis_store::Store`]; [`serve`] runs it on a
//! listener until a shutdown future resolves, so tests bind `127.0.0.1:0`.
#![forbid(unsafe_code)]

mod admin;
pub mod admission;
mod audit_window;
mod body;
mod carrier;
pub mod clients;
pub mod config;
mod cookies;
mod endpoints;
mod error;
mod events;
mod expiring;
mod fastpath;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod identity;
mod internal;
mod keyring;
pub mod live;
pub mod metrics;
pub mod oidc;
pub mod openapi;
mod pages;
mod pipeline;
mod proxy;
mod request_id;
mod server;
pub mod session_cache;
mod state;
mod throttle;
mod upstream;
pub mod users;
mod ws;
mod ws_frames;

pub use config::{GatewayConfig, OidcProviderSpec, PublicUrl, SameSite, Upstream, WsReject};
pub use internal::reset_deployment_credential;
pub use server::{bind_per_core, router, serve, serve_per_core};
pub use state::{Gateway, StartError};
