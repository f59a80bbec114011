//! Route rules (SPEC 8): which requests for the upstream need which identity.
//!
//! An ordered list of rules `{path_prefix, host, methods, allow}`; the first rule
//! that matches decides, and a request no rule matches needs any authenticated
//! identity. Rules are decided on the path **as the upstream receives it**: the
//! gateway forwards the [`canonical_path`] (unreserved characters decoded, dot
//! segments resolved, repeated slashes merged), so `/%2e%2e/admin`, `/x/../admin`
//! and `//admin` are `/admin` to the rule and to the upstream alike.
//!
//! Upstreams read a path further in ways the gateway cannot know: a framework
//! decodes `%2F` into `/`, a servlet container drops `;jsessionid=…` parameters,
//! a Windows file system ignores trailing dots and letter case, a method-override
//! header turns a `POST` into a `DELETE`. So a request is decided under **every**
//! such reading ([`RouteRules::decide`]) and must satisfy the rule each reading
//! matches: no spelling of a path slips past a rule and still reaches the resource
//! the rule protects.

use std::borrow::Cow;

use crate::session::Assurance;

/// What a principal must still prove to pass (step-up, SPEC 8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp<'a> {
    /// `acr_values` to ask the provider for; empty when only methods are missing.
    pub acr_values: Vec<&'a str>,
    /// `amr` methods the session lacks.
    pub amr: Vec<&'a str>,
}

/// Who may pass a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Anyone: proxied without a credential and without identity headers.
    Anonymous,
    /// Any signed-in identity.
    Authenticated,
    /// A signed-in identity holding at least one of these roles.
    Roles(Vec<String>),
}

/// One route rule, validated by [`RouteRule::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    path_prefix: String,
    /// The prefix in lower case, for readings that fold case.
    folded_prefix: String,
    /// Lower case, no port, no trailing dot.
    host: Option<String>,
    /// Upper case.
    methods: Option<Vec<String>>,
    allow: Allow,
    /// OpenID sessions must have been authenticated with one of these `acr`.
    require_acr: Vec<String>,
    /// OpenID sessions must have been authenticated with all these `amr`.
    require_amr: Vec<String>,
}

/// A rule's fields as written in configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    pub path_prefix: String,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Role names, or exactly `["anonymous"]` or `["authenticated"]`.
    pub allow: Vec<String>,
    /// Step-up: any one of these ID-token `acr` values.
    pub require_acr: Vec<String>,
    /// Step-up: all of these ID-token `amr` values (RFC 8176: `mfa`, `hwk`, …).
    pub require_amr: Vec<String>,
}

/// `allow` values that are not role names.
pub const ALLOW_ANONYMOUS: &str = "anonymous";
pub const ALLOW_AUTHENTICATED: &str = "authenticated";

impl RouteRule {
    /// Validates a rule, reporting every problem.
    pub fn new(spec: &RouteSpec) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let prefix = spec.path_prefix.as_str();
        if !prefix.starts_with('/') {
            problems.push(format!("path_prefix {prefix:?} must start with /"));
        } else if prefix.contains(['%', ';', '\\', '?', '#']) || prefix.bytes().any(|b| b <= b' ') {
            problems.push(format!(
                "path_prefix {prefix:?}: write it decoded, without %, ;, \\, ?, # or spaces"
            ));
        } else if !matches!(canonical_path(prefix), Ok(Cow::Borrowed(_))) {
            problems.push(format!(
                "path_prefix {prefix:?} is not in normal form (no . or .. segments, no //): \
                 requests are matched after normalisation, so it would never match"
            ));
        }
        let host = spec.host.as_deref().map(normalize_host);
        if let Some(host) = &host
            && (host.is_empty() || host.contains(['/', '@', ' ', '?', '#']))
        {
            problems.push(format!("host {:?} is not a host name", spec.host));
        }
        let methods = spec.methods.as_ref().map(|methods| {
            methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect::<Vec<_>>()
        });
        if let Some(methods) = &methods {
            if methods.is_empty() {
                problems.push("methods is empty: leave it out to match every method".into());
            }
            for m in methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    problems.push(format!("method {m:?} is not an HTTP method"));
                }
            }
        }
        let allow = match spec.allow.as_slice() {
            [] => {
                problems.push(format!(
                    "allow is empty: give role names, [\"{ALLOW_ANONYMOUS}\"] or [\"{ALLOW_AUTHENTICATED}\"]"
                ));
                Allow::Authenticated
            }
            [one] if one == ALLOW_ANONYMOUS => Allow::Anonymous,
            [one] if one == ALLOW_AUTHENTICATED => Allow::Authenticated,
            roles => {
                for role in roles {
                    if role == ALLOW_ANONYMOUS || role == ALLOW_AUTHENTICATED {
                        problems.push(format!(
                            "allow: {role:?} cannot be combined with other values"
                        ));
                    } else if role.is_empty() || !role.bytes().all(is_role_byte) {
                        problems.push(format!("allow: {role:?} is not a role name"));
                    }
                }
                Allow::Roles(roles.to_vec())
            }
        };
        for (name, values) in [
            ("require_acr", &spec.require_acr),
            ("require_amr", &spec.require_amr),
        ] {
            for value in values {
                if !crate::session::Assurance::is_value(value) {
                    problems.push(format!(
                        "{name}: {value:?} is not a value (1 to 64 printable characters, no commas or spaces)"
                    ));
                }
            }
        }
        if allow == Allow::Anonymous
            && !(spec.require_acr.is_empty() && spec.require_amr.is_empty())
        {
            problems.push(
                "require_acr and require_amr need a signed-in identity, not anonymous".into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            require_acr: spec.require_acr.clone(),
            require_amr: spec.require_amr.clone(),
            folded_prefix: prefix.to_ascii_lowercase(),
            path_prefix: prefix.to_owned(),
            host,
            methods,
            allow,
        })
    }

    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    pub fn allow(&self) -> &Allow {
        &self.allow
    }

    fn matches(&self, host: Option<&str>, method: &str, path: &Reading) -> bool {
        if let Some(want) = &self.host
            && host != Some(want.as_str())
        {
            return false;
        }
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == method)
        {
            return false;
        }
        let prefix = if path.folded {
            &self.folded_prefix
        } else {
            &self.path_prefix
        };
        prefix_matches(prefix, &path.path)
    }
}

/// Role names: letters, digits and `-_.:`.
pub fn is_role_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

/// A prefix ending in `/` also covers the directory itself (`/admin/` covers
/// `/admin`, which most servers answer with the same resource or a redirect to it);
/// any other prefix is a plain string prefix.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        || prefix
            .strip_suffix('/')
            .is_some_and(|dir| !dir.is_empty() && path == dir)
}

/// Whether every reading an upstream may make of canonical `path` (decoded,
/// parameters and trailing dots dropped; letter case kept) lies under one of
/// `prefixes`: an allow-list check, so a path some upstream could read as lying
/// outside is outside.
pub fn within_prefixes(path: &str, prefixes: &[String]) -> bool {
    readings(path)
        .iter()
        .filter(|reading| !reading.folded)
        .all(|reading| prefixes.iter().any(|p| prefix_matches(p, &reading.path)))
}

/// The ordered rule list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRules {
    rules: Vec<RouteRule>,
}

/// A request as route rules see it.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The `Host` the request was made for, in any spelling.
    pub host: Option<&'a str>,
    pub method: &'a str,
    /// Values of method-override headers (`X-HTTP-Method-Override` and kin).
    pub method_overrides: &'a [&'a str],
    /// The canonical path ([`canonical_path`]), without the query.
    pub path: &'a str,
}

/// What a request needs: the rules every reading of it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    rules: Vec<&'a RouteRule>,
    /// Some reading matched no rule: the default (any signed-in identity) applies.
    default: bool,
}

impl<'a> Decision<'a> {
    /// The decision when there are no rules.
    pub fn authenticated() -> Self {
        Self {
            rules: Vec::new(),
            default: true,
        }
    }

    /// Every reading is anonymous: no credential is needed or forwarded.
    pub fn is_anonymous(&self) -> bool {
        !self.default && self.rules.iter().all(|r| r.allow == Allow::Anonymous)
    }

    /// Whether a signed-in identity with these roles passes every rule.
    pub fn permits(&self, has_role: impl Fn(&str) -> bool) -> bool {
        self.rules.iter().all(|rule| match &rule.allow {
            Allow::Anonymous | Allow::Authenticated => true,
            Allow::Roles(roles) => roles.iter().any(|r| has_role(r)),
        })
    }

    /// The step-up a principal authenticated with `assurance` still needs to pass
    /// every rule, if any: `acr` values to ask the provider for (those of the
    /// first rule whose `acr` is unmet) and whether `amr` methods are missing.
    pub fn unmet_assurance(&self, assurance: &Assurance) -> Option<StepUp<'a>> {
        let mut step = StepUp::default();
        let mut unmet = false;
        for rule in &self.rules {
            let acr_ok = rule.require_acr.is_empty()
                || assurance
                    .acr
                    .as_ref()
                    .is_some_and(|acr| rule.require_acr.contains(acr));
            if !acr_ok {
                unmet = true;
                if step.acr_values.is_empty() {
                    step.acr_values = rule.require_acr.iter().map(String::as_str).collect();
                }
            }
            for method in &rule.require_amr {
                if !assurance.amr.contains(method) {
                    unmet = true;
                    if !step.amr.contains(&method.as_str()) {
                        step.amr.push(method);
                    }
                }
            }
        }
        unmet.then_some(step)
    }

    /// The rules that decided, for the audit trail.
    pub fn rules(&self) -> impl Iterator<Item = &'a RouteRule> + '_ {
        self.rules.iter().copied()
    }
}

impl RouteRules {
    pub fn new(rules: Vec<RouteRule>) -> Self {
        Self { rules }
    }

    /// Validates rule specs, naming each problem's rule by its position.
    pub fn from_specs(specs: &[RouteSpec]) -> Result<Self, Vec<String>> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (n, spec) in specs.iter().enumerate() {
            match RouteRule::new(spec) {
                Ok(rule) => rules.push(rule),
                Err(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|p| format!("routes[{n}] ({:?}): {p}", spec.path_prefix)),
                ),
            }
        }
        if problems.is_empty() {
            Ok(Self { rules })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &RouteRule> {
        self.rules.iter()
    }

    /// Decides a request under every reading of its path and method.
    pub fn decide(&self, request: &RouteRequest<'_>) -> Decision<'_> {
        if self.rules.is_empty() {
            return Decision::authenticated();
        }
        let host = request.host.map(normalize_host);
        let mut methods = vec![request.method.to_ascii_uppercase()];
        for m in request.method_overrides {
            methods.push(m.trim().to_ascii_uppercase());
        }
        // A HEAD is a GET without the body: a rule on GET covers it.
        if methods.iter().any(|m| m == "HEAD") {
            methods.push("GET".to_owned());
        }
        let mut decision = Decision {
            rules: Vec::new(),
            default: false,
        };
        for reading in readings(request.path) {
            for method in &methods {
                match self
                    .rules
                    .iter()
                    .find(|r| r.matches(host.as_deref(), method, &reading))
                {
                    Some(rule) => {
                        if !decision.rules.iter().any(|r| std::ptr::eq(*r, rule)) {
                            decision.rules.push(rule);
                        }
                    }
                    None => decision.default = true,
                }
            }
        }
        decision
    }
}

/// A host as rules compare it: lower case, without port or trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().map_or(host, |v6| v6)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a path cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a % in the path is not followed by two hex digits")]
    BadEscape,
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// The path the upstream receives: percent-encoded unreserved characters decoded
/// (RFC 3986 section 6.2.2.2, so `%2e` is `.`), remaining escapes in upper case,
/// dot segments removed (section 5.2.4), and repeated slashes merged. Escapes of
/// reserved characters (`%2F`, `%3B`, …) stay escaped: they are data to the
/// upstream, and [`RouteRules::decide`] also reads them decoded.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if raw == "*" {
        return Ok(Cow::Borrowed(raw));
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    let normal = remove_dot_segments(&decoded);
    if normal == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// Whether a path may differ from its canonical form.
fn needs_work(path: &str) -> bool {
    let b = path.as_bytes();
    b.contains(&b'%') || b.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let value = hi * 16 + lo;
            if is_unreserved(value) {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Copy the run up to the next escape (keeps multi-byte characters whole).
            let next = bytes[i..]
                .iter()
                .position(|b| *b == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..next]);
            i = next;
        }
    }
    Ok(out)
}

/// Removes `.` and `..` segments and empty segments; a path that ended in a
/// directory (`/`, `/.`, `/..`) keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        trailing = false;
        match segment {
            "" | "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// One reading of a path: how some upstream may understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    path: String,
    /// Letter case folded (rules compare their prefix in lower case).
    folded: bool,
}

/// Every reading of a canonical path an upstream may make, the path itself first:
/// each combination of decoding every escape (with `\` as `/`), dropping `;`
/// segment parameters, dropping trailing dots and spaces of segments, and folding
/// letter case. Transformations that change nothing add no reading.
fn readings(path: &str) -> Vec<Reading> {
    let mut out = vec![Reading {
        path: path.to_owned(),
        folded: false,
    }];
    // Decoded once, twice, three times: behind a chain of proxies or a framework
    // that decodes again, `%252e%252e` becomes `..`.
    let mut decoded = path.to_owned();
    for _ in 0..MAX_DECODINGS {
        match decode_everything(&decoded) {
            Some(next) if next != decoded => {
                out.push(Reading {
                    path: next.clone(),
                    folded: false,
                });
                decoded = next;
            }
            _ => break,
        }
    }
    let transforms: [fn(&str) -> Option<String>; 2] = [drop_parameters, drop_trailing_dots];
    for transform in transforms {
        for n in 0..out.len() {
            if let Some(read) = transform(&out[n].path)
                && !out.iter().any(|r| r.path == read)
            {
                out.push(Reading {
                    path: read,
                    folded: false,
                });
            }
        }
    }
    // A case-insensitive upstream: every reading again, compared in lower case.
    for n in 0..out.len() {
        let path = out[n].path.to_ascii_lowercase();
        if !out.iter().any(|r| r.folded && r.path == path) {
            out.push(Reading { path, folded: true });
        }
    }
    out
}

/// How many times a path is read percent-decoded again.
const MAX_DECODINGS: usize = 3;

/// Every escape decoded once, `\` read as `/`, then normalised again.
fn decode_everything(path: &str) -> Option<String> {
    if !path.contains(['%', '\\']) {
        return None;
    }
    let decoded = percent_decode_lossy(path).replace('\\', "/");
    Some(remove_dot_segments(&decoded))
}

fn percent_decode_lossy(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(value) => {
                out.push(value);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `;` parameters of each segment dropped (servlet containers), then normalised
/// again (`/public/..;/admin` is `/admin` there).
fn drop_parameters(path: &str) -> Option<String> {
    if !path.contains(';') {
        return None;
    }
    let kept: Vec<&str> = path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    Some(remove_dot_segments(&kept.join("/")))
}

/// Trailing dots and spaces of segments dropped (Windows file names).
fn drop_trailing_dots(path: &str) -> Option<String> {
    if !path
        .split('/')
        .any(|s| s.ends_with(['.', ' ']) && !s.trim_end_matches(['.', ' ']).is_empty() && s != "..")
    {
        return None;
    }
    let kept: Vec<&str> = path
        .split('/')
        .map(|s| {
            let trimmed = s.trim_end_matches(['.', ' ']);
            if trimmed.is_empty() { s } else { trimmed }
        })
        .collect();
    Some(remove_dot_segments(&kept.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, allow: &[&str]) -> RouteSpec {
        RouteSpec {
            path_prefix: prefix.into(),
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            ..RouteSpec::default()
        }
    }

    #[test]
    fn canonical_path_rows() {
        for (raw, want) in [
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("*", Ok("*")),
            ("//admin", Ok("/admin")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/x/../admin", Ok("/admin")),
            ("/x/./admin", Ok("/x/admin")),
            ("/../../admin", Ok("/admin")),
            ("/admin/.", Ok("/admin/")),
            ("/admin/x/..", Ok("/admin/")),
            ("/%2e%2e/admin", Ok("/admin")),
            ("/x/%2E%2E/admin", Ok("/admin")),
            ("/x/.%2e/admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("/a%2fb", Ok("/a%2Fb")),
            ("/a%2Fb", Ok("/a%2Fb")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3bb", Ok("/a%3Bb")),
            ("/caf\u{e9}", Ok("/caf\u{e9}")),
            ("/a%", Err(PathError::BadEscape)),
            ("/a%2", Err(PathError::BadEscape)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("a/b", Err(PathError::NotAbsolute)),
        ] {
            assert_eq!(
                canonical_path(raw).as_deref().map_err(|e| *e),
                want,
                "{raw}"
            );
        }
        // Already canonical paths are not copied.
        assert!(matches!(canonical_path("/a/b%2Fc"), Ok(Cow::Borrowed(_))));
    }

    /// The rule set every trick below is tried against: `/admin/` needs the admin
    /// role, `/public/` is anonymous, everything else needs a signed-in identity.
    fn table() -> RouteRules {
        RouteRules::from_specs(&[
            rule("/admin/", &["admin"]),
            RouteSpec {
                methods: Some(vec!["delete".into()]),
                ..rule("/api/", &["admin"])
            },
            RouteSpec {
                host: Some("Ops.Example.com".into()),
                ..rule("/", &["ops"])
            },
            rule("/public/", &["anonymous"]),
        ])
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[derive(Debug, PartialEq)]
    enum Needs {
        Anonymous,
        SignedIn,
        Role(&'static str),
    }

    fn needs(rules: &RouteRules, host: &str, method: &str, overrides: &[&str], raw: &str) -> Needs {
        let path = canonical_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let decision = rules.decide(&RouteRequest {
            host: Some(host),
            method,
            method_overrides: overrides,
            path: &path,
        });
        if decision.is_anonymous() {
            Needs::Anonymous
        } else if decision.permits(|_| false) {
            Needs::SignedIn
        } else {
            for role in ["admin", "ops"] {
                if decision.permits(|r| r == role) {
                    return Needs::Role(role);
                }
            }
            panic!("{raw}: no single role passes {decision:?}")
        }
    }

    #[test]
    fn path_tricks_cannot_slip_past_a_rule() {
        let rules = table();
        for (raw, want) in [
            ("/admin/users", Needs::Role("admin")),
            ("/admin", Needs::Role("admin")),
            ("/admin/", Needs::Role("admin")),
            ("/administrator", Needs::SignedIn),
            ("//admin/users", Needs::Role("admin")),
            ("/x/../admin/users", Needs::Role("admin")),
            ("/%2e%2e/admin/users", Needs::Role("admin")),
            ("/public/%2e%2e/admin/users", Needs::Role("admin")),
            ("/public/../admin/users", Needs::Role("admin")),
            ("/%61dmin/users", Needs::Role("admin")),
            // Upper-case prefix: a case-insensitive upstream serves /admin/.
            ("/ADMIN/users", Needs::Role("admin")),
            ("/Admin/users", Needs::Role("admin")),
            // Encoded slash: an upstream that decodes it sees /admin/users.
            ("/admin%2Fusers", Needs::Role("admin")),
            ("/public%2F..%2Fadmin/users", Needs::Role("admin")),
            ("/public/..%2Fadmin/users", Needs::Role("admin")),
            ("/public/..%5Cadmin/users", Needs::Role("admin")),
            // Segment parameters: a servlet container drops them.
            ("/admin;x=1/users", Needs::Role("admin")),
            ("/public/..;/admin/users", Needs::Role("admin")),
            ("/admin;/users", Needs::Role("admin")),
            // Trailing dots and spaces: Windows drops them.
            ("/admin./users", Needs::Role("admin")),
            ("/admin%20/users", Needs::Role("admin")),
            ("/admin../users", Needs::Role("admin")),
            // Decoded twice (a chain of proxies, a framework decoding again).
            ("/public/%252e%252e/admin/users", Needs::Role("admin")),
            ("/public%252F..%252Fadmin/users", Needs::Role("admin")),
            ("/public/%25252e%25252e/admin/users", Needs::Role("admin")),
            // Anonymous only when every reading is anonymous.
            ("/public/app.js", Needs::Anonymous),
            ("/public", Needs::Anonymous),
            ("/PUBLIC/app.js", Needs::SignedIn),
            ("/public%2F..%2Fprivate", Needs::SignedIn),
            ("/other", Needs::SignedIn),
        ] {
            assert_eq!(
                needs(&rules, "dash.example.com", "GET", &[], raw),
                want,
                "{raw}"
            );
        }
    }

    #[test]
    fn methods_hosts_and_overrides() {
        let rules = table();
        for (host, method, overrides, raw, want) in [
            (
                "dash.example.com",
                "GET",
                &[][..],
                "/api/x",
                Needs::SignedIn,
            ),
            (
                "dash.example.com",
                "DELETE",
                &[],
                "/api/x",
                Needs::Role("admin"),
            ),
            (
                "dash.example.com",
                "delete",
                &[],
                "/api/x",
                Needs::Role("admin"),
            ),
            // A method-override header turns a POST into a DELETE in some frameworks.
            (
                "dash.example.com",
                "POST",
                &["DELETE"],
                "/api/x",
                Needs::Role("admin"),
            ),
            (
                "dash.example.com",
                "POST",
                &[" delete "],
                "/api/x",
                Needs::Role("admin"),
            ),
            // Host rules: case, port and a trailing dot do not matter.
            ("ops.example.com", "GET", &[], "/x", Needs::Role("ops")),
            ("OPS.example.com:8443", "GET", &[], "/x", Needs::Role("ops")),
            ("ops.example.com.", "GET", &[], "/x", Needs::Role("ops")),
            (
                "ops.example.com",
                "GET",
                &[],
                "/public/x",
                Needs::Role("ops"),
            ),
            ("dash.example.com", "GET", &[], "/x", Needs::SignedIn),
        ] {
            assert_eq!(
                needs(&rules, host, method, overrides, raw),
                want,
                "{host} {method} {overrides:?} {raw}"
            );
        }
        // HEAD is decided like GET.
        let get_only = RouteRules::from_specs(&[RouteSpec {
            methods: Some(vec!["GET".into()]),
            ..rule("/reports/", &["admin"])
        }])
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            needs(&get_only, "h", "HEAD", &[], "/reports/q1"),
            Needs::Role("admin")
        );
    }

    #[test]
    fn no_rules_means_signed_in() {
        let rules = RouteRules::default();
        assert_eq!(needs(&rules, "h", "GET", &[], "/anything"), Needs::SignedIn);
    }

    #[test]
    fn first_match_wins() {
        let rules = RouteRules::from_specs(&[
            rule("/docs/internal/", &["staff"]),
            rule("/docs/", &["anonymous"]),
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        let decide = |raw: &str| {
            let decision = rules.decide(&RouteRequest {
                host: None,
                method: "GET",
                method_overrides: &[],
                path: raw,
            });
            (decision.is_anonymous(), decision.permits(|r| r == "staff"))
        };
        assert_eq!(decide("/docs/intro"), (true, true));
        assert_eq!(decide("/docs/internal/x"), (false, true));
        assert!(
            !rules
                .decide(&RouteRequest {
                    host: None,
                    method: "GET",
                    method_overrides: &[],
                    path: "/docs/internal/x",
                })
                .permits(|_| false)
        );
    }

    #[test]
    fn step_up_requirements() {
        let rules = RouteRules::from_specs(&[
            RouteSpec {
                require_amr: vec!["mfa".into()],
                ..rule("/admin/", &["authenticated"])
            },
            RouteSpec {
                require_acr: vec!["urn:gold".into(), "urn:platinum".into()],
                ..rule("/vault/", &["authenticated"])
            },
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        let decide = |path: &'static str| {
            rules.decide(&RouteRequest {
                host: None,
                method: "GET",
                method_overrides: &[],
                path,
            })
        };
        let plain = Assurance::default();
        let mfa = Assurance {
            acr: Some("urn:silver".into()),
            amr: vec!["pwd".into(), "mfa".into()],
        };
        let gold = Assurance {
            acr: Some("urn:gold".into()),
            amr: vec!["pwd".into()],
        };
        // (path, assurance, unmet acr values, unmet methods)
        for (path, assurance, acr, amr) in [
            ("/other", &plain, None, None),
            ("/admin/x", &plain, Some(vec![]), Some(vec!["mfa"])),
            ("/admin/x", &mfa, None, None),
            // Case folding reads /ADMIN/ as /admin/: the step-up applies too.
            ("/ADMIN/x", &plain, Some(vec![]), Some(vec!["mfa"])),
            (
                "/vault/x",
                &mfa,
                Some(vec!["urn:gold", "urn:platinum"]),
                Some(vec![]),
            ),
            ("/vault/x", &gold, None, None),
        ] {
            let unmet = decide(path).unmet_assurance(assurance);
            assert_eq!(
                unmet.as_ref().map(|s| s.acr_values.clone()),
                acr,
                "{path} {assurance:?}"
            );
            assert_eq!(unmet.map(|s| s.amr), amr, "{path} {assurance:?}");
        }
    }

    #[test]
    fn invalid_rules_are_reported() {
        for (spec, needle) in [
            (rule("admin/", &["admin"]), "must start with /"),
            (rule("/a/../b/", &["admin"]), "normal form"),
            (rule("//a/", &["admin"]), "normal form"),
            (rule("/a%2Fb/", &["admin"]), "decoded"),
            (rule("/a;b/", &["admin"]), "decoded"),
            (rule("/a/", &[]), "allow is empty"),
            (rule("/a/", &["anonymous", "admin"]), "cannot be combined"),
            (
                rule("/a/", &["authenticated", "anonymous"]),
                "cannot be combined",
            ),
            (rule("/a/", &["bad role"]), "not a role name"),
            (
                RouteSpec {
                    require_amr: vec!["m f a".into()],
                    ..rule("/a/", &["admin"])
                },
                "require_amr",
            ),
            (
                RouteSpec {
                    require_acr: vec!["urn:x".into()],
                    ..rule("/a/", &["anonymous"])
                },
                "not anonymous",
            ),
            (
                RouteSpec {
                    methods: Some(vec![]),
                    ..rule("/a/", &["admin"])
                },
                "methods is empty",
            ),
            (
                RouteSpec {
                    methods: Some(vec!["GE T".into()]),
                    ..rule("/a/", &["admin"])
                },
                "not an HTTP method",
            ),
            (
                RouteSpec {
                    host: Some("a/b".into()),
                    ..rule("/a/", &["admin"])
                },
                "not a host name",
            ),
        ] {
            let problems = RouteRules::from_specs(std::slice::from_ref(&spec))
                .err()
                .unwrap_or_default();
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(needle) && p.starts_with("routes[0]")),
                "{spec:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn host_normalisation_rows() {
        for (raw, want) in [
            ("Dash.Example.com", "dash.example.com"),
            ("dash.example.com:443", "dash.example.com"),
            ("dash.example.com.", "dash.example.com"),
            ("[::1]:8080", "::1"),
            ("127.0.0.1:80", "127.0.0.1"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }
}
