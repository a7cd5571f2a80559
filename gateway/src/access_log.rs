//! Access logs: one JSON object per request, written off the request path by a dedicated thread.
//!
//! The proxy serializes an [`AccessEntry`] and hands it to the writer thread, which writes what
//! has queued at most every 100 ms, in one vectored write, and sleeps while nothing comes. On a
//! worker thread with its own event loop (the default, see the data plane) lines are appended
//! to that thread's batch, and the batch goes to the writer when it is full or, by a timer task
//! of the same thread ([`run_batch_flusher`]), 25 ms after its first line: no allocation,
//! channel operation or cross-thread free per line.
//! Elsewhere (`--work-stealing`, where tasks move between threads) each line is queued alone.
//! When the writer falls behind (a slow disk, a blocked pipe), lines are dropped and counted in
//! `torhaus_access_log_dropped_total` rather than slowing requests down.
//!
//! # What is never logged
//! No request or response header is logged except Host: no Cookie, Set-Cookie, Authorization
//! or proxy credentials. The query string is dropped entirely, because query strings carry
//! tokens (OAuth `code` and `state`, signed-URL signatures, API keys); only the path is kept.
//! Secrets inside the path itself (e.g. `/reset/<token>`) cannot be recognised and are logged
//! as sent. Host and path are cut at [`MAX_FIELD_BYTES`].

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use prometheus::IntCounter;

use crate::error::GatewayError;

/// Lines (or batches of lines) waiting for the writer at most; beyond it they are dropped. At
/// the write interval below this absorbs 320k single lines per second (`--work-stealing`);
/// batches are bounded by [`QUEUE_BYTES`] first.
const QUEUE_LINES: usize = 32 * 1024;
/// How long the writer lets lines gather after a write: lines reach the file this late at most
/// (plus [`BATCH_INTERVAL`] and the write itself). Each wake-up of the writer is a context
/// switch on a core the proxy may need; a profile under load put them at a third of the
/// writer's CPU at 25 ms.
const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// A thread's batch goes to the writer once it holds [`BATCH_BYTES`], else when its flusher
/// wakes, this long after the batch's first line. The flusher is a task of the worker's own
/// event loop, so its wake-ups cost no context switch.
const BATCH_INTERVAL: Duration = Duration::from_millis(25);
/// A thread's batch goes to the writer once it holds this many bytes.
const BATCH_BYTES: usize = 16 * 1024;
/// A batch buffer's size: room for the line that crosses [`BATCH_BYTES`] (lines are a few
/// hundred bytes; one with a 2 KiB host and path full of escapes grows the buffer once).
const BATCH_CAPACITY: usize = BATCH_BYTES + 8 * 1024;
/// Written batch buffers kept for reuse at most. A thread needs two or three in rotation (one
/// filling, one or two with the writer); beyond this they are freed.
const SPARE_BATCHES: usize = 32;
/// Bytes queued for the writer at most; beyond it batches are dropped (their lines counted).
const QUEUE_BYTES: usize = 16 * 1024 * 1024;
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

/// What a line says about the request as it arrived. It is rendered as soon as the request
/// has been read ([`RequestFields::write_json`]): filters may rewrite the host and path
/// before the request ends, and the log shows what the client sent. Field order is the line's.
#[derive(Debug)]
pub struct RequestFields<'a> {
    /// `ip:port` of the TCP peer (not X-Forwarded-For).
    pub client: Option<SocketAddr>,
    pub host: &'a str,
    /// Written as is: `http::Method` admits only token characters, which need no escape.
    pub method: &'a http::Method,
    /// Without the query string.
    pub path: &'a str,
    pub protocol: Protocol,
}

/// One request, as logged. Field order is the line's order.
#[derive(Debug)]
pub struct AccessEntry<'a> {
    /// When the request ended.
    pub time: Timestamp,
    /// [`RequestFields`], rendered when the request arrived.
    pub request: &'a [u8],
    /// 0 when no response was sent (the client left first).
    pub status: u16,
    /// `gateway`, `listener` and `route`, rendered when the snapshot was built.
    pub route_names: &'a LogNames,
    /// `backend`, rendered when the snapshot was built.
    pub backend_name: &'a LogNames,
    /// The endpoint of the last attempt, rendered when the endpoint was first seen.
    pub upstream: Option<&'a LogNames>,
    pub duration_seconds: f64,
    pub upstream_seconds: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The user the identity layer let through (preferred username, else subject); null on
    /// routes without a policy and for requests it answered itself.
    pub user: Option<&'a str>,
}

/// The HTTP version of a request, as the line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    fn json_member(self) -> &'static [u8] {
        match self {
            Protocol::Http1 => b",\"protocol\":\"HTTP/1.1\"",
            Protocol::Http2 => b",\"protocol\":\"HTTP/2\"",
        }
    }
}

/// Members of a line known before any request: configured names (gateway, listener, route,
/// backend), escaped once when a snapshot's series are built, and upstream addresses, rendered
/// once per endpoint. Per request they cost one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogNames(Box<[u8]>);

impl LogNames {
    /// `,"gateway":…,"listener":…,"route":…`.
    pub fn route(gateway: &str, listener: &str, route: &str) -> LogNames {
        let mut json = Vec::with_capacity(40 + gateway.len() + listener.len() + route.len());
        for (key, value) in [
            (&b",\"gateway\":"[..], gateway),
            (b",\"listener\":", listener),
            (b",\"route\":", route),
        ] {
            json.extend_from_slice(key);
            json_str(&mut json, value);
        }
        LogNames(json.into_boxed_slice())
    }

    /// `,"backend":…`.
    pub fn backend(backend: &str) -> LogNames {
        let mut json = Vec::with_capacity(16 + backend.len());
        json.extend_from_slice(b",\"backend\":");
        json_str(&mut json, backend);
        LogNames(json.into_boxed_slice())
    }

    /// `,"upstream":"ip:port"`.
    pub fn upstream(addr: SocketAddr) -> LogNames {
        let mut json = Vec::with_capacity(64);
        json.extend_from_slice(b",\"upstream\":");
        json_addr(&mut json, Some(addr));
        LogNames(json.into_boxed_slice())
    }
}

/// `"00" "01" … "99"`: two digits per division, which halves the divisions of a number.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `value` in decimal at the end of `buf` (20 bytes hold any `u64`) and returns where
/// its first digit is.
fn decimal_tail(mut value: u64, buf: &mut [u8; 20]) -> usize {
    let mut start = buf.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        start -= 1;
        buf[start] = b'0' + value as u8;
    }
    start
}

fn json_u64(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; 20];
    let start = decimal_tail(value, &mut buf);
    out.extend_from_slice(&buf[start..]);
}

/// Seconds as milliseconds with microsecond precision, e.g. `2.385`.
fn json_millis(out: &mut Vec<u8>, seconds: f64) {
    // `+ 0.5` and truncation round like `f64::round` for positive values without a libm call;
    // the cast saturates on overflow.
    let micros = if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1_000_000.0 + 0.5) as u64
    } else {
        0
    };
    let mut whole = [0u8; 20];
    let start = decimal_tail(micros / 1000, &mut whole);
    out.extend_from_slice(&whole[start..]);
    let fraction = (micros % 1000) as usize;
    let tens_and_ones = fraction % 100 * 2;
    let mut text = [b'.', b'0' + (fraction / 100) as u8, 0, 0];
    text[2..].copy_from_slice(&DIGIT_PAIRS[tens_and_ones..tens_and_ones + 2]);
    out.extend_from_slice(&text);
}

/// A JSON string: quotes, backslashes and control characters escaped; other UTF-8 as is.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape_into(out, text);
    out.push(b'"');
}

/// The inside of a JSON string, without its quotes (which the line's fixed parts carry).
fn escape_into(out: &mut Vec<u8>, text: &str) {
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

/// The decimal text of every octet, padded to 3 bytes, with its length: an IPv4 address is
/// four table lookups instead of the formatting machinery (which callgrind showed to be a
/// large part of a line's cost).
const OCTET_TEXT: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut octet = 0;
    while octet < 256 {
        let (hundreds, tens, ones) = (octet / 100, octet / 10 % 10, octet % 10);
        table[octet] = if octet >= 100 {
            (
                [b'0' + hundreds as u8, b'0' + tens as u8, b'0' + ones as u8],
                3,
            )
        } else if octet >= 10 {
            ([b'0' + tens as u8, b'0' + ones as u8, 0], 2)
        } else {
            ([b'0' + ones as u8, 0, 0], 1)
        };
        octet += 1;
    }
    table
};

/// A quoted `ip:port`, or null.
fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        None => out.extend_from_slice(b"null"),
        Some(SocketAddr::V4(v4)) => {
            // `"255.255.255.255:65535"` is 23 bytes; each octet writes 3 and keeps its length.
            let mut buf = [0u8; 24];
            buf[0] = b'"';
            let mut len = 1;
            for octet in v4.ip().octets() {
                let (text, text_len) = OCTET_TEXT[usize::from(octet)];
                buf[len..len + 3].copy_from_slice(&text);
                len += usize::from(text_len);
                buf[len] = b'.';
                len += 1;
            }
            buf[len - 1] = b':';
            let mut port = [0u8; 20];
            let start = decimal_tail(u64::from(v4.port()), &mut port);
            let digits = port.len() - start;
            buf[len..len + digits].copy_from_slice(&port[start..]);
            len += digits;
            buf[len] = b'"';
            out.extend_from_slice(&buf[..len + 1]);
        }
        Some(v6) => json_str(out, &v6.to_string()),
    }
}

impl RequestFields<'_> {
    /// The members from `client` to `protocol`, each preceded by a comma, as JSON. Written by
    /// hand, like the rest of the line: serde_json's generic path was most of a line's cost
    /// (bench/RESULTS.md). The fixed parts carry the quotes around the escaped values.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"client\":");
        json_addr(out, self.client);
        out.extend_from_slice(b",\"host\":\"");
        escape_into(out, self.host);
        out.extend_from_slice(b"\",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b"\",\"path\":\"");
        escape_into(out, self.path);
        out.push(b'"');
        out.extend_from_slice(self.protocol.json_member());
    }

    /// Room for the rendered fields: the escaped host and path may grow up to sixfold, but
    /// are rarely escaped at all.
    pub fn rendered_capacity(&self) -> usize {
        self.host.len() + self.path.len() + 96
    }
}

impl AccessEntry<'_> {
    /// The entry as one JSON object. Durations are rounded to the microsecond.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(self.time.as_bytes());
        out.push(b'"');
        out.extend_from_slice(self.request);
        out.extend_from_slice(b",\"status\":");
        json_u64(out, u64::from(self.status));
        out.extend_from_slice(&self.route_names.0);
        out.extend_from_slice(&self.backend_name.0);
        match self.upstream {
            Some(upstream) => out.extend_from_slice(&upstream.0),
            None => out.extend_from_slice(b",\"upstream\":null"),
        }
        out.extend_from_slice(b",\"duration_ms\":");
        json_millis(out, self.duration_seconds);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_seconds {
            Some(seconds) => json_millis(out, seconds),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_bytes\":");
        json_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        json_u64(out, self.response_bytes);
        match self.user {
            Some(user) => {
                out.extend_from_slice(b",\"user\":\"");
                escape_into(out, user);
                out.extend_from_slice(b"\"}");
            }
            None => out.extend_from_slice(b",\"user\":null}"),
        }
    }
}

/// The access log's sending side; cheap to share (one per data plane).
#[derive(Debug)]
pub struct AccessLog {
    queue: Arc<Queue>,
}

/// The writer's side shared with every thread that logs.
#[derive(Debug)]
struct Queue {
    /// Single lines or whole batches, each ending in a newline.
    lines: SyncSender<Vec<u8>>,
    /// Bytes sent and not yet taken by the writer (which holds only this, not the sender: the
    /// channel closes, and the writer ends, once every sender is gone).
    queued_bytes: Arc<AtomicUsize>,
    dropped: IntCounter,
    /// Batch buffers the writer has written out, emptied, for threads to fill again: the same
    /// few buffers stay warm in the cache, and no batch is allocated or freed across threads.
    spare: Arc<ArrayQueue<Vec<u8>>>,
}

impl Queue {
    fn batch_buffer(&self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_CAPACITY))
    }
}

impl Queue {
    /// Hands `bytes` (`lines` lines) to the writer, or counts them as dropped.
    fn send(&self, bytes: Vec<u8>, lines: u64) {
        let size = bytes.len();
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.inc_by(lines);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.lines.try_send(bytes)
        {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.inc_by(lines);
        }
    }
}

/// Lines a thread has logged and not yet handed to the writer.
struct Batch {
    queue: Arc<Queue>,
    bytes: Vec<u8>,
    lines: u64,
}

impl Batch {
    fn flush(&mut self) {
        if self.lines > 0 {
            let bytes = std::mem::replace(&mut self.bytes, self.queue.batch_buffer());
            self.queue.send(bytes, std::mem::take(&mut self.lines));
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    /// Set on threads that run [`run_batch_flusher`]: only there may lines wait in a batch.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
    /// Wakes this thread's flusher when its batch gets a first line.
    static BATCH_STARTED: Arc<tokio::sync::Notify> = Arc::new(tokio::sync::Notify::new());
}

/// Hands this thread's batch to the writer. Called by the flusher and when a worker ends.
pub fn flush_thread_batch() {
    BATCH.with_borrow_mut(|slot| {
        if let Some(batch) = slot {
            batch.flush();
        }
    });
}

/// Lets lines logged on this thread wait in a batch, and sends the batch to the writer at most
/// [`BATCH_INTERVAL`] after its first line. Spawn it on a single-threaded runtime (the thread
/// that logs); it runs until the runtime stops.
pub async fn run_batch_flusher() {
    BATCHING.set(true);
    let started = BATCH_STARTED.with(Arc::clone);
    loop {
        started.notified().await;
        tokio::time::sleep(BATCH_INTERVAL).await;
        flush_thread_batch();
    }
}

impl AccessLog {
    /// Opens `target` and starts the writer thread, which ends once the log is dropped and no
    /// thread's batch refers to it any more.
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
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let spare = Arc::new(ArrayQueue::new(SPARE_BATCHES));
        let queue = Arc::new(Queue {
            lines,
            queued_bytes: Arc::clone(&queued_bytes),
            dropped,
            spare: Arc::clone(&spare),
        });
        std::thread::Builder::new()
            .name("torhaus-access-log".into())
            .spawn(move || write_lines(receiver, &queued_bytes, &spare, sink))
            .map_err(|e| GatewayError::Settings(format!("access log writer thread: {e}")))?;
        Ok(AccessLog { queue })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, entry: &AccessEntry<'_>) {
        if BATCHING.get() {
            let first = BATCH.with_borrow_mut(|slot| {
                let batch = match slot {
                    Some(batch) if Arc::ptr_eq(&batch.queue, &self.queue) => batch,
                    // First line on this thread, or a line for another log (tests run several
                    // data planes in one process): the old batch is flushed as it is dropped.
                    _ => slot.insert(Batch {
                        queue: Arc::clone(&self.queue),
                        bytes: self.queue.batch_buffer(),
                        lines: 0,
                    }),
                };
                let first = batch.lines == 0;
                entry.write_json(&mut batch.bytes);
                batch.bytes.push(b'\n');
                batch.lines += 1;
                if batch.bytes.len() >= BATCH_BYTES {
                    batch.flush();
                }
                first
            });
            if first {
                BATCH_STARTED.with(|started| started.notify_one());
            }
            return;
        }
        let mut line = Vec::with_capacity(384);
        entry.write_json(&mut line);
        line.push(b'\n');
        self.queue.send(line, 1);
    }
}

/// Buffers handed to one vectored write at most (Linux's `IOV_MAX`).
const WRITE_SLICES: usize = 1024;

fn write_lines(
    receiver: Receiver<Vec<u8>>,
    queued_bytes: &AtomicUsize,
    spare: &ArrayQueue<Vec<u8>>,
    mut sink: Box<dyn Write + Send>,
) {
    // Batches and lines go to the sink as they came, in one vectored write per wake-up: no copy
    // into a buffer, and one system call for everything that queued in the interval.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    loop {
        // Parked while nothing is queued, so an idle gateway's writer never wakes. Once
        // something arrives, the writer drains, writes, and sleeps the interval before looking
        // again: parked in `recv` all the time, it would be woken by every single line's send
        // (a futex wake and a context switch each, measured at tens of microseconds per
        // request on a busy core); this way lines accumulate and go out together.
        match receiver.recv() {
            Ok(lines) => {
                queued_bytes.fetch_sub(lines.len(), Ordering::Relaxed);
                pending.push(lines);
            }
            Err(_) => return,
        }
        let mut closed = false;
        loop {
            match receiver.try_recv() {
                Ok(lines) => {
                    queued_bytes.fetch_sub(lines.len(), Ordering::Relaxed);
                    pending.push(lines);
                    if pending.len() == WRITE_SLICES {
                        write_out(&mut sink, &mut pending, spare);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            write_out(&mut sink, &mut pending, spare);
        }
        if closed {
            return;
        }
        std::thread::sleep(WRITE_INTERVAL);
    }
}

/// Writes and empties `pending`, handing batch buffers back for reuse; when the sink fails,
/// the error is logged and the lines are lost (the proxy never waits for its log).
fn write_out(sink: &mut dyn Write, pending: &mut Vec<Vec<u8>>, spare: &ArrayQueue<Vec<u8>>) {
    let result = write_all_vectored(sink, pending).and_then(|()| sink.flush());
    for mut buffer in pending.drain(..) {
        // Single lines are small and not worth keeping; a batch that grew past its size for
        // an outsized line is freed rather than kept large.
        if (BATCH_CAPACITY..2 * BATCH_CAPACITY).contains(&buffer.capacity()) {
            buffer.clear();
            // A full spare queue frees the buffer.
            let _ = spare.push(buffer);
        }
    }
    if let Err(error) = result {
        tracing::error!(%error, "writing the access log failed; lines are lost");
    }
}

/// Writes every byte of `buffers`, in order, continuing after short writes.
fn write_all_vectored(sink: &mut dyn Write, buffers: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = buffers.iter().map(|b| IoSlice::new(b)).collect();
    let mut remaining = &mut slices[..];
    // Skips leading empty buffers, so that a write of 0 bytes below means the sink is stuck.
    IoSlice::advance_slices(&mut remaining, 0);
    while !remaining.is_empty() {
        match sink.write_vectored(remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
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

/// How long [`Timestamp::at_instant`] derives wall-clock time from the monotonic clock before
/// it reads the wall clock again.
const CLOCK_PAIRING_INTERVAL: Duration = Duration::from_secs(1);

/// A timestamp as RFC 3339 with milliseconds, UTC: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
/// Formatted by hand into a stack buffer: this runs for every logged request.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    /// The wall-clock time at `instant`, a reading of the monotonic clock the caller already
    /// took (the end of a request, which also times it): one clock read per line instead of two.
    /// Each thread pairs the two clocks once a second and adds the monotonic time elapsed since,
    /// so a step of the wall clock shows in the log within a second, and between two pairings
    /// the stamps drift by no more than the wall clock is slewed (at most 0.5 ms a second).
    /// The date and time of day are formatted once per second and thread (every line of a busy
    /// second shares them); only the milliseconds are written per call.
    pub fn at_instant(instant: Instant) -> Timestamp {
        thread_local! {
            static PAIRED: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
        }
        let unix = PAIRED.with(|paired| {
            if let Some((anchor, unix)) = paired.get()
                && let Some(since) = instant.checked_duration_since(anchor)
                && since < CLOCK_PAIRING_INTERVAL
            {
                return unix.saturating_add(since);
            }
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            paired.set(Some((instant, unix)));
            unix
        });
        Timestamp::of_unix(unix)
    }

    fn of_unix(since_epoch: Duration) -> Timestamp {
        thread_local! {
            static THIS_SECOND: Cell<Option<(u64, Timestamp)>> = const { Cell::new(None) };
        }
        let seconds = since_epoch.as_secs();
        let mut stamp = THIS_SECOND.with(|cached| match cached.get() {
            Some((second, stamp)) if second == seconds => stamp,
            _ => {
                let stamp = Timestamp::at(seconds, 0);
                cached.set(Some((seconds, stamp)));
                stamp
            }
        });
        stamp.set_millis(since_epoch.subsec_millis());
        stamp
    }

    fn set_millis(&mut self, millis: u32) {
        let millis = millis.min(999) as usize;
        self.0[20] = b'0' + (millis / 100) as u8;
        let pair = millis % 100 * 2;
        self.0[21..23].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
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

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
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
    fn addresses_are_written_like_display() -> Result<(), serde_json::Error> {
        let mut texts: Vec<String> = [
            "0.0.0.0:0",
            "127.0.0.1:9080",
            "10.20.3.4:80",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::a:b]:8080",
        ]
        .map(String::from)
        .to_vec();
        texts.extend((0..=255).map(|octet| format!("{octet}.9.{octet}.99:{}", octet * 257)));
        for text in texts {
            let addr: Option<SocketAddr> = text.parse().ok();
            assert!(addr.is_some(), "{text}");
            let mut out = Vec::new();
            json_addr(&mut out, addr);
            assert_eq!(serde_json::from_slice::<String>(&out)?, text);
        }
        let mut out = Vec::new();
        json_addr(&mut out, None);
        assert_eq!(out, b"null");
        Ok(())
    }

    #[test]
    fn numbers_and_durations_are_exact() -> Result<(), serde_json::Error> {
        for value in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            65_535,
            1 << 40,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            json_u64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
        for (seconds, text) in [
            (0.0, "0.000"),
            (-1.0, "0.000"),
            (f64::NAN, "0.000"),
            (0.000_000_4, "0.000"),
            (0.000_000_5, "0.001"),
            (0.002_385, "2.385"),
            (0.012_345_6, "12.346"),
            (1.5, "1500.000"),
            (86_400.0, "86400000.000"),
        ] {
            let mut out = Vec::new();
            json_millis(&mut out, seconds);
            assert_eq!(String::from_utf8_lossy(&out), text, "{seconds}");
            // Always a valid JSON number.
            serde_json::from_slice::<f64>(&out)?;
        }
        Ok(())
    }

    #[test]
    fn the_cached_second_gets_the_current_milliseconds() -> Result<(), std::time::SystemTimeError> {
        let mut stamp = Timestamp::at(1_795_388_883, 0);
        for millis in [0, 7, 45, 123, 999, 5000] {
            stamp.set_millis(millis);
            assert_eq!(
                stamp.as_str(),
                Timestamp::at(1_795_388_883, millis).as_str()
            );
        }
        // Two calls in a row (the second from the cache) both name the current second.
        for _ in 0..2 {
            let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let now = Timestamp::at_instant(Instant::now());
            let after = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let text = now.as_str();
            assert!(
                (before..=after).any(|s| Timestamp::at(s, 0).as_str()[..20] == text[..20]),
                "{text}"
            );
        }
        Ok(())
    }

    #[test]
    fn stamps_taken_from_the_monotonic_clock_follow_the_wall_clock()
    -> Result<(), std::time::SystemTimeError> {
        let since_epoch = || SystemTime::now().duration_since(UNIX_EPOCH);
        for step in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_millis(900),
        ] {
            // Pairs the clocks (first round) or reuses the pairing; `step` ahead is derived.
            let before = since_epoch()?;
            let now = Instant::now();
            let paired = Timestamp::at_instant(now);
            let after = since_epoch()?;
            let derived = Timestamp::at_instant(now + step);
            // RFC 3339 stamps of one width sort like the times they name; the pairing may be
            // up to one interval old, its wall clock reading at most that much earlier.
            let earliest = Timestamp::of_unix(before.saturating_sub(CLOCK_PAIRING_INTERVAL));
            assert!(
                earliest.as_str() <= paired.as_str(),
                "{paired:?} before {earliest:?}"
            );
            assert!(paired.as_str() <= Timestamp::of_unix(after).as_str());
            let latest = Timestamp::of_unix(after + step);
            assert!(
                derived.as_str() <= latest.as_str(),
                "{derived:?} after {latest:?}"
            );
            assert!(paired.as_str() <= derived.as_str());
        }
        // The first stamp of a thread pairs the clocks there and then: it is the wall clock.
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<(), std::time::SystemTimeError> {
                    let before = Timestamp::of_unix(since_epoch()?);
                    let stamp = Timestamp::at_instant(Instant::now());
                    let after = Timestamp::of_unix(since_epoch()?);
                    assert!(before.as_str() <= stamp.as_str() && stamp.as_str() <= after.as_str());
                    Ok(())
                })
                .join()
                .unwrap_or_else(|_| panic!("the thread panicked"))
        })?;
        Ok(())
    }

    fn rendered(fields: &RequestFields<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(fields.rendered_capacity());
        fields.write_json(&mut out);
        out
    }

    #[test]
    fn hand_written_lines_are_the_json_of_their_fields() -> Result<(), serde_json::Error> {
        let route = LogNames::route("", "l\"", "ns/r\\");
        let backend = LogNames::backend("ns/b:80\u{1}");
        let fields = RequestFields {
            client: "[2001:db8::1]:5000".parse().ok(),
            host: "h\u{7f}st\\\"x",
            method: &http::Method::GET,
            path: "/ä/\u{0}\n\t\r\u{1f}\"'</script>",
            protocol: Protocol::Http2,
        };
        let request = rendered(&fields);
        let entry = AccessEntry {
            time: Timestamp::at(1_767_225_600, 0),
            request: &request,
            status: 0,
            route_names: &route,
            backend_name: &backend,
            upstream: None,
            duration_seconds: 0.012_345,
            upstream_seconds: None,
            request_bytes: u64::MAX,
            response_bytes: 0,
            user: Some("alice \"admin\""),
        };
        let mut line = Vec::new();
        entry.write_json(&mut line);
        let parsed: serde_json::Value = serde_json::from_slice(&line)?;
        let expected = serde_json::json!({
            "time": "2026-01-01T00:00:00.000Z",
            "client": "[2001:db8::1]:5000",
            "host": fields.host,
            "method": "GET",
            "path": fields.path,
            "protocol": "HTTP/2",
            "status": 0,
            "gateway": "",
            "listener": "l\"",
            "route": "ns/r\\",
            "backend": "ns/b:80\u{1}",
            "upstream": null,
            "duration_ms": 12.345,
            "upstream_ms": null,
            "request_bytes": u64::MAX,
            "response_bytes": 0,
            "user": "alice \"admin\"",
        });
        assert_eq!(parsed, expected);
        // The line's own order, which people reading it rely on.
        let text = String::from_utf8_lossy(&line);
        let positions: Vec<usize> = [
            "\"time\"",
            "\"client\"",
            "\"host\"",
            "\"route\"",
            "\"user\"",
        ]
        .iter()
        .filter_map(|key| text.find(key))
        .collect();
        assert_eq!(positions.len(), 5);
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
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

    /// A sink that takes at most 5 bytes of the first non-empty slice per call, and fails
    /// every third call as interrupted: how pipes and slow files answer.
    struct Stingy {
        written: Vec<u8>,
        calls: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
                return Ok(0);
            };
            let take = first.len().min(5);
            self.written.extend_from_slice(&first[..take]);
            Ok(take)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_short_writes_and_interrupts() -> std::io::Result<()> {
        let buffers: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"first line\n".to_vec(),
            Vec::new(),
            b"second\nthird line\n".to_vec(),
            b"x\n".to_vec(),
        ];
        let mut sink = Stingy {
            written: Vec::new(),
            calls: 0,
        };
        write_all_vectored(&mut sink, &buffers)?;
        assert_eq!(sink.written, buffers.concat());
        assert!(sink.calls > buffers.len(), "short writes were continued");

        // A sink that accepts nothing is an error, not a busy loop.
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let stuck = write_all_vectored(&mut Stuck, &buffers);
        assert_eq!(
            stuck.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WriteZero)
        );
        Ok(())
    }

    #[test]
    fn written_batch_buffers_come_back_empty_for_reuse() {
        let spare = ArrayQueue::new(2);
        let batch = |text: &[u8]| {
            let mut buffer = Vec::with_capacity(BATCH_CAPACITY);
            buffer.extend_from_slice(text);
            buffer
        };
        let mut grown = Vec::with_capacity(BATCH_CAPACITY);
        grown.resize(BATCH_CAPACITY + 1, b'x');
        grown.push(b'\n');
        let mut pending = vec![
            batch(b"a\n"),
            b"single line\n".to_vec(),
            grown,
            batch(b"b\n"),
            batch(b"c\n"),
        ];
        let expected_bytes = pending.concat();
        let mut sink = Vec::new();
        write_out(&mut sink, &mut pending, &spare);
        assert_eq!(sink, expected_bytes);
        assert!(pending.is_empty());
        // Two of the three batch buffers fit; the single line and the grown batch are freed.
        assert_eq!(spare.len(), 2);
        while let Some(buffer) = spare.pop() {
            assert!(buffer.is_empty());
            assert_eq!(buffer.capacity(), BATCH_CAPACITY);
        }
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
        let route = LogNames::route("default/gw", "http", "default/app");
        let backend = LogNames::backend("default/app:80");
        let upstream = LogNames::upstream(SocketAddr::from(([127, 0, 0, 1], 9000)));
        let request = rendered(&RequestFields {
            client: "127.0.0.1:5000".parse().ok(),
            host: "app.example.com",
            method: &http::Method::GET,
            path: "/x\"y",
            protocol: Protocol::Http1,
        });
        let entry = AccessEntry {
            time: Timestamp::at(1_767_225_600, 0),
            request: &request,
            status: 200,
            route_names: &route,
            backend_name: &backend,
            upstream: Some(&upstream),
            duration_seconds: 0.0015,
            upstream_seconds: Some(0.001),
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
        assert_eq!(value["method"], "GET");
        assert_eq!(value["upstream"], "127.0.0.1:9000");
        assert_eq!(value["status"], 200);
        assert!(value["user"].is_null());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Lines from a worker thread's batch: all arrive, in order, within the flush interval of
    /// the last one (no further request needed); switching logs flushes the old batch; a
    /// thread's leftovers go out when it ends.
    #[test]
    fn batched_lines_all_arrive_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("torhaus-batched-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (first_path, second_path) = (dir.join("first.log"), dir.join("second.log"));
        let dropped = IntCounter::new("dropped", "dropped")?;
        let first = AccessLog::start(&AccessLogTarget::File(first_path.clone()), dropped.clone())?;
        let second =
            AccessLog::start(&AccessLogTarget::File(second_path.clone()), dropped.clone())?;
        let route = LogNames::route("default/gw", "http", "default/app");
        let backend = LogNames::backend("default/app:80");
        let request = rendered(&RequestFields {
            client: "127.0.0.1:5000".parse().ok(),
            host: "app.example.com",
            method: &http::Method::GET,
            path: "/",
            protocol: Protocol::Http1,
        });
        let entry = |status: u16| AccessEntry {
            time: Timestamp::at(1_767_225_600, 0),
            request: &request,
            status,
            route_names: &route,
            backend_name: &backend,
            upstream: None,
            duration_seconds: 0.001,
            upstream_seconds: None,
            request_bytes: 0,
            response_bytes: 0,
            user: None,
        };
        let statuses = |path: &std::path::Path, want: usize| -> Vec<u64> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let found: Vec<u64> = text
                    .lines()
                    .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                    .filter_map(|value| value["status"].as_u64())
                    .collect();
                if found.len() >= want || std::time::Instant::now() > deadline {
                    return found;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            tokio::spawn(run_batch_flusher());
            tokio::task::yield_now().await;
            assert!(
                BATCHING.get(),
                "the flusher turns batching on for its thread"
            );
            // Past one batch's size, so one batch goes out full and the rest by the timer.
            for status in 200..500 {
                first.write(&entry(status));
            }
            let found = tokio::task::spawn_blocking({
                let path = first_path.clone();
                move || statuses(&path, 300)
            })
            .await
            .unwrap_or_default();
            assert_eq!(found, (200..500).collect::<Vec<u64>>());
            first.write(&entry(501));
            second.write(&entry(502));
        });
        // 501 went out when the thread switched to the second log; 502 waits in the batch
        // until the thread's leftovers are flushed, as a worker does when it ends.
        assert_eq!(statuses(&first_path, 301).last(), Some(&501));
        flush_thread_batch();
        assert_eq!(statuses(&second_path, 1), vec![502]);
        assert_eq!(dropped.get(), 0);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
