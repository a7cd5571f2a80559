//! The `AuthPolicy` object (`torhaus.dev/v1alpha1`) as users write it: serde wire types only,
//! strict about unknown fields. [`crate::policy`] turns them into validated runtime types.

use serde::{Deserialize, Serialize};

/// API group and version of the policy object.
pub const API_VERSION: &str = "torhaus.dev/v1alpha1";
/// Kind of the policy object.
pub const KIND: &str = "AuthPolicy";

/// One `AuthPolicy` manifest (a CRD in a cluster, the same YAML in standalone mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AuthPolicySpec,
    /// Written by the controller; accepted and ignored on input so that `kubectl get -o yaml`
    /// output can be fed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl AuthPolicy {
    /// The Secrets (of the policy's namespace) the policy reads: the gateway watches exactly
    /// these.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .spec
            .oidc
            .iter()
            .map(|o| o.client_secret_ref.name.clone())
            .chain(
                self.spec
                    .session
                    .iter()
                    .flat_map(|s| s.key_secret_refs.iter().map(|r| r.name.clone())),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The subset of Kubernetes object metadata the policy uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// RFC 3339; the older policy wins a conflict at the same attachment level.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Anything else Kubernetes puts here (labels, uid, resourceVersion...) is ignored.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthPolicySpec {
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub oidc: Option<OidcSpec>,
    #[serde(default)]
    pub session: Option<SessionSpec>,
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    #[serde(default)]
    pub authorization: Option<AuthorizationSpec>,
    #[serde(default)]
    pub unauthenticated_paths: Vec<PathMatchSpec>,
    #[serde(default)]
    pub identity_headers: Option<IdentityHeadersSpec>,
    /// Extra domains (and their subdomains) that return URLs may point to, beside the request's
    /// own host and the session cookie domain.
    #[serde(default)]
    pub allowed_redirect_domains: Vec<String>,
}

/// Gateway API policy attachment (GEP-713): a target in the policy's own namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default = "gateway_group")]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// For an HTTPRoute: the `name` of one rule. For a Gateway: a listener name.
    #[serde(default)]
    pub section_name: Option<String>,
}

fn gateway_group() -> String {
    "gateway.networking.k8s.io".to_owned()
}

/// A key in a Secret of the policy's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSpec {
    /// Issuer URL exactly as the provider reports it (Authentik:
    /// `https://auth.example.com/application/o/<slug>/`, with the trailing slash).
    pub issuer: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub client_secret_ref: SecretKeyRef,
    /// Default `[openid, profile, email, offline_access]`; `openid` is always added.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Algorithms the ID token may be signed with; default `[RS256]`. Authentik without a
    /// signing key signs with the client secret: use `[HS256]`.
    #[serde(default)]
    pub id_token_signing_algorithms: Option<Vec<String>>,
    /// Default `/oauth2/callback` on the request's own host.
    #[serde(default)]
    pub callback_path: Option<String>,
    /// Absolute callback URL, when one host handles every callback (needs a cookie domain).
    #[serde(rename = "redirectURL", default)]
    pub redirect_url: Option<String>,
    /// Default `/oauth2/sign_out`.
    #[serde(default)]
    pub logout_path: Option<String>,
    /// Where the provider sends the browser after logout; default `/` on the request's host.
    #[serde(rename = "postLogoutRedirectURL", default)]
    pub post_logout_redirect_url: Option<String>,
    /// Default `/oauth2/backchannel-logout`.
    #[serde(default)]
    pub backchannel_logout_path: Option<String>,
    #[serde(default)]
    pub refresh: Option<RefreshSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshSpec {
    /// Default true: refresh with the refresh token before the access token expires.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How long before expiry to refresh (GEP-2257 duration like `60s`); default `60s`.
    #[serde(default)]
    pub before: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    /// Default `torhaus_session`.
    #[serde(default)]
    pub cookie_name: Option<String>,
    /// e.g. `example.com`: one login for every host under it.
    #[serde(default)]
    pub cookie_domain: Option<String>,
    /// At least 32 bytes of random key material. Several keys may be listed: the first
    /// encrypts, all decrypt (rotation).
    pub key_secret_refs: Vec<SecretKeyRef>,
    /// Absolute session lifetime; default `24h`.
    #[serde(default)]
    pub max_age: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtSpec {
    pub issuers: Vec<JwtIssuerSpec>,
    /// Clock skew allowed for exp/nbf/iat; default `30s`, at most `5m`.
    #[serde(default)]
    pub leeway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIssuerSpec {
    pub issuer: String,
    /// Default: the `jwks_uri` of the issuer's discovery document.
    #[serde(rename = "jwksURI", default)]
    pub jwks_uri: Option<String>,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Default `[RS256]`. Asymmetric algorithms only: the token never chooses.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
}

/// Every non-empty list must match (AND); within a list one match suffices (OR).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationSpec {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub email_domains: Vec<String>,
    #[serde(default)]
    pub claims: Vec<ClaimRuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRuleSpec {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatchSpec {
    /// `PathPrefix` (default), `Exact` or `RegularExpression`, as in HTTPRoute.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityHeadersSpec {
    /// `authentik` (default), `oauth2-proxy` or `none`.
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub custom: Vec<CustomHeaderSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomHeaderSpec {
    pub name: String,
    /// A claim name (`sub`, `email`, `groups`, or any claim of the token).
    pub claim: String,
}
