//! Route names and path prefixes: what an operator names a route and which paths it serves.
//! Both are validated once, where they enter (the admin API, the state log), and are cheap to
//! clone afterwards.

use std::sync::Arc;

/// A route's name: 1-64 of `a-z 0-9 - _ .`, not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    /// Validates `name`, saying what is wrong in a sentence.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "a route name must be 1 to 64 characters long; `{}` has {}",
                name.escape_debug(),
                name.chars().count()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
        {
            return Err(format!(
                "a route name may use only a-z, 0-9, `-`, `_` and `.`; `{}` contains `{}`",
                name.escape_debug(),
                bad.escape_debug()
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("`{name}` is not a usable route name"));
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// A path prefix: `/` or `/seg/seg` with no trailing slash, no empty, `.` or `..` segments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(Arc<str>);

impl Prefix {
    /// Validates `prefix`, saying what is wrong in a sentence. A trailing `/` is dropped.
    pub fn parse(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') {
            return Err(format!(
                "a route prefix must start with `/`; got `{}`",
                prefix.escape_debug()
            ));
        }
        if prefix.len() > 256 {
            return Err("a route prefix may be at most 256 characters long".into());
        }
        let trimmed = if prefix.len() > 1 {
            prefix.trim_end_matches('/')
        } else {
            prefix
        };
        if trimmed.len() > 1 {
            for segment in trimmed[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(format!(
                        "a route prefix may not contain empty, `.` or `..` segments; got `{}`",
                        prefix.escape_debug()
                    ));
                }
                if let Some(bad) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
                {
                    return Err(format!(
                        "a route prefix may use only letters, digits, `-`, `_`, `.`, `~` and `/`; `{}` contains `{}`",
                        prefix.escape_debug(),
                        bad.escape_debug()
                    ));
                }
            }
        }
        Ok(Self(if trimmed.is_empty() { "/" } else { trimmed }.into()))
    }

    /// The default prefix of a route: `/{name}`.
    pub fn for_route(name: &RouteName) -> Self {
        Self(format!("/{}", name.as_str()).into())
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix as a shared string.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_validated() {
        for good in ["a", "hello", "api-v1", "a_b.c", &"x".repeat(64)] {
            assert!(RouteName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "Hello",
            "a/b",
            "a b",
            "%2e%2e",
            "a\0b",
            "caf\u{e9}",
            &"x".repeat(65),
        ] {
            assert!(RouteName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_normalized_and_validated() {
        assert_eq!(Prefix::parse("/").unwrap().as_str(), "/");
        assert_eq!(Prefix::parse("/api/v1/").unwrap().as_str(), "/api/v1");
        assert_eq!(Prefix::parse("/api").unwrap().as_str(), "/api");
        for bad in ["api", "/a//b", "/a/../b", "/a b", "/a?x"] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }
}
