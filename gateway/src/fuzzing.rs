//! Entry points for the fuzzers (feature `fuzzing`): raw bytes through pingora's HTTP/1 request
//! parser and the strict checks, exactly as a connection's first request goes through them.

use std::io::Cursor;

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use crate::strict::{self, Rejection};

/// What became of one raw HTTP/1 request.
#[derive(Debug)]
pub enum RawRequestOutcome {
    /// pingora needs more bytes or refused the request itself (its own 400).
    NotRead,
    /// The strict checks refused it.
    Rejected(Rejection),
    /// The request would be routed and forwarded.
    Accepted(AcceptedRequest),
}

#[derive(Debug)]
pub struct AcceptedRequest {
    /// The header block as received (request line included).
    pub header_block: Bytes,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    /// The body as pingora frames it, read to its end; `Err` when the bytes ran out or the
    /// framing broke before the end, with what was read by then.
    pub body: Result<Vec<u8>, Vec<u8>>,
}

/// Reads the first request of `raw` as pingora does on a connection, then applies
/// [`strict::check_request`] with `max_header_bytes`.
pub async fn read_and_check(raw: Vec<u8>, max_header_bytes: usize) -> RawRequestOutcome {
    let mut session = ServerSession::new_http1(Box::new(Cursor::new(raw)));
    match session.read_request().await {
        Ok(true) => {}
        Ok(false) | Err(_) => return RawRequestOutcome::NotRead,
    }
    if let Err(rejection) = strict::check_request(&session, max_header_bytes) {
        return RawRequestOutcome::Rejected(rejection);
    }
    let header_block = session
        .as_http1()
        .map(|h1| h1.get_headers_raw_bytes())
        .unwrap_or_default();
    let request = session.req_header();
    let version = request.version;
    let headers = request.headers.clone();
    let mut body = Vec::new();
    let body = loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(body),
            Err(_) => break Err(body),
        }
    };
    RawRequestOutcome::Accepted(AcceptedRequest {
        header_block,
        version,
        headers,
        body,
    })
}
