//! Operator-provisioned basic users (`AUTH_BASIC_USERS`) and argon2id passwords.
//!
//! The variable is a **semicolon-separated** list of `username:argon2hash` entries:
//! argon2 PHC strings carry a comma-separated parameter block (`m=…,t=…,p=…`), so
//! commas cannot separate entries, and each entry is split on its first colon only.
//! Malformed entries are skipped with a warning that names the entry by position and
//! never includes the hash.
//!
//! Verification takes its cost parameters from the hash, so a hostile or mistyped
//! hash could demand gigabytes of memory per login; hashes above [`MAX_MEMORY_KIB`],
//! [`MAX_ITERATIONS`] or [`MAX_PARALLELISM`] are refused when loading.

use std::collections::{HashMap, HashSet};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::identity::{Identity, ROLE_ADMIN, ROLE_USER};
use crate::secret::{Entropy, EntropyError, SecretString};

/// 256 MiB: four times the common 64 MiB default, enough for any sane deployment.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_ITERATIONS: u32 = 16;
pub const MAX_PARALLELISM: u32 = 16;

/// Parameters `hash-password` uses: RFC 9106's second recommended option, which is
/// also the argon2-cffi default, so hashes from either tool cost the same to verify.
pub const DEFAULT_M_KIB: u32 = 65536;
pub const DEFAULT_T: u32 = 3;
pub const DEFAULT_P: u32 = 4;

/// A problem with one `AUTH_BASIC_USERS` entry (1-based position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryWarning {
    #[error("AUTH_BASIC_USERS entry {0} has no ':' between username and hash; skipped")]
    MissingColon(usize),
    #[error("AUTH_BASIC_USERS entry {0} has an empty username; skipped")]
    EmptyName(usize),
    #[error("AUTH_BASIC_USERS entry {0} (user {1:?}) is not an argon2 PHC hash; skipped")]
    NotArgon2(usize, String),
    #[error(
        "AUTH_BASIC_USERS entry {0} (user {1:?}) has an unparsable or truncated argon2 hash \
         (make a new one with `portcullis hash-password`); skipped"
    )]
    Unparsable(usize, String),
    #[error(
        "AUTH_BASIC_USERS entry {0} (user {1:?}) asks for argon2 cost above the limits \
         (m <= {MAX_MEMORY_KIB} KiB, t <= {MAX_ITERATIONS}, p <= {MAX_PARALLELISM}); skipped"
    )]
    TooCostly(usize, String),
    #[error(
        "AUTH_BASIC_USERS entry {0} looks like several entries separated by commas; \
         entries are separated by `;` (hashes contain commas); skipped"
    )]
    CommaSeparated(usize),
    #[error("AUTH_BASIC_USERS entry {0} repeats user {1:?}; the later entry wins")]
    Duplicate(usize, String),
    #[error(
        "AUTH_BASIC_USERS hashes use different argon2 costs ({0}): failed sign-ins are \
         padded to the costliest, but rehash every password alike (portcullis hash-password)"
    )]
    CostsDiffer(String),
}

impl EntryWarning {
    /// Advice about entries that were kept (a repeated user, differing costs);
    /// every other warning is about an entry that was skipped.
    pub fn is_advice(&self) -> bool {
        matches!(
            self,
            EntryWarning::Duplicate(..) | EntryWarning::CostsDiffer(_)
        )
    }
}

/// The configured basic users.
#[derive(Clone, Default)]
pub struct BasicUsers {
    users: HashMap<String, String>,
    admins: HashSet<String>,
}

impl std::fmt::Debug for BasicUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.users.keys().collect();
        names.sort();
        f.debug_struct("BasicUsers")
            .field("users", &names)
            .field("hashes", &"[redacted]")
            .field("admins", &self.admins)
            .finish()
    }
}

impl BasicUsers {
    /// Parses `AUTH_BASIC_USERS` and `AUTH_BASIC_ADMINS` (comma-separated names).
    pub fn parse(users: &str, admins: &str) -> (Self, Vec<EntryWarning>) {
        let mut warnings = Vec::new();
        let mut map = HashMap::new();
        for (index, entry) in users.split(';').enumerate() {
            let position = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((name, hash)) = entry.split_once(':') else {
                warnings.push(EntryWarning::MissingColon(position));
                continue;
            };
            let (name, hash) = (name.trim(), hash.trim());
            if name.is_empty() {
                warnings.push(EntryWarning::EmptyName(position));
                continue;
            }
            if hash.contains(":$argon2") {
                warnings.push(EntryWarning::CommaSeparated(position));
                continue;
            }
            if !hash.starts_with("$argon2") {
                warnings.push(EntryWarning::NotArgon2(position, name.to_owned()));
                continue;
            }
            match check_cost(hash) {
                Ok(()) => {}
                Err(HashProblem::Unparsable) => {
                    warnings.push(EntryWarning::Unparsable(position, name.to_owned()));
                    continue;
                }
                Err(HashProblem::TooCostly) => {
                    warnings.push(EntryWarning::TooCostly(position, name.to_owned()));
                    continue;
                }
            }
            if map.insert(name.to_owned(), hash.to_owned()).is_some() {
                warnings.push(EntryWarning::Duplicate(position, name.to_owned()));
            }
        }
        let mut costs: Vec<(u32, u32, u32)> = map.values().filter_map(|h| cost_of(h)).collect();
        costs.sort_unstable();
        costs.dedup();
        if costs.len() > 1 {
            let listed: Vec<String> = costs
                .iter()
                .map(|(m, t, p)| format!("m={m},t={t},p={p}"))
                .collect();
            warnings.push(EntryWarning::CostsDiffer(listed.join("; ")));
        }
        let admins = admins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        (Self { users: map, admins }, warnings)
    }

    /// The configured usernames.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// The stored hash for `username`, if the user exists.
    pub fn hash_of(&self, username: &str) -> Option<&str> {
        self.users.get(username).map(String::as_str)
    }

    /// A hash of a random password with the same cost parameters as the configured
    /// users' (the first by name), verified against for unknown usernames so that
    /// they cost exactly what a known user does. Defaults when there are no users.
    pub fn dummy_hash(&self, entropy: &dyn Entropy) -> Result<String, HashError> {
        // The costliest configured hash: an unknown user never answers faster
        // than any known one.
        let (m, t, p) = self
            .users
            .values()
            .filter_map(|hash| cost_of(hash))
            .max_by_key(|(m, t, p)| (u64::from(*m) * u64::from(*t), *p))
            .unwrap_or((DEFAULT_M_KIB, DEFAULT_T, DEFAULT_P));
        let mut raw = [0u8; 24];
        entropy.fill(&mut raw)?;
        let throwaway =
            SecretString::new(raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        hash_password_with(&throwaway, entropy, m, t, p)
    }

    /// Whether `hash` costs as much to verify as the costliest configured hash
    /// (its failures then need no padding).
    pub fn is_costliest(&self, hash: &str) -> bool {
        let weight = |(m, t, p): (u32, u32, u32)| (u64::from(m) * u64::from(t), p);
        let Some(this) = cost_of(hash).map(weight) else {
            return false;
        };
        self.users
            .values()
            .filter_map(|h| cost_of(h))
            .map(weight)
            .all(|other| other <= this)
    }

    /// The identity a successful login of `username` gets.
    pub fn identity(&self, username: &str) -> Identity {
        let mut roles = vec![ROLE_USER.to_owned()];
        if self.admins.contains(username) {
            roles.insert(0, ROLE_ADMIN.to_owned());
        }
        Identity {
            subject: username.to_owned(),
            name: username.to_owned(),
            email: None,
            provider: crate::identity::IdentityProvider::Basic,
            roles,
        }
    }
}

enum HashProblem {
    Unparsable,
    TooCostly,
}

/// The shortest argon2 output accepted (tools write 32 bytes; the PHC minimum
/// is 10).
const MIN_OUTPUT_BYTES: usize = 16;

fn check_cost(hash: &str) -> Result<(), HashProblem> {
    let parsed = PasswordHash::new(hash).map_err(|_| HashProblem::Unparsable)?;
    let params = Params::try_from(&parsed).map_err(|_| HashProblem::Unparsable)?;
    // A hash cut short (when pasted) still parses: no salt, or an output shorter
    // than any argon2 tool writes, would make the user's sign-ins fail forever.
    let salt_ok = parsed.salt.is_some_and(|salt| salt.len() >= 8);
    let output_ok = parsed
        .hash
        .is_some_and(|output| output.len() >= MIN_OUTPUT_BYTES);
    if !salt_ok || !output_ok {
        return Err(HashProblem::Unparsable);
    }
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_ITERATIONS
        || params.p_cost() > MAX_PARALLELISM
    {
        return Err(HashProblem::TooCostly);
    }
    Ok(())
}

/// What a session records of the argon2 hash its sign-in verified: 16 bytes of
/// its SHA-256, in hex. It tells hashes apart and reveals nothing of them.
pub fn credential_fingerprint(hash: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(hash.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies `password` against a PHC hash. Blocking and expensive (about 100 ms and
/// 64 MiB with default parameters): run it on the bounded worker pool.
pub fn verify_password(hash: &str, password: &SecretString) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.expose().as_bytes(), &parsed)
        .is_ok()
}

/// The argon2 cost (memory KiB, iterations, parallelism) of a PHC hash.
fn cost_of(hash: &str) -> Option<(u32, u32, u32)> {
    let parsed = PasswordHash::new(hash).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    Some((params.m_cost(), params.t_cost(), params.p_cost()))
}

/// Hashes `password` as argon2id with the default parameters.
pub fn hash_password(password: &SecretString, entropy: &dyn Entropy) -> Result<String, HashError> {
    hash_password_with(password, entropy, DEFAULT_M_KIB, DEFAULT_T, DEFAULT_P)
}

/// Hashes `password` as argon2id with explicit memory (KiB), iterations and lanes.
pub fn hash_password_with(
    password: &SecretString,
    entropy: &dyn Entropy,
    m_kib: u32,
    t: u32,
    p: u32,
) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    entropy.fill(&mut salt)?;
    let params = Params::new(m_kib, t, p, None).map_err(|_| HashError::Hash)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| HashError::Hash)
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    #[error("argon2 hashing failed")]
    Hash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::OsEntropy;

    /// Made by Python argon2-cffi 25.1 `PasswordHasher().hash("correct horse")` with
    /// its defaults (argon2id, m=65536, t=3, p=4).
    const CFFI_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$/OM+x2kf9PGTa17ocdGIhQ$ZjDM0SlpgJaJdMSmaOFuWloJmgfC1tCb7hSSdj0YK2o";
    const CHEAP: &str =
        "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    #[test]
    fn malformed_entries_are_skipped_with_a_warning() {
        let huge = "$argon2id$v=19$m=4194304,t=3,p=4$c29tZXNhbHQ$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";
        let rows: Vec<(&str, String, Vec<&str>, Vec<EntryWarning>)> = vec![
            (
                "one good entry",
                format!("alice:{CHEAP}"),
                vec!["alice"],
                vec![],
            ),
            (
                "semicolons separate, commas inside hashes survive",
                format!("alice:{CHEAP}; bob:{CHEAP};"),
                vec!["alice", "bob"],
                vec![],
            ),
            ("empty", String::new(), vec![], vec![]),
            ("only separators", ";;  ;".into(), vec![], vec![]),
            (
                "missing colon",
                format!("alice{CHEAP};bob:{CHEAP}"),
                vec!["bob"],
                vec![EntryWarning::MissingColon(1)],
            ),
            (
                "empty name",
                format!(":{CHEAP}"),
                vec![],
                vec![EntryWarning::EmptyName(1)],
            ),
            (
                "not argon2",
                "alice:$2b$12$abcdefghijk".into(),
                vec![],
                vec![EntryWarning::NotArgon2(1, "alice".into())],
            ),
            (
                "plaintext password",
                "alice:hunter2".into(),
                vec![],
                vec![EntryWarning::NotArgon2(1, "alice".into())],
            ),
            (
                "argon2 prefix but garbage",
                "alice:$argon2id$garbage".into(),
                vec![],
                vec![EntryWarning::Unparsable(1, "alice".into())],
            ),
            (
                "cost too high",
                format!("alice:{huge}"),
                vec![],
                vec![EntryWarning::TooCostly(1, "alice".into())],
            ),
            (
                "colon in hash side kept (split on first colon)",
                format!("a:{CHEAP}"),
                vec!["a"],
                vec![],
            ),
            (
                "truncated: no output",
                "alice:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ".into(),
                vec![],
                vec![EntryWarning::Unparsable(1, "alice".into())],
            ),
            (
                "truncated: output cut short",
                "alice:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$abcdefghij".into(),
                vec![],
                vec![EntryWarning::Unparsable(1, "alice".into())],
            ),
            (
                "comma-separated entries",
                format!("alice:{CHEAP},bob:{CHEAP}"),
                vec![],
                vec![EntryWarning::CommaSeparated(1)],
            ),
            (
                "duplicate",
                format!("a:{CHEAP};a:{CHEAP}"),
                vec!["a"],
                vec![EntryWarning::Duplicate(2, "a".into())],
            ),
        ];
        for (name, raw, users, warnings) in rows {
            let (parsed, got) = BasicUsers::parse(&raw, "");
            let mut names: Vec<_> = parsed.users.keys().map(String::as_str).collect();
            names.sort();
            assert_eq!(names, users, "row {name}");
            assert_eq!(got, warnings, "row {name}");
            for w in &got {
                assert!(!w.to_string().contains("$argon2"), "row {name} leaks hash");
            }
        }
    }

    #[test]
    fn python_argon2_cffi_hashes_verify() {
        assert!(verify_password(
            CFFI_HASH,
            &SecretString::new("correct horse")
        ));
        assert!(!verify_password(
            CFFI_HASH,
            &SecretString::new("wrong horse")
        ));
        let (users, warnings) = BasicUsers::parse(&format!("alice:{CFFI_HASH}"), "");
        assert!(warnings.is_empty());
        assert_eq!(users.hash_of("alice"), Some(CFFI_HASH));
    }

    #[test]
    fn dummy_hash_matches_configured_cost() {
        let cheap = hash_password_with(&SecretString::new("x"), &OsEntropy, 8, 1, 1).unwrap();
        let (users, _) = BasicUsers::parse(&format!("zed:{CFFI_HASH};alice:{cheap}"), "");
        // The costliest configured cost, whichever user it belongs to.
        let dummy = users.dummy_hash(&OsEntropy).unwrap();
        assert!(!dummy.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{dummy}");
        assert_eq!(cost_of(&dummy), cost_of(CFFI_HASH));
        assert!(users.is_costliest(CFFI_HASH));
        assert!(!users.is_costliest(&cheap));
        let (_, warnings) = BasicUsers::parse(&format!("zed:{CFFI_HASH};alice:{cheap}"), "");
        assert!(
            warnings
                .iter()
                .any(|w| matches!(w, EntryWarning::CostsDiffer(_))),
            "{warnings:?}"
        );
        let (_, alike) = BasicUsers::parse(&format!("zed:{cheap};alice:{cheap}"), "");
        assert!(alike.is_empty(), "{alike:?}");
        let dummy = BasicUsers::default().dummy_hash(&OsEntropy).unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"));
    }

    #[test]
    fn hash_then_verify() {
        let pw = SecretString::new("s3cret");
        let hash = hash_password(&pw, &OsEntropy).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"));
        assert!(verify_password(&hash, &pw));
        assert!(!verify_password(&hash, &SecretString::new("other")));
    }

    #[test]
    fn admins_get_the_admin_role_and_debug_hides_hashes() {
        let (users, _) = BasicUsers::parse(&format!("alice:{CHEAP};bob:{CHEAP}"), "alice, carol");
        assert_eq!(users.identity("alice").roles, vec!["admin", "user"]);
        assert_eq!(users.identity("bob").roles, vec!["user"]);
        assert!(!format!("{users:?}").contains("argon2"));
    }
}
