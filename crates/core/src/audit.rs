//! Audit actions (SPEC 8): one typed name per operation, so a reader of the log
//! (and the audit API's `action` filter) can rely on the set, and no call site
//! can misspell one.

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A password sign-in (success, or the internal reason of the failure).
    Login,
    Logout,
    /// A session ended by someone (a user, an admin, the CLI).
    SessionRevoke,
    ApiTokenCreate,
    ApiTokenRevoke,
    /// A WebSocket ticket refused.
    WsTicket,
    /// A new cookie-signing key.
    KeyRotate,
    InternalCredentialMint,
    InternalCredentialReset,
    /// The internal credential used for a WebSocket, or refused.
    InternalCredentialUse,
    OidcLogin,
    /// A step-up sign-in the provider could not satisfy.
    OidcStepUp,
    OidcBackChannelLogout,
    OidcProviderCreate,
    OidcProviderEdit,
    OidcProviderDelete,
    OidcProviderRefresh,
    OidcMappingAdd,
    OidcMappingRemove,
    /// A call refused for want of a permission (named in the event's reason, so
    /// a refused `auth.session.revoke` never reads as a revocation).
    PermissionDenied,
    ClientCreate,
    ClientDisable,
    ClientEnable,
    /// An operator previewing a scope as its client.
    ClientPreview,
    AccessTokenCreate,
    AccessTokenRevoke,
    /// A magic link followed (success, or the reason it was refused).
    MagicLink,
}

impl AuditAction {
    /// Every action.
    pub const ALL: [AuditAction; 27] = [
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::SessionRevoke,
        AuditAction::ApiTokenCreate,
        AuditAction::ApiTokenRevoke,
        AuditAction::WsTicket,
        AuditAction::KeyRotate,
        AuditAction::InternalCredentialMint,
        AuditAction::InternalCredentialReset,
        AuditAction::InternalCredentialUse,
        AuditAction::OidcLogin,
        AuditAction::OidcStepUp,
        AuditAction::OidcBackChannelLogout,
        AuditAction::OidcProviderCreate,
        AuditAction::OidcProviderEdit,
        AuditAction::OidcProviderDelete,
        AuditAction::OidcProviderRefresh,
        AuditAction::OidcMappingAdd,
        AuditAction::OidcMappingRemove,
        AuditAction::PermissionDenied,
        AuditAction::ClientCreate,
        AuditAction::ClientDisable,
        AuditAction::ClientEnable,
        AuditAction::ClientPreview,
        AuditAction::AccessTokenCreate,
        AuditAction::AccessTokenRevoke,
        AuditAction::MagicLink,
    ];

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Login => "auth.login",
            AuditAction::Logout => "auth.logout",
            AuditAction::SessionRevoke => "auth.session.revoke",
            AuditAction::ApiTokenCreate => "auth.api_token.create",
            AuditAction::ApiTokenRevoke => "auth.api_token.revoke",
            AuditAction::WsTicket => "auth.ws_ticket",
            AuditAction::KeyRotate => "auth.key.rotate",
            AuditAction::InternalCredentialMint => "auth.internal_credential.mint",
            AuditAction::InternalCredentialReset => "auth.internal_credential.reset",
            AuditAction::InternalCredentialUse => "auth.internal_credential",
            AuditAction::OidcLogin => "auth.oidc.login",
            AuditAction::OidcStepUp => "auth.oidc.step_up",
            AuditAction::OidcBackChannelLogout => "auth.oidc.back_channel_logout",
            AuditAction::OidcProviderCreate => "auth.oidc.provider.create",
            AuditAction::OidcProviderEdit => "auth.oidc.provider.edit",
            AuditAction::OidcProviderDelete => "auth.oidc.provider.delete",
            AuditAction::OidcProviderRefresh => "auth.oidc.provider.refresh",
            AuditAction::OidcMappingAdd => "auth.oidc.mapping.add",
            AuditAction::OidcMappingRemove => "auth.oidc.mapping.remove",
            AuditAction::PermissionDenied => "auth.permission.denied",
            AuditAction::ClientCreate => "auth.client.create",
            AuditAction::ClientDisable => "auth.client.disable",
            AuditAction::ClientEnable => "auth.client.enable",
            AuditAction::ClientPreview => "auth.client.preview",
            AuditAction::AccessTokenCreate => "auth.access_token.create",
            AuditAction::AccessTokenRevoke => "auth.access_token.revoke",
            AuditAction::MagicLink => "auth.magic_link",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_per_operation() {
        let mut names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.name()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "two operations share a name");
    }
}
