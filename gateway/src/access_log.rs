//! Access logs: one JSON object per request, written off the request path by a dedicated thread.
//!
//! The proxy serializes an [`AccessEntry`] and hands the line to a bounded channel; the writer
//! thread wakes every 25 ms and writes what has queued in one batch. When the writer falls
//! behind (a slow disk, a blocked pipe), lines are dropped and counted in
//! `torhaus_access_log_dropped_total` rather than slowing requests down.
//!
//! # What is never logged
//! No request or response header is logged except Host: no Cookie, Set-Cookie, Authorization
//! or proxy credentials. The query string is dropped entirely, because query strings carry
//! tokens (OAuth `code` and `state`, signed-URL signatures, API keys); only the path is kept.
//! Secrets inside the path itself (e.g. `/reset/<token>`) cannot be recognised and are logged
//! as sent. Host and path are cut at [`MAX_FIELD_BYTES`].

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde::Serialize;

use crate::error::GatewayError;

/// Lines waiting for the writer at most; beyond it lines are dropped. At the write interval
/// below this absorbs 650k requests per second.
const QUEUE_LINES: usize = 16 * 1024;
/// How often the writer wakes to write what has queued: lines reach the file this late at most
/// (plus the write itself).
const WRITE_INTERVAL: Duration = Duration::from_millis(25);
/// Host and path are truncated to this many bytes (on a character boundary).
pub const MAX_FIELD_BYTES: usize = 2048;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    /// Appended to; reopened by nobody, so rotate with copytruncate.
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "" => Err("an empty access log target; use `stderr` or a file path".to_owned()),
            "stderr" | "-" => Ok(AccessLogTarget::Stderr),
            path => Ok(AccessLogTarget::File(PathBuf::from(path))),
        }
    }
}

/// One request, as logged. Field order is the line's order.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: &'a str,
    /// `ip:port` of the TCP peer (not X-Forwarded-For).
    #[serde(serialize_with = "address")]
    pub client: Option<SocketAddr>,
    pub host: &'a str,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// 0 when no response was sent (the client left first).
    pub status: u16,
    pub gateway: &'a str,
    pub listener: &'a str,
    pub route: &'a str,
    pub backend: &'a str,
    /// The endpoint of the last attempt.
    #[serde(serialize_with = "address")]
    pub upstream: Option<SocketAddr>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The user the identity layer let through (preferred username, else subject); null on
    /// routes without a policy and for requests it answered itself.
    pub user: Option<&'a str>,
}

/// Serializes an address as `ip:port` (IPv4 through [`format_v4`]).
fn address<S: serde::Serializer>(addr: &Option<SocketAddr>, out: S) -> Result<S::Ok, S::Error> {
    match addr {
        None => out.serialize_none(),
        Some(SocketAddr::V4(v4)) => {
            let mut buf = [0u8; 21];
            let len = format_v4(v4, &mut buf);
            out.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
        }
        Some(v6) => out.collect_str(v6),
    }
}

/// Writes an IPv4 `ip:port` into `buf` with a few integer operations and returns its length:
/// `Display` for addresses goes through the formatting machinery, which was (measured with
/// callgrind) a large part of an access log line's cost.
fn format_v4(addr: &std::net::SocketAddrV4, buf: &mut [u8; 21]) -> usize {
    let mut len = 0;
    for (index, octet) in addr.ip().octets().iter().enumerate() {
        if index > 0 {
            buf[len] = b'.';
            len += 1;
        }
        len += write_decimal(u64::from(*octet), &mut buf[len..]);
    }
    buf[len] = b':';
    len += 1;
    len + write_decimal(u64::from(addr.port()), &mut buf[len..])
}

/// Writes `value` in decimal at the start of `out` (which must have room) and returns the
/// number of digits.
fn write_decimal(mut value: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 20];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (value % 10) as u8;
        count += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for (slot, digit) in out.iter_mut().zip(digits[..count].iter().rev()) {
        *slot = *digit;
    }
    count
}

fn json_u64(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; 20];
    let len = write_decimal(value, &mut buf);
    out.extend_from_slice(&buf[..len]);
}

/// Milliseconds with microsecond precision, e.g. `2.385`.
fn json_millis(out: &mut Vec<u8>, millis: f64) {
    let micros = if millis.is_finite() && millis > 0.0 {
        (millis * 1000.0).round() as u64
    } else {
        0
    };
    json_u64(out, micros / 1000);
    let fraction = micros % 1000;
    out.push(b'.');
    out.push(b'0' + (fraction / 100) as u8);
    out.push(b'0' + (fraction / 10 % 10) as u8);
    out.push(b'0' + (fraction % 10) as u8);
}

/// A JSON string: quotes, backslashes and control characters escaped; other UTF-8 as is.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Skip clean 8-byte words at once (almost every host and path is clean), then go byte by
    // byte from the first word that holds something to escape.
    let mut clean = 0;
    while let Some(chunk) = bytes.get(clean..clean + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    if let Some(tail) = bytes.get(clean..)
        && tail.len() < 8
    {
        // The last partial word, padded with spaces (which need no escape): a clean string is
        // copied whole without looking at its bytes one by one.
        let mut word = [b' '; 8];
        word[..tail.len()].copy_from_slice(tail);
        if !needs_escape(u64::from_le_bytes(word)) {
            out.extend_from_slice(bytes);
            out.push(b'"');
            return;
        }
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate().skip(clean) {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte of `word` is a control character, DEL, `"` or `\\` (exact: the usual
/// "has a byte less than n" and "has a zero byte" word tricks).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    let del = has_zero(word ^ (ONES * 0x7f));
    below_space | quote | backslash | del != 0
}

fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        None => out.extend_from_slice(b"null"),
        Some(SocketAddr::V4(v4)) => {
            let mut buf = [0u8; 21];
            let len = format_v4(&v4, &mut buf);
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        Some(v6) => json_str(out, &v6.to_string()),
    }
}

impl AccessEntry<'_> {
    /// The entry as one JSON object, fields in the order of the `Serialize` derive, written by
    /// hand: serde_json's generic path was most of a line's cost (bench/RESULTS.md).
    /// Durations are rounded to the microsecond.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let text_fields: [(&[u8], &str); 5] = [
            (b"{\"time\":", self.time),
            (b",\"host\":", self.host),
            (b",\"method\":", self.method),
            (b",\"path\":", self.path),
            (b",\"protocol\":", self.protocol),
        ];
        for (index, (key, value)) in text_fields.iter().enumerate() {
            out.extend_from_slice(key);
            json_str(out, value);
            if index == 0 {
                out.extend_from_slice(b",\"client\":");
                json_addr(out, self.client);
            }
        }
        out.extend_from_slice(b",\"status\":");
        json_u64(out, u64::from(self.status));
        for (key, value) in [
            (&b",\"gateway\":"[..], self.gateway),
            (b",\"listener\":", self.listener),
            (b",\"route\":", self.route),
            (b",\"backend\":", self.backend),
        ] {
            out.extend_from_slice(key);
            json_str(out, value);
        }
        out.extend_from_slice(b",\"upstream\":");
        json_addr(out, self.upstream);
        out.extend_from_slice(b",\"duration_ms\":");
        json_millis(out, self.duration_ms);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => json_millis(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_bytes\":");
        json_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        json_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"user\":");
        match self.user {
            Some(user) => json_str(out, user),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
}

/// The access log's sending side; cheap to share (one per data plane).
#[derive(Debug)]
pub struct AccessLog {
    lines: SyncSender<Vec<u8>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens `target` and starts the writer thread, which ends when the log is dropped.
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> Result<AccessLog, GatewayError> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        GatewayError::Settings(format!(
                            "access log {}: cannot open for appending: {e}",
                            path.display()
                        ))
                    })?,
            ),
        };
        let (lines, receiver) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("torhaus-access-log".into())
            .spawn(move || write_lines(receiver, sink))
            .map_err(|e| GatewayError::Settings(format!("access log writer thread: {e}")))?;
        Ok(AccessLog { lines, dropped })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, entry: &AccessEntry<'_>) {
        let mut line = Vec::with_capacity(384);
        entry.write_json(&mut line);
        line.push(b'\n');
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_lines(receiver: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut dirty = false;
    loop {
        // Polled, not blocked on: a writer parked in `recv` would be woken by every request's
        // send (a futex wake and a context switch per line, measured at tens of microseconds
        // per request on a busy core). Polling lets lines accumulate and go out in batches.
        let mut result = Ok(());
        loop {
            match receiver.try_recv() {
                Ok(line) => {
                    dirty = true;
                    if result.is_ok() {
                        result = out.write_all(&line);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if dirty {
            dirty = false;
            if let Err(error) = result.and_then(|()| out.flush()) {
                tracing::error!(%error, "writing the access log failed; lines are lost");
            }
        }
        std::thread::sleep(WRITE_INTERVAL);
    }
}

/// `text` cut to at most [`MAX_FIELD_BYTES`], on a character boundary.
pub fn bounded(text: &str) -> &str {
    if text.len() <= MAX_FIELD_BYTES {
        return text;
    }
    let mut end = MAX_FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The path of a request target, without its query string.
pub fn path_only(target: &str) -> &str {
    bounded(target.split_once('?').map_or(target, |(path, _)| path))
}

/// A timestamp as RFC 3339 with milliseconds, UTC: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
/// Formatted by hand into a stack buffer: this runs for every logged request.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    pub fn now() -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::at(since.as_secs(), since.subsec_millis())
    }

    /// `unix_seconds` since the epoch plus `millis` (0..1000); years past 9999 are clamped.
    pub fn at(unix_seconds: u64, millis: u32) -> Timestamp {
        let days = i64::try_from(unix_seconds / 86_400).unwrap_or(i64::MAX / 2);
        let (year, month, day) = civil_from_days(days);
        let year = year.clamp(0, 9999) as u64;
        let second_of_day = unix_seconds % 86_400;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for index in (at..at + width).rev() {
                out[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u64::from(month));
        put(8, 2, u64::from(day));
        put(11, 2, second_of_day / 3600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        put(20, 3, u64::from(millis.min(999)));
        Timestamp(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_never_reaches_the_path_field() {
        assert_eq!(path_only("/login?code=secret&state=x"), "/login");
        assert_eq!(path_only("/plain"), "/plain");
        assert_eq!(path_only("/?"), "/");
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_FIELD_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn timestamps_match_a_calendar_library() -> Result<(), Box<dyn std::error::Error>> {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // Epoch, leap days, century rules, end of year, and now.
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        for unix in [
            0,
            951_782_400,
            951_868_799,
            1_709_164_800,
            4_107_542_399,
            1_795_388_883,
            now,
        ] {
            let expected = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix)?)?
                .replace_millisecond(123)?
                .format(&format)?;
            assert_eq!(Timestamp::at(unix, 123).as_str(), expected, "unix {unix}");
        }
        Ok(())
    }

    #[test]
    fn addresses_serialize_like_display() -> Result<(), serde_json::Error> {
        #[derive(Serialize)]
        struct Wrapped(#[serde(serialize_with = "address")] Option<SocketAddr>);
        for text in [
            "0.0.0.0:0",
            "127.0.0.1:9080",
            "10.20.3.4:80",
            "255.255.255.255:65535",
            "[::1]:443",
        ] {
            let addr: Option<SocketAddr> = text.parse().ok();
            assert!(addr.is_some(), "{text}");
            assert_eq!(
                serde_json::to_string(&Wrapped(addr))?,
                format!("\"{text}\"")
            );
        }
        assert_eq!(serde_json::to_string(&Wrapped(None))?, "null");
        Ok(())
    }

    #[test]
    fn hand_written_lines_equal_serde_json_for_hostile_text() -> Result<(), serde_json::Error> {
        let entry = AccessEntry {
            time: "2026-01-01T00:00:00.000Z",
            client: "[2001:db8::1]:5000".parse().ok(),
            host: "h\u{7f}st\\\"x",
            method: "GET",
            path: "/ä/\u{0}\n\t\r\u{1f}\"'</script>",
            protocol: "HTTP/2",
            status: 0,
            gateway: "",
            listener: "l",
            route: "r",
            backend: "b",
            upstream: None,
            duration_ms: 12.345,
            upstream_ms: None,
            request_bytes: u64::MAX,
            response_bytes: 0,
            user: Some("alice \"admin\""),
        };
        let mut line = Vec::new();
        entry.write_json(&mut line);
        let parsed: serde_json::Value = serde_json::from_slice(&line)?;
        assert_eq!(parsed, serde_json::to_value(&entry)?);
        let keys: Vec<&String> = parsed
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 17);
        Ok(())
    }

    #[test]
    fn strings_escape_at_every_offset_like_serde_json() -> Result<(), serde_json::Error> {
        for special in [
            "\"", "\\", "\u{0}", "\u{1f}", "\u{7f}", "\n", "é", "\u{80}", " ",
        ] {
            // Every length mod 8 and every position, so the word scan and its padded tail
            // both meet the character.
            for len in 0..20 {
                for offset in 0..=len {
                    let text = format!(
                        "{}{special}{}",
                        "a".repeat(offset),
                        "b".repeat(len - offset)
                    );
                    let mut out = Vec::new();
                    json_str(&mut out, &text);
                    let parsed: String = serde_json::from_slice(&out)?;
                    assert_eq!(parsed, text, "{special:?} at {offset} of {len}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn lines_reach_the_file_as_json() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("torhaus-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("access.log");
        let log = AccessLog::start(
            &AccessLogTarget::File(path.clone()),
            IntCounter::new("dropped", "dropped")?,
        )?;
        let entry = AccessEntry {
            time: "2026-01-01T00:00:00.000Z",
            client: "127.0.0.1:5000".parse().ok(),
            host: "app.example.com",
            method: "GET",
            path: "/x\"y",
            protocol: "HTTP/1.1",
            status: 200,
            gateway: "default/gw",
            listener: "http",
            route: "default/app",
            backend: "default/app:80",
            upstream: "127.0.0.1:9000".parse().ok(),
            duration_ms: 1.5,
            upstream_ms: Some(1.0),
            request_bytes: 0,
            response_bytes: 12,
            user: None,
        };
        log.write(&entry);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let line = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "no line written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let value: serde_json::Value = serde_json::from_str(line.trim_end())?;
        assert_eq!(value["path"], "/x\"y");
        assert_eq!(value["status"], 200);
        assert!(value["user"].is_null());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
