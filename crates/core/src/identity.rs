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

    /// Whether a stored provider name is an OpenID provider's id (not a built-in
    /// provider's name); no allocation, for the per-request path.
    pub fn is_oidc_name(name: &str) -> bool {
        !RESERVED_PROVIDER_IDS.contains(&name)
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
}

/// Permissions of the admin API (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// One's own sessions and API tokens.
    SessionList,
    /// Everyone's sessions.
    SessionListAll,
    /// End one's own sessions; with [`Permission::SessionListAll`], anyone's.
    SessionRevoke,
    OidcList,
    OidcCreate,
    OidcEdit,
    OidcDelete,
    TokenList,
    TokenCreate,
    TokenRevoke,
    AuditRead,
    /// External clients (magic links).
    ClientList,
    ClientCreate,
    /// Disable or enable a client.
    ClientEdit,
}

impl Permission {
    /// Every permission, in the order the documentation lists them.
    pub const ALL: [Permission; 14] = [
        Permission::SessionList,
        Permission::SessionListAll,
        Permission::SessionRevoke,
        Permission::OidcList,
        Permission::OidcCreate,
        Permission::OidcEdit,
        Permission::OidcDelete,
        Permission::TokenList,
        Permission::TokenCreate,
        Permission::TokenRevoke,
        Permission::AuditRead,
        Permission::ClientList,
        Permission::ClientCreate,
        Permission::ClientEdit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::SessionList => "auth.session.list",
            Permission::SessionListAll => "auth.session.list.all",
            Permission::SessionRevoke => "auth.session.revoke",
            Permission::OidcList => "auth.oidc.list",
            Permission::OidcCreate => "auth.oidc.create",
            Permission::OidcEdit => "auth.oidc.edit",
            Permission::OidcDelete => "auth.oidc.delete",
            Permission::TokenList => "auth.token.list",
            Permission::TokenCreate => "auth.token.create",
            Permission::TokenRevoke => "auth.token.revoke",
            Permission::AuditRead => "audit.read",
            Permission::ClientList => "auth.client.list",
            Permission::ClientCreate => "auth.client.create",
            Permission::ClientEdit => "auth.client.edit",
        }
    }

    /// Reads a permission name back.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Whether a built-in role grants `permission`: `admin` everything, `user` its own
/// sessions.
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

/// Roles to permissions: the built-in grants plus those configured (`[roles]` in
/// the config file), which only ever add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePermissions {
    extra: std::collections::BTreeMap<String, Vec<Permission>>,
}

impl RolePermissions {
    /// Parses `role = ["permission", …]` entries, reporting every unknown name.
    pub fn from_config<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<Self, Vec<String>> {
        let mut extra = std::collections::BTreeMap::new();
        let mut problems = Vec::new();
        for (role, names) in entries {
            if role.is_empty() || !role.bytes().all(crate::routes::is_role_byte) {
                problems.push(format!("roles: {role:?} is not a role name"));
            }
            let mut granted = Vec::new();
            for name in names {
                match Permission::from_name(name) {
                    Some(p) => granted.push(p),
                    None => problems.push(format!(
                        "roles.{role}: unknown permission {name:?}; known: {}",
                        Permission::ALL.map(Permission::name).join(", ")
                    )),
                }
            }
            extra.insert(role.to_owned(), granted);
        }
        if problems.is_empty() {
            Ok(Self { extra })
        } else {
            Err(problems)
        }
    }

    /// Whether `role` grants `permission`.
    pub fn grants(&self, role: &str, permission: Permission) -> bool {
        role_grants(role, permission)
            || self
                .extra
                .get(role)
                .is_some_and(|granted| granted.contains(&permission))
    }

    /// Whether any of `roles` grants `permission`.
    pub fn any_grants<'r>(
        &self,
        roles: impl IntoIterator<Item = &'r str>,
        permission: Permission,
    ) -> bool {
        roles.into_iter().any(|role| self.grants(role, permission))
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
        let map = RolePermissions::default();
        let user = [ROLE_USER];
        assert!(map.any_grants(user, Permission::SessionList));
        assert!(map.any_grants(user, Permission::SessionRevoke));
        for denied in Permission::ALL
            .into_iter()
            .filter(|p| !matches!(p, Permission::SessionList | Permission::SessionRevoke))
        {
            assert!(!map.any_grants(user, denied), "{}", denied.name());
        }
        for p in Permission::ALL {
            assert!(map.any_grants([ROLE_ADMIN], p), "{}", p.name());
            assert!(!map.any_grants(["viewer"], p), "{}", p.name());
            assert_eq!(Permission::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn configured_roles_add_permissions() {
        let support = vec!["auth.session.list.all".to_owned(), "audit.read".to_owned()];
        let map = RolePermissions::from_config([("support", support.as_slice())])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(map.any_grants(["support"], Permission::SessionListAll));
        assert!(map.any_grants(["support"], Permission::AuditRead));
        assert!(!map.any_grants(["support"], Permission::TokenCreate));
        // Built-in grants stay.
        assert!(map.any_grants(["x", ROLE_USER], Permission::SessionList));
        for (role, names, needle) in [
            (
                "ops",
                vec!["auth.session.lst".to_owned()],
                "unknown permission",
            ),
            ("bad role", vec![], "not a role name"),
        ] {
            let problems = RolePermissions::from_config([(role, names.as_slice())])
                .err()
                .unwrap_or_default();
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{role}: {problems:?}"
            );
        }
    }
}
