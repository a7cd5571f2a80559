//! A test environment from manifests: echo pods for every Deployment, EndpointSlices pointing
//! the Services at them, a config directory, and torhaus serving it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_yaml::Value;

use crate::echo::{EchoIdentity, EchoServer};
use crate::process::{TempDir, Torhaus, TorhausOptions};

/// The GatewayClass name the rig substitutes for `{GATEWAY_CLASS_NAME}`.
pub const GATEWAY_CLASS: &str = "torhaus";
/// Deployment annotation making the rig's pods answer late, in milliseconds.
pub const DELAY_ANNOTATION: &str = "torhaus.test/delay-ms";
pub const CONTROLLER_NAME: &str = "torhaus.dev/gateway-controller";

/// A running environment; everything stops when dropped.
#[derive(Debug)]
pub struct Rig {
    /// Pods by deployment name, e.g. `infra-backend-v1` → its echo instances.
    pub pods: BTreeMap<String, Vec<EchoServer>>,
    pub torhaus: Torhaus,
    pub config: TempDir,
}

struct Deployment {
    namespace: String,
    name: String,
    replicas: u64,
    /// `torhaus.test/delay-ms` annotation: the pods answer this late (timeout tests).
    delay_ms: u64,
    labels: BTreeMap<String, String>,
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut current = value;
    for key in path {
        current = current.get(*key)?;
    }
    current.as_str()
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits a multi-document YAML file into its non-empty documents.
pub fn parse_documents(text: &str, origin: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(document)
            .with_context(|| format!("{origin}: YAML document {index}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Pod names shaped like a ReplicaSet's: `<deployment>-<10 chars>-<5 chars>`.
fn pod_name(deployment: &str, replica: u64) -> String {
    format!("{deployment}-7d9f8c6b5{replica}-x{replica:04}")
}

fn gateway_ports(docs: &[Value]) -> Vec<u16> {
    let mut ports: Vec<u16> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == Some("Gateway"))
        .filter_map(|d| d.get("spec")?.get("listeners")?.as_sequence().cloned())
        .flatten()
        .filter_map(|l| u16::try_from(l.get("port")?.as_u64()?).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn endpoint_slice(service: &Value, pod: &EchoServer, index: usize) -> Option<Value> {
    let namespace = str_at(service, &["metadata", "namespace"]).unwrap_or("default");
    let name = str_at(service, &["metadata", "name"])?;
    let ports: Vec<Value> = service
        .get("spec")?
        .get("ports")?
        .as_sequence()?
        .iter()
        .map(|port| {
            let mut entry = serde_yaml::Mapping::new();
            if let Some(port_name) = port.get("name") {
                entry.insert("name".into(), port_name.clone());
            }
            if let Some(app_protocol) = port.get("appProtocol") {
                entry.insert("appProtocol".into(), app_protocol.clone());
            }
            entry.insert("protocol".into(), "TCP".into());
            entry.insert("port".into(), u64::from(pod.addr().port()).into());
            Value::Mapping(entry)
        })
        .collect();
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-{index}"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [pod.addr().ip().to_string()],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod.identity().pod, "namespace": namespace},
        }],
    });
    let mut slice: Value = serde_yaml::to_value(slice).ok()?;
    if let Some(map) = slice.as_mapping_mut() {
        map.insert("ports".into(), Value::Sequence(ports));
    }
    Some(slice)
}

fn manifest_path(config: &Path, index: usize) -> std::path::PathBuf {
    config.join(format!("{:02}-{index}.yaml", index + 10))
}

/// Writes manifests as one multi-document YAML file.
pub fn write_documents(path: &Path, docs: &[Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for doc in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(doc).context("serialising a manifest")?);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

impl Rig {
    /// Builds the environment from manifest texts (each may hold `{GATEWAY_CLASS_NAME}`).
    pub async fn start(manifests: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_for_gateway(manifests, None).await
    }

    /// Like [`Rig::start`], but of the Gateways in the first (base) manifest only `gateway`
    /// (`namespace/name`) is kept. In a cluster every Gateway gets its own address; torhaus
    /// serves every Gateway on the same local ports, where the upstream base's several
    /// catch-all Gateways on port 80 would rightly conflict.
    pub async fn start_for_gateway(
        manifests: &[(&str, String)],
        gateway: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_with_args(manifests, gateway, &[]).await
    }

    /// Like [`Rig::start_for_gateway`], with extra `torhaus run` arguments.
    pub async fn start_with_args(
        manifests: &[(&str, String)],
        gateway: Option<&str>,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let config = TempDir::new("config")?;
        let class = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        });
        write_documents(
            &config.path().join("00-gatewayclass.yaml"),
            &[serde_yaml::to_value(class)?],
        )?;

        let mut all_docs = Vec::new();
        let mut deployments = Vec::new();
        for (index, (origin, text)) in manifests.iter().enumerate() {
            let text = text.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS);
            let docs = parse_documents(&text, origin)?;
            let mut kept = Vec::new();
            for doc in docs {
                if index == 0
                    && let Some(wanted) = gateway
                    && str_at(&doc, &["kind"]) == Some("Gateway")
                {
                    let this = format!(
                        "{}/{}",
                        str_at(&doc, &["metadata", "namespace"]).unwrap_or("default"),
                        str_at(&doc, &["metadata", "name"]).unwrap_or_default()
                    );
                    if this != wanted {
                        continue;
                    }
                }
                // torhaus reads no Deployments: the rig plays their pods itself.
                if str_at(&doc, &["kind"]) == Some("Deployment") {
                    let name = str_at(&doc, &["metadata", "name"])
                        .with_context(|| format!("{origin}: Deployment without a name"))?;
                    deployments.push(Deployment {
                        namespace: str_at(&doc, &["metadata", "namespace"])
                            .unwrap_or("default")
                            .to_owned(),
                        name: name.to_owned(),
                        replicas: doc
                            .get("spec")
                            .and_then(|s| s.get("replicas"))
                            .and_then(Value::as_u64)
                            .unwrap_or(1),
                        delay_ms: str_at(&doc, &["metadata", "annotations", DELAY_ANNOTATION])
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        labels: string_map(
                            doc.get("spec")
                                .and_then(|s| s.get("template"))
                                .and_then(|t| t.get("metadata"))
                                .and_then(|m| m.get("labels")),
                        ),
                    });
                } else {
                    kept.push(doc);
                }
            }
            write_documents(&manifest_path(config.path(), index), &kept)?;
            all_docs.extend(kept);
        }

        let mut pods: BTreeMap<String, Vec<EchoServer>> = BTreeMap::new();
        let mut slices = Vec::new();
        for service in all_docs
            .iter()
            .filter(|d| str_at(d, &["kind"]) == Some("Service"))
        {
            let namespace = str_at(service, &["metadata", "namespace"]).unwrap_or("default");
            let name = str_at(service, &["metadata", "name"]).unwrap_or_default();
            let selector = string_map(service.get("spec").and_then(|s| s.get("selector")));
            if selector.is_empty() {
                continue;
            }
            for deployment in deployments.iter().filter(|d| {
                d.namespace == namespace && selector.iter().all(|(k, v)| d.labels.get(k) == Some(v))
            }) {
                let started = pods.entry(deployment.name.clone()).or_default();
                if started.is_empty() {
                    for replica in 0..deployment.replicas {
                        let pod = EchoServer::start(EchoIdentity {
                            namespace: deployment.namespace.clone(),
                            pod: pod_name(&deployment.name, replica),
                            service: name.to_owned(),
                        })
                        .await?;
                        pod.set_delay(std::time::Duration::from_millis(deployment.delay_ms));
                        started.push(pod);
                    }
                }
                for pod in started.iter() {
                    let index = slices.len();
                    slices.extend(endpoint_slice(service, pod, index));
                }
            }
        }
        write_documents(&config.path().join("90-endpointslices.yaml"), &slices)?;

        let ports = gateway_ports(&all_docs);
        if ports.is_empty() {
            bail!("the manifests declare no Gateway listener ports");
        }
        let torhaus = Torhaus::start(
            config.path(),
            &TorhausOptions {
                gateway_ports: ports,
                extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
                ..TorhausOptions::default()
            },
        )
        .await?;
        Ok(Self {
            pods,
            torhaus,
            config,
        })
    }

    /// The file holding the `index`th manifest text given to [`Rig::start`] (Deployments removed).
    pub fn manifest_file(&self, index: usize) -> std::path::PathBuf {
        manifest_path(self.config.path(), index)
    }

    /// Every echo pod of `deployment` (empty if none).
    pub fn pods_of(&self, deployment: &str) -> &[EchoServer] {
        self.pods.get(deployment).map_or(&[], Vec::as_slice)
    }
}
