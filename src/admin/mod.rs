//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/debug/config` and the status page
//! at `/`, on an address of its own, separate from traffic.
//!
//! It lives in the binary, as a small hyper server on the control runtime, rather than as a
//! pingora service in `gateway`: the status page joins what only the binary sees together (the
//! Kubernetes layer's conditions and the data plane's state), pingora cannot add a service to a
//! running server, and keeping it off pingora's runtimes means a busy data plane never delays a
//! health probe or a scrape behind traffic (and a scrape never competes with requests for a
//! pingora worker).

mod config_json;
mod status_page;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use torhaus_gateway::DataPlane;
use torhaus_k8s::Translation;

/// Configuration errors the status page lists at most.
const RECENT_ERRORS: usize = 50;

/// What the admin endpoints show; updated by the control loop, read by requests.
#[derive(Debug)]
pub struct AdminState {
    dataplane: DataPlane,
    ready: watch::Receiver<bool>,
    history: Mutex<History>,
    /// The ACME lifecycle's per-certificate status, once it runs.
    acme: Mutex<Option<AcmeStatus>>,
    /// The DNS records loop's per-publisher status, once it runs.
    dns_records: Mutex<Option<DnsRecordsStatus>>,
}

type AcmeStatus = watch::Receiver<Arc<Vec<torhaus_acme::CertificateStatus>>>;
type DnsRecordsStatus = watch::Receiver<Arc<Vec<torhaus_dns::publisher::PublisherStatus>>>;

#[derive(Debug, Default)]
struct History {
    latest: Option<Arc<Translation>>,
    loaded_at: Option<SystemTime>,
    /// Newest first.
    errors: VecDeque<RecentError>,
}

#[derive(Debug, Clone)]
struct RecentError {
    at: SystemTime,
    message: String,
}

impl AdminState {
    pub fn new(dataplane: DataPlane, ready: watch::Receiver<bool>) -> Self {
        Self {
            dataplane,
            ready,
            history: Mutex::new(History::default()),
            acme: Mutex::new(None),
            dns_records: Mutex::new(None),
        }
    }

    /// Shows the ACME lifecycle's certificate status on the status page and `/debug/config`.
    pub fn watch_acme(&self, status: AcmeStatus) {
        *self.acme.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// Shows the DNS publishers' sync status on the status page and `/debug/config`.
    pub fn watch_dns_records(&self, status: DnsRecordsStatus) {
        *self
            .dns_records
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    fn dns_records_statuses(&self) -> Arc<Vec<torhaus_dns::publisher::PublisherStatus>> {
        self.dns_records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|status| Arc::clone(&status.borrow()))
            .unwrap_or_default()
    }

    fn acme_statuses(&self) -> Arc<Vec<torhaus_acme::CertificateStatus>> {
        self.acme
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|status| Arc::clone(&status.borrow()))
            .unwrap_or_default()
    }

    /// Notes a configuration load and what went wrong with it (rejected objects, or the data
    /// plane refusing it), for the status page and the rejection metrics.
    pub fn record_load(&self, translation: Arc<Translation>, apply_error: Option<String>) {
        let now = SystemTime::now();
        let mut problems: Vec<String> = translation
            .report
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        if let Some(error) = apply_error {
            problems.push(format!("the data plane refused the configuration: {error}"));
        }
        self.dataplane.metrics().config_loaded(problems.len());
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        for message in problems {
            // A problem that persists across reloads is listed once, with its latest time.
            history.errors.retain(|e| e.message != message);
            history.errors.push_front(RecentError { at: now, message });
        }
        history.errors.truncate(RECENT_ERRORS);
        history.latest = Some(translation);
        history.loaded_at = Some(now);
    }

    fn snapshot(
        &self,
    ) -> (
        Option<Arc<Translation>>,
        Option<SystemTime>,
        Vec<RecentError>,
    ) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        (
            history.latest.clone(),
            history.loaded_at,
            history.errors.iter().cloned().collect(),
        )
    }
}

/// Binds `addr` (failing clearly when it cannot) and serves the admin endpoints on the current
/// runtime until the process ends. Returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener (--admin-bind) to {addr}"))?;
    let bound = listener.local_addr().context("admin listener address")?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving once it clears.
                    tracing::warn!(%error, "admin listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(&state, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    });
    Ok(bound)
}

fn handle(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, state.dataplane.metrics().encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the first configuration has not been loaded yet\n",
                )
            }
        }
        "/debug/config" => {
            let mut value =
                config_json::describe(&state.dataplane.config(), &state.dataplane.state());
            if let Some(object) = value.as_object_mut() {
                object.insert(
                    "acmeCertificates".to_owned(),
                    config_json::acme(&state.acme_statuses()),
                );
                object.insert(
                    "dnsPublishers".to_owned(),
                    config_json::dns_publishers(&state.dns_records_statuses()),
                );
            }
            let body = serde_json::to_string_pretty(&value).unwrap_or_default();
            with_type(StatusCode::OK, body, "application/json")
        }
        "/" => {
            let (translation, loaded_at, errors) = state.snapshot();
            let page = status_page::render(&status_page::PageInput {
                translation: translation.as_deref(),
                loaded_at,
                errors: &errors,
                state: &state.dataplane.state(),
                ready: *state.ready.borrow(),
                now: SystemTime::now(),
                acme: &state.acme_statuses(),
                dns_records: &state.dns_records_statuses(),
            });
            with_type(StatusCode::OK, page, "text/html; charset=utf-8")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
