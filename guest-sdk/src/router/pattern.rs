//! Path patterns: literal segments, `:param` (one segment) and `*rest` (the rest, last), parsed
//! once when a route is added, matched against a request's segments, ranked by specificity.

use crate::request::{self, Params};

/// A parsed path pattern.
pub(super) struct Pattern {
    segments: Vec<Segment>,
}

enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

impl Pattern {
    /// Parses `pattern` (`/a/:param/*rest`); panics, saying why, on a malformed one.
    pub(super) fn parse(pattern: &str) -> Self {
        assert!(
            pattern.starts_with('/'),
            "router pattern `{pattern}` must start with `/`"
        );
        let raw: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in raw.iter().enumerate() {
            let segment = if let Some(name) = part.strip_prefix(':') {
                Segment::Param(name.to_owned())
            } else if let Some(name) = part.strip_prefix('*') {
                assert!(
                    i + 1 == raw.len(),
                    "router pattern `{pattern}`: `*{name}` must be the last segment"
                );
                Segment::Rest(name.to_owned())
            } else {
                Segment::Literal((*part).to_owned())
            };
            if let Segment::Param(name) | Segment::Rest(name) = &segment {
                assert!(
                    !name.is_empty(),
                    "router pattern `{pattern}`: a parameter needs a name"
                );
                assert!(
                    !names.contains(&name.as_str()),
                    "router pattern `{pattern}`: parameter `{name}` appears twice"
                );
                names.push(&part[1..]);
            }
            segments.push(segment);
        }
        Self { segments }
    }

    /// The captured parameters if the pattern matches `path`'s segments.
    pub(super) fn matches(&self, path: &[&str]) -> Option<Params> {
        let mut params = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest(name) => {
                    let rest = path.get(i..).unwrap_or_default();
                    let value = rest
                        .iter()
                        .map(|s| request::decode(s, false))
                        .collect::<Vec<_>>()
                        .join("/");
                    params.push((name.clone(), value));
                    return Some(Params::new(params));
                }
                Segment::Literal(literal) => {
                    if path.get(i) != Some(&literal.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = path.get(i)?;
                    params.push((name.clone(), request::decode(value, false).into_owned()));
                }
            }
        }
        (path.len() == self.segments.len()).then(|| Params::new(params))
    }

    /// Specificity, segment by segment: literal 0, parameter 1, rest 2.
    pub(super) fn rank(&self) -> Vec<u8> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(_) => 0,
                Segment::Param(_) => 1,
                Segment::Rest(_) => 2,
            })
            .collect()
    }
}
