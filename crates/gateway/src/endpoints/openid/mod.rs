//! The OpenID Connect endpoints (SPEC 5): sign-in and its callback, back-channel
//! logout, and the provider's end-session URL at sign-out. The providers
//! themselves (discovery and key-set caches) are [`crate::oidc`].

mod backchannel;
mod rp_logout;
mod signin;

pub use backchannel::back_channel_logout;
pub use rp_logout::end_session_url;
pub use signin::{callback, login};
