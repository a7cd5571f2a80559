//! The OpenID Provider as seen by one client: discovery document and JWKS (fetched with
//! `openidconnect`, cached in an atomically swapped snapshot) and the network steps of the
//! authorization-code flow: code exchange, refresh, ID-token and logout-token verification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::JwkSet;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jwt::{
    Expectations, JwtError, KID_REFETCH_INTERVAL, now_secs, peek_claims, verify_with,
};
use crate::policy::{OidcPolicy, SigningAlg};

/// Errors talking to or believing the provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered garbage: fail closed (503).
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused (bad code, revoked refresh token...): the user must log in again.
    #[error("identity provider refused: {0}")]
    Refused(String),
    /// A token failed verification.
    #[error("token rejected: {0}")]
    Token(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Discovery fields openidconnect's core metadata lacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtraMetadata {
    #[serde(default)]
    pub end_session_endpoint: Option<url::Url>,
}

impl openidconnect::AdditionalProviderMetadata for ExtraMetadata {}

/// Discovery metadata including `end_session_endpoint`.
pub type Metadata = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Discovery metadata and keys, as one immutable snapshot.
#[derive(Debug)]
pub struct ProviderSnapshot {
    pub metadata: Metadata,
    /// The same keys for jsonwebtoken (logout tokens, bearer tokens of this issuer).
    pub jwks: JwkSet,
    pub fetched_at: Instant,
}

/// Tokens from a code exchange or refresh, after verification.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// Verified ID-token claims (absent on a refresh that returned no new ID token).
    pub claims: Option<Map<String, Value>>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub access_expires_at: Option<u64>,
}

/// One OpenID Provider for one client.
#[derive(Debug)]
pub struct Provider {
    oidc: OidcPolicy,
    http: reqwest::Client,
    snapshot: ArcSwapOption<ProviderSnapshot>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

fn to_core_alg(alg: SigningAlg) -> CoreJwsSigningAlgorithm {
    use CoreJwsSigningAlgorithm as C;
    match alg {
        SigningAlg::RS256 => C::RsaSsaPkcs1V15Sha256,
        SigningAlg::RS384 => C::RsaSsaPkcs1V15Sha384,
        SigningAlg::RS512 => C::RsaSsaPkcs1V15Sha512,
        SigningAlg::PS256 => C::RsaSsaPssSha256,
        SigningAlg::PS384 => C::RsaSsaPssSha384,
        SigningAlg::PS512 => C::RsaSsaPssSha512,
        SigningAlg::ES256 => C::EcdsaP256Sha256,
        SigningAlg::ES384 => C::EcdsaP384Sha384,
        SigningAlg::EdDSA => C::EdDsa,
        SigningAlg::HS256 => C::HmacSha256,
        SigningAlg::HS384 => C::HmacSha384,
        SigningAlg::HS512 => C::HmacSha512,
    }
}

/// The HTTP client for provider calls: no redirects (a provider never needs them for these
/// calls, and following them would be an SSRF vector), short timeouts (fail closed fast).
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .user_agent("torhaus")
        .build()
        .map_err(|e| ProviderError::Config(e.to_string()))
}

impl Provider {
    pub fn new(oidc: OidcPolicy, http: reqwest::Client) -> Self {
        Self {
            oidc,
            http,
            snapshot: ArcSwapOption::empty(),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    pub fn policy(&self) -> &OidcPolicy {
        &self.oidc
    }

    /// The cached snapshot, if discovery ever succeeded. Lock-free.
    pub fn current(&self) -> Option<Arc<ProviderSnapshot>> {
        self.snapshot.load_full()
    }

    /// Fetches discovery and JWKS now and swaps them in.
    pub async fn refresh(&self) -> Result<Arc<ProviderSnapshot>, ProviderError> {
        let issuer = IssuerUrl::new(self.oidc.issuer.clone())
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "discovery of {}: {}",
                    self.oidc.issuer,
                    error_chain(&e)
                ))
            })?;
        let jwks_json = serde_json::to_value(metadata.jwks())
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let jwks: JwkSet = serde_json::from_value(jwks_json).map_err(|e| {
            ProviderError::Unavailable(format!("JWKS of {}: {e}", self.oidc.issuer))
        })?;
        let snap = Arc::new(ProviderSnapshot {
            metadata,
            jwks,
            fetched_at: Instant::now(),
        });
        self.snapshot.store(Some(Arc::clone(&snap)));
        Ok(snap)
    }

    /// The cached snapshot, or a fresh one when there is none yet.
    pub async fn snapshot(&self) -> Result<Arc<ProviderSnapshot>, ProviderError> {
        match self.current() {
            Some(s) => Ok(s),
            None => self.refresh().await,
        }
    }

    /// Refetches because a token did not verify with the cached keys, at most once per
    /// [`KID_REFETCH_INTERVAL`] (scheduled refreshes do not count); concurrent callers share
    /// one fetch.
    pub async fn refresh_rate_limited(&self) -> Result<Arc<ProviderSnapshot>, ProviderError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL)
            && let Some(s) = self.current()
        {
            return Ok(s);
        }
        *last = Some(Instant::now());
        self.refresh().await
    }

    fn client(
        &self,
        snap: &ProviderSnapshot,
        redirect_uri: &str,
    ) -> Result<OidcClient, ProviderError> {
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            snap.metadata.clone(),
            ClientId::new(self.oidc.client_id.clone()),
            Some(ClientSecret::new(self.oidc.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Builds the authorization URL with fresh state, nonce and PKCE (S256). Pure given the
    /// snapshot. Returns `(url, state, nonce, pkce_verifier)`.
    pub fn authorization_url(
        &self,
        snap: &ProviderSnapshot,
        redirect_uri: &str,
    ) -> Result<(url::Url, String, String, String), ProviderError> {
        let client = self.client(snap, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.oidc.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        Ok((
            url,
            state.secret().clone(),
            nonce.secret().clone(),
            verifier.secret().clone(),
        ))
    }

    fn id_token_claims(
        &self,
        client: &OidcClient,
        id_token: &openidconnect::core::CoreIdToken,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, ProviderError> {
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(self.oidc.id_token_algs.iter().map(|a| to_core_alg(*a)));
        let result = match nonce {
            Some(n) => id_token
                .claims(&verifier, &Nonce::new(n.to_owned()))
                .map(|_| ()),
            // A refreshed ID token carries no nonce of ours.
            None => id_token
                .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                .map(|_| ()),
        };
        result.map_err(|e| ProviderError::Token(format!("ID token: {e}")))?;
        // The signature and standard claims are verified above; read the full claim set
        // (groups, sid...) from the same token.
        peek_claims(&id_token.to_string())
            .ok_or_else(|| ProviderError::Token("ID token payload".into()))
    }

    /// Exchanges an authorization code (with its PKCE verifier) and verifies the ID token
    /// against `nonce`. A kid the cached keys do not know triggers one rate-limited refetch.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        redirect_uri: &str,
    ) -> Result<TokenSet, ProviderError> {
        let snap = self.snapshot().await?;
        let client = self.client(&snap, redirect_uri)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| ProviderError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(classify_token_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| ProviderError::Token("no ID token in the response".into()))?;
        let claims = match self.id_token_claims(&client, id_token, Some(nonce)) {
            Ok(c) => c,
            Err(first) => {
                // Perhaps the provider rotated its keys since we cached them.
                let fresh = self.refresh_rate_limited().await?;
                if Arc::ptr_eq(&fresh, &snap) {
                    return Err(first);
                }
                let client = self.client(&fresh, redirect_uri)?;
                self.id_token_claims(&client, id_token, Some(nonce))?
            }
        };
        Ok(TokenSet {
            claims: Some(claims),
            id_token: Some(id_token.to_string()),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
            access_expires_at: response.expires_in().map(|d| now_secs() + d.as_secs()),
        })
    }

    /// Uses a refresh token. `Refused` means the grant is gone: log in again.
    pub async fn refresh_tokens(
        &self,
        refresh_token: &str,
        redirect_uri: &str,
    ) -> Result<TokenSet, ProviderError> {
        let snap = self.snapshot().await?;
        let client = self.client(&snap, redirect_uri)?;
        let rt = RefreshToken::new(refresh_token.to_owned());
        let response = client
            .exchange_refresh_token(&rt)
            .map_err(|e| ProviderError::Config(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(classify_token_error)?;
        let (claims, id_token) = match response.id_token() {
            Some(t) => {
                let claims = match self.id_token_claims(&client, t, None) {
                    Ok(c) => c,
                    Err(_) => {
                        let fresh = self.refresh_rate_limited().await?;
                        self.id_token_claims(&self.client(&fresh, redirect_uri)?, t, None)?
                    }
                };
                (Some(claims), Some(t.to_string()))
            }
            None => (None, None),
        };
        Ok(TokenSet {
            claims,
            id_token,
            // Providers that rotate refresh tokens return a new one; others keep the old.
            refresh_token: Some(
                response
                    .refresh_token()
                    .map_or_else(|| refresh_token.to_owned(), |t| t.secret().clone()),
            ),
            access_expires_at: response.expires_in().map(|d| now_secs() + d.as_secs()),
        })
    }

    /// RP-initiated logout URL (OpenID Connect RP-Initiated Logout 1.0), if the provider
    /// advertises an end_session_endpoint.
    pub fn logout_url(
        &self,
        snap: &ProviderSnapshot,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
    ) -> Option<url::Url> {
        let mut url = snap
            .metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair("client_id", &self.oidc.client_id);
            if let Some(uri) = post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", uri);
            }
        }
        Some(url)
    }

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6):
    /// signature with the configured ID-token algorithms, iss, aud, iat, the logout event, a
    /// sid or sub, and no nonce. Returns `(sub, sid)`.
    pub async fn verify_logout_token(
        &self,
        token: &str,
    ) -> Result<(Option<String>, Option<String>), ProviderError> {
        let snap = self.snapshot().await?;
        let check = |keys: &JwkSet| {
            verify_with(
                token,
                Some(keys),
                Some(self.oidc.client_secret.as_bytes()),
                &Expectations {
                    issuer: &self.oidc.issuer,
                    audiences: std::slice::from_ref(&self.oidc.client_id),
                    algorithms: &self.oidc.id_token_algs,
                    leeway: Duration::from_secs(60),
                    require_exp: false,
                },
            )
        };
        let claims = match check(&snap.jwks) {
            Err(JwtError::UnknownKey) => check(&self.refresh_rate_limited().await?.jwks),
            other => other,
        }
        .map_err(|e| ProviderError::Token(format!("logout token: {e}")))?;
        let iat = claims.get("iat").and_then(Value::as_u64);
        if iat.is_none_or(|iat| iat + 600 < now_secs()) {
            return Err(ProviderError::Token(
                "logout token: iat missing or too old".into(),
            ));
        }
        let has_event = claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout"));
        if !has_event {
            return Err(ProviderError::Token(
                "logout token: no back-channel logout event".into(),
            ));
        }
        if claims.contains_key("nonce") {
            return Err(ProviderError::Token(
                "logout token: must not carry a nonce".into(),
            ));
        }
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(ProviderError::Token(
                "logout token: needs sid or sub".into(),
            ));
        }
        Ok((sub, sid))
    }
}

type OidcClient = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn classify_token_error<RE>(
    e: openidconnect::RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> ProviderError
where
    RE: std::error::Error + 'static,
{
    match &e {
        openidconnect::RequestTokenError::ServerResponse(r) => {
            ProviderError::Refused(r.to_string())
        }
        openidconnect::RequestTokenError::Request(_) => ProviderError::Unavailable(error_chain(&e)),
        _ => ProviderError::Refused(error_chain(&e)),
    }
}
