//! Who a request is: the identity a session or credential carries, and what its
//! roles allow.

use serde::Serialize;

/// Role every authenticated identity has unless configured otherwise.
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
