//! Identity headers sent upstream (Authentik and oauth2-proxy presets, custom claims) and the
//! list of header names that must be stripped from every incoming request so clients cannot
//! spoof them.

use http::{HeaderName, HeaderValue};

use crate::identity::Identity;

/// Header sets compatible with the forward-auth proxies users migrate from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderPreset {
    /// Authentik's proxy outpost: `X-authentik-username`, `-groups` (pipe-separated), `-email`,
    /// `-name`, `-uid`, `-jwt`.
    Authentik,
    /// oauth2-proxy: `X-Auth-Request-User/-Email/-Groups/-Preferred-Username`,
    /// `X-Forwarded-User/-Email`.
    OAuth2Proxy,
    None,
}

const AUTHENTIK: [&str; 6] = [
    "x-authentik-username",
    "x-authentik-groups",
    "x-authentik-email",
    "x-authentik-name",
    "x-authentik-uid",
    "x-authentik-jwt",
];

const OAUTH2_PROXY: [&str; 8] = [
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
];

/// Headers a custom identity header may never name: they carry routing, framing or
/// credentials.
pub fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "cookie"
            | "set-cookie"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
            | "proxy-authorization"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
    )
}

/// The identity headers of one policy.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    preset: HeaderPreset,
    custom: Vec<(HeaderName, String)>,
    strip: Vec<HeaderName>,
}

impl IdentityHeaders {
    pub fn new(preset: HeaderPreset, custom: Vec<(HeaderName, String)>) -> Self {
        // Strip every preset's names whatever the preset: an app behind torhaus may still trust
        // the headers of the proxy it used before.
        let mut strip: Vec<HeaderName> = AUTHENTIK
            .iter()
            .chain(OAUTH2_PROXY.iter())
            .map(|n| HeaderName::from_static(n))
            .collect();
        for (name, _) in &custom {
            if !strip.contains(name) {
                strip.push(name.clone());
            }
        }
        Self {
            preset,
            custom,
            strip,
        }
    }

    pub fn preset(&self) -> HeaderPreset {
        self.preset
    }

    pub(crate) fn custom_claims(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|(_, c)| c.as_str())
    }

    /// Every header name the proxy must remove from incoming requests before it adds the
    /// identity headers (and also when a path needs no authentication).
    pub fn strip_list(&self) -> &[HeaderName] {
        &self.strip
    }

    /// True for a name that must be stripped, including any `X-authentik-*` header (the outpost
    /// also sends `X-authentik-meta-*`).
    pub fn must_strip(&self, name: &HeaderName) -> bool {
        name.as_str().starts_with("x-authentik-") || self.strip.contains(name)
    }

    /// Headers to add upstream for `identity`.
    pub fn render(&self, identity: &Identity) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        let username = identity.username.as_deref().unwrap_or(&identity.sub);
        let mut push = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.push((HeaderName::from_static(name), v));
            }
        };
        match self.preset {
            HeaderPreset::Authentik => {
                push("x-authentik-username", username);
                push("x-authentik-groups", &identity.groups.join("|"));
                if let Some(e) = &identity.email {
                    push("x-authentik-email", e);
                }
                if let Some(n) = &identity.name {
                    push("x-authentik-name", n);
                }
                push("x-authentik-uid", &identity.sub);
                if let Some(t) = &identity.raw_token {
                    push("x-authentik-jwt", t);
                }
            }
            HeaderPreset::OAuth2Proxy => {
                push("x-auth-request-user", &identity.sub);
                push("x-forwarded-user", &identity.sub);
                if let Some(e) = &identity.email {
                    push("x-auth-request-email", e);
                    push("x-forwarded-email", e);
                }
                if !identity.groups.is_empty() {
                    push("x-auth-request-groups", &identity.groups.join(","));
                }
                if let Some(u) = &identity.username {
                    push("x-auth-request-preferred-username", u);
                }
            }
            HeaderPreset::None => {}
        }
        for (name, claim) in &self.custom {
            let values = identity.claim_values(claim);
            if values.is_empty() {
                continue;
            }
            if let Ok(v) = HeaderValue::from_str(&values.join(",")) {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            sub: "alice-sub".into(),
            username: Some("alice".into()),
            email: Some("alice@example.test".into()),
            name: Some("Alice Admin".into()),
            groups: vec!["admins".into(), "users".into()],
            claims: serde_json::json!({"department": "eng", "level": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            raw_token: Some("a.b.c".into()),
        }
    }

    fn get<'a>(h: &'a [(HeaderName, HeaderValue)], n: &str) -> Option<&'a str> {
        h.iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn authentik_preset_matches_the_outpost() {
        let h = IdentityHeaders::new(HeaderPreset::Authentik, vec![]).render(&alice());
        assert_eq!(get(&h, "X-authentik-username"), Some("alice"));
        assert_eq!(get(&h, "x-authentik-groups"), Some("admins|users"));
        assert_eq!(get(&h, "x-authentik-email"), Some("alice@example.test"));
        assert_eq!(get(&h, "x-authentik-name"), Some("Alice Admin"));
        assert_eq!(get(&h, "x-authentik-uid"), Some("alice-sub"));
        assert_eq!(get(&h, "x-authentik-jwt"), Some("a.b.c"));
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn oauth2_proxy_preset() {
        let h = IdentityHeaders::new(HeaderPreset::OAuth2Proxy, vec![]).render(&alice());
        assert_eq!(get(&h, "x-auth-request-user"), Some("alice-sub"));
        assert_eq!(get(&h, "x-auth-request-email"), Some("alice@example.test"));
        assert_eq!(get(&h, "x-auth-request-groups"), Some("admins,users"));
        assert_eq!(get(&h, "x-auth-request-preferred-username"), Some("alice"));
        assert_eq!(get(&h, "x-forwarded-user"), Some("alice-sub"));
        assert_eq!(get(&h, "x-forwarded-email"), Some("alice@example.test"));
        assert_eq!(get(&h, "x-authentik-username"), None);
    }

    #[test]
    fn custom_headers_and_strip_list() {
        let custom = vec![(HeaderName::from_static("x-dept"), "department".to_owned())];
        let headers = IdentityHeaders::new(HeaderPreset::None, custom);
        let h = headers.render(&alice());
        assert_eq!(h.len(), 1);
        assert_eq!(get(&h, "x-dept"), Some("eng"));
        for n in [
            "x-dept",
            "x-authentik-jwt",
            "x-auth-request-user",
            "x-forwarded-email",
        ] {
            assert!(
                headers.strip_list().iter().any(|s| s == n),
                "{n} must be stripped"
            );
        }
        assert!(headers.must_strip(&HeaderName::from_static("x-authentik-meta-app")));
        assert!(!headers.must_strip(&HeaderName::from_static("x-forwarded-for")));
    }

    #[test]
    fn values_with_line_breaks_are_dropped_not_injected() {
        let mut id = alice();
        id.name = Some("Eve\r\nX-Admin: 1".into());
        let h = IdentityHeaders::new(HeaderPreset::Authentik, vec![]).render(&id);
        assert_eq!(get(&h, "x-authentik-name"), None);
    }
}
