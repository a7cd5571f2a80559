//! Route filters as pure functions over request and response parts.
//!
//! Header modifiers, redirects, URL rewrites, CORS (GEP-1767), mirror sampling and the
//! `X-Forwarded-*` / `Forwarded` headers. Nothing here does I/O; the proxy hooks call these and
//! write the results.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, FORWARDED, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use torhaus_model::{
    Cors, HeaderModifier, Mirror, PathMatch, PathModifier, Redirect, RequestMatch, Scheme,
};

/// Applies a RequestHeaderModifier: `set` replaces every value of a header, `add` appends one,
/// `remove` deletes all values. Names are case-insensitive.
pub fn apply_request_headers(
    modifier: &HeaderModifier,
    header: &mut RequestHeader,
) -> pingora::Result<()> {
    apply_modifier(modifier, header)
}

/// Applies a ResponseHeaderModifier, with the same semantics as [`apply_request_headers`].
pub fn apply_response_headers(
    modifier: &HeaderModifier,
    header: &mut ResponseHeader,
) -> pingora::Result<()> {
    apply_modifier(modifier, header)
}

fn apply_modifier(modifier: &HeaderModifier, header: &mut impl HeaderEdit) -> pingora::Result<()> {
    for (name, value) in &modifier.set {
        header.replace(name, value.clone())?;
    }
    for (name, value) in &modifier.add {
        header.append(name, value.clone())?;
    }
    for name in &modifier.remove {
        header.delete(name);
    }
    Ok(())
}

/// The edits pingora offers on both request and response headers, which share no trait; going
/// through pingora (not the inner `HeaderMap`) keeps its header-case map in step.
trait HeaderEdit {
    fn replace(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn delete(&mut self, name: &HeaderName);
}

macro_rules! impl_header_edit {
    ($header:ty) => {
        impl HeaderEdit for $header {
            fn replace(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(drop)
            }
            fn delete(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}

impl_header_edit!(RequestHeader);
impl_header_edit!(ResponseHeader);

/// The request facts a RequestRedirect needs.
#[derive(Debug, Clone, Copy)]
pub struct RedirectInput<'a> {
    /// The scheme the client used to reach torhaus.
    pub scheme: Scheme,
    /// The Host as received, without its port.
    pub host: &'a str,
    /// The path as received, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The listener's port as the Gateway declares it (before any port mapping).
    pub listener_port: u16,
    /// The `matches[]` entry that selected the rule (for ReplacePrefixMatch).
    pub matched: &'a RequestMatch,
}

/// The status code and `Location` of a RequestRedirect, by the spec's rules:
/// unset scheme and hostname keep the request's; an unset port is the redirect scheme's
/// well-known port when the scheme is set, else the listener's port; `:80` is left out for http
/// and `:443` for https; the path follows the path modifier; the query string is kept.
pub fn redirect_location(redirect: &Redirect, req: &RedirectInput<'_>) -> (u16, String) {
    let scheme = redirect.scheme.unwrap_or(req.scheme);
    let port = match (redirect.port, redirect.scheme) {
        (Some(port), _) => port,
        (None, Some(scheme)) => scheme.default_port(),
        (None, None) => req.listener_port,
    };
    let host = redirect.hostname.as_deref().unwrap_or(req.host);
    let path = match &redirect.path {
        Some(modifier) => rewrite_path(modifier, req.path, req.matched),
        None => req.path.to_owned(),
    };
    let mut location = String::with_capacity(scheme.as_str().len() + host.len() + path.len() + 16);
    location.push_str(scheme.as_str());
    location.push_str("://");
    if host.contains(':') {
        // An IPv6 literal needs its brackets back.
        let _ = write!(location, "[{host}]");
    } else {
        location.push_str(host);
    }
    if port != scheme.default_port() {
        let _ = write!(location, ":{port}");
    }
    location.push_str(&path);
    if let Some(query) = req.query {
        location.push('?');
        location.push_str(query);
    }
    (redirect.status, location)
}

/// The path after a URLRewrite (or a redirect's path modifier); the caller keeps the query.
///
/// `ReplacePrefixMatch` replaces the matched `PathPrefix` segment-wise, as the spec's table
/// shows: trailing slashes of the prefix and of the replacement are not significant, what
/// followed the prefix in the request is kept (`/foo/` with prefix `/foo` and replacement `/xyz`
/// gives `/xyz/`), and an empty result becomes `/`. The translation only allows it on prefix
/// matches; should another match kind reach here, the whole path counts as the matched prefix.
pub fn rewrite_path(modifier: &PathModifier, path: &str, matched: &RequestMatch) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = match &matched.path {
                PathMatch::Prefix(prefix) => {
                    let prefix = prefix.trim_end_matches('/');
                    match path.strip_prefix(prefix) {
                        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                        _ => path,
                    }
                }
                PathMatch::Exact(_) | PathMatch::Regex(_) => "",
            };
            let replacement = replacement.trim_end_matches('/');
            let mut rewritten = String::with_capacity(replacement.len() + rest.len() + 1);
            rewritten.push_str(replacement);
            rewritten.push_str(rest);
            if rewritten.is_empty() {
                rewritten.push('/');
            }
            rewritten
        }
    }
}

/// Whether the share of requests a RequestMirror asks for includes this one. `random` is a
/// uniformly distributed `u32`.
pub fn should_mirror(mirror: &Mirror, random: u32) -> bool {
    if mirror.numerator == 0 || mirror.denominator == 0 {
        return false;
    }
    if mirror.numerator >= mirror.denominator {
        return true;
    }
    let point = (u64::from(random) * u64::from(mirror.denominator)) >> 32;
    point < u64::from(mirror.numerator)
}

/// Headers to add to a response for CORS. `Vary` must be appended to what the backend sent;
/// every other name replaces, which [`CorsHeaders::apply_to`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsHeaders(Vec<(HeaderName, HeaderValue)>);

impl CorsHeaders {
    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    /// The value for `name`, if present (mostly for tests and logs).
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes the headers into a response: `Vary` appended, the others replacing.
    pub fn apply_to(&self, response: &mut ResponseHeader) -> pingora::Result<()> {
        for (name, value) in &self.0 {
            if name == VARY {
                response.append(name, value.clone())?;
            } else {
                response.replace(name, value.clone())?;
            }
        }
        Ok(())
    }

    fn push(&mut self, name: HeaderName, value: &str) {
        // Values come from validated config or from request headers, which are valid already;
        // anything else is skipped rather than sent malformed.
        if let Ok(value) = HeaderValue::from_str(value) {
            self.0.push((name, value));
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether `origin` (the request's `Origin`, e.g. `https://app.example.com:8443`) is allowed.
/// `*` allows any origin; `scheme://*.suffix` allows any host under `suffix` (one or more
/// labels) with that scheme and no explicit port; other entries must equal the origin
/// (ASCII case-insensitively).
pub fn cors_origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|allowed| {
        if allowed == "*" {
            return true;
        }
        if let Some((scheme, pattern_host)) = allowed.split_once("://")
            && let Some(suffix) = pattern_host.strip_prefix('*')
        {
            let Some((origin_scheme, origin_host)) = origin.split_once("://") else {
                return false;
            };
            return origin_scheme.eq_ignore_ascii_case(scheme)
                && origin_host.len() > suffix.len()
                && origin_host
                    .get(origin_host.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix));
        }
        allowed.eq_ignore_ascii_case(origin)
    })
}

/// The answer to a CORS preflight (see [`is_cors_preflight`]), or `None` when the origin is not
/// allowed; the proxy then answers without CORS headers (or passes the request on), which makes
/// the browser refuse the cross-origin request.
///
/// The allowed origin is echoed, never `*`, so the answer is valid with credentials too.
/// `allowMethods: ["*"]` echoes the requested method and `allowHeaders: ["*"]` the requested
/// headers, because `*` is taken literally by browsers when credentials are allowed.
/// `exposeHeaders: ["*"]` is only sent without credentials, for the same reason.
pub fn cors_preflight(
    cors: &Cors,
    origin: &str,
    request_method: &str,
    request_headers: Option<&str>,
) -> Option<CorsHeaders> {
    if !cors_origin_allowed(cors, origin) {
        return None;
    }
    let mut headers = allowed_origin_headers(cors, origin);
    if is_wildcard(&cors.allow_methods) {
        headers.push(ACCESS_CONTROL_ALLOW_METHODS, request_method);
    } else if !cors.allow_methods.is_empty() {
        headers.push(ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods.join(", "));
    }
    if is_wildcard(&cors.allow_headers) {
        if let Some(requested) = request_headers.filter(|h| !h.trim().is_empty()) {
            headers.push(ACCESS_CONTROL_ALLOW_HEADERS, requested);
        }
    } else if !cors.allow_headers.is_empty() {
        headers.push(ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers.join(", "));
    }
    headers.push(ACCESS_CONTROL_MAX_AGE, &cors.max_age.to_string());
    Some(headers)
}

/// The CORS headers for an actual (non-preflight) response to a request with `Origin`:
/// `Access-Control-Allow-Origin` (echoed), credentials and exposed headers when the origin is
/// allowed, and always `Vary: Origin` so caches keep answers per origin apart.
pub fn cors_response_headers(cors: &Cors, origin: &str) -> CorsHeaders {
    if cors_origin_allowed(cors, origin) {
        allowed_origin_headers(cors, origin)
    } else {
        let mut headers = CorsHeaders::default();
        headers.push(VARY, "Origin");
        headers
    }
}

fn allowed_origin_headers(cors: &Cors, origin: &str) -> CorsHeaders {
    let mut headers = CorsHeaders::default();
    headers.push(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        headers.push(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if is_wildcard(&cors.expose_headers) {
        if !cors.allow_credentials {
            headers.push(ACCESS_CONTROL_EXPOSE_HEADERS, "*");
        }
    } else if !cors.expose_headers.is_empty() {
        headers.push(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    headers.push(VARY, "Origin");
    headers
}

fn is_wildcard(list: &[String]) -> bool {
    list.iter().any(|entry| entry == "*")
}

/// The forwarding headers to send upstream, replacing whatever the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedHeaders {
    pub x_forwarded_for: String,
    pub x_forwarded_proto: String,
    pub x_forwarded_host: String,
    /// RFC 7239.
    pub forwarded: String,
}

/// Computes `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` for the upstream request.
///
/// `trusted_hops` is the number of proxies in front of torhaus whose headers are trusted, the
/// TCP peer (`client_addr`) being the nearest of them (Envoy's `xff_num_trusted_hops` with
/// `use_remote_address`):
///
/// * `0` (torhaus is the edge): incoming forwarding headers are discarded, since any client can
///   write them. `X-Forwarded-For` becomes the peer address, `-Proto` and `-Host` the request's
///   own scheme and host, and `Forwarded` one element describing this hop.
/// * `N > 0`: the last `N` entries of the incoming `X-Forwarded-For` (and the last `N` elements
///   of `Forwarded`) were written by trusted proxies and are kept; anything before them is
///   dropped as spoofable; the peer is appended. `-Proto` and `-Host` are taken from the
///   nearest trusted proxy's values when present and well-formed.
///
/// The client address these imply is [`effective_client_ip`].
pub fn forwarded_headers(
    client_addr: IpAddr,
    incoming: &HeaderMap,
    trusted_hops: u32,
    scheme: Scheme,
    host: &str,
) -> ForwardedHeaders {
    let trusted = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    // This runs for every proxied request: the address is formatted once, by hand for IPv4,
    // and each string is allocated once at its final size where that is known.
    let mut client = String::with_capacity(15);
    push_ip(&mut client, client_addr);
    let mut x_forwarded_for = String::new();
    if trusted > 0 {
        let entries = list_entries(incoming, &X_FORWARDED_FOR);
        for entry in &entries[entries.len().saturating_sub(trusted)..] {
            x_forwarded_for.push_str(entry);
            x_forwarded_for.push_str(", ");
        }
    }
    x_forwarded_for.push_str(&client);

    let x_forwarded_proto = if trusted > 0 {
        list_entries(incoming, &X_FORWARDED_PROTO)
            .last()
            .filter(|proto| {
                proto.eq_ignore_ascii_case("http") || proto.eq_ignore_ascii_case("https")
            })
            .map(|proto| proto.to_ascii_lowercase())
    } else {
        None
    }
    .unwrap_or_else(|| scheme.as_str().to_owned());

    let x_forwarded_host = if trusted > 0 {
        list_entries(incoming, &X_FORWARDED_HOST)
            .last()
            .filter(|h| HeaderValue::from_str(h).is_ok())
            .map(|h| (*h).to_owned())
    } else {
        None
    }
    .unwrap_or_else(|| host.to_owned());

    let mut forwarded = String::with_capacity(client.len() + host.len() + 32);
    if trusted > 0 {
        let elements = forwarded_elements(incoming);
        for element in &elements[elements.len().saturating_sub(trusted)..] {
            forwarded.push_str(element);
            forwarded.push_str(", ");
        }
    }
    match client_addr {
        IpAddr::V4(_) => {
            forwarded.push_str("for=");
            forwarded.push_str(&client);
        }
        IpAddr::V6(_) => {
            forwarded.push_str("for=\"[");
            forwarded.push_str(&client);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";host=");
    push_forwarded_value(&mut forwarded, host);
    forwarded.push_str(";proto=");
    forwarded.push_str(scheme.as_str());

    ForwardedHeaders {
        x_forwarded_for,
        x_forwarded_proto,
        x_forwarded_host,
        forwarded,
    }
}

/// The original client's address under the trust model of [`forwarded_headers`]: the peer when
/// `trusted_hops` is 0; otherwise the `X-Forwarded-For` entry written by the outermost trusted
/// proxy, i.e. the `trusted_hops`-th entry from the right. When the header has fewer entries
/// than that, or the entry is not an address, the peer is used: a shorter chain means the request
/// skipped a trusted proxy, and its entries may be forged.
pub fn effective_client_ip(client_addr: IpAddr, incoming: &HeaderMap, trusted_hops: u32) -> IpAddr {
    let trusted = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    if trusted == 0 {
        return client_addr;
    }
    let entries = list_entries(incoming, &X_FORWARDED_FOR);
    entries
        .len()
        .checked_sub(trusted)
        .and_then(|index| entries.get(index))
        .and_then(|entry| parse_forwarded_ip(entry))
        .unwrap_or(client_addr)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The comma-separated entries of every line of a list header, trimmed, empty ones skipped.
fn list_entries<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// The elements of every `Forwarded` line, split on commas outside quoted strings.
fn forwarded_elements(headers: &HeaderMap) -> Vec<&str> {
    let mut elements = Vec::new();
    for value in headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        let mut start = 0;
        let mut quoted = false;
        let mut escaped = false;
        for (i, byte) in value.bytes().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    elements.push(value[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        elements.push(value[start..].trim());
    }
    elements.retain(|element| !element.is_empty());
    elements
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Appends `value` as an RFC 7239 token, or as a quoted string when it is not a token.
fn push_forwarded_value(out: &mut String, value: &str) {
    // A `match`, not a search of the list per byte: this runs on every proxied request.
    let is_token = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        });
    if is_token {
        out.push_str(value);
        return;
    }
    out.push('"');
    if !value.contains(['"', '\\']) {
        out.push_str(value);
    } else {
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
}

/// Appends `addr` as `Display` would, without the formatting machinery for IPv4.
fn push_ip(out: &mut String, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests;
