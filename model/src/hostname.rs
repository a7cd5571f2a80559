//! Gateway API hostnames: validation, matching, intersection and specificity.
//!
//! A wildcard `*.example.com` matches one or more labels before `.example.com`
//! (`a.example.com`, `a.b.example.com`) but never `example.com` itself, as the Gateway API
//! specifies for both listeners and routes.

use std::cmp::Ordering;
use std::fmt;

/// A validated hostname pattern, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// No hostname given: every host.
    Any,
    /// One exact host, e.g. `app.example.com`.
    Exact(String),
    /// A wildcard; holds the suffix with its leading dot, e.g. `.example.com` for `*.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("hostname is empty")]
    Empty,
    #[error("hostname {0:?} is longer than 253 characters")]
    TooLong(String),
    #[error("hostname {0:?} is an IP address; Gateway API hostnames must be DNS names")]
    IpAddress(String),
    #[error(
        "hostname {0:?} is not a lowercase RFC 1123 DNS name (labels of a-z, 0-9 and '-', \
         optionally prefixed by a single '*.' wildcard label)"
    )]
    Invalid(String),
}

impl HostMatch {
    /// Parses a hostname as written in a Listener or an HTTPRoute.
    pub fn parse(raw: &str) -> Result<Self, HostnameError> {
        if raw.is_empty() {
            return Err(HostnameError::Empty);
        }
        if raw.len() > 253 {
            return Err(HostnameError::TooLong(raw.to_owned()));
        }
        if raw.parse::<std::net::IpAddr>().is_ok() {
            return Err(HostnameError::IpAddress(raw.to_owned()));
        }
        let (wildcard, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if !rest.split('.').all(is_dns_label) {
            return Err(HostnameError::Invalid(raw.to_owned()));
        }
        Ok(if wildcard {
            HostMatch::Wildcard(format!(".{rest}"))
        } else {
            HostMatch::Exact(rest.to_owned())
        })
    }

    /// Whether `host` (already lowercase, without port or trailing dot) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => exact == host,
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    /// The hostnames both patterns match, expressed as one pattern, or `None` when disjoint.
    /// Used to attach a route to a listener: the result is what the route serves there.
    pub fn intersect(&self, other: &HostMatch) -> Option<HostMatch> {
        use HostMatch::*;
        match (self, other) {
            (Any, x) | (x, Any) => Some(x.clone()),
            (Exact(a), Exact(b)) => (a == b).then(|| self.clone()),
            (Exact(host), wild @ Wildcard(_)) | (wild @ Wildcard(_), Exact(host)) => {
                wild.matches(host).then(|| Exact(host.clone()))
            }
            (Wildcard(a), Wildcard(b)) => {
                if a.ends_with(b.as_str()) {
                    Some(self.clone())
                } else if b.ends_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }

    /// Orders patterns from most to least specific: exact hosts, then wildcards with longer
    /// suffixes, then [`HostMatch::Any`]. `Ordering::Less` means `self` is more specific.
    pub fn specificity_cmp(&self, other: &HostMatch) -> Ordering {
        use HostMatch::*;
        match (self, other) {
            (Exact(a), Exact(b)) => b.len().cmp(&a.len()),
            (Exact(_), _) => Ordering::Less,
            (_, Exact(_)) => Ordering::Greater,
            (Wildcard(a), Wildcard(b)) => b.len().cmp(&a.len()),
            (Wildcard(_), Any) => Ordering::Less,
            (Any, Wildcard(_)) => Ordering::Greater,
            (Any, Any) => Ordering::Equal,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Lowercases a request's Host header or SNI and strips the port and a trailing dot, giving the
/// form [`HostMatch::matches`] expects. Returns `None` for an empty host.
pub fn normalize_request_host(raw: &str) -> Option<String> {
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal: keep the brackets' content as is.
        raw.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(raw)
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.is_empty() {
        return None;
    }
    Some(trimmed.to_ascii_lowercase())
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostMatch {
        match HostMatch::parse(s) {
            Ok(m) => m,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_exact_and_wildcard() {
        assert_eq!(h("a.example.com"), HostMatch::Exact("a.example.com".into()));
        assert_eq!(
            h("*.example.com"),
            HostMatch::Wildcard(".example.com".into())
        );
    }

    #[test]
    fn rejects_invalid_hostnames() {
        for bad in [
            "",
            "A.example.com",
            "*",
            "a.*.com",
            "-a.com",
            "a..com",
            "10.0.0.1",
            "a_b.com",
            "*.*.com",
        ] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(HostMatch::parse(&"a".repeat(254)).is_err());
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_apex() {
        let w = h("*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
    }

    #[test]
    fn intersection_follows_the_spec() {
        assert_eq!(
            h("*.example.com").intersect(&h("foo.example.com")),
            Some(h("foo.example.com"))
        );
        assert_eq!(
            h("foo.example.com").intersect(&h("*.example.com")),
            Some(h("foo.example.com"))
        );
        assert_eq!(
            h("*.example.com").intersect(&h("*.foo.example.com")),
            Some(h("*.foo.example.com"))
        );
        assert_eq!(
            h("*.foo.example.com").intersect(&h("*.example.com")),
            Some(h("*.foo.example.com"))
        );
        assert_eq!(h("foo.example.com").intersect(&h("bar.example.com")), None);
        assert_eq!(h("*.example.com").intersect(&h("example.com")), None);
        assert_eq!(h("*.example.com").intersect(&h("*.example.net")), None);
        assert_eq!(HostMatch::Any.intersect(&h("x.org")), Some(h("x.org")));
        assert_eq!(h("x.org").intersect(&HostMatch::Any), Some(h("x.org")));
    }

    #[test]
    fn specificity_puts_exact_before_longer_wildcards_before_any() {
        let mut v = vec![HostMatch::Any, h("*.com"), h("a.b.com"), h("*.b.com")];
        v.sort_by(|a, b| a.specificity_cmp(b));
        assert_eq!(
            v,
            vec![h("a.b.com"), h("*.b.com"), h("*.com"), HostMatch::Any]
        );
    }

    #[test]
    fn normalizes_request_hosts() {
        assert_eq!(
            normalize_request_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_request_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_request_host("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(normalize_request_host(""), None);
    }
}
