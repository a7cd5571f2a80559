//! DNS records for served hostnames (the external-dns role) end to end: the torhaus binary in
//! standalone mode with a `DNSPublisher` in its config directory, against a real knotd updated
//! over RFC 2136 with TSIG (and a real PowerDNS through its HTTP API). Records and their
//! ownership TXT markers appear for the routes' hostnames, follow routes that are added and
//! deleted, are repaired when changed behind torhaus's back, and foreign records (in the same
//! zone, and at a served name) are never changed or deleted but reported as conflicts.
//!
//! The zones are read back directly from the DNS servers (an AXFR from knotd, the API of
//! PowerDNS), never through torhaus. Needs Debian's `knot` and `pdns-server` +
//! `pdns-backend-sqlite3` (`scripts/install-deps.sh test`); each test says SKIPPED and passes
//! when they are missing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use torhaus_dns::rfc2136::{Rfc2136Provider, TsigAlgorithmName, TsigKey};
use torhaus_dns::{DnsProvider, RecordSet, RecordType};
use torhaus_tests::client::{TestRequest, Transport};
use torhaus_tests::dns_rig::{
    Knot, PDNS_API_KEY, PowerDns, TSIG_KEY_NAME, TSIG_SECRET_B64, ZONE, knotd_path,
    pdns_server_path,
};
use torhaus_tests::process::{TempDir, Torhaus, TorhausOptions, torhaus_bin, wait_for};

const NAMESPACE: &str = "dns";
const PUBLISHER: &str = "dns/public";
/// Long enough for a debug build on a loaded 2-core machine; the sync itself takes well under
/// a second after the 1 s debounce.
const DEADLINE: Duration = Duration::from_secs(20);

/// The cluster-wide objects: class, Gateway, the publisher's Secret and the publisher itself.
fn base_manifests(provider: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: torhaus}}
spec: {{controllerName: torhaus.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {NAMESPACE}}}
spec:
  gatewayClassName: torhaus
  listeners:
    - {{name: web, port: 80, protocol: HTTP}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: {NAMESPACE}}}
spec: {{ports: [{{name: http, port: 8080}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: dns-credentials, namespace: {NAMESPACE}}}
stringData: {{key: "{secret}"}}
---
apiVersion: torhaus.dev/v1alpha1
kind: DNSPublisher
metadata: {{name: public, namespace: {NAMESPACE}}}
spec:
  ownerId: e2e
  ttl: 60
  zones: [{ZONE}]
  provider:
{provider}
"#
    )
}

fn route(name: &str, hostname: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: ["{hostname}"]
  rules: [{{backendRefs: [{{name: app, port: 8080}}]}}]
"#
    )
}

/// Written atomically, like an editor's save: the watcher never reads half a file.
fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join(name))?;
    Ok(())
}

async fn start_torhaus(config: &Path) -> anyhow::Result<Torhaus> {
    start_torhaus_with(config, &[]).await
}

async fn start_torhaus_with(config: &Path, more: &[String]) -> anyhow::Result<Torhaus> {
    Torhaus::start(
        config,
        &TorhausOptions {
            gateway_ports: vec![80],
            extra_args: [
                "--gateway-address",
                "192.0.2.10,2001:db8::10",
                // Short, so that the drift repair is seen within the test's deadline.
                "--dns-resync-interval",
                "1s",
                "--dns-retry-base",
                "1s",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(more.iter().cloned())
            .collect(),
            ..TorhausOptions::default()
        },
    )
    .await
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let response = torhaus_tests::client::send(
        addr,
        &Transport::Http1,
        &TestRequest::get("127.0.0.1", path),
    )
    .await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// The zone as the DNS server has it now.
async fn zone_records(dns: &dyn DnsProvider) -> anyhow::Result<Vec<RecordSet>> {
    let zone = dns.find_zone(ZONE).await?;
    Ok(dns.list_records(&zone).await?)
}

fn values(records: &[RecordSet], name: &str, rtype: RecordType) -> Vec<String> {
    let mut values: Vec<String> = records
        .iter()
        .filter(|s| s.name == name && s.rtype == rtype)
        .flat_map(|s| s.values.iter().map(|v| v.trim_matches('"').to_owned()))
        .collect();
    values.sort();
    values
}

/// Waits until `check` holds for the zone's records; the error shows the zone and the log.
async fn wait_zone<F>(
    dns: &dyn DnsProvider,
    torhaus: &Torhaus,
    what: &str,
    check: F,
) -> anyhow::Result<Vec<RecordSet>>
where
    F: Fn(&[RecordSet]) -> bool,
{
    let result = wait_for(what, DEADLINE, || async {
        zone_records(dns)
            .await
            .ok()
            .filter(|records| check(records))
    })
    .await;
    match result {
        Ok(records) => Ok(records),
        Err(error) => {
            let zone = zone_records(dns).await.map(|r| format!("{r:#?}"));
            Err(error).with_context(|| {
                format!(
                    "zone now: {}\ntorhaus log:\n{}",
                    zone.unwrap_or_else(|e| e.to_string()),
                    torhaus.log_tail()
                )
            })
        }
    }
}

/// Writes an A set directly at the server, as someone else would. PowerDNS's sqlite3 backend
/// answers 500 while torhaus writes at the same moment (the database is locked): such a
/// retryable error is retried until the deadline.
async fn write_a(
    dns: &dyn DnsProvider,
    zone: &torhaus_dns::Zone,
    name: &str,
    address: &str,
) -> anyhow::Result<()> {
    let set = RecordSet {
        name: name.to_owned(),
        rtype: RecordType::A,
        ttl: 60,
        values: vec![address.to_owned()],
    };
    let started = std::time::Instant::now();
    loop {
        match dns.upsert_rrset(zone, &set).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("writing {name}")),
        }
    }
}

fn markers(records: &[RecordSet], host: &str) -> Vec<String> {
    values(records, &format!("_torhaus-owner.{host}"), RecordType::Txt)
}

const OWNED: [&str; 2] = [
    "heritage=torhaus,owner=e2e,type=A",
    "heritage=torhaus,owner=e2e,type=AAAA",
];

/// The whole story against one DNS server: `dns` reads (and, for the foreign records and the
/// drift, writes) the zone directly.
async fn records_follow_routes(
    dns: Arc<dyn DnsProvider>,
    provider_yaml: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let app = format!("app.{ZONE}");
    let blog = format!("blog.{ZONE}");
    // `foreign.<zone>` A 192.0.2.99 is in the rig's zone file: someone else's record at a
    // name a route will serve. `legacy.<zone>` is someone else's record elsewhere in the zone.
    let foreign = format!("foreign.{ZONE}");
    let legacy = format!("legacy.{ZONE}");
    let zone = dns.find_zone(ZONE).await?;
    write_a(dns.as_ref(), &zone, &legacy, "198.51.100.5").await?;
    let before = zone_records(dns.as_ref()).await?;
    let foreign_before = values(&before, &foreign, RecordType::A);
    ensure!(!foreign_before.is_empty(), "the rig's zone lacks {foreign}");

    let config = TempDir::new("dns-records-config")?;
    write_file(
        config.path(),
        "base.yaml",
        &base_manifests(provider_yaml, secret),
    )?;
    write_file(config.path(), "app.yaml", &route("app", &app))?;
    write_file(config.path(), "foreign.yaml", &route("foreign", &foreign))?;
    let torhaus = start_torhaus(config.path()).await?;

    // The route's hostname gets the gateway addresses and its two markers.
    let records = wait_zone(dns.as_ref(), &torhaus, "app's records", |r| {
        values(r, &app, RecordType::A) == ["192.0.2.10"]
            && values(r, &app, RecordType::Aaaa) == ["2001:db8::10"]
            && markers(r, &app) == OWNED
    })
    .await?;
    ensure!(
        records
            .iter()
            .filter(|s| s.name == app)
            .all(|s| s.ttl == 60),
        "app's records must carry spec.ttl: {records:?}"
    );
    // Foreign records: untouched, unmarked, and no AAAA slipped in beside the foreign A.
    ensure!(values(&records, &foreign, RecordType::A) == foreign_before);
    ensure!(values(&records, &foreign, RecordType::Aaaa).is_empty());
    ensure!(markers(&records, &foreign).is_empty());
    ensure!(values(&records, &legacy, RecordType::A) == ["198.51.100.5"]);

    // The conflict is visible: metrics, /debug/config and the status page.
    let admin = torhaus.admin_addr()?;
    let metrics = wait_for("the conflicts gauge", DEADLINE, || async {
        admin_get(admin, "/metrics").await.ok().filter(|m| {
            m.contains(&format!(
                "torhaus_dns_records_conflicts{{publisher=\"{PUBLISHER}\"}} 2"
            ))
        })
    })
    .await
    .with_context(|| torhaus.log_tail())?;
    for series in [
        format!("torhaus_dns_records_managed{{publisher=\"{PUBLISHER}\"}} 2"),
        format!("torhaus_dns_records_syncs_total{{publisher=\"{PUBLISHER}\",result=\"success\"}}"),
    ] {
        ensure!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    // The status follows the metric within moments (another sync may be under way).
    let publisher = wait_for(
        "the publisher synced in /debug/config",
        DEADLINE,
        || async {
            let body = admin_get(admin, "/debug/config").await.ok()?;
            let debug: serde_json::Value = serde_json::from_str(&body).ok()?;
            let publisher = debug["dnsPublishers"][0].clone();
            (publisher["state"] == "synced").then_some(publisher)
        },
    )
    .await
    .with_context(|| torhaus.log_tail())?;
    ensure!(publisher["publisher"] == PUBLISHER, "{publisher:#}");
    ensure!(publisher["owner"] == "e2e", "{publisher:#}");
    ensure!(
        publisher["records"][0]["hostname"] == app.as_str()
            && publisher["records"][0]["addresses"]
                == serde_json::json!(["192.0.2.10", "2001:db8::10"]),
        "{publisher:#}"
    );
    let conflicts = publisher["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        conflicts.len() == 2 && conflicts.iter().all(|c| c["name"] == foreign.as_str()),
        "{publisher:#}"
    );
    ensure!(
        conflicts[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("an A record not owned by e2e")),
        "{publisher:#}"
    );
    let page = admin_get(admin, "/").await?;
    ensure!(
        page.contains("id=\"dns-records\""),
        "no DNS section on the status page"
    );
    ensure!(
        page.contains(&foreign),
        "the conflict is not on the status page"
    );
    ensure!(
        torhaus
            .log_tail()
            .contains("conflicts with a record torhaus does not own"),
        "the conflict is not logged:\n{}",
        torhaus.log_tail()
    );

    // A second route: its record appears, the first stays.
    write_file(config.path(), "blog.yaml", &route("blog", &blog))?;
    wait_zone(dns.as_ref(), &torhaus, "blog's records", |r| {
        values(r, &blog, RecordType::A) == ["192.0.2.10"]
            && markers(r, &blog) == OWNED
            && values(r, &app, RecordType::A) == ["192.0.2.10"]
    })
    .await?;

    // Drift: the A set is changed behind torhaus's back; the periodic resync repairs it.
    write_a(dns.as_ref(), &zone, &blog, "203.0.113.66").await?;
    wait_zone(dns.as_ref(), &torhaus, "blog's A repaired", |r| {
        values(r, &blog, RecordType::A) == ["192.0.2.10"]
    })
    .await?;

    // The first route's file goes: its records and markers go; everything else stays.
    std::fs::remove_file(config.path().join("app.yaml"))?;
    let records = wait_zone(dns.as_ref(), &torhaus, "app's records removed", |r| {
        values(r, &app, RecordType::A).is_empty()
            && values(r, &app, RecordType::Aaaa).is_empty()
            && markers(r, &app).is_empty()
    })
    .await?;
    ensure!(values(&records, &blog, RecordType::A) == ["192.0.2.10"]);
    ensure!(values(&records, &foreign, RecordType::A) == foreign_before);
    ensure!(markers(&records, &foreign).is_empty());
    ensure!(values(&records, &legacy, RecordType::A) == ["198.51.100.5"]);

    // The route to the foreign name goes too: the foreign record is still not deleted.
    std::fs::remove_file(config.path().join("foreign.yaml"))?;
    wait_for("no conflicts left", DEADLINE, || async {
        admin_get(admin, "/metrics").await.ok().filter(|m| {
            m.contains(&format!(
                "torhaus_dns_records_conflicts{{publisher=\"{PUBLISHER}\"}} 0"
            ))
        })
    })
    .await
    .with_context(|| torhaus.log_tail())?;
    // Read like every other wait: PowerDNS's sqlite3 may be busy with a resync's write.
    let records = wait_zone(dns.as_ref(), &torhaus, "the zone", |_| true).await?;
    ensure!(values(&records, &foreign, RecordType::A) == foreign_before);
    ensure!(values(&records, &legacy, RecordType::A) == ["198.51.100.5"]);
    Ok(())
}

fn knot_client(knot: &Knot) -> anyhow::Result<Arc<dyn DnsProvider>> {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.decode(TSIG_SECRET_B64)?;
    Ok(Arc::new(Rfc2136Provider::new(
        knot.addr,
        None,
        Some(TsigKey {
            name: TSIG_KEY_NAME.to_owned(),
            algorithm: TsigAlgorithmName::HmacSha256,
            secret,
        }),
        Duration::from_secs(3),
    )?))
}

#[tokio::test]
async fn knot_records_follow_routes_and_foreign_records_stay() -> anyhow::Result<()> {
    let Some(knotd) = knotd_path() else {
        eprintln!("SKIPPED: knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(());
    };
    let knot = Knot::start(&knotd)?;
    let provider = format!(
        "    rfc2136:\n      nameserver: {}\n      tsigKeyName: {TSIG_KEY_NAME}\n      \
         tsigSecretRef: {{name: dns-credentials, key: key}}\n      timeoutSeconds: 2",
        knot.addr
    );
    records_follow_routes(knot_client(&knot)?, &provider, TSIG_SECRET_B64).await
}

#[tokio::test]
async fn powerdns_records_follow_routes_and_foreign_records_stay() -> anyhow::Result<()> {
    let Some(pdns_server) = pdns_server_path() else {
        eprintln!("SKIPPED: pdns_server is not installed (run scripts/install-deps.sh test)");
        return Ok(());
    };
    let pdns = PowerDns::start(&pdns_server)?;
    let provider = format!(
        "    powerdns:\n      url: {}\n      apiKeySecretRef: {{name: dns-credentials, key: key}}",
        pdns.api_url
    );
    let client: Arc<dyn DnsProvider> = Arc::new(torhaus_dns::powerdns::PowerDnsProvider::new(
        &pdns.api_url,
        "localhost",
        PDNS_API_KEY,
    )?);
    records_follow_routes(client, &provider, PDNS_API_KEY).await
}

/// The state of the publisher in a process's `/debug/config`.
async fn publisher_state(torhaus: &Torhaus) -> Option<String> {
    let body = admin_get(torhaus.admin_addr().ok()?, "/debug/config")
        .await
        .ok()?;
    let debug: serde_json::Value = serde_json::from_str(&body).ok()?;
    debug["dnsPublishers"][0]["state"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn two_processes_sharing_a_store_write_from_one_and_hand_over() -> anyhow::Result<()> {
    let Some(knotd) = knotd_path() else {
        eprintln!("SKIPPED: knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(());
    };
    let knot = Knot::start(&knotd)?;
    let dns = knot_client(&knot)?;
    let provider = format!(
        "    rfc2136:\n      nameserver: {}\n      tsigKeyName: {TSIG_KEY_NAME}\n      \
         tsigSecretRef: {{name: dns-credentials, key: key}}",
        knot.addr
    );
    let config = TempDir::new("dns-records-shared")?;
    let store = TempDir::new("dns-records-store")?;
    write_file(
        config.path(),
        "base.yaml",
        &base_manifests(&provider, TSIG_SECRET_B64),
    )?;
    let app = format!("app.{ZONE}");
    write_file(config.path(), "app.yaml", &route("app", &app))?;
    let shared = [
        "--acme-store".to_owned(),
        store.path().display().to_string(),
    ];
    let first = start_torhaus_with(config.path(), &shared).await?;
    wait_zone(dns.as_ref(), &first, "app's records", |r| {
        values(r, &app, RecordType::A) == ["192.0.2.10"]
    })
    .await?;
    let second = start_torhaus_with(config.path(), &shared).await?;
    wait_for("the second process in standby", DEADLINE, || async {
        (publisher_state(&second).await.as_deref() == Some("standby")).then_some(())
    })
    .await
    .with_context(|| second.log_tail())?;
    wait_for("the first process synced", DEADLINE, || async {
        (publisher_state(&first).await.as_deref() == Some("synced")).then_some(())
    })
    .await
    .with_context(|| first.log_tail())?;

    // The writer exits; the other takes the lock and publishes a new route.
    drop(first);
    let blog = format!("blog.{ZONE}");
    write_file(config.path(), "blog.yaml", &route("blog", &blog))?;
    wait_zone(
        dns.as_ref(),
        &second,
        "blog's records from the second process",
        |r| {
            values(r, &blog, RecordType::A) == ["192.0.2.10"]
                && values(r, &app, RecordType::A) == ["192.0.2.10"]
        },
    )
    .await?;
    // The zone can show the A set before the sync has written the rest and reported.
    wait_for("the second process synced", DEADLINE, || async {
        (publisher_state(&second).await.as_deref() == Some("synced")).then_some(())
    })
    .await
    .with_context(|| second.log_tail())?;
    Ok(())
}

#[tokio::test]
async fn check_prints_the_publisher_and_its_hostnames() -> anyhow::Result<()> {
    let config = TempDir::new("dns-records-check")?;
    let provider = "    rfc2136:\n      nameserver: 127.0.0.1:5353\n      tsigKeyName: k\n      \
                    tsigSecretRef: {name: dns-credentials, key: key}";
    write_file(
        config.path(),
        "base.yaml",
        &base_manifests(provider, TSIG_SECRET_B64),
    )?;
    write_file(
        config.path(),
        "app.yaml",
        &route("app", &format!("app.{ZONE}")),
    )?;
    write_file(
        config.path(),
        "far.yaml",
        &route("far", "far.elsewhere.test"),
    )?;
    let output = std::process::Command::new(torhaus_bin()?)
        .args(["check", "--config"])
        .arg(config.path())
        .args(["--gateway-address", "192.0.2.10"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "check failed:\n{stdout}");
    ensure!(
        stdout.contains(&format!(
            "dns publisher {PUBLISHER}: rfc2136 127.0.0.1:5353 as owner \"e2e\", ttl 60s, 1 hostname(s), zones [{ZONE}]"
        )),
        "{stdout}"
    );
    ensure!(
        stdout.contains(&format!("  app.{ZONE} -> 192.0.2.10")),
        "{stdout}"
    );
    ensure!(
        stdout.contains("outside spec.zones, not published: far.elsewhere.test"),
        "{stdout}"
    );
    // Without an address to publish the publisher is rejected, naming the field.
    let output = std::process::Command::new(torhaus_bin()?)
        .args(["check", "--config"])
        .arg(config.path())
        .env_remove("TORHAUS_GATEWAY_ADDRESSES")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(!output.status.success(), "check must fail:\n{stdout}");
    ensure!(
        stdout.contains("spec.addresses: no address to publish"),
        "{stdout}"
    );
    Ok(())
}
