//! DNS names as the providers exchange them: lowercase, no trailing dot, validated once.

use crate::DnsError;

/// Normalizes `name` (lowercase, trailing dot removed) and checks label syntax. Wildcard `*` is
/// allowed only as the whole leftmost label; `_` is allowed (as in `_acme-challenge`).
pub fn normalize(name: &str) -> Result<String, DnsError> {
    let invalid = |reason: &str| DnsError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid("empty name"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    let lower = trimmed.to_ascii_lowercase();
    for (index, label) in lower.split('.').enumerate() {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("label longer than 63 characters"));
        }
        if label == "*" {
            if index != 0 {
                return Err(invalid("`*` is allowed only as the leftmost label"));
            }
            continue;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "labels may contain only letters, digits, `-` and `_`",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label may not start or end with `-`"));
        }
    }
    Ok(lower)
}

/// Whether normalized `name` equals normalized `zone` or lies below it.
pub fn is_within(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// `name` and each parent, longest first: `a.b.c` → `a.b.c`, `b.c`, `c`.
pub fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |current| {
        current.split_once('.').map(|(_, parent)| parent)
    })
}

/// The `_acme-challenge` name for an identifier (`*.example.com` shares `example.com`'s).
pub fn challenge_name(identifier: &str) -> Result<String, DnsError> {
    let domain = normalize(identifier)?;
    let base = domain.strip_prefix("*.").unwrap_or(&domain);
    normalize(&format!("_acme-challenge.{base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_trailing_dot() -> Result<(), DnsError> {
        assert_eq!(normalize("App.Example.COM.")?, "app.example.com");
        assert_eq!(normalize("*.example.com")?, "*.example.com");
        assert_eq!(normalize("_acme-challenge.x.io")?, "_acme-challenge.x.io");
        Ok(())
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "a..b", "a.*.b", "a b.c", "-a.b", &"x".repeat(64)] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn within_respects_label_boundaries() {
        assert!(is_within("a.example.com", "example.com"));
        assert!(is_within("example.com", "example.com"));
        assert!(!is_within("badexample.com", "example.com"));
        assert!(!is_within("com", "example.com"));
    }

    #[test]
    fn suffixes_walk_to_the_root_label() {
        let all: Vec<_> = suffixes("a.b.c").collect();
        assert_eq!(all, ["a.b.c", "b.c", "c"]);
    }

    #[test]
    fn wildcard_shares_the_apex_challenge_name() -> Result<(), DnsError> {
        assert_eq!(
            challenge_name("*.Example.com")?,
            "_acme-challenge.example.com"
        );
        assert_eq!(
            challenge_name("example.com")?,
            "_acme-challenge.example.com"
        );
        Ok(())
    }
}
