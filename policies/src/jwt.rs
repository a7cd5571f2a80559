//! Bearer JWT verification against cached JWKS: algorithms from configuration only, exp/nbf/iat
//! with leeway, issuer and audience checked; a kid miss triggers a rate-limited refetch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::policy::{JwtIssuer, SigningAlg};
use crate::recent::Recent;

/// Refetch the key set at most this often because of unknown key ids (a token with a random
/// kid must not turn the gateway into a JWKS fetch amplifier).
pub const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    #[error("issuer is not configured")]
    UnknownIssuer,
    #[error("no key with this key id")]
    UnknownKey,
    #[error("the key does not fit the algorithm")]
    KeyMismatch,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("wrong audience")]
    Audience,
    #[error("wrong issuer")]
    Issuer,
    #[error("invalid signature")]
    Signature,
    #[error("invalid token: {0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
}

pub(crate) fn to_jwt_alg(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::RS256 => Algorithm::RS256,
        SigningAlg::RS384 => Algorithm::RS384,
        SigningAlg::RS512 => Algorithm::RS512,
        SigningAlg::PS256 => Algorithm::PS256,
        SigningAlg::PS384 => Algorithm::PS384,
        SigningAlg::PS512 => Algorithm::PS512,
        SigningAlg::ES256 => Algorithm::ES256,
        SigningAlg::ES384 => Algorithm::ES384,
        SigningAlg::EdDSA => Algorithm::EdDSA,
        SigningAlg::HS256 => Algorithm::HS256,
        SigningAlg::HS384 => Algorithm::HS384,
        SigningAlg::HS512 => Algorithm::HS512,
    }
}

/// Does `jwk` belong to the family of `alg` (an RSA key can never verify HS256 or ES256)?
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        // Symmetric keys never come from a JWKS we trust for bearer tokens.
        AlgorithmParameters::OctetKey(_) => false,
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(ka) => key_algorithm_name(ka) == format!("{alg:?}"),
    };
    family_ok && declared_ok
}

fn key_algorithm_name(ka: KeyAlgorithm) -> String {
    format!("{ka:?}")
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the payload of a JWT *without* verifying it: only to pick which issuer's keys and
/// rules verify it next. Never trust the result on its own.
pub(crate) fn peek_claims(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What to check beyond the signature.
#[derive(Debug, Clone)]
pub(crate) struct Expectations<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub algorithms: &'a [SigningAlg],
    pub leeway: Duration,
    pub require_exp: bool,
}

/// Verifies `token` with a key from `keys` (or `hmac_secret` for HS* algorithms).
pub(crate) fn verify_with(
    token: &str,
    keys: Option<&JwkSet>,
    hmac_secret: Option<&[u8]>,
    exp: &Expectations<'_>,
) -> Result<Map<String, Value>, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    // The token names its algorithm; we only accept it if configuration lists it.
    if !exp.algorithms.iter().any(|a| to_jwt_alg(*a) == header.alg) {
        return Err(JwtError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
    }
    let key = match header.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            DecodingKey::from_secret(hmac_secret.ok_or(JwtError::KeyMismatch)?)
        }
        alg => {
            let keys = keys.ok_or(JwtError::UnknownKey)?;
            let jwk = match &header.kid {
                Some(kid) => keys.find(kid).ok_or(JwtError::UnknownKey)?,
                None => {
                    let mut fitting = keys.keys.iter().filter(|k| key_fits(k, alg));
                    match (fitting.next(), fitting.next()) {
                        (Some(k), None) => k,
                        _ => return Err(JwtError::UnknownKey),
                    }
                }
            };
            if !key_fits(jwk, alg) {
                return Err(JwtError::KeyMismatch);
            }
            DecodingKey::from_jwk(jwk).map_err(|_| JwtError::KeyMismatch)?
        }
    };
    let mut validation = Validation::new(header.alg);
    validation.leeway = exp.leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_exp = true;
    validation.set_issuer(&[exp.issuer]);
    validation.set_audience(exp.audiences);
    let mut required = vec!["iss", "aud"];
    if exp.require_exp {
        required.push("exp");
    }
    validation.set_required_spec_claims(&required);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => JwtError::Expired,
                K::ImmatureSignature => JwtError::NotYetValid,
                K::InvalidAudience => JwtError::Audience,
                K::InvalidIssuer => JwtError::Issuer,
                K::InvalidSignature => JwtError::Signature,
                K::InvalidAlgorithm => JwtError::KeyMismatch,
                K::MissingRequiredClaim(c) => JwtError::Other(format!("missing claim {c}")),
                other => JwtError::Other(format!("{other:?}")),
            }
        })?;
    let claims = data.claims;
    if let Some(iat) = claims.get("iat") {
        let iat = iat
            .as_f64()
            .ok_or_else(|| JwtError::Other("iat is not a number".into()))?;
        #[allow(
            clippy::cast_precision_loss,
            reason = "unix seconds fit an f64 exactly"
        )]
        let limit = (now_secs() + exp.leeway.as_secs()) as f64;
        if iat > limit {
            return Err(JwtError::IssuedInFuture);
        }
    }
    Ok(claims)
}

/// A JWKS fetched from one URL (or found through the issuer's discovery document), swapped
/// atomically; readers never lock.
#[derive(Debug)]
pub struct JwksCache {
    issuer: String,
    jwks_uri: Option<url::Url>,
    http: reqwest::Client,
    keys: ArcSwapOption<JwkSet>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(issuer: &str, jwks_uri: Option<url::Url>, http: reqwest::Client) -> Self {
        Self {
            issuer: issuer.to_owned(),
            jwks_uri,
            http,
            keys: ArcSwapOption::empty(),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    pub fn keys(&self) -> Option<Arc<JwkSet>> {
        self.keys.load_full()
    }

    /// Identifies the key set in use now: it changes with every fetch, so a verification made
    /// with an earlier set is never reused after one (a removed key stops working at once).
    fn generation(&self) -> usize {
        self.keys
            .load()
            .as_ref()
            .map_or(0, |keys| Arc::as_ptr(keys) as usize)
    }

    /// Installs keys directly (tests, or keys obtained elsewhere).
    pub fn install(&self, keys: JwkSet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    /// Fetches the key set now.
    pub async fn refresh(&self) -> Result<Arc<JwkSet>, FetchError> {
        let url = match &self.jwks_uri {
            Some(u) => u.to_string(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc: Value = get_json(&self.http, &discovery).await?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| FetchError::Document {
                        url: discovery.clone(),
                        message: "no jwks_uri".into(),
                    })?
            }
        };
        let set: JwkSet =
            serde_json::from_value(get_json(&self.http, &url).await?).map_err(|e| {
                FetchError::Document {
                    url: url.clone(),
                    message: e.to_string(),
                }
            })?;
        let set = Arc::new(set);
        self.keys.store(Some(Arc::clone(&set)));
        Ok(set)
    }

    /// Refetches because of an unknown key id, unless another such refetch happened within
    /// [`KID_REFETCH_INTERVAL`] (scheduled refreshes do not count, so a rotation right after
    /// one is still picked up). Concurrent callers wait for one fetch instead of each starting
    /// their own.
    pub async fn refresh_rate_limited(&self) -> Result<Option<Arc<JwkSet>>, FetchError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL) {
            return Ok(self.keys());
        }
        *last = Some(Instant::now());
        self.refresh().await.map(Some)
    }
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, FetchError> {
    let err = |message: String| FetchError::Http {
        url: url.to_owned(),
        message,
    };
    let resp = http.get(url).send().await.map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("status {}", resp.status())));
    }
    resp.json::<Value>().await.map_err(|e| err(e.to_string()))
}

/// Number of recently verified tokens remembered per policy.
const VERIFIED_SLOTS: usize = 1024;
/// A remembered verification is used at most this long; then the signature is checked again.
const VERIFIED_REUSE_SECS: u64 = 60;

/// A token whose signature and claims were verified, and until when that may be reused.
#[derive(Debug)]
struct Verified {
    claims: Arc<Map<String, Value>>,
    issuer: usize,
    key_generation: usize,
    /// `exp` (plus leeway) or the reuse limit, whichever comes first.
    reuse_until: u64,
    /// `nbf` minus leeway: the token must not be used before.
    usable_from: u64,
}

/// Verifies bearer tokens for the issuers of one policy.
#[derive(Debug)]
pub struct BearerVerifier {
    issuers: Vec<(JwtIssuer, Arc<JwksCache>)>,
    leeway: Duration,
    /// Recent verifications: a hit skips the RSA verification and the claims' parsing.
    verified: Recent<Verified>,
}

impl BearerVerifier {
    pub fn new(issuers: Vec<(JwtIssuer, Arc<JwksCache>)>, leeway: Duration) -> Self {
        Self {
            issuers,
            leeway,
            verified: Recent::new(VERIFIED_SLOTS),
        }
    }

    /// [`BearerVerifier::verify`], reusing a verification of the same token made with the
    /// current keys within the last minute and before the token's `exp`. Lock-free.
    pub fn verify_shared(&self, token: &str) -> Result<Arc<Map<String, Value>>, JwtError> {
        let now = now_secs();
        if let Some(hit) = self.verified.get(token)
            && let hit = &hit.value
            && now < hit.reuse_until
            && now >= hit.usable_from
            && self
                .issuers
                .get(hit.issuer)
                .is_some_and(|(_, cache)| cache.generation() == hit.key_generation)
        {
            return Ok(Arc::clone(&hit.claims));
        }
        let issuer = self.issuer_index(token)?;
        let key_generation = self.issuers[issuer].1.generation();
        let claims = Arc::new(self.verify(token)?);
        let leeway = self.leeway.as_secs();
        let number = |name: &str| claims.get(name).and_then(Value::as_u64);
        let reuse_until = number("exp")
            .map_or(now, |exp| exp.saturating_add(leeway))
            .min(now + VERIFIED_REUSE_SECS);
        self.verified.put(
            token,
            Verified {
                claims: Arc::clone(&claims),
                issuer,
                key_generation,
                reuse_until,
                usable_from: number("nbf").map_or(0, |nbf| nbf.saturating_sub(leeway)),
            },
        );
        Ok(claims)
    }

    fn issuer_index(&self, token: &str) -> Result<usize, JwtError> {
        let claims = peek_claims(token).ok_or(JwtError::Malformed)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::UnknownIssuer)?;
        self.issuers
            .iter()
            .position(|(i, _)| i.issuer == iss)
            .ok_or(JwtError::UnknownIssuer)
    }

    pub(crate) fn caches(&self) -> impl Iterator<Item = &Arc<JwksCache>> {
        self.issuers.iter().map(|(_, c)| c)
    }

    fn issuer_for(&self, token: &str) -> Result<&(JwtIssuer, Arc<JwksCache>), JwtError> {
        let claims = peek_claims(token).ok_or(JwtError::Malformed)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::UnknownIssuer)?;
        self.issuers
            .iter()
            .find(|(i, _)| i.issuer == iss)
            .ok_or(JwtError::UnknownIssuer)
    }

    /// Pure and lock-free: uses the cached keys only.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        let (issuer, cache) = self.issuer_for(token)?;
        let keys = cache.keys();
        verify_with(
            token,
            keys.as_deref(),
            None,
            &Expectations {
                issuer: &issuer.issuer,
                audiences: &issuer.audiences,
                algorithms: &issuer.algorithms,
                leeway: self.leeway,
                require_exp: true,
            },
        )
    }

    /// For a token whose key id was unknown: refetch that issuer's keys (rate-limited) and
    /// verify again.
    pub async fn verify_after_refetch(
        &self,
        token: &str,
    ) -> Result<Result<Map<String, Value>, JwtError>, FetchError> {
        let (_, cache) = match self.issuer_for(token) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        cache.refresh_rate_limited().await?;
        Ok(self.verify(token))
    }
}

#[cfg(test)]
#[allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    // A fixed 2048-bit test key generated for these tests only.
    const RSA_PEM: &str = include_str!("../tests/data/rsa-test-key.pem");
    const RSA_JWKS: &str = include_str!("../tests/data/rsa-test-jwks.json");

    fn keys() -> JwkSet {
        serde_json::from_str(RSA_JWKS).expect("test jwks")
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(b"secret"),
            _ => EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("pem"),
        };
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    }

    fn claims(exp_offset: i64) -> Value {
        let now = now_secs() as i64;
        serde_json::json!({"iss": "https://idp.test/", "aud": "gateway", "sub": "alice", "iat": now, "exp": now + exp_offset})
    }

    fn expect<'a>(algs: &'a [SigningAlg], aud: &'a [String]) -> Expectations<'a> {
        Expectations {
            issuer: "https://idp.test/",
            audiences: aud,
            algorithms: algs,
            leeway: Duration::from_secs(5),
            require_exp: true,
        }
    }

    fn verifier_with(keys: JwkSet) -> (BearerVerifier, Arc<JwksCache>) {
        let cache = Arc::new(JwksCache::new(
            "https://idp.test/",
            None,
            reqwest::Client::new(),
        ));
        cache.install(keys);
        let issuer = JwtIssuer {
            issuer: "https://idp.test/".to_owned(),
            jwks_uri: None,
            audiences: vec!["gateway".to_owned()],
            algorithms: vec![SigningAlg::RS256],
        };
        (
            BearerVerifier::new(vec![(issuer, Arc::clone(&cache))], Duration::from_secs(5)),
            cache,
        )
    }

    #[test]
    fn a_verified_token_is_reused_until_the_keys_change() {
        let (verifier, cache) = verifier_with(keys());
        let token = sign(Algorithm::RS256, Some("test-1"), claims(60));
        let first = verifier.verify_shared(&token).expect("valid");
        let again = verifier.verify_shared(&token).expect("valid");
        assert!(Arc::ptr_eq(&first, &again), "the second use is a cache hit");
        // A forged variant of a cached token is not a hit: it is verified, and fails.
        let mut forged = token.clone();
        forged.push('A');
        assert!(verifier.verify_shared(&forged).is_err());
        // New keys (a refresh): verified again; without the token's key: refused at once.
        cache.install(keys());
        let fresh = verifier.verify_shared(&token).expect("still valid");
        assert!(!Arc::ptr_eq(&first, &fresh));
        cache.install(JwkSet { keys: Vec::new() });
        assert!(matches!(
            verifier.verify_shared(&token),
            Err(JwtError::UnknownKey)
        ));
    }

    #[test]
    fn an_expired_token_is_not_reused_past_its_exp() {
        let (verifier, _) = verifier_with(keys());
        // Expired beyond the leeway: refused, and nothing is remembered.
        let token = sign(Algorithm::RS256, Some("test-1"), claims(-60));
        assert!(verifier.verify_shared(&token).is_err());
        assert!(verifier.verify_shared(&token).is_err());
    }

    #[test]
    fn valid_token_passes() {
        let aud = vec!["gateway".to_owned()];
        let t = sign(Algorithm::RS256, Some("test-1"), claims(60));
        let c = verify_with(&t, Some(&keys()), None, &expect(&[SigningAlg::RS256], &aud))
            .expect("valid");
        assert_eq!(c.get("sub").and_then(Value::as_str), Some("alice"));
    }

    #[test]
    fn attacks_are_rejected() {
        let aud = vec!["gateway".to_owned()];
        let rs = [SigningAlg::RS256];
        let k = keys();
        let check = |t: &str| verify_with(t, Some(&k), None, &expect(&rs, &aud));
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("test-1"), claims(-60))),
            Err(JwtError::Expired)
        );
        let mut c = claims(60);
        c["aud"] = "other".into();
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("test-1"), c)),
            Err(JwtError::Audience)
        );
        let mut c = claims(60);
        c["iss"] = "https://evil.test/".into();
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("test-1"), c)),
            Err(JwtError::Issuer)
        );
        let mut c = claims(60);
        c["iat"] = (now_secs() + 3600).into();
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("test-1"), c)),
            Err(JwtError::IssuedInFuture)
        );
        let mut c = claims(60);
        c["nbf"] = (now_secs() + 3600).into();
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("test-1"), c)),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            check(&sign(Algorithm::RS256, Some("nope"), claims(60))),
            Err(JwtError::UnknownKey)
        );
        // HS256 with whatever secret: HS256 is not configured, so the token's choice is refused.
        assert!(matches!(
            check(&sign(Algorithm::HS256, Some("test-1"), claims(60))),
            Err(JwtError::AlgorithmNotAllowed(_))
        ));
        // alg=none: not even parseable as a JWS header we accept.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"test-1"}"#),
            b64(&claims(60).to_string())
        );
        assert_eq!(check(&none), Err(JwtError::Malformed));
        // A flipped signature byte.
        let t = sign(Algorithm::RS256, Some("test-1"), claims(60));
        let tampered = format!("{}A", &t[..t.len() - 1]);
        let tampered = if tampered == t {
            format!("{}B", &t[..t.len() - 1])
        } else {
            tampered
        };
        assert!(check(&tampered).is_err());
        // A payload swapped under a valid signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(60);
        c["sub"] = "root".into();
        let forged = b64(&c.to_string());
        parts[1] = &forged;
        assert_eq!(check(&parts.join(".")), Err(JwtError::Signature));
    }

    #[test]
    fn rs256_public_key_used_as_hmac_secret_is_rejected() {
        // The classic confusion: sign HS256 with the RSA public key bytes. Even if a
        // misconfiguration allowed HS256, the RSA key is never an HMAC key.
        let aud = vec!["gateway".to_owned()];
        let hs = [SigningAlg::HS256];
        let t = sign(Algorithm::HS256, Some("test-1"), claims(60));
        assert!(verify_with(&t, Some(&keys()), None, &expect(&hs, &aud)).is_err());
    }

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
