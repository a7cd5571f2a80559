//! HTTP/1.1 message framing for torhaus's own HTTP/1 engine ([`super::engine`]): finding and
//! reading request and response heads in a connection's buffer (by offsets, so that header names
//! and values are later shared from the buffer, not copied), and following a chunked body byte by
//! byte so it can be relayed as it arrives, as sent, while knowing exactly where it ends (or, for
//! HTTP/2 clients, decoded into its data).

use bytes::BytesMut;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Header fields a head may have at most; beyond it the request goes to pingora's proxy.
pub const MAX_HEADERS: usize = 96;

/// A response head may be at most this long.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One header field of a head, as offsets into the buffer it was read from.
#[derive(Debug, Clone)]
pub struct FieldSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A request head read from a buffer.
#[derive(Debug)]
pub struct RequestHead {
    /// Length of the head, its final empty line included.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
}

/// A response head read from a buffer.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub minor_version: u8,
}

/// Why a head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed HTTP/1 head")]
    Malformed,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyFields,
}

impl From<httparse::Error> for HeadError {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => HeadError::TooManyFields,
            _ => HeadError::Malformed,
        }
    }
}

fn span_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

fn spans_of(base: &[u8], headers: &[httparse::Header<'_>], fields: &mut Vec<FieldSpan>) {
    fields.clear();
    fields.extend(headers.iter().map(|h| FieldSpan {
        name: span_of(base, h.name.as_bytes()),
        value: span_of(base, h.value),
    }));
}

/// Reads the request head at the start of `buf`: `Ok(None)` while it is incomplete. Its fields
/// are left in `fields`.
pub fn read_request_head(
    buf: &[u8],
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialized: httparse writes only the fields it finds, and zeroing 96 of them
    // cost more than reading a typical head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let httparse::Status::Complete(len) = request.parse_with_uninit_headers(buf, &mut headers)?
    else {
        return Ok(None);
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed);
    };
    spans_of(buf, request.headers, fields);
    Ok(Some(RequestHead {
        len,
        method: span_of(buf, method.as_bytes()),
        target: span_of(buf, target.as_bytes()),
        minor_version,
    }))
}

/// Reads the response head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn read_response_head(
    buf: &[u8],
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let httparse::Status::Complete(len) = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, buf, &mut headers)?
    else {
        return Ok(None);
    };
    let (Some(status), Some(minor_version)) = (response.code, response.version) else {
        return Err(HeadError::Malformed);
    };
    let reason = span_of(buf, response.reason.unwrap_or_default().as_bytes());
    let reason = if reason.start >= buf.len() {
        0..0
    } else {
        reason
    };
    spans_of(buf, response.headers, fields);
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        minor_version,
    }))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: digits only, nothing else (RFC 9110 §8.6).
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A chunked body is malformed (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(&'static str);

/// A line of the chunked framing (a size line, a trailer field) may not be longer than this.
const MAX_FRAMING_LINE: usize = 4096;

/// Where a chunk-size line is: `chunk-size [ BWS ";" chunk-ext ] CRLF` (RFC 9112 §7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeLine {
    Digits,
    /// Whitespace after the digits: only `;` may follow.
    Space,
    /// After `;`: the extensions, up to CR.
    Extensions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line: the size so far, and where in the line.
    Size {
        size: u64,
        digits: usize,
        at: SizeLine,
    },
    /// The size line's LF after its CR.
    SizeLf {
        size: u64,
    },
    /// Data bytes still to come in this chunk.
    Data {
        left: u64,
    },
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The LF ending a trailer line, or the final one when `last` is set.
    TrailerLf {
        last: bool,
    },
    Done,
}

/// Follows a chunked body as it streams past, without changing it.
#[derive(Debug, Clone)]
pub struct ChunkedTracker {
    state: ChunkState,
    line: usize,
    payload: u64,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        Self {
            state: ChunkState::Size {
                size: 0,
                digits: 0,
                at: SizeLine::Digits,
            },
            line: 0,
            payload: 0,
        }
    }
}

impl ChunkedTracker {
    /// Whether the final chunk and the trailer section have passed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes seen so far (the framing excluded).
    pub fn payload_bytes(&self) -> u64 {
        self.payload
    }

    /// Follows `input`; returns how many of its bytes belong to the body (all of them unless the
    /// body ends within it).
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
        self.follow(input, |_| {})
    }

    /// [`ChunkedTracker::advance`], appending the chunks' data (the framing removed) to `data`.
    pub fn decode(&mut self, input: &[u8], data: &mut BytesMut) -> Result<usize, ChunkedError> {
        self.follow(input, |chunk| data.extend_from_slice(chunk))
    }

    fn follow(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        let mut at = 0;
        while at < input.len() {
            if let ChunkState::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                on_data(&input[at..at + take]);
                at += take;
                self.payload += take as u64;
                let left = left - take as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left }
                };
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = self.step(byte)?;
            if self.state == ChunkState::Done {
                return Ok(at);
            }
        }
        Ok(at)
    }

    fn step(&mut self, byte: u8) -> Result<ChunkState, ChunkedError> {
        self.line += 1;
        if self.line > MAX_FRAMING_LINE {
            return Err(ChunkedError("framing line too long"));
        }
        Ok(match self.state {
            ChunkState::Size { size, digits, at } => match (at, byte) {
                (_, b'\r') if digits > 0 && at != SizeLine::Space => ChunkState::SizeLf { size },
                (SizeLine::Extensions, b'\n' | 0 | b'\r') => {
                    return Err(ChunkedError("bare CR, LF or NUL in a chunk extension"));
                }
                (SizeLine::Extensions, _) => ChunkState::Size { size, digits, at },
                (SizeLine::Digits | SizeLine::Space, b';') if digits > 0 => ChunkState::Size {
                    size,
                    digits,
                    at: SizeLine::Extensions,
                },
                (SizeLine::Digits | SizeLine::Space, b' ' | b'\t') if digits > 0 => {
                    ChunkState::Size {
                        size,
                        digits,
                        at: SizeLine::Space,
                    }
                }
                (SizeLine::Space, _) => {
                    return Err(ChunkedError(
                        "only a chunk extension may follow a chunk size",
                    ));
                }
                (SizeLine::Digits, _) => {
                    let digit = (byte as char)
                        .to_digit(16)
                        .ok_or(ChunkedError("invalid chunk size"))?;
                    if digits >= 16 {
                        return Err(ChunkedError("chunk size too large"));
                    }
                    ChunkState::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                        at,
                    }
                }
            },
            ChunkState::SizeLf { size } => {
                if byte != b'\n' {
                    return Err(ChunkedError("chunk size line not ended by CRLF"));
                }
                self.line = 0;
                if size == 0 {
                    ChunkState::TrailerStart
                } else {
                    ChunkState::Data { left: size }
                }
            }
            ChunkState::DataCr => {
                if byte != b'\r' {
                    return Err(ChunkedError("chunk data not followed by CRLF"));
                }
                ChunkState::DataLf
            }
            ChunkState::DataLf => {
                if byte != b'\n' {
                    return Err(ChunkedError("chunk data not followed by CRLF"));
                }
                self.line = 0;
                ChunkState::Size {
                    size: 0,
                    digits: 0,
                    at: SizeLine::Digits,
                }
            }
            ChunkState::TrailerStart => match byte {
                b'\r' => ChunkState::TrailerLf { last: true },
                b'\n' => return Err(ChunkedError("bare LF in the trailer section")),
                _ => ChunkState::Trailer,
            },
            ChunkState::Trailer => match byte {
                b'\r' => ChunkState::TrailerLf { last: false },
                b'\n' | 0 => return Err(ChunkedError("bare LF or NUL in a trailer field")),
                _ => ChunkState::Trailer,
            },
            ChunkState::TrailerLf { last } => {
                if byte != b'\n' {
                    return Err(ChunkedError("trailer line not ended by CRLF"));
                }
                self.line = 0;
                if last {
                    ChunkState::Done
                } else {
                    ChunkState::TrailerStart
                }
            }
            ChunkState::Data { .. } | ChunkState::Done => {
                return Err(ChunkedError("bytes after the end of the body"));
            }
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]
mod tests {
    use super::*;

    fn track_whole(body: &[u8]) -> Result<(usize, ChunkedTracker), ChunkedError> {
        let mut tracker = ChunkedTracker::default();
        let used = tracker.advance(body)?;
        Ok((used, tracker))
    }

    #[test]
    fn decoding_yields_the_chunks_data_however_the_body_is_split() -> Result<(), ChunkedError> {
        let body = b"5\r\nhello\r\n6 ;name=value\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let mut tracker = ChunkedTracker::default();
            let mut data = BytesMut::new();
            let first = tracker.decode(&body[..split], &mut data)?;
            // A finished body is not followed further: what comes after is the next message.
            let used = if tracker.is_done() {
                first
            } else {
                first + tracker.decode(&body[split..], &mut data)?
            };
            assert_eq!(&data[..], b"hello world", "split at {split}");
            assert!(tracker.is_done(), "split at {split}");
            assert_eq!(used, end, "split at {split}");
            assert_eq!(tracker.payload_bytes(), 11);
        }
        Ok(())
    }

    #[test]
    fn chunked_body_ends_exactly_after_the_last_chunk_and_trailers() {
        let body =
            b"5\r\nhello\r\n6 ;name=value\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1";
        let (used, tracker) = track_whole(body).expect("valid");
        assert!(tracker.is_done());
        assert_eq!(&body[used..], b"GET / HTTP/1.1");
        assert_eq!(tracker.payload_bytes(), 11);
    }

    #[test]
    fn chunked_body_split_at_every_byte_gives_the_same_end() {
        let body = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        for split in 0..=body.len() {
            let mut tracker = ChunkedTracker::default();
            let first = tracker.advance(&body[..split]).expect("valid first part");
            assert_eq!(first, split);
            let second = tracker.advance(&body[split..]).expect("valid second part");
            assert_eq!(first + second, body.len(), "split at {split}");
            assert!(tracker.is_done(), "split at {split}");
            assert_eq!(tracker.payload_bytes(), 11);
        }
    }

    #[test]
    fn malformed_chunked_framing_is_refused() {
        for body in [
            &b"g\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"0\r\n\n",
            b"11111111111111111\r\n",
            b"5;ext\nhello",
            b"0\t\tte\r\n\r\n",
            b"5 \r\nhello\r\n",
            b"5 x;a\r\nhello\r\n",
        ] {
            assert!(
                track_whole(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_huge_chunk_size_is_followed_without_overflow() {
        let mut tracker = ChunkedTracker::default();
        assert_eq!(
            tracker.advance(b"ffffffffffffffff\r\nabc").expect("valid"),
            21
        );
        assert!(!tracker.is_done());
        assert_eq!(tracker.payload_bytes(), 3);
    }

    #[test]
    fn an_endless_size_line_is_refused() {
        let mut tracker = ChunkedTracker::default();
        let mut line = b"5;".to_vec();
        line.resize(MAX_FRAMING_LINE + 10, b'a');
        assert!(tracker.advance(&line).is_err());
    }

    #[test]
    fn request_heads_are_read_by_offsets() {
        let buf = b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  y \r\n\r\nrest";
        let mut fields = Vec::new();
        let head = read_request_head(buf, &mut fields)
            .expect("valid")
            .expect("complete");
        assert_eq!(&buf[head.method.clone()], b"GET");
        assert_eq!(&buf[head.target.clone()], b"/a?b");
        assert_eq!(head.minor_version, 1);
        assert_eq!(&buf[head.len..], b"rest");
        let fields: Vec<_> = fields
            .iter()
            .map(|f| (&buf[f.name.clone()], &buf[f.value.clone()]))
            .collect();
        assert_eq!(fields, [(&b"Host"[..], &b"x"[..]), (b"X-A", b"y")]);
        assert!(
            read_request_head(b"GET / HTTP/1.1\r\nHost", &mut Vec::new())
                .expect("partial is fine")
                .is_none()
        );
        assert!(
            read_request_head(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", &mut Vec::new()).is_err()
        );
    }

    #[test]
    fn request_heads_that_pingora_would_re_escape_are_malformed() {
        for head in [
            &b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHo st: x\r\n\r\n",
        ] {
            assert_eq!(
                read_request_head(head, &mut Vec::new()).map(|h| h.is_some()),
                Err(HeadError::Malformed),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Empty lines before the request line are allowed (RFC 9112 §2.2).
        let head = read_request_head(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut Vec::new())
            .expect("valid")
            .expect("complete");
        assert_eq!(head.minor_version, 1);
    }

    #[test]
    fn response_heads_are_read_with_their_reason() {
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let mut fields = Vec::new();
        let head = read_response_head(buf, &mut fields)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, 404);
        assert_eq!(&buf[head.reason.clone()], b"Not Found");
        assert_eq!(head.len, buf.len());
        assert_eq!(fields.len(), 1);
    }

    #[test]
    fn tokens_and_lengths_are_read_strictly() {
        assert!(lists_token(b"keep-alive, Close", "close"));
        assert!(!lists_token(b"closed", "close"));
        assert_eq!(content_length(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"+4",
            b"4 2",
            b"-1",
            b"12345678901234567890",
            b"0x1",
        ] {
            assert_eq!(content_length(bad), None);
        }
    }
}
