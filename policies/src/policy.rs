//! Validated runtime policy: what [`crate::config::AuthPolicy`] becomes once every field is
//! checked and every Secret resolved, plus attachment precedence (rule > route > gateway).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::config::{self, AuthPolicy, SecretKeyRef};
use crate::headers::{HeaderPreset, IdentityHeaders};

/// A configuration error naming the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AuthPolicy {object}: {field}: {message}")]
pub struct ConfigError {
    /// `namespace/name`.
    pub object: String,
    /// JSON path of the field, e.g. `spec.oidc.issuer`.
    pub field: String,
    pub message: String,
}

/// Where Secret values come from (the k8s layer or a directory of manifests).
pub trait SecretSource {
    /// The bytes of `key` in Secret `namespace/name`, if it exists.
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>>;
}

impl<F> SecretSource for F
where
    F: Fn(&str, &str, &str) -> Option<Vec<u8>>,
{
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        self(namespace, name, key)
    }
}

/// Something a policy attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Gateway {
        name: String,
    },
    /// `section` is a listener name.
    Listener {
        name: String,
        section: String,
    },
    Route {
        name: String,
    },
    RouteRule {
        name: String,
        rule: String,
    },
}

/// JWS algorithms accepted from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SigningAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl SigningAlg {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            _ => return None,
        })
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

#[derive(Debug, Clone)]
pub struct OidcPolicy {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub id_token_algs: Vec<SigningAlg>,
    pub callback_path: String,
    pub redirect_url: Option<url::Url>,
    pub logout_path: String,
    pub post_logout_redirect_url: Option<url::Url>,
    pub backchannel_logout_path: String,
    pub refresh_enabled: bool,
    pub refresh_before: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
    /// Raw key material; the first key encrypts.
    pub keys: Vec<Vec<u8>>,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub issuer: String,
    pub jwks_uri: Option<url::Url>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<SigningAlg>,
}

#[derive(Debug, Clone)]
pub struct JwtPolicy {
    pub issuers: Vec<JwtIssuer>,
    pub leeway: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub groups: Vec<String>,
    pub emails: Vec<String>,
    /// Lower-case, without a leading `@`.
    pub email_domains: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            // HTTPRoute semantics: `/api` matches `/api` and `/api/x`, not `/apix`.
            Self::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || path == prefix
                    || (path.starts_with(prefix)
                        && path.as_bytes().get(prefix.len()) == Some(&b'/'))
            }
            Self::Exact(exact) => path == exact,
            Self::Regex(re) => re.is_match(path),
        }
    }
}

/// A validated policy, ready for an [`crate::Authenticator`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub targets: Vec<Target>,
    pub oidc: Option<OidcPolicy>,
    pub session: Option<SessionPolicy>,
    pub jwt: Option<JwtPolicy>,
    pub rules: Rules,
    pub unauthenticated: Vec<PathMatch>,
    pub headers: IdentityHeaders,
    pub allowed_redirect_domains: Vec<String>,
    /// For conflict resolution at one attachment level.
    pub creation_timestamp: Option<String>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Claim names the session must keep: those the rules and custom headers read.
    pub fn referenced_claims(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> =
            self.rules.claims.iter().map(|(n, _)| n.clone()).collect();
        names.extend(self.headers.custom_claims().map(str::to_owned));
        names
    }
}

struct Ctx<'a> {
    object: String,
    namespace: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn secret(
        &self,
        secrets: &dyn SecretSource,
        field: &str,
        r: &SecretKeyRef,
    ) -> Result<Vec<u8>, ConfigError> {
        secrets.get(self.namespace, &r.name, &r.key).ok_or_else(|| {
            self.err(
                field,
                format!(
                    "Secret {}/{} has no key {:?}",
                    self.namespace, r.name, r.key
                ),
            )
        })
    }

    fn duration(
        &self,
        field: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v).map_err(|e| {
                self.err(
                    field,
                    format!("{v:?} is not a duration like 60s or 1h30m: {e}"),
                )
            }),
        }
    }

    fn url(&self, field: &str, value: &str) -> Result<url::Url, ConfigError> {
        let url = url::Url::parse(value)
            .map_err(|e| self.err(field, format!("{value:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(
                field,
                format!("{value:?} must be an http(s) URL with a host"),
            ));
        }
        Ok(url)
    }

    fn path(&self, field: &str, value: Option<&str>, default: &str) -> Result<String, ConfigError> {
        let path = value.unwrap_or(default);
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(self.err(
                field,
                format!("{path:?} must be an absolute path without query"),
            ));
        }
        Ok(path.to_owned())
    }

    fn algs(
        &self,
        field: &str,
        values: Option<&[String]>,
        allow_symmetric: bool,
    ) -> Result<Vec<SigningAlg>, ConfigError> {
        let Some(values) = values else {
            return Ok(vec![SigningAlg::RS256]);
        };
        if values.is_empty() {
            return Err(self.err(field, "must list at least one algorithm"));
        }
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let alg = SigningAlg::parse(v).ok_or_else(|| {
                self.err(
                    format!("{field}[{i}]"),
                    format!("unsupported algorithm {v:?}"),
                )
            })?;
            if alg.is_symmetric() && !allow_symmetric {
                return Err(self.err(
                    format!("{field}[{i}]"),
                    format!(
                        "{v} needs a shared secret; bearer tokens must use public-key algorithms"
                    ),
                ));
            }
            out.push(alg);
        }
        let symmetric = out.iter().filter(|a| a.is_symmetric()).count();
        if symmetric > 0 && symmetric < out.len() {
            // Mixing families is how RS256/HS256 confusion attacks start.
            return Err(self.err(field, "do not mix HMAC (HS*) and public-key algorithms"));
        }
        Ok(out)
    }
}

fn domain_ok(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl AuthPolicy {
    /// `namespace/name` as used in messages.
    pub fn object_key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }

    /// Checks every field and resolves Secrets. Errors name the object and the field.
    pub fn validate(&self, secrets: &dyn SecretSource) -> Result<Policy, ConfigError> {
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        let cx = Ctx {
            object: self.object_key(),
            namespace,
        };
        if self.api_version != config::API_VERSION {
            return Err(cx.err("apiVersion", format!("expected {}", config::API_VERSION)));
        }
        if self.kind != config::KIND {
            return Err(cx.err("kind", format!("expected {}", config::KIND)));
        }
        if self.metadata.name.is_empty() {
            return Err(cx.err("metadata.name", "must not be empty"));
        }
        let spec = &self.spec;
        if spec.target_refs.is_empty() {
            return Err(cx.err(
                "spec.targetRefs",
                "must name at least one Gateway or HTTPRoute",
            ));
        }
        let mut targets = Vec::new();
        for (i, t) in spec.target_refs.iter().enumerate() {
            let field = format!("spec.targetRefs[{i}]");
            if t.group != "gateway.networking.k8s.io" {
                return Err(cx.err(
                    format!("{field}.group"),
                    "must be gateway.networking.k8s.io",
                ));
            }
            if t.name.is_empty() {
                return Err(cx.err(format!("{field}.name"), "must not be empty"));
            }
            let name = t.name.clone();
            targets.push(match (t.kind.as_str(), &t.section_name) {
                ("Gateway", None) => Target::Gateway { name },
                ("Gateway", Some(s)) => Target::Listener {
                    name,
                    section: s.clone(),
                },
                ("HTTPRoute", None) => Target::Route { name },
                ("HTTPRoute", Some(s)) => Target::RouteRule {
                    name,
                    rule: s.clone(),
                },
                (other, _) => {
                    return Err(cx.err(
                        format!("{field}.kind"),
                        format!("{other:?}: must be Gateway or HTTPRoute"),
                    ));
                }
            });
        }

        let session = match &spec.session {
            None => None,
            Some(s) => {
                let cookie_name = s
                    .cookie_name
                    .clone()
                    .unwrap_or_else(|| "torhaus_session".to_owned());
                if cookie_name.is_empty()
                    || !cookie_name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(cx.err("spec.session.cookieName", "letters, digits, _ and - only"));
                }
                let cookie_domain = match &s.cookie_domain {
                    None => None,
                    Some(d) => {
                        let d = d.trim_start_matches('.').to_ascii_lowercase();
                        if !domain_ok(&d) || !d.contains('.') {
                            return Err(cx.err(
                                "spec.session.cookieDomain",
                                format!("{d:?} is not a domain with a dot"),
                            ));
                        }
                        Some(d)
                    }
                };
                if s.key_secret_refs.is_empty() {
                    return Err(cx.err("spec.session.keySecretRefs", "must name at least one key"));
                }
                let mut keys = Vec::new();
                for (i, r) in s.key_secret_refs.iter().enumerate() {
                    let field = format!("spec.session.keySecretRefs[{i}]");
                    let key = cx.secret(secrets, &field, r)?;
                    if key.len() < 32 {
                        return Err(cx.err(field, "the key must hold at least 32 bytes"));
                    }
                    keys.push(key);
                }
                let max_age = cx.duration(
                    "spec.session.maxAge",
                    s.max_age.as_deref(),
                    Duration::from_secs(86_400),
                )?;
                if max_age < Duration::from_secs(60) {
                    return Err(cx.err("spec.session.maxAge", "must be at least 1m"));
                }
                Some(SessionPolicy {
                    cookie_name,
                    cookie_domain,
                    keys,
                    max_age,
                })
            }
        };

        let oidc = match &spec.oidc {
            None => None,
            Some(o) => {
                if session.is_none() {
                    return Err(cx.err(
                        "spec.session",
                        "OIDC login needs a session (spec.session.keySecretRefs)",
                    ));
                }
                cx.url("spec.oidc.issuer", &o.issuer)?;
                if o.client_id.is_empty() {
                    return Err(cx.err("spec.oidc.clientID", "must not be empty"));
                }
                let secret =
                    cx.secret(secrets, "spec.oidc.clientSecretRef", &o.client_secret_ref)?;
                let client_secret = String::from_utf8(secret).map_err(|_| {
                    cx.err(
                        "spec.oidc.clientSecretRef",
                        "the client secret is not UTF-8",
                    )
                })?;
                let mut scopes = o.scopes.clone().unwrap_or_else(|| {
                    ["openid", "profile", "email", "offline_access"]
                        .map(str::to_owned)
                        .to_vec()
                });
                if let Some(bad) = scopes
                    .iter()
                    .position(|s| s.is_empty() || s.contains(char::is_whitespace))
                {
                    return Err(cx.err(
                        format!("spec.oidc.scopes[{bad}]"),
                        "a scope is one non-empty word",
                    ));
                }
                if !scopes.iter().any(|s| s == "openid") {
                    scopes.insert(0, "openid".to_owned());
                }
                let id_token_algs = cx.algs(
                    "spec.oidc.idTokenSigningAlgorithms",
                    o.id_token_signing_algorithms.as_deref(),
                    true,
                )?;
                if id_token_algs.iter().any(|a| a.is_symmetric()) && client_secret.len() < 32 {
                    return Err(cx.err(
                        "spec.oidc.clientSecretRef",
                        "HS256 ID tokens are signed with the client secret: it must be at least 32 bytes",
                    ));
                }
                let redirect_url = o
                    .redirect_url
                    .as_deref()
                    .map(|u| cx.url("spec.oidc.redirectURL", u))
                    .transpose()?;
                if let Some(u) = &redirect_url {
                    // The login-state cookie must reach the callback host, and the session
                    // cookie must come back to the app's host: both need a shared domain.
                    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
                    let domain = session.as_ref().and_then(|s| s.cookie_domain.as_deref());
                    let shared = domain.is_some_and(|d| {
                        host == d || host.strip_suffix(d).is_some_and(|rest| rest.ends_with('.'))
                    });
                    if !shared {
                        return Err(cx.err(
                            "spec.oidc.redirectURL",
                            "a central callback host must lie under spec.session.cookieDomain",
                        ));
                    }
                }
                let callback_path = match &redirect_url {
                    Some(u) => u.path().to_owned(),
                    None => cx.path(
                        "spec.oidc.callbackPath",
                        o.callback_path.as_deref(),
                        "/oauth2/callback",
                    )?,
                };
                let logout_path = cx.path(
                    "spec.oidc.logoutPath",
                    o.logout_path.as_deref(),
                    "/oauth2/sign_out",
                )?;
                let backchannel_logout_path = cx.path(
                    "spec.oidc.backchannelLogoutPath",
                    o.backchannel_logout_path.as_deref(),
                    "/oauth2/backchannel-logout",
                )?;
                if callback_path == logout_path
                    || callback_path == backchannel_logout_path
                    || logout_path == backchannel_logout_path
                {
                    return Err(cx.err(
                        "spec.oidc",
                        "callbackPath, logoutPath and backchannelLogoutPath must differ",
                    ));
                }
                let post_logout_redirect_url = o
                    .post_logout_redirect_url
                    .as_deref()
                    .map(|u| cx.url("spec.oidc.postLogoutRedirectURL", u))
                    .transpose()?;
                let refresh = o.refresh.clone().unwrap_or(config::RefreshSpec {
                    enabled: None,
                    before: None,
                });
                let refresh_before = cx.duration(
                    "spec.oidc.refresh.before",
                    refresh.before.as_deref(),
                    Duration::from_secs(60),
                )?;
                Some(OidcPolicy {
                    issuer: o.issuer.clone(),
                    client_id: o.client_id.clone(),
                    client_secret,
                    scopes,
                    id_token_algs,
                    callback_path,
                    redirect_url,
                    logout_path,
                    post_logout_redirect_url,
                    backchannel_logout_path,
                    refresh_enabled: refresh.enabled.unwrap_or(true),
                    refresh_before,
                })
            }
        };

        let jwt = match &spec.jwt {
            None => None,
            Some(j) => {
                if j.issuers.is_empty() {
                    return Err(cx.err("spec.jwt.issuers", "must list at least one issuer"));
                }
                let leeway = cx.duration(
                    "spec.jwt.leeway",
                    j.leeway.as_deref(),
                    Duration::from_secs(30),
                )?;
                if leeway > Duration::from_secs(300) {
                    return Err(cx.err("spec.jwt.leeway", "at most 5m"));
                }
                let mut issuers = Vec::new();
                for (i, is) in j.issuers.iter().enumerate() {
                    let field = format!("spec.jwt.issuers[{i}]");
                    cx.url(&format!("{field}.issuer"), &is.issuer)?;
                    let jwks_uri = is
                        .jwks_uri
                        .as_deref()
                        .map(|u| cx.url(&format!("{field}.jwksURI"), u))
                        .transpose()?;
                    if is.audiences.is_empty() || is.audiences.iter().any(String::is_empty) {
                        return Err(cx.err(
                            format!("{field}.audiences"),
                            "must list at least one non-empty audience",
                        ));
                    }
                    let algorithms = cx.algs(
                        &format!("{field}.algorithms"),
                        is.algorithms.as_deref(),
                        false,
                    )?;
                    issuers.push(JwtIssuer {
                        issuer: is.issuer.clone(),
                        jwks_uri,
                        audiences: is.audiences.clone(),
                        algorithms,
                    });
                }
                Some(JwtPolicy { issuers, leeway })
            }
        };

        if oidc.is_none() && jwt.is_none() {
            return Err(cx.err("spec", "needs spec.oidc, spec.jwt or both"));
        }

        let rules = match &spec.authorization {
            None => Rules::default(),
            Some(a) => {
                let mut email_domains = Vec::new();
                for (i, d) in a.email_domains.iter().enumerate() {
                    let d = d.trim_start_matches('@').to_ascii_lowercase();
                    if !domain_ok(&d) {
                        return Err(cx.err(
                            format!("spec.authorization.emailDomains[{i}]"),
                            format!("{d:?} is not a domain"),
                        ));
                    }
                    email_domains.push(d);
                }
                let mut claims = Vec::new();
                for (i, c) in a.claims.iter().enumerate() {
                    if c.name.is_empty() {
                        return Err(cx.err(
                            format!("spec.authorization.claims[{i}].name"),
                            "must not be empty",
                        ));
                    }
                    if c.values.is_empty() {
                        return Err(cx.err(
                            format!("spec.authorization.claims[{i}].values"),
                            "must list at least one value",
                        ));
                    }
                    claims.push((c.name.clone(), c.values.clone()));
                }
                Rules {
                    groups: a.groups.clone(),
                    emails: a.emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
                    email_domains,
                    claims,
                }
            }
        };

        let mut unauthenticated = Vec::new();
        for (i, p) in spec.unauthenticated_paths.iter().enumerate() {
            let field = format!("spec.unauthenticatedPaths[{i}]");
            unauthenticated.push(match p.kind.as_deref().unwrap_or("PathPrefix") {
                "PathPrefix" | "Exact" if !p.value.starts_with('/') => {
                    return Err(cx.err(format!("{field}.value"), "must start with /"));
                }
                "PathPrefix" => PathMatch::Prefix(p.value.clone()),
                "Exact" => PathMatch::Exact(p.value.clone()),
                "RegularExpression" => {
                    PathMatch::Regex(Regex::new(&format!("^(?:{})$", p.value)).map_err(|e| {
                        cx.err(
                            format!("{field}.value"),
                            format!("bad regular expression: {e}"),
                        )
                    })?)
                }
                other => {
                    return Err(cx.err(
                        format!("{field}.type"),
                        format!("{other:?}: PathPrefix, Exact or RegularExpression"),
                    ));
                }
            });
        }

        let headers_spec = spec.identity_headers.clone().unwrap_or_default();
        let preset = match headers_spec.preset.as_deref().unwrap_or("authentik") {
            "authentik" => HeaderPreset::Authentik,
            "oauth2-proxy" => HeaderPreset::OAuth2Proxy,
            "none" => HeaderPreset::None,
            other => {
                return Err(cx.err(
                    "spec.identityHeaders.preset",
                    format!("{other:?}: authentik, oauth2-proxy or none"),
                ));
            }
        };
        let mut custom = Vec::new();
        for (i, c) in headers_spec.custom.iter().enumerate() {
            let name = http::HeaderName::from_bytes(c.name.as_bytes()).map_err(|_| {
                cx.err(
                    format!("spec.identityHeaders.custom[{i}].name"),
                    format!("{:?} is not a header name", c.name),
                )
            })?;
            if crate::headers::is_reserved(&name) {
                return Err(cx.err(
                    format!("spec.identityHeaders.custom[{i}].name"),
                    format!("{name} may not be set"),
                ));
            }
            if c.claim.is_empty() {
                return Err(cx.err(
                    format!("spec.identityHeaders.custom[{i}].claim"),
                    "must not be empty",
                ));
            }
            custom.push((name, c.claim.clone()));
        }

        let mut allowed_redirect_domains = Vec::new();
        for (i, d) in spec.allowed_redirect_domains.iter().enumerate() {
            let d = d.trim_start_matches('.').to_ascii_lowercase();
            if !domain_ok(&d) {
                return Err(cx.err(
                    format!("spec.allowedRedirectDomains[{i}]"),
                    format!("{d:?} is not a domain"),
                ));
            }
            allowed_redirect_domains.push(d);
        }

        Ok(Policy {
            namespace: namespace.to_owned(),
            name: self.metadata.name.clone(),
            targets,
            oidc,
            session,
            jwt,
            rules,
            unauthenticated,
            headers: IdentityHeaders::new(preset, custom),
            allowed_redirect_domains,
            creation_timestamp: self.metadata.creation_timestamp.clone(),
        })
    }
}

/// Every validated policy of a configuration, indexed for attachment lookups.
///
/// Precedence (documented in the README): a policy attached to an HTTPRoute rule
/// (`sectionName`) beats one attached to the HTTPRoute, which beats one attached to a Gateway
/// listener, which beats one attached to the Gateway. The most specific policy applies whole;
/// fields are not merged across levels. Two policies at the same level: the older
/// (`creationTimestamp`) wins, then the alphabetically first `namespace/name`, as Gateway API
/// policy attachment prescribes.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
}

/// Which level of attachment selected the effective policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttachLevel {
    Gateway,
    Listener,
    Route,
    RouteRule,
}

impl PolicySet {
    pub fn new(mut policies: Vec<Arc<Policy>>) -> Self {
        policies.sort_by(|a, b| {
            let ta = a.creation_timestamp.as_deref().unwrap_or("9999");
            let tb = b.creation_timestamp.as_deref().unwrap_or("9999");
            ta.cmp(tb).then_with(|| a.key().cmp(&b.key()))
        });
        Self { policies }
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The policy in force for one route rule. `gateway` and `route` are `(namespace, name)`;
    /// `listener` and `rule` are section names when known.
    pub fn effective(
        &self,
        gateway: (&str, &str),
        listener: Option<&str>,
        route: (&str, &str),
        rule: Option<&str>,
    ) -> Option<(AttachLevel, Arc<Policy>)> {
        let mut best: Option<(AttachLevel, &Arc<Policy>)> = None;
        for p in &self.policies {
            for t in &p.targets {
                let level = match t {
                    Target::RouteRule { name, rule: r }
                        if p.namespace == route.0
                            && name == route.1
                            && Some(r.as_str()) == rule =>
                    {
                        AttachLevel::RouteRule
                    }
                    Target::Route { name } if p.namespace == route.0 && name == route.1 => {
                        AttachLevel::Route
                    }
                    Target::Listener { name, section }
                        if p.namespace == gateway.0
                            && name == gateway.1
                            && Some(section.as_str()) == listener =>
                    {
                        AttachLevel::Listener
                    }
                    Target::Gateway { name } if p.namespace == gateway.0 && name == gateway.1 => {
                        AttachLevel::Gateway
                    }
                    _ => continue,
                };
                // Strictly greater: at equal level the earlier (older) policy stays.
                if best.is_none_or(|(l, _)| level > l) {
                    best = Some((level, p));
                }
            }
        }
        best.map(|(l, p)| (l, Arc::clone(p)))
    }
}
