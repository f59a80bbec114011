//! Who a request is: the identity a session or credential carries, and what its
//! roles allow.

use serde::Serialize;

/// Role every authenticated identity has unless configured otherwise.
/// What kind of credential a principal id names: a session (`ses-…`), an API token
/// (`tok-…`) or the internal credential (`int-…`). They share one id space so that
/// revocation, the live-connection registry and identity headers treat all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Session,
    ApiToken,
    Internal,
}

impl PrincipalKind {
    pub fn of(id: &str) -> Self {
        if id.starts_with(crate::ticket::API_TOKEN_ID_PREFIX) {
            Self::ApiToken
        } else if id.starts_with(crate::internal::ID_PREFIX) {
            Self::Internal
        } else {
            Self::Session
        }
    }
}

pub const ROLE_USER: &str = "user";
/// Role with every permission.
pub const ROLE_ADMIN: &str = "admin";

/// Where an identity comes from. The built-in providers have reserved names that
/// no OpenID provider may take ([`RESERVED_PROVIDER_IDS`]), so an identity from one
/// can never be mistaken for, or revoked as, one from another (a provider named
/// `basic` could otherwise end local users' sessions by back-channel logout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityProvider {
    /// `AUTH_BASIC_USERS`.
    Basic,
    /// An OpenID provider, by id.
    Oidc(String),
    /// A magic link's client.
    Magic,
    /// An API token's owner.
    ApiToken,
    /// The internal credential.
    Internal,
}

/// Names of the built-in providers; refused as OpenID provider ids.
pub const RESERVED_PROVIDER_IDS: [&str; 4] = ["basic", "magic", "api-token", "server-internal"];

impl IdentityProvider {
    /// The name stored with a session and shown by `/me`.
    pub fn as_str(&self) -> &str {
        match self {
            IdentityProvider::Basic => "basic",
            IdentityProvider::Oidc(id) => id,
            IdentityProvider::Magic => "magic",
            IdentityProvider::ApiToken => "api-token",
            IdentityProvider::Internal => crate::internal::SUBJECT,
        }
    }

    /// Reads a stored name back; only OpenID provider ids are not reserved.
    pub fn from_stored(name: &str) -> Self {
        match name {
            "basic" => IdentityProvider::Basic,
            "magic" => IdentityProvider::Magic,
            "api-token" => IdentityProvider::ApiToken,
            crate::internal::SUBJECT => IdentityProvider::Internal,
            id => IdentityProvider::Oidc(id.to_owned()),
        }
    }

    /// The OpenID provider's id, for an identity that came from one.
    pub fn oidc_id(&self) -> Option<&str> {
        match self {
            IdentityProvider::Oidc(id) => Some(id),
            _ => None,
        }
    }
}

impl std::fmt::Display for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IdentityProvider {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An authenticated principal, as forwarded upstream and shown by `/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Stable subject: the basic username, or the IdP `sub`.
    pub subject: String,
    /// Display name.
    pub name: String,
    pub email: Option<String>,
    pub provider: IdentityProvider,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_permission(&self, permission: Permission) -> bool {
        self.roles.iter().any(|role| role_grants(role, permission))
    }
}

/// Permissions of the admin API (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    SessionList,
    SessionListAll,
    SessionRevoke,
    OidcList,
    OidcCreate,
    OidcEdit,
    OidcDelete,
    AuditRead,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::SessionList => "auth.session.list",
            Permission::SessionListAll => "auth.session.list.all",
            Permission::SessionRevoke => "auth.session.revoke",
            Permission::OidcList => "auth.oidc.list",
            Permission::OidcCreate => "auth.oidc.create",
            Permission::OidcEdit => "auth.oidc.edit",
            Permission::OidcDelete => "auth.oidc.delete",
            Permission::AuditRead => "audit.read",
        }
    }
}

/// Whether `role` grants `permission` (built-in roles).
pub fn role_grants(role: &str, permission: Permission) -> bool {
    match role {
        ROLE_ADMIN => true,
        ROLE_USER => matches!(
            permission,
            Permission::SessionList | Permission::SessionRevoke
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_kinds_by_id() {
        let minted = crate::ticket::mint_api_token(&crate::secret::OsEntropy).map(|t| t.id);
        for (id, kind) in [
            ("ses-abc", PrincipalKind::Session),
            ("tok-abc", PrincipalKind::ApiToken),
            ("int-abc", PrincipalKind::Internal),
        ] {
            assert_eq!(PrincipalKind::of(id), kind, "{id}");
        }
        assert_eq!(
            minted.map(|id| PrincipalKind::of(&id)).ok(),
            Some(PrincipalKind::ApiToken)
        );
    }

    #[test]
    fn provider_names_round_trip_and_reserved_names_are_built_in() {
        for provider in [
            IdentityProvider::Basic,
            IdentityProvider::Magic,
            IdentityProvider::ApiToken,
            IdentityProvider::Internal,
            IdentityProvider::Oidc("corp-sso".into()),
        ] {
            assert_eq!(IdentityProvider::from_stored(provider.as_str()), provider);
        }
        for name in RESERVED_PROVIDER_IDS {
            assert_eq!(
                IdentityProvider::from_stored(name).oidc_id(),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn built_in_roles() {
        let mut who = Identity {
            subject: "a".into(),
            name: "a".into(),
            email: None,
            provider: IdentityProvider::Basic,
            roles: vec![ROLE_USER.into()],
        };
        assert!(who.has_permission(Permission::SessionList));
        assert!(!who.has_permission(Permission::SessionListAll));
        assert!(!who.has_permission(Permission::AuditRead));
        for oidc in [
            Permission::OidcList,
            Permission::OidcCreate,
            Permission::OidcEdit,
            Permission::OidcDelete,
        ] {
            assert!(!who.has_permission(oidc), "{}", oidc.name());
        }
        who.roles = vec![ROLE_ADMIN.into()];
        assert!(who.has_permission(Permission::AuditRead));
        who.roles = vec!["viewer".into()];
        assert!(!who.has_permission(Permission::SessionList));
    }
}
