//! One ACME order with instant-acme over DNS-01: apex and wildcard in one order, TXT values
//! presented through the issuer's DNS provider and checked at every authoritative server
//! before the challenge is answered, finalization with a fresh key. Each ACME request is
//! retried on badNonce and transport errors above instant-acme's own three retries.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use torhaus_dns::{Dns01, DnsError, PresentedTxt};

/// How long and how often the lifecycle waits on DNS and the CA during one order.
#[derive(Debug, Clone)]
pub struct OrderTimings {
    /// The longest wait for a TXT value to show on every authoritative server.
    pub propagation_timeout: Duration,
    pub propagation_interval: Duration,
    /// The longest wait for the CA to validate, and then to issue.
    pub validation_timeout: Duration,
    /// Retries of one ACME request that failed with badNonce or a transport error (on top of
    /// instant-acme's own three badNonce retries).
    pub request_attempts: u32,
    /// Pause between those retries (doubled each time).
    pub request_backoff: Duration,
}

impl Default for OrderTimings {
    fn default() -> Self {
        Self {
            propagation_timeout: Duration::from_secs(120),
            propagation_interval: Duration::from_secs(2),
            validation_timeout: Duration::from_secs(120),
            request_attempts: 6,
            request_backoff: Duration::from_millis(200),
        }
    }
}

/// Why an order did not produce a certificate; the lifecycle decides from the kind whether
/// and when to try again.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The DNS provider failed (credentials, zone, reachability, propagation).
    #[error("DNS-01 via {provider}: {source}")]
    Dns {
        provider: String,
        #[source]
        source: DnsError,
    },
    /// The CA tried to validate and failed: counts against the failed-validation budget.
    #[error("the CA could not validate {names}: {detail}")]
    Validation { names: String, detail: String },
    /// The CA refused for rate limits; do not come back before `retry_after`.
    #[error("the CA rate-limits this account: {detail}")]
    RateLimited {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The CA could not be reached or answered with errors that may pass.
    #[error("ACME server: {0}")]
    Ca(String),
    /// The CA does not know the account (a test CA restarted, or the account was deactivated):
    /// a new one is created.
    #[error("the ACME account is unknown to the CA: {0}")]
    AccountGone(String),
    /// The CA rejected the request for good (unauthorized, malformed, rejected identifier).
    #[error("ACME server refused: {0}")]
    Refused(String),
}

impl OrderError {
    /// Errors that cannot pass without a configuration change: retried rarely, loudly.
    pub fn is_permanent(&self) -> bool {
        match self {
            OrderError::Dns { source, .. } => !source.is_retryable(),
            OrderError::Refused(_) => true,
            _ => false,
        }
    }
}

/// A certificate as the CA issued it.
#[derive(Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    /// The order's URL, for logs.
    pub order_url: String,
}

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// Whether one ACME request may simply be sent again.
pub(crate) fn transient(error: &instant_acme::Error) -> bool {
    match error {
        instant_acme::Error::Api(problem) => {
            problem.r#type.as_deref() == Some(BAD_NONCE) || problem.status.is_some_and(|s| s >= 500)
        }
        // A `replaces` the CA did not echo is answered by ordering without it, not by asking
        // again (each attempt would place another order).
        instant_acme::Error::Other(_) => !rejects_replaces(error),
        instant_acme::Error::Hyper(_) | instant_acme::Error::Http(_) => true,
        _ => false,
    }
}

/// Whether a new-order error is about its `replaces` field rather than the order itself.
fn rejects_replaces(error: &instant_acme::Error) -> bool {
    match error {
        instant_acme::Error::Api(problem) => problem
            .r#type
            .as_deref()
            .is_some_and(|kind| kind.ends_with(":alreadyReplaced")),
        instant_acme::Error::Other(detail) => detail.to_string().contains("replaces"),
        _ => false,
    }
}

/// Classifies a final ACME error.
pub(crate) fn classify(error: instant_acme::Error) -> OrderError {
    match &error {
        instant_acme::Error::Api(problem) => {
            let detail = error.to_string();
            match problem.r#type.as_deref() {
                Some("urn:ietf:params:acme:error:accountDoesNotExist") => {
                    OrderError::AccountGone(detail)
                }
                Some(RATE_LIMITED) => OrderError::RateLimited {
                    detail,
                    retry_after: None,
                },
                Some(t) if t.ends_with(":badNonce") || t.ends_with(":serverInternal") => {
                    OrderError::Ca(detail)
                }
                Some(
                    "urn:ietf:params:acme:error:unauthorized"
                    | "urn:ietf:params:acme:error:dns"
                    | "urn:ietf:params:acme:error:incorrectResponse"
                    | "urn:ietf:params:acme:error:connection",
                ) => OrderError::Validation {
                    names: String::new(),
                    detail,
                },
                _ if problem.status.is_some_and(|s| s >= 500) => OrderError::Ca(detail),
                _ => OrderError::Refused(detail),
            }
        }
        _ => OrderError::Ca(error.to_string()),
    }
}

/// Evaluates the ACME request `$call` (an expression yielding a future) until it succeeds,
/// fails for good, or the attempts are used up. A macro rather than a function taking a
/// closure: the requests borrow the order mutably, which closures cannot hand out repeatedly.
macro_rules! retry {
    ($timings:expr, $call:expr) => {{
        let timings: &$crate::order::OrderTimings = $timings;
        let mut pause = timings.request_backoff;
        let mut attempt = 1;
        loop {
            match $call.await {
                Ok(value) => break Ok(value),
                Err(error) if attempt < timings.request_attempts && $crate::order::transient(&error) => {
                    tracing::debug!(%error, attempt, "ACME request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                Err(error) => break Err(error),
            }
        }
    }};
}
pub(crate) use retry;

/// Hooks the lifecycle uses to count DNS provider requests.
pub(crate) trait DnsCounter: Sync {
    fn dns_request(&self, operation: &str, ok: bool);
}

/// What to order: the names, an optional profile, and a still-pending order for the same
/// names to resume instead of placing a duplicate.
#[derive(Debug)]
pub(crate) struct OrderRequest<'a> {
    pub names: &'a [String],
    pub profile: Option<&'a str>,
    /// Set to the URL of the order in use as soon as there is one, so that a failed attempt
    /// can be resumed by the next one.
    pub pending: &'a mut Option<String>,
    /// The certificate this order replaces (ARI, RFC 9773 §5), when the CA offers ARI.
    pub replaces: Option<instant_acme::CertificateIdentifier<'static>>,
}

/// Orders a certificate for `names` (apex and wildcards together) and waits for it.
pub(crate) async fn obtain(
    account: &Account,
    dns: &Dns01,
    provider: &str,
    request: OrderRequest<'_>,
    timings: &OrderTimings,
    counter: &dyn DnsCounter,
) -> Result<Issued, OrderError> {
    let names = request.names;
    let mut order = match resume(account, request.pending.take(), names, timings).await {
        Some(order) => order,
        None => {
            let identifiers: Vec<Identifier> =
                names.iter().map(|n| Identifier::Dns(n.clone())).collect();
            let plain_order = || match request.profile {
                Some(profile) => NewOrder::new(&identifiers).profile(profile),
                None => NewOrder::new(&identifiers),
            };
            let mut new_order = plain_order();
            if let Some(replaces) = request.replaces.clone() {
                new_order = new_order.replaces(replaces);
            }
            let order = match retry!(timings, account.new_order(&new_order)) {
                // RFC 9773 §5: `replaces` is a hint. A CA that refuses it (the certificate was
                // already replaced) or ignores it (and does not echo it back, which instant-acme
                // reports) must not keep the certificate from being renewed.
                Err(error) if request.replaces.is_some() && rejects_replaces(&error) => {
                    tracing::warn!(names = %names.join(","), %error, "the CA did not take `replaces` (ARI); ordering without it");
                    retry!(timings, account.new_order(&plain_order())).map_err(classify)?
                }
                other => other.map_err(classify)?,
            };
            tracing::info!(order = %order.url(), names = %names.join(","), "ACME order placed");
            order
        }
    };
    let order_url = order.url().to_owned();
    *request.pending = Some(order_url.clone());

    let challenges = match pending_challenges(&mut order, timings).await {
        Ok(challenges) => challenges,
        Err(error) => return Err(classify(error)),
    };
    // Present every value first: an apex and its wildcard share one TXT name, and the CA may
    // look at both at once.
    let mut presented: Vec<PresentedTxt> = Vec::new();
    let mut result = present_all(dns, provider, &challenges, &mut presented, counter).await;
    if result.is_ok() {
        for txt in &presented {
            let waited = dns
                .wait_propagated(
                    txt,
                    timings.propagation_timeout,
                    timings.propagation_interval,
                )
                .await;
            counter.dns_request("propagation", waited.is_ok());
            if let Err(source) = waited {
                result = Err(OrderError::Dns {
                    provider: provider.to_owned(),
                    source,
                });
                break;
            }
        }
    }
    if result.is_ok() {
        result = validate(&mut order, names, timings).await;
    }
    // The values go whatever happened: leftovers would pile up in the zone.
    for txt in &presented {
        let cleaned = dns.cleanup(txt).await;
        counter.dns_request("cleanup", cleaned.is_ok());
        if let Err(error) = cleaned {
            tracing::warn!(name = %txt.name, %error, "could not remove a DNS-01 TXT value");
        }
    }
    result?;

    let key_pem = retry!(timings, order.finalize()).map_err(classify)?;
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(timings.validation_timeout);
    let chain_pem = retry!(timings, order.poll_certificate(&policy)).map_err(classify)?;
    Ok(Issued {
        chain_pem,
        key_pem,
        order_url,
    })
}

/// The previous attempt's order, when the CA still holds it open for exactly these names: no
/// duplicate order while one is pending.
async fn resume(
    account: &Account,
    url: Option<String>,
    names: &[String],
    timings: &OrderTimings,
) -> Option<Order> {
    let url = url?;
    let mut order = retry!(timings, account.order(url.clone())).ok()?;
    let usable = matches!(
        order.state().status,
        OrderStatus::Pending | OrderStatus::Ready
    );
    if !usable {
        return None;
    }
    let mut identifiers = Vec::new();
    let mut stream = order.identifiers();
    while let Some(identifier) = stream.next().await {
        identifiers.push(identifier.ok()?.to_string());
    }
    identifiers.sort();
    let mut wanted = names.to_vec();
    wanted.sort();
    if identifiers != wanted {
        return None;
    }
    tracing::info!(order = %url, "resuming the pending ACME order for the same names");
    Some(order)
}

/// The CA's suggested renewal window for a certificate (ARI), with when to ask again; `None`
/// when the CA does not offer renewalInfo.
pub(crate) async fn renewal_window(
    account: &Account,
    leaf_der: &[u8],
    timings: &OrderTimings,
) -> Result<Option<RenewalWindow>, String> {
    let der = rustls_pki_types::CertificateDer::from(leaf_der.to_vec());
    let id = instant_acme::CertificateIdentifier::try_from(&der)?.into_owned();
    match retry!(timings, account.renewal_info(&id)) {
        Ok((info, retry_after)) => {
            let start = crate::leaf::unix(info.suggested_window.start.unix_timestamp());
            let end = crate::leaf::unix(info.suggested_window.end.unix_timestamp());
            Ok(Some(RenewalWindow {
                start,
                end,
                retry_after,
                id,
            }))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(error) => Err(format!("renewalInfo: {error}")),
    }
}

/// An ARI answer.
#[derive(Debug, Clone)]
pub(crate) struct RenewalWindow {
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    pub retry_after: Duration,
    pub id: instant_acme::CertificateIdentifier<'static>,
}

impl RenewalWindow {
    /// A uniformly random time in the window (RFC 9773 §4.2), or `now` when it has passed.
    pub fn pick(&self, now: std::time::SystemTime) -> std::time::SystemTime {
        let span = self
            .end
            .duration_since(self.start)
            .unwrap_or(Duration::ZERO);
        let at = self.start + span.mul_f64(fastrand::f64());
        if self.end <= now { now } else { at.max(now) }
    }
}

/// A pending DNS-01 challenge: the identifier (`*.example.com` for a wildcard) and the TXT
/// value it needs.
#[derive(Debug)]
struct PendingChallenge {
    identifier: String,
    value: String,
}

/// Fetches every authorization (retrying the ones a transient error skipped) and returns the
/// DNS-01 challenges still to answer.
async fn pending_challenges(
    order: &mut Order,
    timings: &OrderTimings,
) -> Result<Vec<PendingChallenge>, instant_acme::Error> {
    let mut attempt = 1;
    loop {
        let mut challenges = Vec::new();
        let mut failure = None;
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = match result {
                Ok(authz) => authz,
                Err(error) => {
                    failure = Some(error);
                    continue;
                }
            };
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(instant_acme::Error::Other(
                        format!("authorization for {} is {other:?}", authz.identifier()).into(),
                    ));
                }
            }
            let identifier = authz.identifier().to_string();
            let Some(challenge) = authz.challenge(ChallengeType::Dns01) else {
                return Err(instant_acme::Error::Other(
                    format!("the CA offers no dns-01 challenge for {identifier}").into(),
                ));
            };
            challenges.push(PendingChallenge {
                identifier,
                value: challenge.key_authorization().dns_value(),
            });
        }
        match failure {
            None => return Ok(challenges),
            Some(error) if attempt < timings.request_attempts && transient(&error) => {
                attempt += 1;
                tokio::time::sleep(timings.request_backoff).await;
            }
            Some(error) => return Err(error),
        }
    }
}

async fn present_all(
    dns: &Dns01,
    provider: &str,
    challenges: &[PendingChallenge],
    presented: &mut Vec<PresentedTxt>,
    counter: &dyn DnsCounter,
) -> Result<(), OrderError> {
    for challenge in challenges {
        let result = dns.present(&challenge.identifier, &challenge.value).await;
        counter.dns_request("present", result.is_ok());
        match result {
            Ok(txt) => presented.push(txt),
            Err(source) => {
                return Err(OrderError::Dns {
                    provider: provider.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Answers every pending challenge and waits until the order is ready (or invalid, with the
/// CA's reasons collected from the authorizations).
async fn validate(
    order: &mut Order,
    names: &[String],
    timings: &OrderTimings,
) -> Result<(), OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(result) = authorizations.next().await {
        let mut authz = result.map_err(classify)?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let Some(mut challenge) = authz.challenge(ChallengeType::Dns01) else {
            continue;
        };
        let mut attempt = 1;
        let mut pause = timings.request_backoff;
        loop {
            match challenge.set_ready().await {
                Ok(()) => break,
                Err(error) if attempt < timings.request_attempts && transient(&error) => {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                Err(error) => return Err(with_names(classify(error), names)),
            }
        }
    }
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(timings.validation_timeout);
    let status = retry!(timings, order.poll_ready(&policy));
    match status {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(_) => Err(OrderError::Validation {
            names: names.join(", "),
            detail: invalid_reasons(order).await,
        }),
        Err(error) => Err(with_names(classify(error), names)),
    }
}

fn with_names(error: OrderError, names: &[String]) -> OrderError {
    match error {
        OrderError::Validation { detail, .. } => OrderError::Validation {
            names: names.join(", "),
            detail,
        },
        other => other,
    }
}

/// The CA's reasons for an invalid order, from its authorizations' challenge errors.
async fn invalid_reasons(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let identifier = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for challenge in &state.challenges {
                if let Some(error) = &challenge.error {
                    reasons.push(format!("{identifier}: {error}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn window(start: SystemTime, end: SystemTime) -> RenewalWindow {
        RenewalWindow {
            start,
            end,
            retry_after: Duration::from_secs(3600),
            id: instant_acme::CertificateIdentifier {
                authority_key_identifier: "aki".into(),
                serial: "serial".into(),
            },
        }
    }

    #[test]
    fn renewal_time_is_inside_the_window_and_never_in_the_past() {
        let now = SystemTime::now();
        let future = window(
            now + Duration::from_secs(100),
            now + Duration::from_secs(200),
        );
        for _ in 0..100 {
            let at = future.pick(now);
            assert!(at >= future.start && at <= future.end);
        }
        let passed = window(
            now - Duration::from_secs(200),
            now - Duration::from_secs(100),
        );
        assert_eq!(passed.pick(now), now);
        let open = window(
            now - Duration::from_secs(100),
            now + Duration::from_secs(100),
        );
        for _ in 0..100 {
            let at = open.pick(now);
            assert!(at >= now && at <= open.end);
        }
    }

    #[test]
    fn bad_nonce_and_server_errors_are_transient_others_are_not() {
        let problem = |kind: &str, status: u16| {
            instant_acme::Error::Api(
                serde_json::from_value(serde_json::json!({"type": kind, "status": status}))
                    .unwrap_or_else(|_| unreachable!()),
            )
        };
        assert!(transient(&problem(BAD_NONCE, 400)));
        assert!(transient(&problem(
            "urn:ietf:params:acme:error:serverInternal",
            500
        )));
        assert!(!transient(&problem(
            "urn:ietf:params:acme:error:unauthorized",
            403
        )));
        assert!(matches!(
            classify(problem(RATE_LIMITED, 429)),
            OrderError::RateLimited { .. }
        ));
        assert!(matches!(
            classify(problem("urn:ietf:params:acme:error:unauthorized", 403)),
            OrderError::Validation { .. }
        ));
        assert!(matches!(
            classify(problem(
                "urn:ietf:params:acme:error:accountDoesNotExist",
                400
            )),
            OrderError::AccountGone(_)
        ));
        assert!(
            classify(problem(
                "urn:ietf:params:acme:error:rejectedIdentifier",
                400
            ))
            .is_permanent()
        );
    }
}
