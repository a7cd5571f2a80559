//! Sessions and login state in encrypted, authenticated cookies (XChaCha20-Poly1305, keys
//! derived with HKDF-SHA256 from Secret material), kept small and bounded.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::identity::Identity;

/// Largest value of one cookie we emit; browsers allow ~4096 bytes per cookie including name
/// and attributes.
pub const MAX_COOKIE_VALUE: usize = 3800;
/// At most this many session cookie chunks: the whole session stays under ~7.6 KB, well below
/// the 16 KB+ header limits of common proxies and servers, so a session never causes a 431.
pub const MAX_CHUNKS: usize = 2;
/// Pending logins kept in the single login-state cookie (one per open tab, oldest dropped).
pub const MAX_PENDING_LOGINS: usize = 4;
/// How long a login may take between redirect and callback.
pub const LOGIN_TTL_SECS: u64 = 600;
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session does not fit in {max} bytes even without optional data")]
    TooLarge { max: usize },
    #[error("encoding a session: {0}")]
    Encode(String),
}

/// The session carried by the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Our random session id (revocable).
    #[serde(rename = "i")]
    pub id: String,
    /// The provider's session id (`sid` claim), for back-channel logout.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued at (unix seconds).
    #[serde(rename = "a")]
    pub issued_at: u64,
    /// Absolute expiry (unix seconds).
    #[serde(rename = "x")]
    pub expires_at: u64,
    /// Access token expiry; refreshed before it.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<u64>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Groups were cut to those the rules mention, to keep the cookie bounded.
    #[serde(rename = "gt", default, skip_serializing_if = "std::ops::Not::not")]
    pub groups_truncated: bool,
    #[serde(rename = "p")]
    pub identity: Identity,
}

/// One pending login (state, nonce, PKCE verifier and where to go afterwards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLogin {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub pkce_verifier: String,
    #[serde(rename = "u")]
    pub return_url: String,
    #[serde(rename = "r")]
    pub redirect_uri: String,
    #[serde(rename = "t")]
    pub created_at: u64,
}

/// The login-state cookie: a bounded list of pending logins, newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginState {
    #[serde(rename = "l")]
    pub pending: Vec<PendingLogin>,
}

impl LoginState {
    /// Adds `login`, dropping expired entries and the oldest beyond [`MAX_PENDING_LOGINS`].
    pub fn push(&mut self, login: PendingLogin, now: u64) {
        self.prune(now);
        self.pending.push(login);
        let excess = self.pending.len().saturating_sub(MAX_PENDING_LOGINS);
        self.pending.drain(..excess);
    }

    /// Removes and returns the login with `state` (single use).
    pub fn take(&mut self, state: &str, now: u64) -> Option<PendingLogin> {
        self.prune(now);
        let pos = self.pending.iter().position(|p| p.state == state)?;
        Some(self.pending.remove(pos))
    }

    fn prune(&mut self, now: u64) {
        self.pending
            .retain(|p| p.created_at + LOGIN_TTL_SECS > now && p.created_at <= now + 60);
    }
}

/// Encrypts and decrypts cookie payloads. The cookie name is authenticated data, so a value
/// cannot be moved from one cookie (say the login state) to another (the session).
#[derive(Clone)]
pub struct CookieCodec {
    /// The first key encrypts; every key decrypts (rotation).
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieCodec")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

impl CookieCodec {
    /// `keys` are raw Secret contents (at least 32 bytes each, checked by validation).
    pub fn new(keys: &[Vec<u8>]) -> Self {
        let ciphers = keys
            .iter()
            .map(|ikm| {
                let hk = Hkdf::<Sha256>::new(Some(b"torhaus-cookie-v1"), ikm);
                let mut okm = [0u8; 32];
                // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
                let _ = hk.expand(b"xchacha20poly1305 cookie key", &mut okm);
                XChaCha20Poly1305::new(&okm.into())
            })
            .collect();
        Self { ciphers }
    }

    pub fn seal(&self, cookie_name: &str, plaintext: &[u8]) -> Result<String, SessionError> {
        let cipher = self
            .ciphers
            .first()
            .ok_or_else(|| SessionError::Encode("no key".into()))?;
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: cookie_name.as_bytes(),
                },
            )
            .map_err(|_| SessionError::Encode("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + 24 + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    /// None for anything that was not sealed by one of our keys under this cookie name.
    pub fn open(&self, cookie_name: &str, value: &str) -> Option<Vec<u8>> {
        let raw = B64.decode(value.trim()).ok()?;
        if raw.len() < 1 + 24 + 16 || raw[0] != VERSION {
            return None;
        }
        let nonce = XNonce::from_slice(&raw[1..25]);
        self.ciphers.iter().find_map(|c| {
            c.decrypt(
                nonce,
                Payload {
                    msg: &raw[25..],
                    aad: cookie_name.as_bytes(),
                },
            )
            .ok()
        })
    }

    pub fn seal_json<T: Serialize>(
        &self,
        cookie_name: &str,
        value: &T,
    ) -> Result<String, SessionError> {
        let json = serde_json::to_vec(value).map_err(|e| SessionError::Encode(e.to_string()))?;
        self.seal(cookie_name, &json)
    }

    pub fn open_json<T: for<'de> Deserialize<'de>>(
        &self,
        cookie_name: &str,
        value: &str,
    ) -> Option<T> {
        serde_json::from_slice(&self.open(cookie_name, value)?).ok()
    }
}

/// Name of chunk `i` of cookie `base` (`base`, `base_1`, ...).
pub fn chunk_name(base: &str, i: usize) -> String {
    if i == 0 {
        base.to_owned()
    } else {
        format!("{base}_{i}")
    }
}

/// Seals `session` into at most [`MAX_CHUNKS`] cookie values. If it does not fit, the raw
/// token is dropped first, then groups the rules do not mention.
pub fn seal_session(
    codec: &CookieCodec,
    cookie_name: &str,
    session: &Session,
    rule_groups: &[String],
) -> Result<Vec<String>, SessionError> {
    let max = MAX_COOKIE_VALUE * MAX_CHUNKS;
    let mut s = session.clone();
    for step in 0..3 {
        match step {
            1 => s.identity.raw_token = None,
            2 => {
                s.identity.groups.retain(|g| rule_groups.contains(g));
                s.groups_truncated = true;
            }
            _ => {}
        }
        let sealed = codec.seal_json(cookie_name, &s)?;
        if sealed.len() <= max {
            return Ok(sealed
                .as_bytes()
                .chunks(MAX_COOKIE_VALUE)
                // base64url output is ASCII, so every chunk boundary is a char boundary.
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect());
        }
    }
    Err(SessionError::TooLarge { max })
}

/// Reassembles and opens the session from the request's cookies.
pub fn open_session(
    codec: &CookieCodec,
    cookie_name: &str,
    cookies: &Cookies<'_>,
) -> Option<Session> {
    let value = sealed_session(cookie_name, cookies)?;
    codec.open_json(cookie_name, &value)
}

/// The sealed session value, its chunks put back together; `None` without a session cookie.
pub fn sealed_session(cookie_name: &str, cookies: &Cookies<'_>) -> Option<String> {
    let mut value = String::new();
    for i in 0..MAX_CHUNKS {
        match cookies.get(&chunk_name(cookie_name, i)) {
            Some(v) => value.push_str(v),
            None => break,
        }
    }
    (!value.is_empty()).then_some(value)
}

/// The cookies of a request (all `Cookie` headers), first occurrence of a name wins.
#[derive(Debug, Default)]
pub struct Cookies<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Cookies<'a> {
    pub fn parse(headers: &'a http::HeaderMap) -> Self {
        let mut pairs = Vec::new();
        for value in headers.get_all(http::header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split(';') {
                if let Some((k, v)) = part.split_once('=') {
                    pairs.push((k.trim(), v.trim().trim_matches('"')));
                }
            }
        }
        Self { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Attributes of the cookies we set.
#[derive(Debug, Clone)]
pub struct CookieAttrs {
    pub domain: Option<String>,
    pub secure: bool,
}

impl CookieAttrs {
    /// A `Set-Cookie` value. `max_age` None means a browser-session cookie; Some(0) deletes.
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut s = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if let Some(d) = &self.domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        if self.secure {
            s.push_str("; Secure");
        }
        if let Some(age) = max_age {
            s.push_str(&format!("; Max-Age={age}"));
        }
        s
    }

    pub fn delete(&self, name: &str) -> String {
        self.set_cookie(name, "", Some(0))
    }
}

/// A random URL-safe token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    B64.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(&[b"0123456789abcdef0123456789abcdef".to_vec()])
    }

    fn session(groups: usize, token: usize) -> Session {
        Session {
            id: random_token(16),
            sid: Some("sid-1".into()),
            issued_at: 1,
            expires_at: 2,
            access_expires_at: Some(3),
            refresh_token: Some(random_token(32)),
            groups_truncated: false,
            identity: Identity {
                sub: "alice".into(),
                username: Some("alice".into()),
                email: Some("alice@example.test".into()),
                name: Some("Alice".into()),
                groups: (0..groups)
                    .map(|i| format!("group-with-a-longish-name-{i:04}"))
                    .collect(),
                claims: Default::default(),
                raw_token: (token > 0).then(|| "x".repeat(token)),
            },
        }
    }

    #[test]
    fn seal_and_open_round_trip() {
        let c = codec();
        let v = c.seal("a", b"hello").unwrap_or_default();
        assert_eq!(c.open("a", &v).as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn tampered_or_moved_values_do_not_open() {
        let c = codec();
        let v = c.seal("a", b"hello").unwrap_or_default();
        assert!(c.open("b", &v).is_none(), "bound to the cookie name");
        let mut bytes = B64.decode(&v).unwrap_or_default();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(c.open("a", &B64.encode(&bytes)).is_none());
        let other = CookieCodec::new(&[b"another key another key another key".to_vec()]);
        assert!(other.open("a", &v).is_none());
        assert!(c.open("a", "garbage!").is_none());
    }

    #[test]
    fn rotated_keys_still_open_old_cookies() {
        let old = codec();
        let v = old.seal("a", b"x").unwrap_or_default();
        let rotated = CookieCodec::new(&[
            b"a brand new key, 32 bytes or more".to_vec(),
            b"0123456789abcdef0123456789abcdef".to_vec(),
        ]);
        assert!(rotated.open("a", &v).is_some());
    }

    fn headers_with(cookies: &[(String, String)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        let line = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&line).unwrap_or(http::HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn a_session_with_many_groups_stays_under_the_cap() {
        let c = codec();
        let s = session(400, 1500);
        let chunks = seal_session(
            &c,
            "sess",
            &s,
            &["group-with-a-longish-name-0007".to_owned()],
        )
        .unwrap_or_default();
        assert!(!chunks.is_empty() && chunks.len() <= MAX_CHUNKS);
        assert!(chunks.iter().all(|ch| ch.len() <= MAX_COOKIE_VALUE));
        let total: usize = chunks.iter().map(String::len).sum();
        assert!(total <= MAX_COOKIE_VALUE * MAX_CHUNKS, "{total}");
        let pairs: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, v)| (chunk_name("sess", i), v.clone()))
            .collect();
        let headers = headers_with(&pairs);
        let back = open_session(&c, "sess", &Cookies::parse(&headers));
        let back = back.unwrap_or_else(|| session(0, 0));
        assert!(back.groups_truncated);
        assert_eq!(
            back.identity.groups,
            vec!["group-with-a-longish-name-0007".to_owned()]
        );
        assert_eq!(back.identity.raw_token, None);
    }

    #[test]
    fn a_normal_session_is_one_small_cookie_and_keeps_everything() {
        let c = codec();
        let s = session(5, 900);
        let chunks = seal_session(&c, "sess", &s, &[]).unwrap_or_default();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].len() < 2000, "{}", chunks[0].len());
        let headers = headers_with(&[("sess".into(), chunks[0].clone())]);
        assert_eq!(open_session(&c, "sess", &Cookies::parse(&headers)), Some(s));
    }

    #[test]
    fn login_state_is_bounded_and_single_use() {
        let mut st = LoginState::default();
        for i in 0..10 {
            st.push(
                PendingLogin {
                    state: format!("s{i}"),
                    nonce: "n".into(),
                    pkce_verifier: "v".into(),
                    return_url: "/".into(),
                    redirect_uri: "r".into(),
                    created_at: 1000 + i,
                },
                1000 + i,
            );
        }
        assert_eq!(st.pending.len(), MAX_PENDING_LOGINS);
        assert!(st.take("s0", 1010).is_none(), "oldest dropped");
        assert!(st.take("s9", 1010).is_some());
        assert!(st.take("s9", 1010).is_none(), "single use");
        assert!(st.take("s8", 1008 + LOGIN_TTL_SECS).is_none(), "expired");
    }

    #[test]
    fn cookie_parsing_and_attributes() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; b=\"2\""),
        );
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("c=3; a=9"),
        );
        let c = Cookies::parse(&h);
        assert_eq!(
            (c.get("a"), c.get("b"), c.get("c"), c.get("d")),
            (Some("1"), Some("2"), Some("3"), None)
        );
        let attrs = CookieAttrs {
            domain: Some("example.test".into()),
            secure: true,
        };
        assert_eq!(
            attrs.set_cookie("s", "v", Some(60)),
            "s=v; Path=/; HttpOnly; SameSite=Lax; Domain=example.test; Secure; Max-Age=60"
        );
        assert!(attrs.delete("s").ends_with("Max-Age=0"));
    }
}
