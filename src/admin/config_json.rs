//! `/debug/config`: the configuration being served, as JSON, with endpoint health.
//!
//! Built by hand rather than by deriving Serialize on the model: the model holds private keys
//! (never shown), compiled regexes and header types, and the debug view should be stable for
//! people reading it whatever the model's internals become. Header values that filters set or
//! add are replaced by `"(redacted)"`, because a filter may inject credentials for a backend;
//! certificates are shown by source, names and expiry only.

use serde_json::{Value, json};
use torhaus_gateway::metrics::StateView;
use torhaus_model::{
    BackendTarget, DataPlaneConfig, Filter, HeaderModifier, PathMatch, PathModifier, RequestMatch,
    Rule, StringMatch,
};

/// The ACME lifecycle's certificates: issuer, names, state, notAfter, next renewal and the
/// last error.
pub fn acme(statuses: &[torhaus_acme::CertificateStatus]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|status| {
                json!({
                    "secret": status.secret.to_string(),
                    "issuer": status.issuer.to_string(),
                    "dnsNames": status.dns_names,
                    "state": status.state.to_string(),
                    "notAfterUnix": status.not_after_unix,
                    "nextRenewalUnix": status.next_renewal_unix,
                    "nextAttemptUnix": status.next_attempt_unix,
                    "lastError": status.last_error,
                    "orders": status.orders,
                    "failures": status.failures,
                })
            })
            .collect(),
    )
}

/// Every DNSPublisher: what it publishes (hostnames and addresses, the provider, the owner;
/// never credentials) and where its sync stands (state, records managed, conflicts, last
/// error).
pub fn dns_publishers(statuses: &[torhaus_dns::publisher::PublisherStatus]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|status| {
                let records: Vec<Value> = status
                    .records
                    .iter()
                    .map(|(host, addresses)| {
                        json!({
                            "hostname": host,
                            "addresses": addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let conflicts: Vec<Value> = status
                    .conflicts
                    .iter()
                    .map(|c| json!({"name": c.name, "type": c.rtype.to_string(), "reason": c.reason}))
                    .collect();
                json!({
                    "publisher": status.id,
                    "provider": status.provider,
                    "owner": status.owner,
                    "ttl": status.ttl,
                    "zones": status.zones,
                    "records": records,
                    "state": status.state.to_string(),
                    "managed": status.managed,
                    "conflicts": conflicts,
                    "changes": status.changes,
                    "lastSyncUnix": status.last_sync_unix,
                    "nextAttemptUnix": status.next_attempt_unix,
                    "lastError": status.last_error,
                })
            })
            .collect(),
    )
}

pub fn describe(config: &DataPlaneConfig, state: &StateView) -> Value {
    let ports: Vec<Value> = config
        .ports
        .iter()
        .map(|port| {
            let listeners: Vec<Value> = port
                .listeners
                .iter()
                .map(|listener| {
                    let tls = listener.tls.as_ref().map(|tls| {
                        let certificates: Vec<Value> = tls
                            .certificates
                            .iter()
                            .map(|c| {
                                json!({
                                    "source": c.source,
                                    "dnsNames": c.dns_names,
                                    "notAfterUnix": c.not_after_unix,
                                })
                            })
                            .collect();
                        json!({
                            "certificates": certificates,
                            "localCaFallback": tls.certificates.is_empty(),
                        })
                    });
                    let routes: Vec<Value> = listener
                        .routes
                        .iter()
                        .map(|attached| {
                            json!({
                                "route": attached.route.id.to_string(),
                                "hostnames": attached.hostnames.iter().map(ToString::to_string).collect::<Vec<_>>(),
                                "rules": attached.route.rules.iter().map(|r| rule(r)).collect::<Vec<_>>(),
                                // The AuthPolicy in force on each rule where attached here.
                                "authPolicies": attached.route.rules.iter().map(|r| attached.auth_of(r.index).map(|p| p.to_string())).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    json!({
                        "gateway": listener.id.gateway.to_string(),
                        "name": listener.id.section,
                        "hostname": listener.hostname.to_string(),
                        "tls": tls,
                        "routes": routes,
                    })
                })
                .collect();
            json!({
                "port": port.port,
                "protocol": port.protocol.to_string(),
                "listeners": listeners,
            })
        })
        .collect();
    let backends: Vec<Value> = state
        .backends
        .iter()
        .map(|b| {
            json!({
                "backend": b.name,
                "endpoints": b.endpoints.iter().map(|e| json!({
                    "address": e.addr.to_string(),
                    "ejected": e.ejected,
                    "inFlight": e.in_flight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "ports": ports,
        "backends": backends,
        "routeTable": {
            "listeners": state.listeners,
            "routes": state.routes,
            "rules": state.rules,
            "backends": state.backends.len(),
        },
    })
}

fn rule(rule: &Rule) -> Value {
    let backends: Vec<Value> = rule
        .backends
        .iter()
        .map(|weighted| match &weighted.target {
            BackendTarget::Service(backend) => json!({
                "backend": backend.id.to_string(),
                "weight": weighted.weight,
                "protocol": format!("{:?}", backend.protocol),
                "endpoints": backend.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "filters": weighted.filters.iter().map(filter).collect::<Vec<_>>(),
            }),
            BackendTarget::Invalid(reason) => json!({
                "invalid": reason.as_ref(),
                "weight": weighted.weight,
            }),
        })
        .collect();
    json!({
        "index": rule.index,
        "name": rule.name,
        "matches": rule.matches.iter().map(request_match).collect::<Vec<_>>(),
        "filters": rule.filters.iter().map(filter).collect::<Vec<_>>(),
        "backends": backends,
        "timeouts": {
            "request": rule.timeouts.request.map(|d| d.as_secs_f64()),
            "backendRequest": rule.timeouts.backend_request.map(|d| d.as_secs_f64()),
        },
        "retry": rule.retry.as_ref().map(|r| json!({
            "attempts": r.attempts,
            "codes": r.codes,
            "backoff": r.backoff.map(|d| d.as_secs_f64()),
        })),
    })
}

fn request_match(m: &RequestMatch) -> Value {
    let path = match &m.path {
        PathMatch::Exact(p) => json!({"type": "Exact", "value": p}),
        PathMatch::Prefix(p) => json!({"type": "PathPrefix", "value": p}),
        PathMatch::Regex(r) => json!({"type": "RegularExpression", "value": r.as_str()}),
    };
    json!({
        "path": path,
        "method": m.method.as_ref().map(ToString::to_string),
        "headers": m.headers.iter().map(|h| json!({
            "name": h.name.as_str(),
            "match": string_match(&h.value),
        })).collect::<Vec<_>>(),
        "queryParams": m.query.iter().map(|q| json!({
            "name": q.name,
            "match": string_match(&q.value),
        })).collect::<Vec<_>>(),
    })
}

fn string_match(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(v) => json!({"type": "Exact", "value": v}),
        StringMatch::Regex(r) => json!({"type": "RegularExpression", "value": r.as_str()}),
    }
}

/// The filter's kind and settings; header values are redacted.
pub fn filter(filter: &Filter) -> Value {
    match filter {
        Filter::RequestHeaders(m) => {
            json!({"type": "RequestHeaderModifier", "headers": modifier(m)})
        }
        Filter::ResponseHeaders(m) => {
            json!({"type": "ResponseHeaderModifier", "headers": modifier(m)})
        }
        Filter::Redirect(r) => json!({
            "type": "RequestRedirect",
            "scheme": r.scheme.map(|s| s.as_str()),
            "hostname": r.hostname,
            "port": r.port,
            "path": r.path.as_ref().map(path_modifier),
            "statusCode": r.status,
        }),
        Filter::Rewrite(r) => json!({
            "type": "URLRewrite",
            "hostname": r.hostname,
            "path": r.path.as_ref().map(path_modifier),
        }),
        Filter::Mirror(m) => json!({
            "type": "RequestMirror",
            "backend": match &m.backend {
                BackendTarget::Service(b) => b.id.to_string(),
                BackendTarget::Invalid(reason) => format!("invalid: {reason}"),
            },
            "fraction": format!("{}/{}", m.numerator, m.denominator),
        }),
        Filter::Cors(c) => json!({
            "type": "CORS",
            "allowOrigins": c.allow_origins,
            "allowCredentials": c.allow_credentials,
            "allowMethods": c.allow_methods,
            "allowHeaders": c.allow_headers,
            "exposeHeaders": c.expose_headers,
            "maxAge": c.max_age,
        }),
    }
}

fn modifier(m: &HeaderModifier) -> Value {
    let redacted = |list: &[(hyper::http::HeaderName, hyper::http::HeaderValue)]| -> Vec<Value> {
        list.iter()
            .map(|(name, _)| json!({"name": name.as_str(), "value": "(redacted)"}))
            .collect()
    };
    json!({
        "set": redacted(&m.set),
        "add": redacted(&m.add),
        "remove": m.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
    })
}

fn path_modifier(p: &PathModifier) -> Value {
    match p {
        PathModifier::ReplaceFullPath(v) => json!({"type": "ReplaceFullPath", "value": v}),
        PathModifier::ReplacePrefixMatch(v) => json!({"type": "ReplacePrefixMatch", "value": v}),
    }
}
