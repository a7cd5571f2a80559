//! RequestMirror: fire-and-forget copies of requests (body included) to a mirror backend over
//! pingora's pooled upstream connector. Mirrors never delay or fail the main request: the body
//! is handed over through a small bounded channel with `try_send`, and a mirror that falls
//! behind, fails, or exceeds the concurrency limit is abandoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use tokio::sync::mpsc;
use torhaus_model::{Backend, UpstreamProtocol};

use crate::upstream::EndpointSet;

/// Body chunks buffered per mirror before it is abandoned.
const MIRROR_BODY_CHUNKS: usize = 16;
/// A mirrored exchange, from connect to the end of the response, is cut after this.
const MIRROR_DEADLINE: Duration = Duration::from_secs(30);
/// Pooled mirror connections idle this long are closed.
const MIRROR_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum MirrorChunk {
    Data(Bytes),
    End,
}

/// The request side of one running mirror: body chunks go here.
#[derive(Debug)]
pub struct MirrorBody(mpsc::Sender<MirrorChunk>);

impl MirrorBody {
    /// Hands a chunk to the mirror; false when the mirror is gone or behind (then drop it).
    pub fn offer(&self, chunk: MirrorChunk) -> bool {
        self.0.try_send(chunk).is_ok()
    }
}

/// Shared mirror machinery: one pooled connector and a concurrency bound.
pub struct Mirrors {
    connector: Arc<Connector>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Decrements the in-flight count when a mirror task ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Mirrors {
    pub fn new(limit: usize) -> Self {
        Self {
            connector: Arc::new(Connector::new(None)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Starts mirroring `request` to one endpoint of `backend`. Returns the body sender when
    /// the request has a body to copy; `None` when there is none or the mirror was skipped.
    pub fn start(
        &self,
        request: &RequestHeader,
        has_body: bool,
        backend: &Arc<Backend>,
        endpoints: &Arc<EndpointSet>,
    ) -> Option<MirrorBody> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(backend = %backend.id, "mirror skipped: too many in flight");
            return None;
        }
        let slot = Slot(Arc::clone(&self.in_flight));
        let claim = endpoints.pick()?;
        let mut peer = HttpPeer::new(claim.endpoint().addr, false, String::new());
        if backend.protocol == UpstreamProtocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.idle_timeout = Some(MIRROR_IDLE_TIMEOUT);
        let header = Box::new(request.clone());
        let connector = Arc::clone(&self.connector);
        let (sender, receiver) = if has_body {
            let (sender, receiver) = mpsc::channel(MIRROR_BODY_CHUNKS);
            (Some(MirrorBody(sender)), Some(receiver))
        } else {
            (None, None)
        };
        let backend_id = backend.id.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _claim = claim;
            let exchange = send(&connector, &peer, header, receiver);
            match tokio::time::timeout(MIRROR_DEADLINE, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    tracing::debug!(backend = %backend_id, %reason, "mirror abandoned");
                }
                Err(_) => tracing::debug!(backend = %backend_id, "mirror timed out"),
            }
        });
        sender
    }
}

async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    header: Box<RequestHeader>,
    body: Option<mpsc::Receiver<MirrorChunk>>,
) -> Result<(), String> {
    let (mut session, _reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    session
        .write_request_header(header)
        .await
        .map_err(|e| format!("request header: {e}"))?;
    if let Some(mut body) = body {
        loop {
            match body.recv().await {
                Some(MirrorChunk::Data(data)) => session
                    .write_request_body(data, false)
                    .await
                    .map_err(|e| format!("request body: {e}"))?,
                Some(MirrorChunk::End) => break,
                // The main request dropped the sender early: the copy is incomplete, so the
                // connection cannot be finished or reused.
                None => return Err("the mirror fell behind the request body".into()),
            }
        }
    }
    session
        .finish_request_body()
        .await
        .map_err(|e| format!("finishing request: {e}"))?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("response header: {e}"))?;
    while session
        .read_response_body()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .is_some()
    {}
    connector
        .release_http_session(session, peer, Some(MIRROR_IDLE_TIMEOUT))
        .await;
    Ok(())
}
