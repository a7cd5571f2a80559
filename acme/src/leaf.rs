//! What the lifecycle needs to know about a stored certificate: its names, validity window and
//! the renewal time recorded beside it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::store::StoredCertificate;

/// Annotations kept beside an issued certificate (on the Secret).
pub const ANNOTATION_ISSUER: &str = "torhaus.dev/issuer";
pub const ANNOTATION_DNS_NAMES: &str = "torhaus.dev/dns-names";
pub const ANNOTATION_NOT_AFTER: &str = "torhaus.dev/not-after";
pub const ANNOTATION_RENEW_AFTER: &str = "torhaus.dev/renew-after";
pub const ANNOTATION_ORDER: &str = "torhaus.dev/acme-order";

/// The leaf of a stored chain, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// From the `torhaus.dev/renew-after` annotation, when present and parseable.
    pub renew_after: Option<SystemTime>,
    pub leaf_der: Vec<u8>,
}

impl LeafInfo {
    pub fn parse(stored: &StoredCertificate) -> Result<Self, String> {
        let leaf = CertificateDer::pem_slice_iter(stored.chain_pem.as_bytes())
            .next()
            .ok_or("tls.crt holds no CERTIFICATE block")?
            .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| format!("the leaf certificate cannot be parsed: {e}"))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    dns_names.push(dns.to_ascii_lowercase());
                }
            }
        }
        let validity = parsed.validity();
        let renew_after = stored
            .annotations
            .get(ANNOTATION_RENEW_AFTER)
            .and_then(|text| parse_rfc3339(text));
        Ok(Self {
            dns_names,
            not_before: unix(validity.not_before.timestamp()),
            not_after: unix(validity.not_after.timestamp()),
            renew_after,
            leaf_der: leaf.as_ref().to_vec(),
        })
    }

    /// Whether every wanted name is in the certificate (exact SAN match: a wildcard SAN stands
    /// only for the wildcard name it was ordered for).
    pub fn covers(&self, wanted: &[String]) -> bool {
        wanted.iter().all(|name| self.dns_names.contains(name))
    }
}

pub(crate) fn unix(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(time))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds(time).to_string())
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| unix(t.unix_timestamp()))
}

/// When to renew without ARI: at two thirds of the lifetime, moved earlier by up to 5% of the
/// lifetime at random so that many certificates issued together do not renew together.
pub(crate) fn fallback_renewal(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let jitter = lifetime.mul_f64(0.05 * fastrand::f64());
    not_before + lifetime.mul_f64(2.0 / 3.0) - jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_renewal_is_at_two_thirds_minus_jitter() {
        let start = unix(1_000_000);
        let end = start + Duration::from_secs(90 * 86_400);
        for _ in 0..100 {
            let at = fallback_renewal(start, end);
            let offset = at.duration_since(start).unwrap_or_default().as_secs_f64();
            let lifetime = 90.0 * 86_400.0;
            assert!(offset <= lifetime * 2.0 / 3.0 + 1.0, "{offset}");
            assert!(offset >= lifetime * (2.0 / 3.0 - 0.05) - 1.0, "{offset}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = unix(1_700_000_000);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}
