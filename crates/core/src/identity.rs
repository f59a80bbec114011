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

/// An authenticated principal, as forwarded upstream and shown by `/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Stable subject: the basic username, or the IdP `sub`.
    pub subject: String,
    /// Display name.
    pub name: String,
    pub email: Option<String>,
    /// `basic`, an OIDC provider id, `magic`, `api-token` or `server-internal`.
    pub provider: String,
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

fn role_grants(role: &str, permission: Permission) -> bool {
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
    fn built_in_roles() {
        let mut who = Identity {
            subject: "a".into(),
            name: "a".into(),
            email: None,
            provider: "basic".into(),
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
