//! The status page at `/`: one server-rendered HTML page with inline CSS, no scripts and no
//! external assets, laid out in single-column cards so it reads on a phone.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use torhaus_gateway::metrics::StateView;
use torhaus_k8s::{Condition, ConditionStatus, ObjectKind, ObjectStatus, Translation};
use torhaus_model::{BackendTarget, DataPlaneConfig, PathMatch};

use super::RecentError;
use super::config_json;

/// Certificates expiring sooner than this are highlighted (the alert's threshold).
const EXPIRY_WARNING_DAYS: i64 = 14;
/// On-demand certificates for names no listener declares, listed at most.
const ON_DEMAND_LISTED: usize = 50;

pub struct PageInput<'a> {
    pub translation: Option<&'a Translation>,
    pub loaded_at: Option<SystemTime>,
    pub errors: &'a [RecentError],
    pub state: &'a StateView,
    pub ready: bool,
    pub now: SystemTime,
    /// Certificates the ACME lifecycle keeps issued (standalone mode), with their state.
    pub acme: &'a [torhaus_acme::CertificateStatus],
    /// What the DNS publishers publish, and where their sync stands.
    pub dns_records: &'a [torhaus_dns::publisher::PublisherStatus],
}

const STYLE: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mute:#6e7781;--line:#d0d7de}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;padding:12px;max-width:1100px;margin-inline:auto}
h1{font-size:1.35rem;margin:.2rem 0 .6rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:1rem;margin:.2rem 0;word-break:break-all}
section>div.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin:8px 0}
.summary{display:flex;flex-wrap:wrap;gap:8px}
.summary span{border:1px solid var(--line);border-radius:6px;padding:4px 8px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin:2px 4px 2px 0;font-size:.85rem;border:1px solid currentColor}
.ok{color:var(--ok)}.bad{color:var(--bad)}.warn{color:var(--warn)}.mute{color:var(--mute)}
table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{text-align:left;padding:3px 6px;border-top:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{white-space:nowrap}
.listener{border-top:1px solid var(--line);padding:6px 0}
code{font-size:.88rem;word-break:break-all}
ul{margin:.3rem 0;padding-left:1.2rem}
.table-scroll{overflow-x:auto}
";

pub fn render(input: &PageInput<'_>) -> String {
    let mut page = String::with_capacity(16 * 1024);
    page.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>torhaus status</title><style>",
    );
    page.push_str(STYLE);
    page.push_str("</style></head><body><h1>torhaus status</h1>");
    summary(&mut page, input);
    let config = input.translation.map(|t| t.config.as_ref());
    gateways(&mut page, input.translation, config);
    routes(&mut page, input.translation, config);
    backends(&mut page, input.state);
    certificates(&mut page, input.state, input.now);
    acme_certificates(&mut page, input.acme);
    dns_records(&mut page, input.dns_records);
    errors(&mut page, input.errors);
    page.push_str("</body></html>\n");
    page
}

fn summary(page: &mut String, input: &PageInput<'_>) {
    let ready = if input.ready {
        "<span class=\"ok\">ready</span>"
    } else {
        "<span class=\"bad\">not ready</span>"
    };
    let loaded = input
        .loaded_at
        .map_or_else(|| "never".to_owned(), |t| format_time(unix(t)));
    let _ = write!(
        page,
        "<div class=\"summary\">{ready}<span>configuration loaded {}</span>\
         <span>{} listeners</span><span>{} routes</span><span>{} rules</span>\
         <span>{} backends</span><span>{} certificates</span></div>",
        escape(&loaded),
        input.state.listeners,
        input.state.routes,
        input.state.rules,
        input.state.backends.len(),
        input.state.certificates.len()
    );
}

fn gateways(
    page: &mut String,
    translation: Option<&Translation>,
    config: Option<&DataPlaneConfig>,
) {
    page.push_str("<section id=\"gateways\"><h2>Gateways and listeners</h2>");
    let Some(translation) = translation else {
        page.push_str("<p class=\"mute\">No configuration loaded yet.</p></section>");
        return;
    };
    let mut any = false;
    for object in objects_of_kind(translation, ObjectKind::Gateway) {
        any = true;
        open_card(page, "Gateway", object);
        for listener in &object.listeners {
            let served = config.and_then(|c| {
                c.ports.iter().find_map(|port| {
                    port.listeners
                        .iter()
                        .find(|l| {
                            l.id.gateway.namespace == object.key.namespace
                                && l.id.gateway.name == object.key.name
                                && l.id.section == listener.name
                        })
                        .map(|l| (port.port, port.protocol, l.hostname.to_string()))
                })
            });
            let (port, hostname) = match served {
                Some((port, protocol, hostname)) => (format!("{port} {protocol}"), hostname),
                None => ("—".to_owned(), "—".to_owned()),
            };
            // One block per listener rather than a table: it stays readable on a phone.
            let _ = write!(
                page,
                "<div class=\"listener\"><b>{}</b> · port {} · hostname <code>{}</code> · \
                 {} attached routes<div>{}</div></div>",
                escape(&listener.name),
                escape(&port),
                escape(&hostname),
                listener.attached_routes,
                condition_badges(&listener.conditions)
            );
        }
        page.push_str("</div>");
    }
    if !any {
        page.push_str("<p class=\"mute\">No Gateway of this controller.</p>");
    }
    page.push_str("</section>");
}

fn routes(page: &mut String, translation: Option<&Translation>, config: Option<&DataPlaneConfig>) {
    page.push_str("<section id=\"routes\"><h2>Routes</h2>");
    let (Some(translation), Some(config)) = (translation, config) else {
        page.push_str("<p class=\"mute\">No configuration loaded yet.</p></section>");
        return;
    };
    let mut any = false;
    for object in objects_of_kind(translation, ObjectKind::HttpRoute) {
        any = true;
        open_card(page, "HTTPRoute", object);
        for parent in &object.parents {
            let _ = write!(
                page,
                "<div>parent <code>{}</code> {}</div>",
                escape(&parent.parent.to_string()),
                condition_badges(&parent.conditions)
            );
        }
        // The rules as served, once per listener the route is attached to.
        let attachments = config.ports.iter().flat_map(|port| {
            port.listeners.iter().flat_map(move |listener| {
                listener
                    .routes
                    .iter()
                    .filter(|a| {
                        a.route.id.namespace == object.key.namespace
                            && a.route.id.name == object.key.name
                    })
                    .map(move |a| (port, listener, a))
            })
        });
        for (port, listener, attached) in attachments {
            let hostnames: Vec<String> =
                attached.hostnames.iter().map(ToString::to_string).collect();
            let _ = write!(
                page,
                "<div class=\"mute\">on {} :{} — hostnames <code>{}</code></div>\
                 <div class=\"table-scroll\"><table><tr><th>match</th><th>policies</th>\
                 <th>backends</th></tr>",
                escape(&listener.id.to_string()),
                port.port,
                escape(&hostnames.join(", "))
            );
            for rule in &attached.route.rules {
                let matches: Vec<String> = rule
                    .matches
                    .iter()
                    .map(|m| {
                        let mut text = match &m.path {
                            PathMatch::Exact(p) => format!("= {p}"),
                            PathMatch::Prefix(p) => format!("{p}*"),
                            PathMatch::Regex(r) => format!("~ {}", r.as_str()),
                        };
                        if let Some(method) = &m.method {
                            let _ = write!(text, " {method}");
                        }
                        for header in &m.headers {
                            let _ = write!(text, " [{}]", header.name);
                        }
                        for query in &m.query {
                            let _ = write!(text, " ?{}", query.name);
                        }
                        text
                    })
                    .collect();
                let mut policies: Vec<String> = rule
                    .filters
                    .iter()
                    .filter_map(|f| {
                        config_json::filter(f)
                            .get("type")
                            .and_then(|t| t.as_str())
                            .map(str::to_owned)
                    })
                    .collect();
                if let Some(timeout) = rule.timeouts.request {
                    policies.push(format!("timeout {}s", timeout.as_secs_f64()));
                }
                if let Some(retry) = &rule.retry {
                    policies.push(format!("retry ×{}", retry.attempts));
                }
                if let Some(auth) = attached.auth_of(rule.index) {
                    policies.push(format!("AuthPolicy {auth}"));
                }
                let backends: Vec<String> = rule
                    .backends
                    .iter()
                    .map(|b| match &b.target {
                        BackendTarget::Service(backend) => {
                            format!("{} (weight {})", backend.id, b.weight)
                        }
                        BackendTarget::Invalid(reason) => format!("invalid: {reason}"),
                    })
                    .collect();
                let _ = write!(
                    page,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    escape(&matches.join(" | ")),
                    escape(&if policies.is_empty() {
                        "—".to_owned()
                    } else {
                        policies.join(", ")
                    }),
                    escape(&if backends.is_empty() {
                        "(answered by a filter)".to_owned()
                    } else {
                        backends.join(", ")
                    })
                );
            }
            page.push_str("</table></div>");
        }
        page.push_str("</div>");
    }
    if !any {
        page.push_str("<p class=\"mute\">No HTTPRoute.</p>");
    }
    page.push_str("</section>");
}

fn backends(page: &mut String, state: &StateView) {
    page.push_str("<section id=\"backends\"><h2>Backends and endpoint health</h2>");
    if state.backends.is_empty() {
        page.push_str("<p class=\"mute\">No backend.</p>");
    }
    for backend in &state.backends {
        let health = if backend.endpoints.is_empty() {
            "<span class=\"badge bad\">no endpoints</span>".to_owned()
        } else if backend.ready == 0 {
            "<span class=\"badge bad\">all ejected</span>".to_owned()
        } else if backend.ejected > 0 {
            format!(
                "<span class=\"badge warn\">{} ready, {} ejected</span>",
                backend.ready, backend.ejected
            )
        } else {
            format!("<span class=\"badge ok\">{} ready</span>", backend.ready)
        };
        let _ = write!(
            page,
            "<div class=\"card\"><h3>{}</h3>{health}<ul>",
            escape(&backend.name)
        );
        for endpoint in &backend.endpoints {
            let _ = write!(
                page,
                "<li><code>{}</code> {} · {} in flight</li>",
                endpoint.addr,
                if endpoint.ejected {
                    "<span class=\"bad\">ejected</span>"
                } else {
                    "<span class=\"ok\">ready</span>"
                },
                endpoint.in_flight
            );
        }
        page.push_str("</ul></div>");
    }
    page.push_str("</section>");
}

fn certificates(page: &mut String, state: &StateView, now: SystemTime) {
    page.push_str("<section id=\"certificates\"><h2>Certificates</h2>");
    if state.certificates.is_empty() {
        page.push_str(
            "<p class=\"mute\">No certificate served yet (the local CA issues on first use).</p>",
        );
    }
    let now = unix(now);
    // Names clients chose (SNI on a listener without hostname) are listed up to a bound.
    let declared = state.certificates.iter().filter(|c| c.declared);
    let on_demand = state.certificates.iter().filter(|c| !c.declared);
    for certificate in declared.chain(on_demand.take(ON_DEMAND_LISTED)) {
        let days = (certificate.not_after_unix - now).div_euclid(86_400);
        let class = if certificate.not_after_unix <= now {
            "bad"
        } else if days < EXPIRY_WARNING_DAYS {
            "warn"
        } else {
            "ok"
        };
        let expiry = if certificate.not_after_unix <= now {
            "expired".to_owned()
        } else {
            format!("expires in {days} days")
        };
        let renewal = certificate
            .renew_at_unix
            .map_or_else(|| "—".to_owned(), format_time);
        let _ = write!(
            page,
            "<div class=\"card\"><h3>{}</h3><span class=\"badge {class}\">{expiry}</span>\
             <table><tr><th>issuer</th><td>{}</td></tr>\
             <tr><th>names</th><td><code>{}</code></td></tr>\
             <tr><th>not after</th><td>{}</td></tr>\
             <tr><th>next renewal</th><td>{}</td></tr>\
             <tr><th>last error</th><td>—</td></tr></table></div>",
            escape(&certificate.name),
            certificate.issuer,
            escape(&certificate.dns_names.join(", ")),
            escape(&format_time(certificate.not_after_unix)),
            escape(&renewal)
        );
    }
    page.push_str("</section>");
}

fn errors(page: &mut String, errors: &[RecentError]) {
    page.push_str("<section id=\"errors\"><h2>Recent configuration errors</h2>");
    if errors.is_empty() {
        page.push_str("<p class=\"ok\">None.</p>");
    } else {
        page.push_str("<ul>");
        for error in errors {
            let _ = write!(
                page,
                "<li><span class=\"mute\">{}</span> {}</li>",
                escape(&format_time(unix(error.at))),
                escape(&error.message)
            );
        }
        page.push_str("</ul>");
    }
    page.push_str("</section>");
}

fn objects_of_kind(
    translation: &Translation,
    kind: ObjectKind,
) -> impl Iterator<Item = &ObjectStatus> {
    translation
        .report
        .objects
        .iter()
        .filter(move |o| o.key.kind == kind)
}

/// Opens an object's card (closed by the caller) with its name and conditions.
fn open_card(page: &mut String, kind: &str, object: &ObjectStatus) {
    let _ = write!(
        page,
        "<div class=\"card\"><h3>{kind} {}/{}</h3>{}",
        escape(&object.key.namespace),
        escape(&object.key.name),
        condition_badges(&object.conditions)
    );
}

fn condition_badges(conditions: &[Condition]) -> String {
    let mut out = String::new();
    for condition in conditions {
        let class = if condition.is_problem() {
            "bad"
        } else if condition.status == ConditionStatus::True {
            "ok"
        } else {
            "mute"
        };
        let _ = write!(
            out,
            "<span class=\"badge {class}\" title=\"{}\">{}={} <small>{}</small></span>",
            escape(&condition.message),
            escape(&condition.type_),
            condition.status,
            escape(&condition.reason)
        );
    }
    out
}

/// The ACME lifecycle's view: issuer, names, state, expiry, next renewal and the last error
/// (loud: a stopped certificate is red).
fn acme_certificates(page: &mut String, statuses: &[torhaus_acme::CertificateStatus]) {
    if statuses.is_empty() {
        return;
    }
    page.push_str("<section id=\"acme\"><h2>Managed certificates (ACME)</h2>");
    for status in statuses {
        let class = match status.state {
            torhaus_acme::CertificateState::Valid => "ok",
            torhaus_acme::CertificateState::Stopped
            | torhaus_acme::CertificateState::IssuerNotReady => "bad",
            _ => "warn",
        };
        let time = |t: Option<i64>| t.map_or_else(|| "—".to_owned(), format_time);
        let _ = write!(
            page,
            "<div class=\"card\"><h3>{}</h3><span class=\"badge {class}\">{}</span>\
             <table><tr><th>issuer</th><td>{}</td></tr>\
             <tr><th>names</th><td><code>{}</code></td></tr>\
             <tr><th>not after</th><td>{}</td></tr>\
             <tr><th>next renewal</th><td>{}</td></tr>\
             <tr><th>next attempt</th><td>{}</td></tr>\
             <tr><th>last error</th><td>{}</td></tr></table></div>",
            escape(&status.secret.to_string()),
            status.state,
            escape(&status.issuer.to_string()),
            escape(&status.dns_names.join(", ")),
            time(status.not_after_unix),
            time(status.next_renewal_unix),
            time(status.next_attempt_unix),
            escape(status.last_error.as_deref().unwrap_or("—")),
        );
    }
    page.push_str("</section>");
}

/// Each DNSPublisher: provider and owner, the state of its sync (a stopped or invalid one is
/// red), the hostnames it publishes, and every conflict (a foreign record in the way).
fn dns_records(page: &mut String, statuses: &[torhaus_dns::publisher::PublisherStatus]) {
    use torhaus_dns::publisher::SyncState;
    if statuses.is_empty() {
        return;
    }
    page.push_str("<section id=\"dns-records\"><h2>DNS records</h2>");
    for status in statuses {
        let class = match status.state {
            SyncState::Synced if status.conflicts.is_empty() => "ok",
            SyncState::Stopped | SyncState::Invalid => "bad",
            _ => "warn",
        };
        let names: Vec<String> = status
            .records
            .iter()
            .map(|(host, addresses)| {
                let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                format!("{host} → {}", addresses.join(", "))
            })
            .collect();
        let conflicts: Vec<String> = status
            .conflicts
            .iter()
            .map(|c| format!("{} {}: {}", c.name, c.rtype, c.reason))
            .collect();
        let time = |t: Option<i64>| t.map_or_else(|| "—".to_owned(), format_time);
        let or_dash = |text: &str| {
            if text.is_empty() {
                "—".to_owned()
            } else {
                escape(text)
            }
        };
        let _ = write!(
            page,
            "<div class=\"card\"><h3>{}</h3><span class=\"badge {class}\">{}</span>\
             <table><tr><th>provider</th><td>{}</td></tr>\
             <tr><th>owner</th><td>{}</td></tr>\
             <tr><th>records</th><td><code>{}</code></td></tr>\
             <tr><th>managed</th><td>{}</td></tr>\
             <tr><th>conflicts</th><td class=\"{}\">{}</td></tr>\
             <tr><th>last sync</th><td>{}</td></tr>\
             <tr><th>next sync</th><td>{}</td></tr>\
             <tr><th>last error</th><td>{}</td></tr></table></div>",
            escape(&status.id),
            status.state,
            or_dash(&status.provider),
            or_dash(&status.owner),
            escape(&names.join("; ")),
            status.managed,
            if conflicts.is_empty() { "" } else { "warn" },
            if conflicts.is_empty() {
                "none".to_owned()
            } else {
                escape(&conflicts.join("; "))
            },
            time(status.last_sync_unix),
            time(status.next_attempt_unix),
            escape(status.last_error.as_deref().unwrap_or("—")),
        );
    }
    page.push_str("</section>");
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape("<script>\"a\"&'b'</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn an_empty_page_renders_every_section() {
        let page = render(&PageInput {
            translation: None,
            loaded_at: None,
            errors: &[],
            state: &StateView::default(),
            ready: false,
            now: SystemTime::now(),
            acme: &[],
            dns_records: &[],
        });
        for id in ["gateways", "routes", "backends", "certificates", "errors"] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(page.contains("not ready"));
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://")
        );
    }
}
