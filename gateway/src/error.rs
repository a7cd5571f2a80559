//! The errors the data plane reports to its caller (start-up and configuration swaps).

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} (for the Gateway listener port {declared_port}): {source}")]
    Bind {
        declared_port: u16,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("port {declared_port} was stopped but {addr} was still bound after {waited_ms} ms")]
    NotReleased {
        declared_port: u16,
        addr: SocketAddr,
        waited_ms: u128,
    },
    #[error("listener ports {first} and {second} both map to bound port {bound}")]
    PortMapCollision { first: u16, second: u16, bound: u16 },
    #[error("the data plane is shutting down; configuration not applied")]
    ShuttingDown,
    #[error("cannot start the server thread for port {declared_port}: {source}")]
    Thread {
        declared_port: u16,
        source: std::io::Error,
    },
    #[error("gateway settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}
