//! torhaus's data plane on pingora: listeners, the SNI certificate resolver, the router over an
//! immutable compiled route table, filters, upstream choice and request metrics.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod auth;
pub mod dataplane;
pub mod drain;
pub mod error;
pub mod filters;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod respond;
pub mod router;
pub mod snapshot;
mod socket_table;
pub mod strict;
pub mod tls;
pub mod upstream;

pub use dataplane::{DataPlane, DataPlaneOptions, EngineChoice, GatewaySettings};
pub use error::GatewayError;
pub use metrics::Metrics;
pub use upstream::EjectionPolicy;
