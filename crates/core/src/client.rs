//! External clients and their magic-link access tokens (SPEC 7): what a client
//! is (a slug, a name, roles and a path scope), how a scope is written and
//! checked, and the link secrets (32 random bytes, base64url; only a SHA-256 is
//! stored).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::routes::{canonical_path, is_role_byte, within_prefixes};
use crate::secret::{Entropy, EntropyError, SecretString, random_id};

/// Prefix of client ids.
pub const CLIENT_ID_PREFIX: &str = "cli-";
/// Prefix of access-token ids (public, listable, revocable).
pub const ACCESS_TOKEN_ID_PREFIX: &str = "act-";
/// Length of a link secret on the wire.
pub const SECRET_LEN: usize = crate::ticket::TICKET_LEN;
/// Slug prefix of clients the operator preview creates.
pub const PREVIEW_SLUG_PREFIX: &str = "preview-";
/// Most path prefixes one scope holds.
pub const MAX_SCOPE_PATHS: usize = 32;

/// The paths a client may reach: one or more directory prefixes (each ending in
/// `/`, in normal form), checked against every reading of a request's canonical
/// path so `%2e%2e`, `;` parameters or double encoding cannot step outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Vec<String>);

impl Scope {
    /// Validates scope paths, reporting every problem.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if paths.is_empty() {
            problems.push("a scope needs at least one path prefix, e.g. /portal/".to_owned());
        }
        if paths.len() > MAX_SCOPE_PATHS {
            problems.push(format!("a scope holds at most {MAX_SCOPE_PATHS} paths"));
        }
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            if let Err(problem) = check_scope_path(path) {
                problems.push(problem);
            } else if !out.iter().any(|p| p == path) {
                out.push(path.to_owned());
            }
        }
        if problems.is_empty() {
            Ok(Self(out))
        } else {
            Err(problems)
        }
    }

    /// A stored scope (newline-separated), trusted as written by [`Scope::stored`].
    pub fn from_stored(stored: &str) -> Self {
        Self(
            stored
                .split('\n')
                .filter(|p| check_scope_path(p).is_ok())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The stored form: the paths, newline-separated.
    pub fn stored(&self) -> String {
        self.0.join("\n")
    }

    pub fn paths(&self) -> &[String] {
        &self.0
    }

    /// Where a link sends its client first.
    pub fn home(&self) -> &str {
        self.0.first().map_or("/", String::as_str)
    }

    /// Whether a canonical request path lies inside the scope under every reading.
    pub fn contains(&self, canonical: &str) -> bool {
        within_prefixes(canonical, &self.0)
    }

    /// Whether a raw path (a `next` target, a request path) lies inside once made
    /// canonical; a path that cannot be made canonical is outside.
    pub fn contains_raw(&self, raw: &str) -> bool {
        let path = raw.split(['?', '#']).next().unwrap_or("");
        match canonical_path(path) {
            Ok(canonical) => self.contains(&canonical),
            Err(_) => false,
        }
    }
}

fn check_scope_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || !path.ends_with('/') {
        return Err(format!(
            "scope path {path:?} must start and end with / (a directory such as /portal/)"
        ));
    }
    if path == "/" {
        return Err("scope path \"/\" would be the whole site; name a directory".to_owned());
    }
    if path.contains(['%', ';', '\\', '?', '#']) || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "scope path {path:?}: write it decoded, without %, ;, \\, ?, # or spaces"
        ));
    }
    if !matches!(canonical_path(path), Ok(Cow::Borrowed(_))) {
        return Err(format!(
            "scope path {path:?} is not in normal form (no . or .. segments, no //)"
        ));
    }
    Ok(())
}

/// Checks a client slug: 1 to 64 of lower-case letters, digits and `-`, starting
/// with a letter or digit (it becomes the session's subject, `X-Forwarded-User`).
pub fn check_slug(slug: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "client slug {slug:?} must be 1 to 64 lower-case letters, digits or -, not starting with -"
        ))
    }
}

/// Checks a client's display name: 1 to 200 characters, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        Err("client name must be 1 to 200 characters without control characters".to_owned())
    } else {
        Ok(())
    }
}

/// Checks role names given to a client.
pub fn check_roles<S: AsRef<str>>(roles: &[S]) -> Result<(), String> {
    for role in roles {
        let role = role.as_ref();
        if role.is_empty() || role.len() > 64 || !role.bytes().all(is_role_byte) {
            return Err(format!(
                "role {role:?} must be 1 to 64 letters, digits or -_.:"
            ));
        }
    }
    Ok(())
}

/// A client as declared (config file, CLI, admin API), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub slug: String,
    pub name: String,
    pub scope: Scope,
    pub roles: Vec<String>,
}

impl ClientSpec {
    /// Validates every field, reporting every problem.
    pub fn new<S: AsRef<str>>(
        slug: &str,
        name: &str,
        scope: &[S],
        roles: &[S],
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(p) = check_slug(slug) {
            problems.push(p);
        }
        if let Err(p) = check_name(name) {
            problems.push(p);
        }
        if let Err(p) = check_roles(roles) {
            problems.push(p);
        }
        let scope = Scope::new(scope).map_err(|p| problems.extend(p)).ok();
        match scope {
            Some(scope) if problems.is_empty() => Ok(Self {
                slug: slug.to_owned(),
                name: name.trim().to_owned(),
                scope,
                roles: roles.iter().map(|r| r.as_ref().to_owned()).collect(),
            }),
            _ => Err(problems),
        }
    }
}

/// A freshly minted access token; the secret is shown once, in the link.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub id: String,
    pub secret: SecretString,
    pub hash: String,
}

/// A link's secret has the form of a WebSocket ticket (32 random bytes,
/// base64url, stored as its SHA-256): one mint and one check serve both.
pub fn mint_access_token(entropy: &dyn Entropy) -> Result<AccessToken, EntropyError> {
    let ticket = crate::ticket::mint(entropy)?;
    Ok(AccessToken {
        id: random_id(entropy, ACCESS_TOKEN_ID_PREFIX)?,
        hash: ticket.hash,
        secret: ticket.secret,
    })
}

/// A new client id.
pub fn new_client_id(entropy: &dyn Entropy) -> Result<String, EntropyError> {
    random_id(entropy, CLIENT_ID_PREFIX)
}

/// The stored form of a presented link secret, or `None` if it cannot be one
/// (wrong length or alphabet): malformed input never reaches the database.
pub fn hash_presented(presented: &str) -> Option<String> {
    crate::ticket::hash_presented(presented)
}

/// The slug of the preview client for `scope`: stable, so repeated previews of
/// one scope find the same client.
pub fn preview_slug(scope: &Scope) -> String {
    let digest = Sha256::digest(scope.stored().as_bytes());
    let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREVIEW_SLUG_PREFIX}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    #[test]
    fn scope_paths_are_validated() {
        let rows: &[(&[&str], bool)] = &[
            (&["/portal/"], true),
            (&["/portal/", "/files/shared/"], true),
            (&[], false),
            (&["/portal"], false),
            (&["portal/"], false),
            (&["/"], false),
            (&["/a/../b/"], false),
            (&["//portal/"], false),
            (&["/por%74al/"], false),
            (&["/portal;x/"], false),
            (&["/por tal/"], false),
            (&["/portal\n/"], false),
        ];
        for (paths, ok) in rows {
            assert_eq!(Scope::new(paths).is_ok(), *ok, "{paths:?}");
        }
    }

    #[test]
    fn scope_holds_every_reading_of_a_path_or_refuses_it() {
        let scope = Scope::new(&["/portal/"]).unwrap();
        let rows: &[(&str, bool)] = &[
            ("/portal/", true),
            ("/portal", true),
            ("/portal/a/b", true),
            ("/portal/..", false),
            ("/portal/../admin", false),
            ("/portal/%2e%2e/admin", false),
            ("/portal/%2E%2E%2Fadmin", false),
            ("/portal/%252e%252e/admin", false),
            ("/portal/..;/admin", false),
            ("/portal%2F..%2Fadmin", false),
            ("/portalx", false),
            ("/PORTAL/", false),
            ("/admin/portal/", false),
            // Merged to /portal/ before the upstream sees it.
            ("//portal/", true),
            ("/portal/..%5cadmin", false),
        ];
        for (path, inside) in rows {
            assert_eq!(scope.contains_raw(path), *inside, "{path}");
        }
    }

    #[test]
    fn slugs_names_and_roles() {
        for (slug, ok) in [
            ("acme", true),
            ("acme-2", true),
            ("", false),
            ("-acme", false),
            ("Acme", false),
            ("a b", false),
            ("a_b", false),
        ] {
            assert_eq!(check_slug(slug).is_ok(), ok, "{slug}");
        }
        assert!(check_name("ACME Corp").is_ok());
        assert!(check_name(" ").is_err());
        assert!(check_name("a\u{7}").is_err());
        assert!(check_roles(&["viewer", "a.b:c"]).is_ok());
        assert!(check_roles(&["a,b"]).is_err());
    }

    #[test]
    fn secrets_hash_consistently_and_malformed_ones_are_refused() {
        let token = mint_access_token(&OsEntropy).unwrap();
        assert_eq!(token.secret.expose().len(), SECRET_LEN);
        assert!(token.id.starts_with(ACCESS_TOKEN_ID_PREFIX));
        assert_eq!(
            hash_presented(token.secret.expose()).as_deref(),
            Some(token.hash.as_str())
        );
        for bad in ["", "x", &"a".repeat(44), &"é".repeat(22), &"a=".repeat(21)] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn preview_slugs_are_stable_and_valid() {
        let a = Scope::new(&["/portal/"]).unwrap();
        let b = Scope::new(&["/other/"]).unwrap();
        assert_eq!(preview_slug(&a), preview_slug(&a));
        assert_ne!(preview_slug(&a), preview_slug(&b));
        assert!(check_slug(&preview_slug(&a)).is_ok());
    }
}
