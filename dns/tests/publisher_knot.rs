//! The `DNSPublisher` sync loop against a real knotd: it writes only while it may (the lock or
//! Lease), follows changes of the desired hostnames, leaves the records of a deleted publisher, stops loudly on rejected credentials and
//! retries at once when they are fixed, writes nothing for an invalid publisher, and keeps its
//! last good provider when a new configuration's Secret is missing. Skips, saying so, only
//! when knotd is not installed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::sync::watch;
use torhaus_dns::config::Rfc2136Config;
use torhaus_dns::publisher::{
    Publisher, PublisherConfig, PublisherStatus, SyncEvents, SyncSettings, SyncState,
    spawn_records_sync,
};
use torhaus_dns::rfc2136::{Rfc2136Provider, TsigAlgorithmName, TsigKey};
use torhaus_dns::{DnsProvider, ProviderConfig, RecordType, SecretKeyRef, SecretMaterial};
use torhaus_tests::dns_rig::{Knot, TSIG_KEY_NAME, TSIG_SECRET_B64, ZONE, knotd_path};

const DEADLINE: Duration = Duration::from_secs(20);
const ID: &str = "edge/public";

fn rig() -> anyhow::Result<Option<Knot>> {
    match knotd_path() {
        Some(path) => Ok(Some(Knot::start(&path)?)),
        None => {
            eprintln!("SKIPPED: knotd is not installed (run scripts/install-deps.sh test)");
            Ok(None)
        }
    }
}

fn tsig_ref() -> SecretKeyRef {
    SecretKeyRef {
        name: "tsig".to_owned(),
        key: "secret".to_owned(),
    }
}

/// The publisher's settings with `secret` (base64 text) as the TSIG Secret, or none.
fn config(knot: &Knot, secret: Option<&str>) -> PublisherConfig {
    let mut secrets = SecretMaterial::default();
    if let Some(secret) = secret {
        secrets.insert(&tsig_ref(), secret.as_bytes().to_vec());
    }
    PublisherConfig {
        owner: "loop".to_owned(),
        ttl: 60,
        zones: vec![ZONE.to_owned()],
        provider: ProviderConfig {
            rfc2136: Some(Rfc2136Config {
                nameserver: knot.addr.to_string(),
                zone: None,
                tsig_key_name: TSIG_KEY_NAME.to_owned(),
                tsig_algorithm: TsigAlgorithmName::HmacSha256,
                tsig_secret_ref: tsig_ref(),
                timeout_seconds: Some(2),
            }),
            ..ProviderConfig::default()
        },
        secrets,
    }
}

fn publisher(config: Result<PublisherConfig, String>, hosts: &[&str]) -> Publisher {
    let address: IpAddr = IpAddr::from([192, 0, 2, 10]);
    Publisher {
        id: ID.to_owned(),
        config,
        desired: hosts
            .iter()
            .map(|h| (format!("{h}.{ZONE}"), vec![address]))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A client of its own, reading knotd directly.
fn reader(knot: &Knot) -> anyhow::Result<Rfc2136Provider> {
    Ok(Rfc2136Provider::new(
        knot.addr,
        None,
        Some(TsigKey {
            name: TSIG_KEY_NAME.to_owned(),
            algorithm: TsigAlgorithmName::HmacSha256,
            secret: base64::engine::general_purpose::STANDARD.decode(TSIG_SECRET_B64)?,
        }),
        Duration::from_secs(3),
    )?)
}

async fn a_values(dns: &Rfc2136Provider, host: &str) -> anyhow::Result<Vec<String>> {
    let zone = dns.find_zone(ZONE).await?;
    let name = format!("{host}.{ZONE}");
    Ok(dns
        .list_records(&zone)
        .await?
        .into_iter()
        .filter(|s| s.name == name && s.rtype == RecordType::A)
        .flat_map(|s| s.values)
        .collect())
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl SyncEvents for Recorder {
    fn synced(&self, _: &str, result: &str, _: usize, _: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(result.to_owned());
    }

    fn removed(&self, _: &str) {}
}

impl Recorder {
    fn count(&self, result: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| *r == result)
            .count()
    }
}

struct Running {
    publishers: watch::Sender<Arc<Vec<Publisher>>>,
    may_write: watch::Sender<bool>,
    status: watch::Receiver<Arc<Vec<PublisherStatus>>>,
    events: Arc<Recorder>,
}

fn start(first: Publisher, may_write: bool) -> Running {
    let (publishers, receiver) = watch::channel(Arc::new(vec![first]));
    let (may_write, may_write_receiver) = watch::channel(may_write);
    let events = Arc::new(Recorder::default());
    let status = spawn_records_sync(
        receiver,
        may_write_receiver,
        SyncSettings {
            debounce: Duration::from_millis(50),
            // Long: every write in these tests must come from a change, not a resync.
            resync: Duration::from_secs(3600),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            permanent_retry: Duration::from_secs(3600),
        },
        Arc::clone(&events) as Arc<dyn SyncEvents>,
    );
    Running {
        publishers,
        may_write,
        status,
        events,
    }
}

impl Running {
    async fn wait_status(
        &mut self,
        what: &str,
        check: impl Fn(&PublisherStatus) -> bool,
    ) -> anyhow::Result<PublisherStatus> {
        let waited = tokio::time::timeout(
            DEADLINE,
            self.status
                .wait_for(|all| all.iter().any(|s| s.id == ID && check(s))),
        )
        .await
        .map(|found| found.map(|all| Arc::clone(&all)));
        let all = match waited {
            Ok(found) => found?,
            Err(_) => anyhow::bail!(
                "timed out waiting for {what}; status: {:?}",
                self.status.borrow()
            ),
        };
        all.iter()
            .find(|s| s.id == ID)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no status for {ID}"))
    }

    fn send(&self, publisher: Publisher) {
        self.publishers.send_replace(Arc::new(vec![publisher]));
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[tokio::test]
async fn writes_only_while_leading_and_follows_changes() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let dns = reader(&knot)?;
    let good = config(&knot, Some(TSIG_SECRET_B64));
    let mut running = start(publisher(Ok(good.clone()), &["app"]), false);
    running
        .wait_status("standby", |s| s.state == SyncState::Standby)
        .await?;
    // Standby was reached without a sync: nothing written.
    assert!(a_values(&dns, "app").await?.is_empty());
    assert_eq!(running.events.count("success"), 0);

    running.may_write.send_replace(true);
    let status = running
        .wait_status("synced", |s| s.state == SyncState::Synced)
        .await?;
    assert_eq!(status.managed, 1);
    assert_eq!(
        status.records.keys().collect::<Vec<_>>(),
        [&format!("app.{ZONE}")]
    );
    assert_eq!(a_values(&dns, "app").await?, ["192.0.2.10"]);

    running.send(publisher(Ok(good), &["blog"]));
    running
        .wait_status("blog published", |s| {
            s.records.keys().eq([&format!("blog.{ZONE}")]) && s.state == SyncState::Synced
        })
        .await?;
    assert_eq!(a_values(&dns, "blog").await?, ["192.0.2.10"]);
    assert!(a_values(&dns, "app").await?.is_empty());

    // The publisher is deleted: its status goes, its records stay.
    running.publishers.send_replace(Arc::new(Vec::new()));
    tokio::time::timeout(DEADLINE, running.status.wait_for(|all| all.is_empty())).await??;
    assert_eq!(a_values(&dns, "blog").await?, ["192.0.2.10"]);
    Ok(())
}

#[tokio::test]
async fn rejected_credentials_stop_and_a_fixed_secret_retries_at_once() -> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let dns = reader(&knot)?;
    let wrong = base64::engine::general_purpose::STANDARD.encode("not-the-key-knotd-knows-at-all!");
    let mut running = start(publisher(Ok(config(&knot, Some(&wrong))), &["app"]), true);
    let stopped = running
        .wait_status("stopped", |s| s.state == SyncState::Stopped)
        .await?;
    let error = stopped.last_error.unwrap_or_default();
    assert!(error.contains("credentials rejected"), "{error}");
    // Retried only after the permanent-error pause, not in a loop.
    let next = stopped.next_attempt_unix.unwrap_or_default();
    assert!(next >= unix_now() + 3500, "next attempt {next}");
    // The event follows the status; one failed attempt, not a loop.
    let started = std::time::Instant::now();
    while running.events.count("error") == 0 {
        assert!(started.elapsed() < DEADLINE, "no error event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.events.count("error"), 1);

    // The Secret is fixed: a change retries at once, long before the pause ends.
    running.send(publisher(
        Ok(config(&knot, Some(TSIG_SECRET_B64))),
        &["app"],
    ));
    running
        .wait_status("synced", |s| s.state == SyncState::Synced)
        .await?;
    assert_eq!(a_values(&dns, "app").await?, ["192.0.2.10"]);
    assert_eq!(running.events.count("error"), 1);
    Ok(())
}

#[tokio::test]
async fn an_invalid_publisher_writes_nothing_and_a_missing_secret_keeps_the_last_provider()
-> anyhow::Result<()> {
    let Some(knot) = rig()? else { return Ok(()) };
    let dns = reader(&knot)?;
    let mut running = start(
        publisher(Ok(config(&knot, Some(TSIG_SECRET_B64))), &["app"]),
        true,
    );
    running
        .wait_status("synced", |s| s.state == SyncState::Synced)
        .await?;

    // Invalid: with no hostnames left, a sync would delete app's records; none runs.
    running.send(publisher(
        Err("spec.ttl: 5 is outside 30-86400 seconds".to_owned()),
        &[],
    ));
    let invalid = running
        .wait_status("invalid", |s| s.state == SyncState::Invalid)
        .await?;
    assert!(
        invalid
            .last_error
            .is_some_and(|e| e.starts_with("spec.ttl")),
    );
    assert_eq!(a_values(&dns, "app").await?, ["192.0.2.10"]);

    // Valid again but its Secret is missing: the provider built before keeps writing.
    running.send(publisher(Ok(config(&knot, None)), &["app", "new"]));
    let synced = running
        .wait_status("synced with the previous provider", |s| {
            s.state == SyncState::Synced && s.records.len() == 2
        })
        .await?;
    let error = synced.last_error.unwrap_or_default();
    assert!(
        error.contains("rfc2136.tsigSecretRef") && error.contains("previous configuration"),
        "{error}"
    );
    assert_eq!(a_values(&dns, "new").await?, ["192.0.2.10"]);
    Ok(())
}
