//! Certificates torhaus obtains itself: which Gateways opt in (an issuer annotation), which
//! Secrets that makes managed, and the issuers with the Secret bytes they need. Pure, like the
//! rest of the translation; the ACME lifecycle acts on what this returns.

use std::collections::BTreeMap;

use gateway_api::experimental::gateways::Gateway;
use torhaus_acme::{IssuerConfig, SecretMaterial};
use torhaus_model::{
    DataPlaneConfig, HostMatch, IssuerKind, IssuerRef, ListenerId, ManagedCertificate, ObjectName,
};

use crate::report::{Condition, ObjectStatus};
use crate::source::{ObjectKind, ObjectSet, Problem, Sourced};

/// torhaus's own opt-in: the Gateway's HTTPS listeners get their Secrets from this Issuer (in
/// the Gateway's namespace) or ClusterIssuer.
pub const ISSUER_ANNOTATION: &str = "torhaus.dev/issuer";
pub const CLUSTER_ISSUER_ANNOTATION: &str = "torhaus.dev/cluster-issuer";
/// cert-manager's Gateway annotations, accepted so that migrating users change nothing.
pub const CERT_MANAGER_ISSUER_ANNOTATION: &str = "cert-manager.io/issuer";
pub const CERT_MANAGER_CLUSTER_ISSUER_ANNOTATION: &str = "cert-manager.io/cluster-issuer";

/// The annotations in the order they win when a Gateway carries several.
const ANNOTATIONS: [(&str, IssuerKind); 4] = [
    (ISSUER_ANNOTATION, IssuerKind::Issuer),
    (CLUSTER_ISSUER_ANNOTATION, IssuerKind::ClusterIssuer),
    (CERT_MANAGER_ISSUER_ANNOTATION, IssuerKind::Issuer),
    (
        CERT_MANAGER_CLUSTER_ISSUER_ANNOTATION,
        IssuerKind::ClusterIssuer,
    ),
];

/// The issuer a Gateway opts in to. Several disagreeing annotations are a problem (the first
/// in [`ANNOTATIONS`] order wins, so the Gateway keeps a deterministic issuer).
pub(crate) fn gateway_issuer(
    name: &ObjectName,
    gateway: &Sourced<Gateway>,
    problems: &mut Vec<Problem>,
) -> Option<IssuerRef> {
    let annotations = gateway.object.metadata.annotations.as_ref()?;
    let mut found: Vec<(&str, IssuerRef)> = Vec::new();
    for (annotation, kind) in ANNOTATIONS {
        let Some(value) = annotations.get(annotation) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            problems.push(Problem::error(
                Some(gateway.location.clone()),
                format!("Gateway {name}: annotation {annotation} is empty; name an issuer"),
            ));
            continue;
        }
        let namespace = match kind {
            IssuerKind::Issuer => name.namespace.clone(),
            IssuerKind::ClusterIssuer => String::new(),
        };
        found.push((
            annotation,
            IssuerRef {
                kind,
                name: ObjectName::new(namespace, value),
            },
        ));
    }
    let (first_annotation, first) = found.first().cloned()?;
    for (annotation, other) in &found[1..] {
        if *other != first {
            problems.push(Problem::warning(
                Some(gateway.location.clone()),
                format!(
                    "Gateway {name}: annotation {annotation} names {other}, but {first_annotation} names {first}, which is used"
                ),
            ));
        }
    }
    Some(first)
}

/// Whether a certificateRef of a Gateway in `gateway_namespace` names a Secret the issuer may
/// manage: a core Secret in the Gateway's own namespace (cert-manager's rule too: an issuer
/// never writes into another namespace on a Gateway's behalf).
pub(crate) fn manageable_secret(
    reference: &gateway_api::experimental::gateways::GatewayListenersTlsCertificateRefs,
    gateway_namespace: &str,
) -> Option<ObjectName> {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    let namespace = reference.namespace.as_deref().unwrap_or(gateway_namespace);
    ((group.is_empty() || group == "core") && kind == "Secret" && namespace == gateway_namespace)
        .then(|| ObjectName::new(namespace, reference.name.clone()))
}

/// One HTTPS listener's contribution: the Secret it serves, the issuer, and its hostname.
#[derive(Debug)]
pub(crate) struct ManagedListener {
    pub secret: ObjectName,
    pub issuer: IssuerRef,
    pub hostname: String,
    pub listener: ListenerId,
}

/// Merges listeners by Secret: listeners sharing a Secret (an apex and its wildcard) become
/// one certificate with both names, ordered together. A Secret claimed by two different
/// issuers is a problem; the first claim (Gateway order) keeps it.
pub(crate) fn merge_certificates(
    listeners: Vec<ManagedListener>,
    problems: &mut Vec<Problem>,
) -> Vec<ManagedCertificate> {
    let mut by_secret: BTreeMap<ObjectName, ManagedCertificate> = BTreeMap::new();
    for managed in listeners {
        let entry = by_secret
            .entry(managed.secret.clone())
            .or_insert_with(|| ManagedCertificate {
                secret: managed.secret.clone(),
                issuer: managed.issuer.clone(),
                dns_names: Vec::new(),
                listeners: Vec::new(),
            });
        if entry.issuer != managed.issuer {
            problems.push(Problem::error(
                None,
                format!(
                    "Secret {} is managed by {} and also requested from {} by listener {}; the first issuer keeps it",
                    managed.secret, entry.issuer, managed.issuer, managed.listener
                ),
            ));
            continue;
        }
        let hostname = managed.hostname.to_ascii_lowercase();
        if !entry.dns_names.contains(&hostname) {
            entry.dns_names.push(hostname);
        }
        entry.listeners.push(managed.listener);
    }
    by_secret
        .into_values()
        .map(|mut certificate| {
            certificate.dns_names.sort();
            certificate.listeners.sort();
            certificate.listeners.dedup();
            certificate
        })
        .collect()
}

/// The hostname a managed listener orders, or why it cannot be managed.
pub(crate) fn listener_hostname(hostname: &HostMatch) -> Result<String, String> {
    match hostname {
        HostMatch::Any => Err(
            "the listener has no hostname, so its certificate cannot be ordered; set spec.listeners[].hostname"
                .to_owned(),
        ),
        other => Ok(other.to_string()),
    }
}

/// Every Issuer and ClusterIssuer with its Secret bytes resolved, and a status per issuer
/// (Ready, or which Secret key is missing). Issuers read Secrets in their own namespace;
/// ClusterIssuers in `cluster_resource_namespace`.
pub(crate) fn resolve_issuers(
    objects: &ObjectSet,
    cluster_resource_namespace: &str,
    statuses: &mut Vec<ObjectStatus>,
) -> Vec<IssuerConfig> {
    let namespaced = objects
        .issuers
        .iter()
        .map(|(name, o)| (IssuerKind::Issuer, name.clone(), o));
    let cluster = objects
        .cluster_issuers
        .iter()
        .map(|(name, o)| (IssuerKind::ClusterIssuer, ObjectName::new("", name), o));
    let mut issuers = Vec::new();
    for (kind, name, object) in namespaced.chain(cluster) {
        let secret_namespace = match kind {
            IssuerKind::Issuer => name.namespace.clone(),
            IssuerKind::ClusterIssuer => cluster_resource_namespace.to_owned(),
        };
        let (secrets, missing) =
            resolve_secrets(objects, object.object.spec.secret_refs(), &secret_namespace);
        let ready = match &missing {
            None => Condition::new("Ready", true, "Configured", "issuer configured"),
            Some(why) => Condition::new("Ready", false, "SecretMissing", why.clone()),
        };
        statuses.push(ObjectStatus::with_conditions(
            match kind {
                IssuerKind::Issuer => ObjectKind::Issuer,
                IssuerKind::ClusterIssuer => ObjectKind::ClusterIssuer,
            },
            &name.namespace,
            &name.name,
            &object.location,
            object.object.metadata.generation,
            vec![ready],
        ));
        issuers.push(IssuerConfig {
            id: IssuerRef { kind, name },
            spec: object.object.spec.clone(),
            secrets,
            secret_namespace,
        });
    }
    issuers
}

/// The bytes of every Secret key in `refs` (all in `namespace`); the first missing one is
/// reported.
pub(crate) fn resolve_secrets(
    objects: &ObjectSet,
    refs: Vec<torhaus_dns::SecretKeyRef>,
    namespace: &str,
) -> (SecretMaterial, Option<String>) {
    let mut material = SecretMaterial::default();
    let mut missing = None;
    for reference in refs {
        let secret = objects
            .secrets
            .get(&ObjectName::new(namespace, reference.name.clone()));
        let value = secret.and_then(|s| {
            let object = &s.object;
            object
                .data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    object
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(&reference.key))
                        .map(|t| t.as_bytes().to_vec())
                })
        });
        match (secret, value) {
            (_, Some(value)) => material.insert(&reference, value),
            (None, None) => {
                missing.get_or_insert_with(|| {
                    format!("Secret {namespace}/{} not found", reference.name)
                });
            }
            (Some(_), None) => {
                missing.get_or_insert_with(|| {
                    format!(
                        "Secret {namespace}/{} has no key {:?}",
                        reference.name, reference.key
                    )
                });
            }
        }
    }
    (material, missing)
}

/// One line per managed certificate for `torhaus check` and logs: the Secret, its issuer, the
/// names, and whether it is issued (notAfter, names missing from it) or pending.
pub fn describe_certificates(
    certificates: &[ManagedCertificate],
    issuers: &[IssuerConfig],
    config: &DataPlaneConfig,
) -> Vec<String> {
    let mut lines = Vec::new();
    for certificate in certificates {
        let source = format!(
            "{}/{}",
            certificate.secret.namespace, certificate.secret.name
        );
        let served = config
            .ports
            .iter()
            .flat_map(|port| &port.listeners)
            .filter_map(|listener| listener.tls.as_ref())
            .flat_map(|tls| &tls.certificates)
            .find(|served| served.source == source);
        let issuer = if issuers.iter().any(|i| i.id == certificate.issuer) {
            certificate.issuer.to_string()
        } else {
            format!("{} (not found)", certificate.issuer)
        };
        let state = match served {
            None => "pending: the local CA serves until it is issued".to_owned(),
            Some(served) => {
                let not_after = time::OffsetDateTime::from_unix_timestamp(served.not_after_unix)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| served.not_after_unix.to_string());
                let missing: Vec<&str> = certificate
                    .dns_names
                    .iter()
                    .filter(|name| !served.dns_names.contains(name))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    format!("issued, notAfter {not_after}")
                } else {
                    format!(
                        "issued, notAfter {not_after}; reorder pending for {}",
                        missing.join(", ")
                    )
                }
            }
        };
        lines.push(format!(
            "certificate Secret {source}: issuer {issuer}, names [{}]: {state}",
            certificate.dns_names.join(", ")
        ));
    }
    lines
}
