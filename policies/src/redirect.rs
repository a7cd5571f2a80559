//! Return-URL checks: after login or logout the browser may only be sent to the request's own
//! host, the session cookie domain or configured domains (no open redirect).

/// Hosts and domains a return URL may point to.
#[derive(Debug, Clone, Default)]
pub struct RedirectScope<'a> {
    /// The host of the request being served (with or without port).
    pub request_host: &'a str,
    /// Domains whose host and subdomains are allowed (cookie domain, allowedRedirectDomains).
    pub domains: &'a [String],
    pub cookie_domain: Option<&'a str>,
}

fn host_only(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority
            .split_once(']')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn under(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl RedirectScope<'_> {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host_only(host);
        host == host_only(self.request_host)
            || self.cookie_domain.is_some_and(|d| under(&host, d))
            || self.domains.iter().any(|d| under(&host, d))
    }

    /// Returns `candidate` when it is a safe place to send the browser: a local path
    /// (`/x`, never `//x` or `/\x`) or an absolute http(s) URL on an allowed host without
    /// credentials. Anything else yields None.
    pub fn check(&self, candidate: &str) -> Option<String> {
        if candidate.is_empty()
            || candidate.len() > 4096
            || candidate.chars().any(|c| c.is_control())
        {
            return None;
        }
        if candidate.starts_with('/') {
            let second = candidate.as_bytes().get(1);
            if matches!(second, Some(b'/' | b'\\')) {
                return None;
            }
            return Some(candidate.to_owned());
        }
        let url = url::Url::parse(candidate).ok()?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return None;
        }
        let host = url.host_str()?;
        self.host_allowed(host).then(|| url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_and_allowed_hosts() {
        let domains = vec!["example.org".to_owned()];
        let scope = RedirectScope {
            request_host: "app.home.test:8443",
            domains: &domains,
            cookie_domain: Some("home.test"),
        };
        assert_eq!(scope.check("/dash?x=1").as_deref(), Some("/dash?x=1"));
        assert!(scope.check("https://app.home.test:8443/x").is_some());
        assert!(scope.check("https://other.home.test/x").is_some());
        assert!(scope.check("https://home.test/").is_some());
        assert!(scope.check("https://wiki.example.org/").is_some());
        for evil in [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "https://home.test.evil.test/",
            "https://evilhome.test/",
            "https://home.test@evil.test/",
            "https://user:pw@app.home.test/",
            "javascript:alert(1)",
            "data:text/html,x",
            "https://evil.test\\@app.home.test/",
            "\t//evil.test",
            "",
            "evil.test",
        ] {
            assert_eq!(scope.check(evil), None, "{evil}");
        }
    }

    #[test]
    fn without_cookie_domain_only_the_request_host() {
        let scope = RedirectScope {
            request_host: "127.0.0.1:8080",
            domains: &[],
            cookie_domain: None,
        };
        assert!(scope.check("http://127.0.0.1:8080/a").is_some());
        assert!(
            scope.check("http://127.0.0.1:9999/a").is_some(),
            "ports do not change the host"
        );
        assert!(scope.check("http://localhost:8080/a").is_none());
    }
}
