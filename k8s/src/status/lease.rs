//! Leader election over a coordination.k8s.io Lease, as client-go does it: the holder renews
//! `renewTime`; another replica takes the Lease once it has seen no renewal for a whole
//! `leaseDurationSeconds` by its own clock (so clock skew between nodes does not matter);
//! every write carries the `resourceVersion` it read, so two replicas never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where the Lease lives, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops acting as leader (shorter than
    /// `lease_duration`, so it stops before anyone else may take over).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
    /// What the holder does, for the logs ("writing status", "ordering ACME certificates").
    pub duty: String,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            duty: "writing status".to_owned(),
        }
    }
}

/// A running election: whether this replica leads, and a way to hand the Lease over.
#[derive(Debug)]
pub struct LeaderElection {
    pub is_leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LeaderElection {
    /// Stops campaigning; a leader releases the Lease so another replica takes over at once
    /// instead of after `lease_duration`.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Starts campaigning for the Lease on the current tokio runtime.
pub fn spawn_leader_election(client: Client, settings: LeaseSettings) -> LeaderElection {
    let (leader_sender, is_leader) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let api = Api::<Lease>::namespaced(client, &settings.namespace);
    let task = tokio::spawn(campaign(api, settings, leader_sender, stopped));
    LeaderElection {
        is_leader,
        stop: Some(stop),
        task,
    }
}

/// What this replica last saw of the Lease, and when (by its own clock).
#[derive(Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    since: Instant,
}

async fn campaign(
    api: Api<Lease>,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewal: Option<Instant> = None;
    let mut unreachable = false;
    loop {
        let result = try_acquire_or_renew(&api, &settings, &mut observed).await;
        if result.is_ok() && unreachable {
            unreachable = false;
            tracing::info!(lease = %settings.name, "the Lease is reachable again");
        }
        match result {
            Ok(true) => {
                last_renewal = Some(Instant::now());
                if !*leader.borrow() {
                    tracing::info!(identity = %settings.identity, lease = %settings.name, duty = %settings.duty, "became the leader");
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                last_renewal = None;
                if *leader.borrow() {
                    tracing::warn!(identity = %settings.identity, lease = %settings.name, duty = %settings.duty, "lost the Lease to another replica: stopped");
                    leader.send_replace(false);
                }
            }
            Err(error) => {
                let expired = last_renewal.is_none_or(|at| at.elapsed() >= settings.renew_deadline);
                if !unreachable {
                    unreachable = true;
                    tracing::warn!(lease = %settings.name, %error, "cannot reach the Lease; retrying");
                }
                if expired && *leader.borrow() {
                    tracing::warn!(identity = %settings.identity, lease = %settings.name, duty = %settings.duty, "could not renew the Lease in time: stopped");
                    leader.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.retry_period) => {}
            _ = &mut stopped => {
                if *leader.borrow() {
                    leader.send_replace(false);
                    if let Err(error) = release(&api, &settings).await {
                        tracing::warn!(%error, "could not release the Lease; another replica takes it when it expires");
                    }
                }
                return;
            }
        }
    }
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    // Rounded up: a Lease must never look shorter to others than its holder assumes.
    let whole_seconds =
        settings.lease_duration.as_secs() + u64::from(settings.lease_duration.subsec_nanos() > 0);
    let duration_seconds = i32::try_from(whole_seconds).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let seen = Observed {
        holder: holder.clone(),
        renew_time: spec.renew_time.clone(),
        since: Instant::now(),
    };
    let unchanged = observed
        .as_ref()
        .is_some_and(|o| o.holder == seen.holder && o.renew_time == seen.renew_time);
    if !unchanged {
        *observed = Some(seen);
    }
    let ours = holder.as_deref() == Some(settings.identity.as_str());
    if !ours {
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(settings.lease_duration, Duration::from_secs);
        let expired = observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= held_for);
        if holder.is_some() && !expired {
            return Ok(false);
        }
    }
    let mut new_spec = spec.clone();
    new_spec.renew_time = Some(now.clone());
    new_spec.lease_duration_seconds = Some(duration_seconds);
    if !ours {
        new_spec.holder_identity = Some(settings.identity.clone());
        new_spec.acquire_time = Some(now);
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    lease.spec = Some(new_spec);
    // `replace` sends the resourceVersion read above: a concurrent change makes it fail (409).
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}
