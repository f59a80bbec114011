//! RP-initiated logout: the provider's `end_session_endpoint` for a session that
//! came from it, with the ID token kept (sealed) at sign-in as `id_token_hint`.

use crate::state::Gateway;

use super::signin::form_encode;

/// RP-initiated logout: the provider's `end_session_endpoint` for a session that
/// came from it, with the `id_token_hint` kept server-side at sign-in (taken, so it
/// is used once) and a return to the sign-in page. `None` for other sessions.
pub async fn end_session_url(
    gw: &Gateway,
    auth: &crate::pipeline::Authenticated,
) -> Option<String> {
    let provider = gw.oidc().provider(auth.identity().provider().oidc_id()?)?;
    let id_token = match gw.store().take_session_id_token(auth.session_id()).await {
        Ok(stored) => {
            let opened = gw.oidc().open_id_token(auth.session_id(), &stored?);
            if opened.is_none() {
                tracing::warn!("the kept ID token does not open; logging out without a hint");
            }
            opened?
        }
        Err(error) => {
            tracing::warn!(%error, "could not read the ID token for RP-initiated logout");
            return None;
        }
    };
    let metadata = gw.oidc().metadata(&provider).await.ok()?;
    let endpoint = metadata.end_session_endpoint.as_deref()?;
    let back = format!(
        "{}{}/login",
        gw.config().public_url.origin(),
        gw.config().auth_prefix
    );
    let query = form_encode(&[
        ("id_token_hint", id_token.as_str()),
        ("post_logout_redirect_uri", back.as_str()),
        ("client_id", provider.record.client_id.as_str()),
    ]);
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    Some(format!("{endpoint}{separator}{query}"))
}
