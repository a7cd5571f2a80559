//! One immutable, fully prepared view of the configuration: compiled routes, rustls-ready
//! certificates and upstream endpoint sets. The data plane swaps whole snapshots atomically.

use std::collections::HashMap;
use std::sync::Arc;

use torhaus_model::DataPlaneConfig;

use crate::auth::AuthTable;
use crate::metrics::SnapshotSeries;
use crate::router::{CompiledConfig, CompiledListener};
use crate::tls::{ServingCertificate, certified_key};
use crate::upstream::EndpointRegistry;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub config: Arc<DataPlaneConfig>,
    pub routes: CompiledConfig,
    pub endpoints: EndpointRegistry,
    /// Keyed by the compiled listener's address: `routes` owns the listeners and never moves
    /// them, so the address is stable for the snapshot's lifetime and the lookup is one probe.
    certificates: HashMap<usize, Box<[ServingCertificate]>>,
    /// Metric handles of this snapshot's routes, resolved by the data plane after `build`.
    pub series: SnapshotSeries,
    /// The identity policies the routes name, set by the data plane after `build`.
    pub auth: Arc<AuthTable>,
}

impl Snapshot {
    /// Prepares `config`, carrying endpoint state over from `previous`. Certificates rustls
    /// cannot use are logged and left out (the listener then falls back to on-demand issuance).
    pub fn build(config: Arc<DataPlaneConfig>, previous: &Snapshot) -> Snapshot {
        let routes = CompiledConfig::compile(&config);
        let endpoints = EndpointRegistry::rebuild(&previous.endpoints, &config);
        let mut certificates = HashMap::new();
        for port in routes.ports() {
            for listener in port.listeners() {
                let Some(tls) = &listener.model().tls else {
                    continue;
                };
                let serving: Box<[ServingCertificate]> = tls
                    .certificates
                    .iter()
                    .filter_map(|certificate| match certified_key(certificate) {
                        Ok(key) => Some(ServingCertificate {
                            certificate: Arc::clone(certificate),
                            key,
                        }),
                        Err(error) => {
                            tracing::warn!(listener = %listener.id(), %error, "certificate skipped");
                            None
                        }
                    })
                    .collect();
                certificates.insert(listener_key(listener), serving);
            }
        }
        Snapshot {
            config,
            routes,
            endpoints,
            certificates,
            series: SnapshotSeries::default(),
            auth: Arc::default(),
        }
    }

    /// The usable certificates of a listener of this snapshot (empty when it has none).
    pub fn certificates_of(&self, listener: &CompiledListener) -> &[ServingCertificate] {
        self.certificates
            .get(&listener_key(listener))
            .map(|c| &c[..])
            .unwrap_or(&[])
    }
}

fn listener_key(listener: &CompiledListener) -> usize {
    std::ptr::from_ref(listener) as usize
}
