//! Who a principal is, as the pipeline reads it: the fields the upstream rewrite,
//! the authorize phase and `/me` need, whether they come from a cached session or
//! a plain [`portcullis_core::identity::Identity`].

use std::borrow::Cow;

/// Read access to who a principal is, for whatever holds an identity (a cached
/// session, or a plain [`portcullis_core::identity::Identity`]).
pub trait IdentityFields: std::fmt::Debug {
    fn subject(&self) -> &str;
    fn name(&self) -> &str;
    fn email(&self) -> Option<&str>;
    fn roles(&self) -> Roles<'_>;
    /// The stored name of the identity's provider.
    fn provider_name(&self) -> &str;
    /// The roles joined by commas (the `X-Forwarded-Groups` value); `None` when a
    /// role holds a comma and so would read as two.
    fn groups(&self) -> Option<Cow<'_, str>>;
    /// Every string is known to be safe in a header (checked once beforehand).
    fn header_safe(&self) -> bool {
        false
    }
}

/// The roles of an identity.
#[derive(Debug, Clone)]
pub enum Roles<'a> {
    Slice(std::slice::Iter<'a, String>),
    Text(Option<std::str::Split<'a, char>>),
}

impl<'a> Iterator for Roles<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Roles::Slice(roles) => roles.next().map(String::as_str),
            Roles::Text(roles) => roles.as_mut()?.next(),
        }
    }
}

impl IdentityFields for portcullis_core::identity::Identity {
    fn subject(&self) -> &str {
        &self.subject
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }

    fn roles(&self) -> Roles<'_> {
        Roles::Slice(self.roles.iter())
    }

    fn provider_name(&self) -> &str {
        self.provider.as_str()
    }

    fn groups(&self) -> Option<Cow<'_, str>> {
        (!self.roles.iter().any(|r| r.contains(','))).then(|| Cow::Owned(self.roles.join(",")))
    }
}

/// Bytes that may stand in a header value: visible ASCII, space, tab and obs-text
/// (non-ASCII names from an identity provider are sent as raw UTF-8). Control
/// characters could split headers.
pub fn header_safe(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}
