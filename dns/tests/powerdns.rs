//! PowerDNS HTTP API provider against a real pdns_server (sqlite3 backend) from the rig. Skips,
//! saying so, only when pdns_server is not installed.

use std::time::Duration;

use torhaus_dns::powerdns::PowerDnsProvider;
use torhaus_dns::{DnsError, DnsProvider, Lookup, LookupConfig, RecordSet, RecordType};
use torhaus_tests::dns_rig::{PDNS_API_KEY, PowerDns, ZONE, pdns_server_path};

fn rig() -> anyhow::Result<Option<PowerDns>> {
    match pdns_server_path() {
        Some(path) => Ok(Some(PowerDns::start(&path)?)),
        None => {
            eprintln!("SKIPPED: pdns_server is not installed (run scripts/install-deps.sh test)");
            Ok(None)
        }
    }
}

async fn values(
    p: &PowerDnsProvider,
    name: &str,
    rtype: RecordType,
) -> anyhow::Result<Vec<String>> {
    let zone = p.find_zone(name).await?;
    let mut values = p
        .list_records(&zone)
        .await?
        .into_iter()
        .find(|s| s.name == name && s.rtype == rtype)
        .map(|s| s.values)
        .unwrap_or_default();
    values.sort();
    Ok(values)
}

#[tokio::test]
async fn txt_append_and_delete_by_value_keep_other_values() -> anyhow::Result<()> {
    let Some(pdns) = rig()? else { return Ok(()) };
    let p = PowerDnsProvider::new(&pdns.api_url, "localhost", PDNS_API_KEY)?;
    let name = format!("_acme-challenge.app.{ZONE}");
    let zone = p.find_zone(&name).await?;
    assert_eq!(zone.name, ZONE);
    let (a, b) = tokio::join!(
        p.add_txt(&zone, &name, "apex", 60),
        p.add_txt(&zone, &name, "wild \"quoted\"", 60)
    );
    a?;
    b?;
    assert_eq!(
        values(&p, &name, RecordType::Txt).await?,
        ["apex", "wild \"quoted\""]
    );
    // The propagation check sees it on the server itself.
    let lookup = Lookup::new(LookupConfig {
        resolvers: vec![pdns.addr],
        authoritative_port: pdns.addr.port(),
        timeout: Duration::from_secs(2),
    });
    lookup
        .wait_for_txt(
            &name,
            "apex",
            Duration::from_secs(10),
            Duration::from_millis(50),
        )
        .await?;
    p.remove_txt(&zone, &name, "apex").await?;
    assert_eq!(
        values(&p, &name, RecordType::Txt).await?,
        ["wild \"quoted\""]
    );
    p.remove_txt(&zone, &name, "wild \"quoted\"").await?;
    assert!(values(&p, &name, RecordType::Txt).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn address_sets_replace_and_delete() -> anyhow::Result<()> {
    let Some(pdns) = rig()? else { return Ok(()) };
    let p = PowerDnsProvider::new(&pdns.api_url, "localhost", PDNS_API_KEY)?;
    let name = format!("app.{ZONE}");
    let zone = p.find_zone(&name).await?;
    let set = |values: &[&str]| RecordSet {
        name: name.clone(),
        rtype: RecordType::A,
        ttl: 120,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    p.upsert_rrset(&zone, &set(&["192.0.2.1", "192.0.2.2"]))
        .await?;
    assert_eq!(
        values(&p, &name, RecordType::A).await?,
        ["192.0.2.1", "192.0.2.2"]
    );
    p.upsert_rrset(&zone, &set(&["192.0.2.3"])).await?;
    assert_eq!(values(&p, &name, RecordType::A).await?, ["192.0.2.3"]);
    p.delete_rrset(&zone, &name, &RecordType::A).await?;
    assert!(values(&p, &name, RecordType::A).await?.is_empty());
    assert_eq!(
        values(&p, &format!("foreign.{ZONE}"), RecordType::A).await?,
        ["192.0.2.99"]
    );
    Ok(())
}

#[tokio::test]
async fn wrong_api_key_is_a_clear_permanent_error() -> anyhow::Result<()> {
    let Some(pdns) = rig()? else { return Ok(()) };
    let p = PowerDnsProvider::new(&pdns.api_url, "localhost", "wrong-key")?;
    let error = p.find_zone(&format!("app.{ZONE}")).await.err();
    assert!(
        matches!(error, Some(DnsError::Unauthorized { .. })),
        "{error:?}"
    );
    assert!(error.is_some_and(|e| !e.is_retryable()));
    Ok(())
}

#[tokio::test]
async fn records_sync_leaves_foreign_records_alone() -> anyhow::Result<()> {
    let Some(pdns) = rig()? else { return Ok(()) };
    let p = std::sync::Arc::new(PowerDnsProvider::new(
        &pdns.api_url,
        "localhost",
        PDNS_API_KEY,
    )?);
    let sync = torhaus_dns::records::RecordsSync::new(p.clone(), "cluster-1", 60, Vec::new());
    let app = format!("app.{ZONE}");
    let foreign = format!("foreign.{ZONE}");
    let desired = [
        (app.clone(), vec!["192.0.2.10".parse()?]),
        (foreign.clone(), vec!["192.0.2.1".parse()?]),
    ]
    .into();
    let report = sync.sync(&desired).await?;
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(values(&p, &app, RecordType::A).await?, ["192.0.2.10"]);
    sync.sync(&Default::default()).await?;
    assert!(values(&p, &app, RecordType::A).await?.is_empty());
    assert!(
        values(&p, &format!("_torhaus-owner.{app}"), RecordType::Txt)
            .await?
            .is_empty()
    );
    assert_eq!(values(&p, &foreign, RecordType::A).await?, ["192.0.2.99"]);
    Ok(())
}
