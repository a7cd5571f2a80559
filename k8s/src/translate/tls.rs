//! Certificates from TLS Secrets: PEM parsing, key/leaf agreement, and the names they cover.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use torhaus_model::TlsCertificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Builds a certificate from a Secret's `tls.crt` and `tls.key` (in `data` or `stringData`).
/// The error says what is wrong, for the listener's ResolvedRefs message.
pub(crate) fn certificate_from_secret(
    secret: &Secret,
    source: &str,
) -> Result<TlsCertificate, String> {
    match secret.type_.as_deref() {
        None | Some("kubernetes.io/tls" | "Opaque") => {}
        Some(other) => return Err(format!("type {other:?} is not kubernetes.io/tls")),
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(name)) {
            return Ok(bytes.0.clone());
        }
        if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(name)) {
            return Ok(text.as_bytes().to_vec());
        }
        Err(format!("has no {name}"))
    };
    let cert_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no CERTIFICATE block".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls.key is not a valid PEM private key: {e}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        format!("tls.key is not a supported key (RSA, ECDSA P-256/P-384, Ed25519): {e}")
    })?;
    CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to the leaf certificate in tls.crt: {e}"))?;

    let (dns_names, not_after_unix) = leaf_names(chain[0].as_ref())?;
    Ok(TlsCertificate {
        source: source.to_owned(),
        chain,
        key,
        dns_names,
        not_after_unix,
    })
}

/// The leaf's DNS subjectAltNames (lowercase) and its notAfter as Unix seconds.
fn leaf_names(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, leaf) = X509Certificate::from_der(der)
        .map_err(|e| format!("the leaf certificate in tls.crt cannot be parsed: {e}"))?;
    let mut dns_names = Vec::new();
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("the leaf certificate has an invalid subjectAltName: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((dns_names, leaf.validity().not_after.timestamp()))
}

/// Certificates already built in this translation, so Secrets shared by listeners parse once.
pub(crate) type CertificateCache =
    std::collections::HashMap<String, Result<Arc<TlsCertificate>, String>>;
