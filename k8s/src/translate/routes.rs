//! HTTPRoute rules → the model's rules: matches, filters, backends, timeouts and retries, each
//! validated, with the spec's handling of invalid rules (dropped) and unresolved refs (500).

use std::sync::Arc;

use gateway_api::experimental::httproutes::{
    HttpRoute as GwHttpRoute, HttpRouteRules, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use torhaus_model::{
    BackendTarget, Cors, Filter, HeaderMatch, HeaderModifier, HostMatch, HttpRoute, Mirror,
    ObjectName, PathMatch, PathModifier, QueryMatch, Redirect, RequestMatch, RetryPolicy, Rewrite,
    RouteKind, Rule, Scheme, StringMatch, Timeouts, WeightedBackend,
};

use super::refs::{BackendRef, BackendResolver, RefFailure};

/// A route compiled once, independent of the parents it attaches to.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub route: Arc<HttpRoute>,
    /// `spec.hostnames`, or the error naming the bad one.
    pub hostnames: Result<Vec<HostMatch>, String>,
    /// One message per dropped rule, "Dropped Rule N: why".
    pub dropped: Vec<String>,
    /// Every unresolved reference of the kept rules (their share answers 500).
    pub unresolved: Vec<RefFailure>,
    pub rule_count: usize,
}

pub(crate) fn compile_route(
    name: &ObjectName,
    route: &GwHttpRoute,
    created_unix: i64,
    resolver: &mut BackendResolver<'_>,
) -> CompiledRoute {
    let hostnames = route
        .spec
        .hostnames
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, h)| HostMatch::parse(h).map_err(|e| format!("spec.hostnames[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>();
    let mut rules = Vec::new();
    let mut dropped = Vec::new();
    let mut unresolved = Vec::new();
    let default_rules = [HttpRouteRules::default()];
    let spec_rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
    for (index, rule) in spec_rules.iter().enumerate() {
        let mut rule_unresolved = Vec::new();
        match compile_rule(index, rule, &name.namespace, resolver, &mut rule_unresolved) {
            Ok(compiled) => {
                rules.push(Arc::new(compiled));
                unresolved.extend(rule_unresolved);
            }
            Err(message) => dropped.push(format!("Dropped Rule {index}: {message}")),
        }
    }
    CompiledRoute {
        route: Arc::new(HttpRoute {
            kind: RouteKind::Http,
            id: name.clone(),
            created_unix,
            rules,
        }),
        hostnames,
        dropped,
        unresolved,
        rule_count: spec_rules.len(),
    }
}

fn compile_rule(
    index: usize,
    rule: &HttpRouteRules,
    namespace: &str,
    resolver: &mut BackendResolver<'_>,
    unresolved: &mut Vec<RefFailure>,
) -> Result<Rule, String> {
    let matches = match rule.matches.as_deref() {
        None | Some([]) => vec![RequestMatch::default()],
        Some(matches) => matches
            .iter()
            .enumerate()
            .map(|(i, m)| compile_match(m).map_err(|e| format!("matches[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let all_prefix = matches
        .iter()
        .all(|m| matches!(m.path, PathMatch::Prefix(_)));
    let filters = compile_filters(
        rule.filters.as_deref().unwrap_or(&[]),
        "filters",
        all_prefix,
        namespace,
        resolver,
        unresolved,
    )?;
    let mut backends = Vec::new();
    for (i, backend_ref) in rule.backend_refs.iter().flatten().enumerate() {
        let weight = u32::try_from(backend_ref.weight.unwrap_or(1))
            .map_err(|_| format!("backendRefs[{i}].weight must not be negative"))?;
        let backend_filters = match &backend_ref.filters {
            None => Vec::new(),
            Some(raw) => {
                // The per-backend filter types are structurally the rule's: one validator serves both.
                let as_rule_filters: Vec<HttpRouteRulesFilters> = serde_json::to_value(raw)
                    .and_then(serde_json::from_value)
                    .map_err(|e| format!("backendRefs[{i}].filters: {e}"))?;
                compile_filters(
                    &as_rule_filters,
                    &format!("backendRefs[{i}].filters"),
                    all_prefix,
                    namespace,
                    resolver,
                    unresolved,
                )?
            }
        };
        let reference = BackendRef {
            group: backend_ref.group.as_deref(),
            kind: backend_ref.kind.as_deref(),
            name: &backend_ref.name,
            namespace: backend_ref.namespace.as_deref(),
            port: backend_ref.port,
        };
        let target = match resolver.resolve(namespace, reference) {
            Ok(backend) => BackendTarget::Service(backend),
            Err(failure) => {
                let target = BackendTarget::Invalid(Arc::from(failure.message.as_str()));
                unresolved.push(failure);
                target
            }
        };
        backends.push(WeightedBackend {
            weight,
            target,
            filters: backend_filters,
        });
    }
    let redirects = filters.iter().any(|f| matches!(f, Filter::Redirect(_)));
    if redirects && !backends.is_empty() {
        return Err("a RequestRedirect filter cannot be combined with backendRefs".to_owned());
    }
    if let Some(unsupported) = unsupported_filter(rule.filters.as_deref().unwrap_or(&[])) {
        // The spec forbids skipping a filter that cannot be applied: the rule answers 500.
        let message = format!("filter {unsupported} is not supported by torhaus");
        unresolved.push(RefFailure {
            reason: "InvalidKind",
            message: format!("rule {index}: {message}"),
        });
        backends = vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Invalid(Arc::from(message.as_str())),
            filters: Vec::new(),
        }];
    } else if backends.is_empty() && !redirects {
        backends.push(WeightedBackend {
            weight: 1,
            target: BackendTarget::Invalid(Arc::from("the rule has no backendRefs")),
            filters: Vec::new(),
        });
    }
    let timeouts = compile_timeouts(rule)?;
    let retry = match &rule.retry {
        None => None,
        Some(retry) => {
            let attempts = u32::try_from(retry.attempts.unwrap_or(0))
                .map_err(|_| "retry.attempts must be between 0 and 4294967295".to_owned())?;
            let codes = retry
                .codes
                .iter()
                .flatten()
                .map(|c| match u16::try_from(*c) {
                    Ok(code) if (400..=599).contains(&code) => Ok(code),
                    _ => Err(format!(
                        "retry.codes: {c} is not an HTTP status between 400 and 599"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let backoff = retry
                .backoff
                .as_deref()
                .map(|b| parse_duration(b, "retry.backoff"))
                .transpose()?
                .flatten();
            Some(RetryPolicy {
                attempts,
                codes,
                backoff,
            })
        }
    };
    Ok(Rule {
        index,
        name: rule.name.clone(),
        matches,
        filters,
        backends,
        timeouts,
        retry,
    })
}

fn compile_timeouts(rule: &HttpRouteRules) -> Result<Timeouts, String> {
    let Some(timeouts) = &rule.timeouts else {
        return Ok(Timeouts::default());
    };
    let request = timeouts
        .request
        .as_deref()
        .map(|t| parse_duration(t, "timeouts.request"))
        .transpose()?
        .flatten();
    let backend_request = timeouts
        .backend_request
        .as_deref()
        .map(|t| parse_duration(t, "timeouts.backendRequest"))
        .transpose()?
        .flatten();
    if let (Some(request), Some(backend)) = (request, backend_request)
        && backend > request
    {
        return Err(format!(
            "timeouts.backendRequest ({backend:?}) must not exceed timeouts.request ({request:?})"
        ));
    }
    Ok(Timeouts {
        request,
        backend_request,
    })
}

/// A GEP-2257 duration; zero means "no limit", as the spec says.
fn parse_duration(raw: &str, field: &str) -> Result<Option<std::time::Duration>, String> {
    let parsed: gateway_api::Duration = raw.parse().map_err(|e| format!("{field} {raw:?}: {e}"))?;
    Ok((!parsed.is_zero())
        .then(|| std::time::Duration::new(parsed.as_secs(), parsed.subsec_nanos())))
}

fn compile_match(m: &HttpRouteRulesMatches) -> Result<RequestMatch, String> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".to_owned()),
        Some(path) => {
            let value = path.value.as_deref().unwrap_or("/");
            match path
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => {
                    validate_path(value, "path.value")?;
                    PathMatch::Exact(value.to_owned())
                }
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    validate_path(value, "path.value")?;
                    let trimmed = value.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() {
                        "/".to_owned()
                    } else {
                        trimmed.to_owned()
                    })
                }
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    PathMatch::Regex(anchored(value, "path.value")?)
                }
            }
        }
    };
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (i, header) in m.headers.iter().flatten().enumerate() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
            format!(
                "headers[{i}].name {:?} is not a valid header name",
                header.name
            )
        })?;
        if headers.iter().any(|h| h.name == name) {
            continue;
        }
        let value = match header
            .r#type
            .as_ref()
            .unwrap_or(&HttpRouteRulesMatchesHeadersType::Exact)
        {
            HttpRouteRulesMatchesHeadersType::Exact => StringMatch::Exact(header.value.clone()),
            HttpRouteRulesMatchesHeadersType::RegularExpression => {
                StringMatch::Regex(anchored(&header.value, &format!("headers[{i}].value"))?)
            }
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query: Vec<QueryMatch> = Vec::new();
    for (i, param) in m.query_params.iter().flatten().enumerate() {
        if param.name.is_empty() {
            return Err(format!("queryParams[{i}].name is empty"));
        }
        if query.iter().any(|q| q.name == param.name) {
            continue;
        }
        let value = match param
            .r#type
            .as_ref()
            .unwrap_or(&HttpRouteRulesMatchesQueryParamsType::Exact)
        {
            HttpRouteRulesMatchesQueryParamsType::Exact => StringMatch::Exact(param.value.clone()),
            HttpRouteRulesMatchesQueryParamsType::RegularExpression => {
                StringMatch::Regex(anchored(&param.value, &format!("queryParams[{i}].value"))?)
            }
        };
        query.push(QueryMatch {
            name: param.name.clone(),
            value,
        });
    }
    let method = m.method.as_ref().map(|method| match method {
        HttpRouteRulesMatchesMethod::Get => Method::GET,
        HttpRouteRulesMatchesMethod::Head => Method::HEAD,
        HttpRouteRulesMatchesMethod::Post => Method::POST,
        HttpRouteRulesMatchesMethod::Put => Method::PUT,
        HttpRouteRulesMatchesMethod::Delete => Method::DELETE,
        HttpRouteRulesMatchesMethod::Connect => Method::CONNECT,
        HttpRouteRulesMatchesMethod::Options => Method::OPTIONS,
        HttpRouteRulesMatchesMethod::Trace => Method::TRACE,
        HttpRouteRulesMatchesMethod::Patch => Method::PATCH,
    });
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

/// The path rules of the HTTPRoute schema (absolute, no dot segments, no encoded slashes).
fn validate_path(path: &str, field: &str) -> Result<(), String> {
    let bad = !path.starts_with('/')
        || ["//", "/./", "/../", "%2f", "%2F", "#"]
            .iter()
            .any(|s| path.contains(s))
        || path.ends_with("/..")
        || path.ends_with("/.");
    if bad {
        return Err(format!(
            "{field} {path:?} must be an absolute path without '//', dot segments, '%2f' or '#'"
        ));
    }
    Ok(())
}

fn anchored(pattern: &str, field: &str) -> Result<Regex, String> {
    // Compiled alone first: a pattern like `a)|(b` is only valid once wrapped, and would
    // escape the anchors.
    Regex::new(pattern)
        .map_err(|e| format!("{field}: invalid regular expression {pattern:?}: {e}"))?;
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{field}: invalid regular expression {pattern:?}: {e}"))
}

/// The first filter the data plane cannot apply (ExtensionRef, ExternalAuth), if any.
fn unsupported_filter(filters: &[HttpRouteRulesFilters]) -> Option<String> {
    filters.iter().find_map(|f| match f.r#type {
        HttpRouteRulesFiltersType::ExtensionRef => Some(match &f.extension_ref {
            Some(r) => format!("ExtensionRef {}/{} {}", r.group, r.kind, r.name),
            None => "ExtensionRef".to_owned(),
        }),
        HttpRouteRulesFiltersType::ExternalAuth => Some("ExternalAuth".to_owned()),
        _ => None,
    })
}

fn compile_filters(
    filters: &[HttpRouteRulesFilters],
    field: &str,
    all_prefix: bool,
    namespace: &str,
    resolver: &mut BackendResolver<'_>,
    unresolved: &mut Vec<RefFailure>,
) -> Result<Vec<Filter>, String> {
    let mut compiled = Vec::new();
    let mut seen = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let missing =
            |what: &str| format!("{at}: type {:?} without its {what} field", filter.r#type);
        let repeatable = matches!(filter.r#type, HttpRouteRulesFiltersType::RequestMirror);
        if !repeatable && seen.contains(&filter.r#type) {
            return Err(format!(
                "{at}: filter {:?} may appear only once",
                filter.r#type
            ));
        }
        seen.push(filter.r#type.clone());
        let next = match filter.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                Filter::RequestHeaders(header_modifier(
                    &at,
                    filter
                        .request_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("requestHeaderModifier"))?,
                )?)
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                Filter::ResponseHeaders(header_modifier(
                    &at,
                    filter
                        .response_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("responseHeaderModifier"))?,
                )?)
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = filter
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let status = match r.status_code.unwrap_or(302) {
                    code @ (301 | 302 | 303 | 307 | 308) => code as u16,
                    other => {
                        return Err(format!(
                            "{at}.requestRedirect.statusCode {other} is not 301, 302, 303, 307 or 308"
                        ));
                    }
                };
                let port = r
                    .port
                    .map(|p| match u16::try_from(p) {
                        Ok(port) if port > 0 => Ok(port),
                        _ => Err(format!("{at}.requestRedirect.port {p} is out of range")),
                    })
                    .transpose()?;
                let path = match &r.path {
                    None => None,
                    Some(p) => Some(path_modifier(
                        &format!("{at}.requestRedirect.path"),
                        matches!(
                            p.r#type,
                            HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch
                        ),
                        p.replace_full_path.as_deref(),
                        p.replace_prefix_match.as_deref(),
                        all_prefix,
                    )?),
                };
                Filter::Redirect(Redirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        HttpRouteRulesFiltersRequestRedirectScheme::Http => Scheme::Http,
                        HttpRouteRulesFiltersRequestRedirectScheme::Https => Scheme::Https,
                    }),
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(|h| precise_hostname(h, &format!("{at}.requestRedirect.hostname")))
                        .transpose()?,
                    port,
                    path,
                    status,
                })
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = filter
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                let path = match &r.path {
                    None => None,
                    Some(p) => Some(path_modifier(
                        &format!("{at}.urlRewrite.path"),
                        matches!(
                            p.r#type,
                            HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch
                        ),
                        p.replace_full_path.as_deref(),
                        p.replace_prefix_match.as_deref(),
                        all_prefix,
                    )?),
                };
                Filter::Rewrite(Rewrite {
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(|h| precise_hostname(h, &format!("{at}.urlRewrite.hostname")))
                        .transpose()?,
                    path,
                })
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = filter
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let (numerator, denominator) = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "{at}.requestMirror: percent and fraction are exclusive"
                        ));
                    }
                    (Some(percent), None) => (percent, 100),
                    (None, Some(fraction)) => {
                        (fraction.numerator, fraction.denominator.unwrap_or(100))
                    }
                    (None, None) => (100, 100),
                };
                let (Ok(numerator), Ok(denominator)) =
                    (u32::try_from(numerator), u32::try_from(denominator))
                else {
                    return Err(format!(
                        "{at}.requestMirror: the mirrored share must not be negative"
                    ));
                };
                if denominator == 0 || numerator > denominator {
                    return Err(format!(
                        "{at}.requestMirror: share {numerator}/{denominator} must have 0 < denominator and numerator <= denominator"
                    ));
                }
                let b = &m.backend_ref;
                let reference = BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                };
                let backend = match resolver.resolve(namespace, reference) {
                    Ok(backend) => BackendTarget::Service(backend),
                    Err(failure) => {
                        let target = BackendTarget::Invalid(Arc::from(failure.message.as_str()));
                        unresolved.push(failure);
                        target
                    }
                };
                Filter::Mirror(Mirror {
                    backend,
                    numerator,
                    denominator,
                })
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = filter.cors.as_ref().ok_or_else(|| missing("cors"))?;
                let max_age = u32::try_from(c.max_age.unwrap_or(5))
                    .map_err(|_| format!("{at}.cors.maxAge must not be negative"))?;
                let allow_origins = c.allow_origins.clone().unwrap_or_default();
                let allow_credentials = c.allow_credentials.unwrap_or(false);
                if allow_credentials && allow_origins.iter().any(|o| o == "*") {
                    return Err(format!(
                        "{at}.cors: allowCredentials cannot be combined with the origin \"*\""
                    ));
                }
                Filter::Cors(Arc::new(Cors {
                    allow_origins,
                    allow_credentials,
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    max_age,
                }))
            }
            // Handled by the caller: the rule answers 500.
            HttpRouteRulesFiltersType::ExtensionRef | HttpRouteRulesFiltersType::ExternalAuth => {
                continue;
            }
        };
        compiled.push(next);
    }
    let redirect = compiled.iter().any(|f| matches!(f, Filter::Redirect(_)));
    let rewrite = compiled.iter().any(|f| matches!(f, Filter::Rewrite(_)));
    if redirect && rewrite {
        return Err(format!(
            "{field}: RequestRedirect and URLRewrite cannot be used together"
        ));
    }
    Ok(compiled)
}

/// The request and response header modifiers share one shape (set, add, remove); the
/// generated types differ only in name, so both are read through this one.
#[derive(Debug, Default, serde::Deserialize)]
struct RawHeaderModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

fn header_modifier(at: &str, raw: &impl serde::Serialize) -> Result<HeaderModifier, String> {
    let raw: RawHeaderModifier = serde_json::to_value(raw)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("{at}: {e}"))?;
    let mut modifier = HeaderModifier::default();
    let mut names: Vec<HeaderName> = Vec::new();
    let mut name_of = |list: &str, i: usize, raw: &str| -> Result<HeaderName, String> {
        let name = HeaderName::from_bytes(raw.as_bytes())
            .map_err(|_| format!("{at}.{list}[{i}].name {raw:?} is not a valid header name"))?;
        if names.contains(&name) {
            return Err(format!(
                "{at}.{list}[{i}].name {raw:?} appears more than once in this filter"
            ));
        }
        names.push(name.clone());
        Ok(name)
    };
    for (list, entries, target) in [
        ("set", &raw.set, &mut modifier.set),
        ("add", &raw.add, &mut modifier.add),
    ] {
        for (i, RawHeader { name, value }) in entries.iter().enumerate() {
            let name = name_of(list, i, name)?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!("{at}.{list}[{i}].value {value:?} is not a valid header value")
            })?;
            target.push((name, value));
        }
    }
    for (i, name) in raw.remove.iter().enumerate() {
        modifier.remove.push(name_of("remove", i, name)?);
    }
    Ok(modifier)
}

fn path_modifier(
    at: &str,
    prefix_type: bool,
    full: Option<&str>,
    prefix: Option<&str>,
    all_prefix: bool,
) -> Result<PathModifier, String> {
    if prefix_type {
        let value = prefix
            .ok_or_else(|| format!("{at}: type ReplacePrefixMatch needs replacePrefixMatch"))?;
        if !all_prefix {
            return Err(format!(
                "{at}: ReplacePrefixMatch is only valid when every match is a PathPrefix match"
            ));
        }
        if !value.starts_with('/') {
            return Err(format!(
                "{at}.replacePrefixMatch {value:?} must start with '/'"
            ));
        }
        Ok(PathModifier::ReplacePrefixMatch(value.to_owned()))
    } else {
        let value =
            full.ok_or_else(|| format!("{at}: type ReplaceFullPath needs replaceFullPath"))?;
        if !value.starts_with('/') {
            return Err(format!(
                "{at}.replaceFullPath {value:?} must start with '/'"
            ));
        }
        Ok(PathModifier::ReplaceFullPath(value.to_owned()))
    }
}

fn precise_hostname(raw: &str, field: &str) -> Result<String, String> {
    match HostMatch::parse(raw) {
        Ok(HostMatch::Exact(host)) => Ok(host),
        Ok(_) => Err(format!(
            "{field} {raw:?} must be a precise hostname, not a wildcard"
        )),
        Err(e) => Err(format!("{field}: {e}")),
    }
}
