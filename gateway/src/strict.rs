//! Strict HTTP/1.1 request checks that pingora does not make itself (RFC 9112 framing, Host,
//! request-line shape, header block size), run before a request is routed or forwarded.
//!
//! What pingora already does and is relied on here: differing `Content-Length` values and
//! unparseable request lines give 400; header blocks above 1 MiB give 400 (its own cap, before
//! any hook runs). What it does not do, and is checked here: a repeated or comma-listed
//! `Content-Length` (pingora collapses identical values), `Content-Length` together with
//! `Transfer-Encoding` (pingora silently drops the `Content-Length`, so the raw header block is
//! scanned), a missing or repeated `Host` on HTTP/1.1, a request target that pingora had to
//! re-escape (`GET  /x` reframed to `%20/x`), and header blocks above the configured limit (431).
//!
//! Known limits: header blocks between the configured limit and pingora's 1 MiB cap are read
//! in full before the 431 (pingora offers no earlier hook). With `--engine pingora` only:
//! on cleartext ports (h2c enabled) pingora waits for 24 bytes, the length of the HTTP/2
//! preface, before parsing, so a complete request shorter than that (only possible without
//! Host, e.g. `GET / HTTP/1.0`) is answered only once more bytes arrive or the client closes;
//! torhaus's own engine ([`crate::proxy::Engine`]) looks for the preface in whatever has
//! arrived and hands such requests over at once. Pipelined requests are answered in order
//! (pingora's pipelining support, enabled per request in `early_request_filter`).

use http::{HeaderMap, Version, header};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400, with the reason for the log.
    BadRequest(&'static str),
    /// 431: the header block exceeds the configured limit.
    HeadersTooLarge,
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::HeadersTooLarge => 431,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadRequest(reason) => reason,
            Rejection::HeadersTooLarge => "request header block too large",
        }
    }
}

/// Checks a freshly read request. Allocation-free unless the request is HTTP/1 with
/// `Transfer-Encoding` (then the raw header block is shared, not copied).
pub fn check_request(session: &ServerSession, max_header_bytes: usize) -> Result<(), Rejection> {
    let request = session.req_header();
    let headers = &request.headers;
    if let Some(h1) = session.as_http1() {
        check_h1_request(request, &h1.get_headers_raw_bytes(), max_header_bytes)?;
    } else {
        check_h2_request(headers, max_header_bytes)?;
    }
    Ok(())
}

/// The HTTP/2 checks of [`check_request`]: the header block's size as HPACK counts it
/// (RFC 9113 §6.5.2: name, value and 32 bytes per field) and a single `Content-Length`.
pub fn check_h2_request(headers: &HeaderMap, max_header_bytes: usize) -> Result<(), Rejection> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    if size > max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    check_content_length(headers)
}

/// The HTTP/1 checks of [`check_request`], over the request and its raw header block as read
/// from the wire (request line included).
pub fn check_h1_request(
    request: &RequestHeader,
    raw: &[u8],
    max_header_bytes: usize,
) -> Result<(), Rejection> {
    let headers = &request.headers;
    if raw.len() > max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    check_request_target(request.raw_path())?;
    check_host(headers, request.version)?;
    check_content_length(headers)?;
    if headers.contains_key(header::TRANSFER_ENCODING) && mentions_content_length(raw) {
        return Err(Rejection::BadRequest(
            "Content-Length together with Transfer-Encoding",
        ));
    }
    Ok(())
}

/// A request target is origin-form (`/...`), asterisk-form (`*`), absolute-form (`scheme:`) or
/// authority-form (`host:port`, CONNECT); anything else was malformed on the wire.
fn check_request_target(target: &[u8]) -> Result<(), Rejection> {
    match target.first() {
        Some(b'/' | b'*') => Ok(()),
        Some(first) if first.is_ascii_alphanumeric() => Ok(()),
        _ => Err(Rejection::BadRequest("malformed request line")),
    }
}

fn check_host(headers: &HeaderMap, version: Version) -> Result<(), Rejection> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => {
            Err(Rejection::BadRequest("HTTP/1.1 request without Host"))
        }
        (Some(_), Some(_)) => Err(Rejection::BadRequest("repeated Host header")),
        _ => Ok(()),
    }
}

fn check_content_length(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(Rejection::BadRequest("repeated Content-Length")),
        (Some(value), None) if value.as_bytes().contains(&b',') => {
            Err(Rejection::BadRequest("Content-Length with several values"))
        }
        _ => Ok(()),
    }
}

/// Whether a raw HTTP/1 header block has a `Content-Length` field line (case-insensitive).
fn mentions_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && matches!(line[NAME.len()], b':' | b' ' | b'\t')
    })
}

#[cfg(test)]
#[allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]
mod tests {
    use super::*;

    #[test]
    fn finds_content_length_lines_in_any_case() {
        assert!(mentions_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\nCONTENT-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!mentions_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 3\r\n\r\n"
        ));
    }

    #[test]
    fn request_targets() {
        assert!(check_request_target(b"/x").is_ok());
        assert!(check_request_target(b"*").is_ok());
        assert!(check_request_target(b"http://a/").is_ok());
        assert!(check_request_target(b"%20/x").is_err());
        assert!(check_request_target(b"").is_err());
    }

    #[test]
    fn content_length_must_be_single() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        assert!(check_content_length(&headers).is_ok());
        headers.append(header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        assert!(check_content_length(&headers).is_err());
    }
}
