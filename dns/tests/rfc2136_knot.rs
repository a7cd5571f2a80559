//! RFC 2136/TSIG provider against a real knotd (the rig in torhaus-tests). Skips, saying so,
//! only when knotd is not installed; `scripts/install-deps.sh test` installs it.

use std::time::Duration;

use base64::Engine as _;
use torhaus_dns::rfc2136::{Rfc2136Provider, TsigAlgorithmName, TsigKey};
use torhaus_dns::{DnsError, DnsProvider, RecordSet, RecordType};
use torhaus_tests::dns_rig::{Knot, TSIG_KEY_NAME, TSIG_SECRET_B64, ZONE, knotd_path};

fn rig() -> anyhow::Result<Option<Knot>> {
    match knotd_path() {
        Some(path) => Ok(Some(Knot::start(&path)?)),
        None => {
            eprintln!("SKIPPED: knotd is not installed (run scripts/install-deps.sh test)");
            Ok(None)
        }
    }
}

fn provider(knot: &Knot, secret: &[u8]) -> anyhow::Result<Rfc2136Provider> {
    Ok(Rfc2136Provider::new(
        knot.addr,
        None,
        Some(TsigKey {
            name: TSIG_KEY_NAME.to_owned(),
            algorithm: TsigAlgorithmName::HmacSha256,
            secret: secret.to_vec(),
        }),
        Duration::from_secs(3),
    )?)
}

fn good_secret() -> anyhow::Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::STANDARD.decode(TSIG_SECRET_B64)?)
}

async fn rrset(
    p: &Rfc2136Provider,
    name: &str,
    rtype: RecordType,
) -> anyhow::Result<Option<RecordSet>> {
    let zone = p.find_zone(name).await?;
    Ok(p.list_records(&zone)
        .await?
        .into_iter()
        .find(|s| s.name == name && s.rtype == rtype))
}

fn sorted(set: Option<RecordSet>) -> Vec<String> {
    let mut values = set.map(|s| s.values).unwrap_or_default();
    values.sort();
    values
}

#[tokio::test]
async fn zone_is_discovered_by_soa() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = provider(&knot, &good_secret()?)?;
    let zone = p.find_zone("_acme-challenge.app.Example.test.").await?;
    assert_eq!(zone.name, ZONE);
    let missing = p.find_zone("app.other.invalid").await;
    assert!(
        matches!(missing, Err(DnsError::ZoneNotFound { .. })),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn txt_values_coexist_and_are_deleted_by_rdata() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = provider(&knot, &good_secret()?)?;
    let name = format!("_acme-challenge.{ZONE}");
    let zone = p.find_zone(&name).await?;
    // Apex and wildcard challenges for one name, presented at the same time.
    let (a, b) = tokio::join!(
        p.add_txt(&zone, &name, "apex-value", 60),
        p.add_txt(&zone, &name, "wildcard-value", 60)
    );
    a?;
    b?;
    // Adding an existing value again is harmless.
    p.add_txt(&zone, &name, "apex-value", 60).await?;
    assert_eq!(
        sorted(rrset(&p, &name, RecordType::Txt).await?),
        ["apex-value", "wildcard-value"]
    );
    p.remove_txt(&zone, &name, "apex-value").await?;
    assert_eq!(
        sorted(rrset(&p, &name, RecordType::Txt).await?),
        ["wildcard-value"]
    );
    // Removing an absent value succeeds and changes nothing.
    p.remove_txt(&zone, &name, "never-added").await?;
    p.remove_txt(&zone, &name, "wildcard-value").await?;
    assert!(rrset(&p, &name, RecordType::Txt).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn long_txt_values_round_trip() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = provider(&knot, &good_secret()?)?;
    let name = format!("long.{ZONE}");
    let zone = p.find_zone(&name).await?;
    let value = "v".repeat(400);
    p.add_txt(&zone, &name, &value, 60).await?;
    assert_eq!(
        sorted(rrset(&p, &name, RecordType::Txt).await?),
        [value.as_str()]
    );
    p.remove_txt(&zone, &name, &value).await?;
    assert!(rrset(&p, &name, RecordType::Txt).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn address_sets_are_replaced_and_deleted() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = provider(&knot, &good_secret()?)?;
    let name = format!("app.{ZONE}");
    let zone = p.find_zone(&name).await?;
    let set = |rtype: RecordType, values: &[&str]| RecordSet {
        name: name.clone(),
        rtype,
        ttl: 120,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    p.upsert_rrset(&zone, &set(RecordType::A, &["192.0.2.1", "192.0.2.2"]))
        .await?;
    p.upsert_rrset(&zone, &set(RecordType::Aaaa, &["2001:db8::1"]))
        .await?;
    assert_eq!(
        sorted(rrset(&p, &name, RecordType::A).await?),
        ["192.0.2.1", "192.0.2.2"]
    );
    // A second upsert replaces the whole set.
    p.upsert_rrset(&zone, &set(RecordType::A, &["192.0.2.3"]))
        .await?;
    let a = rrset(&p, &name, RecordType::A).await?;
    assert_eq!(a.as_ref().map(|s| s.ttl), Some(120));
    assert_eq!(sorted(a), ["192.0.2.3"]);
    assert_eq!(
        sorted(rrset(&p, &name, RecordType::Aaaa).await?),
        ["2001:db8::1"]
    );
    p.delete_rrset(&zone, &name, &RecordType::A).await?;
    assert!(rrset(&p, &name, RecordType::A).await?.is_none());
    assert!(rrset(&p, &name, RecordType::Aaaa).await?.is_some());
    // Names outside the zone and bad values are refused before anything is sent.
    let outside = p
        .upsert_rrset(
            &zone,
            &RecordSet {
                name: "x.other.test".into(),
                ..set(RecordType::A, &["192.0.2.1"])
            },
        )
        .await;
    assert!(
        matches!(outside, Err(DnsError::Rejected { .. })),
        "{outside:?}"
    );
    let bad = p
        .upsert_rrset(&zone, &set(RecordType::A, &["not-an-ip"]))
        .await;
    assert!(matches!(bad, Err(DnsError::Rejected { .. })), "{bad:?}");
    // The record the zone file brought is untouched.
    assert_eq!(
        sorted(rrset(&p, &format!("foreign.{ZONE}"), RecordType::A).await?),
        ["192.0.2.99"]
    );
    Ok(())
}

#[tokio::test]
async fn wrong_tsig_key_is_a_clear_permanent_error() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let good = provider(&knot, &good_secret()?)?;
    let bad = provider(&knot, b"this-is-not-the-right-secret-at-all")?;
    let name = format!("_acme-challenge.wrong.{ZONE}");
    let zone = good.find_zone(&name).await?;
    let error = bad
        .add_txt(&zone, &name, "value", 60)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("update with a wrong key succeeded"))?;
    assert!(matches!(error, DnsError::Unauthorized { .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("TSIG"), "{error}");
    assert!(rrset(&good, &name, RecordType::Txt).await?.is_none());
    Ok(())
}

fn lookup_for(knot: &Knot) -> torhaus_dns::Lookup {
    // The rig's NS record points at 127.0.0.1; its port is the rig's, not 53.
    torhaus_dns::Lookup::new(torhaus_dns::LookupConfig {
        resolvers: vec![knot.addr],
        authoritative_port: knot.addr.port(),
        timeout: Duration::from_secs(2),
    })
}

#[tokio::test]
async fn propagation_check_sees_the_value_on_every_authoritative_server() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = provider(&knot, &good_secret()?)?;
    let lookup = lookup_for(&knot);
    let name = format!("_acme-challenge.prop.{ZONE}");
    assert_eq!(lookup.zone_of(&name).await?, ZONE);
    assert_eq!(lookup.authoritative_servers(ZONE).await?, [knot.addr]);
    let zone = p.find_zone(&name).await?;
    p.add_txt(&zone, &name, "token-1", 60).await?;
    lookup
        .wait_for_txt(
            &name,
            "token-1",
            Duration::from_secs(10),
            Duration::from_millis(50),
        )
        .await?;
    // A value that never appears: the deadline passes and the pending server is named.
    let missing = lookup
        .wait_for_txt(
            &name,
            "absent",
            Duration::from_millis(300),
            Duration::from_millis(50),
        )
        .await;
    match missing {
        Err(DnsError::PropagationTimeout { pending, .. }) => {
            assert_eq!(pending, [knot.addr.to_string()]);
        }
        other => anyhow::bail!("expected a propagation timeout, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn challenge_cname_delegation_is_followed() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let lookup = lookup_for(&knot);
    // The rig's zone delegates this challenge name with a CNAME, as acme-dns setups do.
    let target = lookup
        .follow_cname(&format!("_acme-challenge.delegated.{ZONE}"))
        .await?;
    assert_eq!(target, format!("_acme-challenge.target.acme-dns.{ZONE}"));
    // A name without CNAME is its own target.
    let plain = format!("_acme-challenge.plain.{ZONE}");
    assert_eq!(lookup.follow_cname(&plain).await?, plain);
    Ok(())
}

#[tokio::test]
async fn dns01_apex_and_wildcard_through_a_cname_delegation() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let p = std::sync::Arc::new(provider(&knot, &good_secret()?)?);
    let dns01 = torhaus_dns::Dns01::new(p.clone(), lookup_for(&knot), 60);
    let apex = dns01.present(&format!("delegated.{ZONE}"), "apex").await?;
    let wildcard = dns01
        .present(&format!("*.delegated.{ZONE}"), "wild")
        .await?;
    let target = format!("_acme-challenge.target.acme-dns.{ZONE}");
    assert_eq!(apex.name, target);
    assert_eq!(wildcard.name, target);
    for presented in [&apex, &wildcard] {
        dns01
            .wait_propagated(
                presented,
                Duration::from_secs(10),
                Duration::from_millis(50),
            )
            .await?;
    }
    assert_eq!(
        sorted(rrset(&p, &target, RecordType::Txt).await?),
        ["apex", "wild"]
    );
    dns01.cleanup(&apex).await?;
    assert_eq!(sorted(rrset(&p, &target, RecordType::Txt).await?), ["wild"]);
    dns01.cleanup(&wildcard).await?;
    assert!(rrset(&p, &target, RecordType::Txt).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn records_sync_creates_and_removes_owned_records_only() -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    let Some(knot) = rig()? else { return Ok(()) };
    let p = std::sync::Arc::new(provider(&knot, &good_secret()?)?);
    let sync = torhaus_dns::records::RecordsSync::new(p.clone(), "cluster-1", 60, Vec::new());
    let app = format!("app.{ZONE}");
    let foreign = format!("foreign.{ZONE}");
    let ip = |s: &str| -> anyhow::Result<IpAddr> { Ok(s.parse()?) };
    let desired: BTreeMap<String, Vec<IpAddr>> = [
        (app.clone(), vec![ip("192.0.2.10")?, ip("2001:db8::10")?]),
        // The zone file's record: torhaus must not take it over.
        (foreign.clone(), vec![ip("192.0.2.1")?]),
    ]
    .into();
    let report = sync.sync(&desired).await?;
    assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
    assert_eq!(report.conflicts[0].name, foreign);
    assert_eq!(
        sorted(rrset(&p, &app, RecordType::A).await?),
        ["192.0.2.10"]
    );
    assert_eq!(
        sorted(rrset(&p, &app, RecordType::Aaaa).await?),
        ["2001:db8::10"]
    );
    let marker = format!("_torhaus-owner.{app}");
    assert_eq!(
        sorted(rrset(&p, &marker, RecordType::Txt).await?),
        [
            "heritage=torhaus,owner=cluster-1,type=A",
            "heritage=torhaus,owner=cluster-1,type=AAAA"
        ]
    );
    assert_eq!(
        sorted(rrset(&p, &foreign, RecordType::A).await?),
        ["192.0.2.99"]
    );
    // A second sync with nothing changed plans nothing.
    assert_eq!(sync.sync(&desired).await?.changes, 0);
    // The route goes away: its records and markers go; the foreign record stays.
    let report = sync.sync(&BTreeMap::new()).await?;
    assert_eq!(report.changes, 4);
    assert!(rrset(&p, &app, RecordType::A).await?.is_none());
    assert!(rrset(&p, &app, RecordType::Aaaa).await?.is_none());
    assert!(rrset(&p, &marker, RecordType::Txt).await?.is_none());
    assert_eq!(
        sorted(rrset(&p, &foreign, RecordType::A).await?),
        ["192.0.2.99"]
    );
    Ok(())
}
