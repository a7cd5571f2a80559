//! Records for the hostnames torhaus serves (the external-dns role): a pure planner from desired
//! addresses and the zone's current records to changes, and an applier over `DnsProvider`.
//!
//! Ownership, like external-dns's TXT registry: for every record set torhaus creates it also
//! writes a TXT value `heritage=torhaus,owner=<owner>,type=<A|AAAA>` at `_torhaus-owner.<name>`
//! (`_torhaus-owner-wildcard.<rest>` for `*.<rest>`, since `*` must stay the leftmost label).
//! A record set is torhaus's only if that value exists; anything else is never changed or
//! deleted, only reported as a conflict. The marker is written before the record and removed
//! after it, so an interruption never leaves an unmarked torhaus record behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::{DnsError, DnsProvider, RecordSet, RecordType, Zone};

const OWNER_LABEL: &str = "_torhaus-owner";
const OWNER_WILDCARD_LABEL: &str = "_torhaus-owner-wildcard";

/// The name of the ownership TXT set for records at `name`.
pub fn owner_name(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(rest) => format!("{OWNER_WILDCARD_LABEL}.{rest}"),
        None => format!("{OWNER_LABEL}.{name}"),
    }
}

/// The ownership TXT value marking `rtype` at a name as `owner`'s.
pub fn owner_value(owner: &str, rtype: &RecordType) -> String {
    format!("heritage=torhaus,owner={owner},type={rtype}")
}

/// The record name an ownership TXT name stands for.
fn owned_name(txt_name: &str) -> Option<String> {
    if let Some(rest) = txt_name.strip_prefix(&format!("{OWNER_WILDCARD_LABEL}.")) {
        return Some(format!("*.{rest}"));
    }
    txt_name
        .strip_prefix(&format!("{OWNER_LABEL}."))
        .map(str::to_owned)
}

/// One step of a plan, in the order it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddOwner { name: String, value: String },
    Upsert(RecordSet),
    Delete { name: String, rtype: RecordType },
    RemoveOwner { name: String, value: String },
}

/// A desired record torhaus leaves alone because someone else's record is in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub name: String,
    pub rtype: RecordType,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub conflicts: Vec<Conflict>,
    /// Desired record sets in this zone that are torhaus's once the changes ran.
    pub managed: usize,
}

/// Plans the changes for `zone`: `desired` maps hostnames to the addresses they must resolve
/// to; names outside the zone are ignored (they belong to another zone's plan).
pub fn plan(
    owner: &str,
    ttl: u32,
    zone: &str,
    desired: &BTreeMap<String, Vec<IpAddr>>,
    existing: &[RecordSet],
) -> Plan {
    let mut plan = Plan::default();
    let mut want: BTreeMap<(String, RecordType), BTreeSet<String>> = BTreeMap::new();
    for (host, addresses) in desired {
        let name = match crate::name::normalize(host) {
            Ok(name) if crate::name::is_within(&name, zone) => name,
            Ok(_) => continue,
            Err(e) => {
                plan.conflicts.push(Conflict {
                    name: host.clone(),
                    rtype: RecordType::A,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for address in addresses {
            want.entry((name.clone(), RecordType::for_address(address)))
                .or_default()
                .insert(address.to_string());
        }
    }
    let find = |name: &str, rtype: &RecordType| {
        existing
            .iter()
            .find(|set| set.name == name && &set.rtype == rtype)
    };
    // What the zone's markers say is ours.
    let mut owned: BTreeSet<(String, RecordType)> = BTreeSet::new();
    for set in existing.iter().filter(|s| s.rtype == RecordType::Txt) {
        let Some(name) = owned_name(&set.name) else {
            continue;
        };
        for rtype in [RecordType::A, RecordType::Aaaa] {
            if set.values.contains(&owner_value(owner, &rtype)) {
                owned.insert((name.clone(), rtype));
            }
        }
    }
    for ((name, rtype), values) in &want {
        let current = find(name, rtype);
        let desired_set = RecordSet {
            name: name.clone(),
            rtype: rtype.clone(),
            ttl,
            values: values.iter().cloned().collect(),
        };
        if owned.contains(&(name.clone(), rtype.clone())) {
            let same = current.is_some_and(|c| {
                c.ttl == ttl && c.value_set() == values.iter().map(String::as_str).collect()
            });
            if !same {
                plan.changes.push(Change::Upsert(desired_set));
            }
            plan.managed += 1;
            continue;
        }
        if find(name, &RecordType::Cname).is_some() {
            plan.conflicts.push(Conflict {
                name: name.clone(),
                rtype: rtype.clone(),
                reason: "a CNAME not created by torhaus exists at this name".into(),
            });
            continue;
        }
        // Someone else's A or AAAA at the name blocks both families: adding an AAAA beside a
        // foreign A would send IPv6 clients of that host to torhaus instead.
        let foreign = current.or_else(|| {
            existing.iter().find(|set| {
                set.name == *name
                    && matches!(set.rtype, RecordType::A | RecordType::Aaaa)
                    && !owned.contains(&(set.name.clone(), set.rtype.clone()))
            })
        });
        if let Some(foreign) = foreign {
            let other_owner = find(&owner_name(name), &RecordType::Txt)
                .and_then(|s| s.values.iter().find(|v| v.starts_with("heritage=torhaus,")))
                .map(|v| format!(" (marked {v:?})"))
                .unwrap_or_default();
            plan.conflicts.push(Conflict {
                name: name.clone(),
                rtype: rtype.clone(),
                reason: format!(
                    "an {} record not owned by {owner} exists{other_owner}",
                    foreign.rtype
                ),
            });
            continue;
        }
        plan.changes.push(Change::AddOwner {
            name: owner_name(name),
            value: owner_value(owner, rtype),
        });
        plan.changes.push(Change::Upsert(desired_set));
        plan.managed += 1;
    }
    for (name, rtype) in &owned {
        if want.contains_key(&(name.clone(), rtype.clone())) || !crate::name::is_within(name, zone)
        {
            continue;
        }
        if find(name, rtype).is_some() {
            plan.changes.push(Change::Delete {
                name: name.clone(),
                rtype: rtype.clone(),
            });
        }
        plan.changes.push(Change::RemoveOwner {
            name: owner_name(name),
            value: owner_value(owner, rtype),
        });
    }
    plan
}

/// Runs a plan's changes in order; stops at the first error (the next sync re-plans).
pub async fn apply(
    provider: &dyn DnsProvider,
    zone: &Zone,
    ttl: u32,
    plan: &Plan,
) -> Result<(), DnsError> {
    for change in &plan.changes {
        match change {
            Change::AddOwner { name, value } => provider.add_txt(zone, name, value, ttl).await?,
            Change::Upsert(set) => provider.upsert_rrset(zone, set).await?,
            Change::Delete { name, rtype } => provider.delete_rrset(zone, name, rtype).await?,
            Change::RemoveOwner { name, value } => provider.remove_txt(zone, name, value).await?,
        }
    }
    Ok(())
}

/// Keeps the records of a set of hostnames in sync, remembering every zone it has touched so
/// that hostnames that disappear (a deleted route) have their records removed.
#[derive(Debug)]
pub struct RecordsSync {
    provider: Arc<dyn DnsProvider>,
    owner: String,
    ttl: u32,
    zones: tokio::sync::Mutex<BTreeSet<Zone>>,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub changes: usize,
    /// Record sets (name and type) torhaus owns and keeps at the desired addresses.
    pub managed: usize,
    pub conflicts: Vec<Conflict>,
}

impl RecordsSync {
    /// `zones` are scanned on every sync even when no desired hostname is in them (so that
    /// records are cleaned up after a restart with fewer routes).
    pub fn new(provider: Arc<dyn DnsProvider>, owner: &str, ttl: u32, zones: Vec<Zone>) -> Self {
        Self {
            provider,
            owner: owner.to_owned(),
            ttl,
            zones: tokio::sync::Mutex::new(zones.into_iter().collect()),
        }
    }

    /// The provider this sync writes through.
    pub fn provider(&self) -> &Arc<dyn DnsProvider> {
        &self.provider
    }

    /// Plans and applies every zone. A hostname that no zone of the provider contains is a
    /// conflict of its own, not an error: one stray route must not stop the others from being
    /// published. Conflicts are logged at debug level only; callers decide what is news.
    pub async fn sync(
        &self,
        desired: &BTreeMap<String, Vec<IpAddr>>,
    ) -> Result<SyncReport, DnsError> {
        let mut zones = self.zones.lock().await;
        let mut report = SyncReport::default();
        for (host, addresses) in desired {
            match self.provider.find_zone(host).await {
                Ok(zone) => {
                    zones.insert(zone);
                }
                Err(DnsError::ZoneNotFound { provider, .. }) => {
                    for rtype in addresses
                        .iter()
                        .map(RecordType::for_address)
                        .collect::<BTreeSet<_>>()
                    {
                        report.conflicts.push(Conflict {
                            name: host.clone(),
                            rtype,
                            reason: format!("no zone of {provider} contains this name"),
                        });
                    }
                }
                Err(DnsError::InvalidName { .. }) => {
                    // Planned (and reported) as a conflict by `plan` for every zone.
                }
                Err(other) => return Err(other),
            }
        }
        for zone in zones.iter() {
            let existing = self.provider.list_records(zone).await?;
            let plan = plan(&self.owner, self.ttl, &zone.name, desired, &existing);
            for conflict in &plan.conflicts {
                tracing::debug!(name = %conflict.name, rtype = %conflict.rtype, reason = %conflict.reason, "DNS record left alone");
            }
            apply(self.provider.as_ref(), zone, self.ttl, &plan).await?;
            report.changes += plan.changes.len();
            report.managed += plan.managed;
            for conflict in plan.conflicts {
                if !report.conflicts.contains(&conflict) {
                    report.conflicts.push(conflict);
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "example.com";

    fn set(name: &str, rtype: RecordType, values: &[&str]) -> RecordSet {
        RecordSet {
            name: name.into(),
            rtype,
            ttl: 60,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn marker(name: &str, owner: &str, rtype: RecordType) -> RecordSet {
        let value = owner_value(owner, &rtype);
        set(&owner_name(name), RecordType::Txt, &[&value])
    }

    fn desired(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        entries
            .iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn new_hostname_gets_marker_then_records() {
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("App.example.com", &["192.0.2.1", "2001:db8::1"])]),
            &[],
        );
        assert_eq!(
            plan.changes,
            [
                Change::AddOwner {
                    name: "_torhaus-owner.app.example.com".into(),
                    value: "heritage=torhaus,owner=a,type=A".into()
                },
                Change::Upsert(set("app.example.com", RecordType::A, &["192.0.2.1"])),
                Change::AddOwner {
                    name: "_torhaus-owner.app.example.com".into(),
                    value: "heritage=torhaus,owner=a,type=AAAA".into()
                },
                Change::Upsert(set("app.example.com", RecordType::Aaaa, &["2001:db8::1"])),
            ]
        );
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn owned_and_current_records_need_nothing() {
        let existing = [
            set("app.example.com", RecordType::A, &["192.0.2.1"]),
            marker("app.example.com", "a", RecordType::A),
        ];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.1"])]),
            &existing,
        );
        assert_eq!(
            plan,
            Plan {
                managed: 1,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn owned_records_are_updated() {
        let existing = [
            set("app.example.com", RecordType::A, &["192.0.2.1"]),
            marker("app.example.com", "a", RecordType::A),
        ];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.7"])]),
            &existing,
        );
        assert_eq!(
            plan.changes,
            [Change::Upsert(set(
                "app.example.com",
                RecordType::A,
                &["192.0.2.7"]
            ))]
        );
    }

    #[test]
    fn foreign_records_are_never_changed() {
        let existing = [set("app.example.com", RecordType::A, &["198.51.100.1"])];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.1"])]),
            &existing,
        );
        assert!(plan.changes.is_empty());
        assert_eq!(plan.conflicts.len(), 1);
        assert!(
            plan.conflicts[0].reason.contains("not owned by a"),
            "{:?}",
            plan.conflicts
        );
    }

    #[test]
    fn a_foreign_address_record_blocks_the_other_family_too() {
        let existing = [set("nas.example.com", RecordType::A, &["198.51.100.1"])];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("nas.example.com", &["192.0.2.1", "2001:db8::1"])]),
            &existing,
        );
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        assert_eq!(plan.conflicts.len(), 2);
        assert!(
            plan.conflicts
                .iter()
                .all(|c| c.reason.contains("an A record not owned by a")),
            "{:?}",
            plan.conflicts
        );
    }

    #[test]
    fn another_owners_records_are_never_changed_or_deleted() {
        let existing = [
            set("app.example.com", RecordType::A, &["198.51.100.1"]),
            marker("app.example.com", "b", RecordType::A),
        ];
        let changed = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.1"])]),
            &existing,
        );
        assert!(changed.changes.is_empty());
        assert!(
            changed.conflicts[0].reason.contains("owner=b"),
            "{:?}",
            changed.conflicts
        );
        let removed = plan("a", 60, ZONE, &desired(&[]), &existing);
        assert_eq!(removed, Plan::default());
    }

    #[test]
    fn a_cname_blocks_address_records() {
        let existing = [set(
            "app.example.com",
            RecordType::Cname,
            &["elsewhere.example.net"],
        )];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.1"])]),
            &existing,
        );
        assert!(plan.changes.is_empty());
        assert!(plan.conflicts[0].reason.contains("CNAME"));
    }

    #[test]
    fn removed_hostnames_lose_records_then_markers() {
        let existing = [
            set("old.example.com", RecordType::A, &["192.0.2.1"]),
            marker("old.example.com", "a", RecordType::A),
            set("foreign.example.com", RecordType::A, &["198.51.100.1"]),
        ];
        let plan = plan("a", 60, ZONE, &desired(&[]), &existing);
        assert_eq!(
            plan.changes,
            [
                Change::Delete {
                    name: "old.example.com".into(),
                    rtype: RecordType::A
                },
                Change::RemoveOwner {
                    name: "_torhaus-owner.old.example.com".into(),
                    value: "heritage=torhaus,owner=a,type=A".into()
                },
            ]
        );
    }

    #[test]
    fn a_dropped_address_family_is_removed_alone() {
        let both = [
            owner_value("a", &RecordType::A),
            owner_value("a", &RecordType::Aaaa),
        ];
        let existing = [
            set("app.example.com", RecordType::A, &["192.0.2.1"]),
            set("app.example.com", RecordType::Aaaa, &["2001:db8::1"]),
            set(
                "_torhaus-owner.app.example.com",
                RecordType::Txt,
                &[&both[0], &both[1]],
            ),
        ];
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("app.example.com", &["192.0.2.1"])]),
            &existing,
        );
        assert_eq!(
            plan.changes[0],
            Change::Delete {
                name: "app.example.com".into(),
                rtype: RecordType::Aaaa
            }
        );
        assert_eq!(plan.changes.len(), 2);
    }

    #[test]
    fn wildcards_use_their_own_marker_name_and_other_zones_are_ignored() {
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[
                ("*.apps.example.com", &["192.0.2.1"]),
                ("x.example.org", &["192.0.2.2"]),
            ]),
            &[],
        );
        assert_eq!(
            plan.changes[0],
            Change::AddOwner {
                name: "_torhaus-owner-wildcard.apps.example.com".into(),
                value: "heritage=torhaus,owner=a,type=A".into()
            }
        );
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(
            owned_name("_torhaus-owner-wildcard.apps.example.com").as_deref(),
            Some("*.apps.example.com")
        );
    }

    #[test]
    fn invalid_hostnames_are_reported_not_planned() {
        let plan = plan(
            "a",
            60,
            ZONE,
            &desired(&[("bad name.example.com", &["192.0.2.1"])]),
            &[],
        );
        assert!(plan.changes.is_empty());
        assert_eq!(plan.conflicts.len(), 1);
    }
}
