//! Entry points for the fuzzers (feature `fuzzing`): raw bytes through pingora's HTTP/1 request
//! parser and the strict checks, exactly as a connection's first request goes through them, and
//! through torhaus's own HTTP/1 engine's head reading and admission.

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

/// What torhaus's HTTP/1 engine makes of the first request head of `raw`.
#[derive(Debug)]
pub enum EngineOutcome {
    /// The head is not complete yet.
    Incomplete,
    /// Refused with 400 as malformed before anything else.
    Malformed,
    /// Handed to pingora's proxy, for this reason.
    HandedOver(&'static str),
    /// Read and refused by the strict checks.
    Rejected(Rejection),
    /// Served by the engine itself.
    Served(ServedRequest),
}

#[derive(Debug)]
pub struct ServedRequest {
    /// The head as read (request line included).
    pub head: Bytes,
    pub method: http::Method,
    pub target: Vec<u8>,
    pub headers: http::HeaderMap,
}

/// Reads the first request head of `raw` as the engine does, and decides as it does (routing
/// aside) whether the engine serves it.
pub fn engine_reads(raw: &[u8], max_header_bytes: usize) -> EngineOutcome {
    use crate::proxy::{engine, wire};
    let mut fields = Vec::new();
    let head = match wire::read_request_head(raw, &mut fields) {
        Ok(None) => return EngineOutcome::Incomplete,
        Err(wire::HeadError::Malformed) => return EngineOutcome::Malformed,
        Err(wire::HeadError::TooManyFields) => return EngineOutcome::HandedOver("unusual_head"),
        Ok(Some(head)) => head,
    };
    let bytes = Bytes::copy_from_slice(&raw[..head.len]);
    match engine::admit(&bytes, &head, &fields, max_header_bytes) {
        Err(reason) => EngineOutcome::HandedOver(reason),
        Ok(admitted) => match admitted.rejection {
            Some(rejection) => EngineOutcome::Rejected(rejection),
            None => EngineOutcome::Served(ServedRequest {
                head: bytes,
                method: admitted.request.method.clone(),
                target: admitted.request.raw_path().to_vec(),
                headers: admitted.request.headers.clone(),
            }),
        },
    }
}

/// A chunked body as the engine followed it.
#[derive(Debug)]
pub struct FollowedChunked {
    /// The bytes of `raw` that belong to the body, framing included (relayed to HTTP/1.1).
    pub used: usize,
    /// Its payload length as counted while following it.
    pub payload_bytes: u64,
    /// Its data, decoded as for HTTP/2 clients.
    pub data: Vec<u8>,
}

/// Follows a chunked body at the start of `raw` as the engine does when relaying one, both as
/// sent and decoded: `None` while incomplete, or the framing error. Both ways must agree.
pub fn engine_follows_chunked(raw: &[u8]) -> Result<Option<FollowedChunked>, String> {
    let mut tracker = crate::proxy::wire::ChunkedTracker::default();
    let used = tracker.advance(raw).map_err(|e| e.to_string())?;
    let mut decoder = crate::proxy::wire::ChunkedTracker::default();
    let mut data = bytes::BytesMut::new();
    let decoded = decoder.decode(raw, &mut data).map_err(|e| e.to_string())?;
    if decoded != used || decoder.is_done() != tracker.is_done() {
        return Err(format!(
            "following ({used} bytes) and decoding ({decoded} bytes) disagree"
        ));
    }
    Ok(tracker.is_done().then(|| FollowedChunked {
        used,
        payload_bytes: tracker.payload_bytes(),
        data: data.to_vec(),
    }))
}
