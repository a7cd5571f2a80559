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
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Duration;

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
    pub client: Option<String>,
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
    pub upstream: Option<String>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The authenticated user, once routes enforce login; null until then.
    pub user: Option<&'a str>,
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
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
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

/// Now as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let stamp = now_rfc3339();
        assert!(stamp.ends_with('Z'), "{stamp}");
        assert!(
            time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
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
            client: Some("127.0.0.1:5000".into()),
            host: "app.example.com",
            method: "GET",
            path: "/x\"y",
            protocol: "HTTP/1.1",
            status: 200,
            gateway: "default/gw",
            listener: "http",
            route: "default/app",
            backend: "default/app:80",
            upstream: Some("127.0.0.1:9000".into()),
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
