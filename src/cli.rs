//! The command line: subcommands, flags, and parsing of their values.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use torhaus_gateway::access_log::AccessLogTarget;

#[derive(Debug, Parser)]
#[command(
    name = "torhaus",
    version,
    about = "Edge ingress and identity gateway for self-hosted Kubernetes"
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TORHAUS_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Gateway API manifests found in a directory, or with --kubernetes those of the
    /// cluster.
    Run(Box<RunArgs>),
    /// Validate a directory of manifests, print the compiled listeners, routes and every object's
    /// conditions; exit 1 if anything was rejected.
    Check(CheckArgs),
    /// The local certificate authority that signs certificates for HTTPS listeners that have none.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the local CA's certificate (PEM), for clients to trust.
    Export(StateDirArg),
}

#[derive(Debug, Args)]
pub struct StateDirArg {
    /// Where torhaus keeps its state (the local CA). Defaults to $TORHAUS_STATE_DIR, then
    /// $XDG_DATA_HOME/torhaus, then ~/.local/share/torhaus, then /var/lib/torhaus.
    #[arg(long, env = "TORHAUS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Where ClusterIssuers keep their Secrets.
#[derive(Debug, Args)]
pub struct ClusterResourceNamespaceArg {
    /// Namespace whose Secrets ClusterIssuers read (DNS credentials, EAB keys) and keep their
    /// ACME account in, like cert-manager's cluster resource namespace. The chart sets it to
    /// torhaus's own namespace.
    #[arg(
        long,
        env = "TORHAUS_CLUSTER_RESOURCE_NAMESPACE",
        default_value = torhaus_acme::CLUSTER_RESOURCE_NAMESPACE
    )]
    pub cluster_resource_namespace: String,
}

impl ClusterResourceNamespaceArg {
    pub fn translate_options(&self) -> torhaus_k8s::TranslateOptions {
        torhaus_k8s::TranslateOptions {
            cluster_resource_namespace: self.cluster_resource_namespace.clone(),
            ..torhaus_k8s::TranslateOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of Kubernetes manifests (searched recursively).
    #[arg(long, env = "TORHAUS_CONFIG")]
    pub config: PathBuf,
    /// With --state-dir or --acme-store: also read the certificates ACME has issued there, as
    /// `torhaus run` does, so that managed certificates show as issued rather than pending.
    #[arg(long, env = "TORHAUS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, env = "TORHAUS_ACME_STORE")]
    pub acme_store: Option<PathBuf>,
    #[command(flatten)]
    pub cluster_resources: ClusterResourceNamespaceArg,
    #[command(flatten)]
    pub addresses: GatewayAddressArg,
}

/// The addresses torhaus serves on.
#[derive(Debug, Args)]
pub struct GatewayAddressArg {
    /// Address published in the status of every Gateway (the VIP or the node address torhaus
    /// serves on) and by DNSPublishers without `spec.addresses`; repeatable or
    /// comma-separated. In Kubernetes mode it defaults to $POD_IP (with hostNetwork: the
    /// node's address).
    #[arg(
        long = "gateway-address",
        env = "TORHAUS_GATEWAY_ADDRESSES",
        value_delimiter = ','
    )]
    pub gateway_addresses: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of Kubernetes manifests (searched recursively), watched for changes.
    #[arg(long, env = "TORHAUS_CONFIG", required_unless_present = "kubernetes")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub kube: Box<KubernetesArgs>,
    /// Bind listener ports elsewhere than the Gateway declares, e.g. `80:8080,443:8443`, for tests
    /// and unprivileged runs. Redirects still use the declared ports.
    #[arg(long, value_parser = parse_port_map, default_value = "")]
    pub port_map: PortMap,
    /// Worker threads of each listening port.
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    /// Let idle worker threads take work queued on busy ones. By default each thread keeps the
    /// connections it accepted (cheaper per request); work stealing evens out a load carried
    /// by a few long, busy connections.
    #[arg(long)]
    pub work_stealing: bool,
    /// Which engine serves requests: torhaus's own (plain proxied HTTP/1.1 requests and
    /// HTTP/2 streams; everything else is handed to pingora's proxy) or pingora's proxy for
    /// everything.
    #[arg(long, alias = "http1-engine", value_enum, default_value_t = EngineArg::Torhaus)]
    pub engine: EngineArg,
    /// Address the listeners bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// How many proxies in front of torhaus append to X-Forwarded-For and are trusted; 0 means
    /// clients talk to torhaus directly and any X-Forwarded-For they send is replaced.
    #[arg(long, default_value_t = 0)]
    pub trusted_hops: u32,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub grace_period: Duration,
    /// How long an idle client connection stays open: between HTTP/1.1 requests, or with no
    /// HTTP/2 stream open (the engine's connections; pingora keeps its own 60 s on HTTP/1.1).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub client_idle_timeout: Duration,
    /// How long a client may take to complete the TLS handshake after connecting; slower or
    /// silent connections are closed and counted (`torhaus_tls_handshakes_total`, outcome
    /// `timeout`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub tls_handshake_timeout: Duration,
    /// Largest request header block accepted; larger ones get 431.
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_request_header_bytes: usize,
    /// Connection failures in a row (refused, reset, timed out) after which an endpoint is
    /// ejected from load balancing.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after_failures: u32,
    /// How long an endpoint's first ejection lasts; each further ejection in a row doubles it,
    /// up to --eject-max-backoff. Afterwards the endpoint gets traffic again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub eject_backoff: Duration,
    /// The longest an ejection lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub eject_max_backoff: Duration,
    #[command(flatten)]
    pub state: StateDirArg,
    #[command(flatten)]
    pub observability: ObservabilityArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
    #[command(flatten)]
    pub cluster_resources: ClusterResourceNamespaceArg,
    #[command(flatten)]
    pub dns: DnsRecordsArgs,
}

/// The DNS records sync (`DNSPublisher` objects).
#[derive(Debug, Args)]
pub struct DnsRecordsArgs {
    /// How often every publisher's zones are compared with what it should publish, repairing
    /// records changed or deleted behind torhaus's back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    pub dns_resync_interval: Duration,
    /// Pause after a failed sync (server unreachable); doubles per failure, up to 5 minutes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub dns_retry_base: Duration,
    /// Pause after an error only a configuration change fixes (credentials rejected); a
    /// changed publisher or Secret retries at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub dns_permanent_retry: Duration,
}

/// ACME certificates: where they are stored (standalone mode; in Kubernetes mode they are
/// Secrets) and how DNS-01 is checked.
#[derive(Debug, Args)]
pub struct AcmeArgs {
    /// Standalone mode: where ACME keeps issued certificates (Secret manifests, read like those
    /// of --config), accounts, and the lock that lets exactly one process order. Processes
    /// sharing it place one order between them. Defaults to <state-dir>/acme. Ignored with
    /// --kubernetes (certificates are Secrets in the cluster).
    #[arg(long, env = "TORHAUS_ACME_STORE")]
    pub acme_store: Option<PathBuf>,
    /// DNS servers for DNS-01 lookups (following `_acme-challenge` CNAMEs, finding the zone
    /// and its name servers); repeatable or comma-separated. Default: the system resolver.
    #[arg(long, value_delimiter = ',')]
    pub acme_dns_resolver: Vec<SocketAddr>,
    /// Port the zones' authoritative servers answer on for the propagation check.
    #[arg(long, default_value_t = 53)]
    pub acme_dns_port: u16,
    /// Pause after a failed order; doubles with each failure in a row, up to an hour.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub acme_retry_base: Duration,
    /// Pause after an error only a configuration change can fix (wrong DNS credentials, the
    /// CA refusing the account); a changed issuer retries at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub acme_permanent_retry: Duration,
    /// The longest wait for a TXT value to reach every authoritative server.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub acme_propagation_timeout: Duration,
}

/// The admin listener, metrics and access logs.
#[derive(Debug, Args)]
pub struct ObservabilityArgs {
    /// Address of the admin listener (/metrics, /healthz, /readyz, /debug/config and the status
    /// page at /), separate from traffic; `off` disables it. In a pod, bind the pod IP (e.g.
    /// `$(POD_IP):9901`) or `0.0.0.0:9901` so Prometheus can scrape it.
    #[arg(long, env = "TORHAUS_ADMIN_BIND", value_parser = parse_admin_bind, default_value = "127.0.0.1:9901")]
    pub admin_bind: AdminBind,
    /// Write one JSON line per request to `stderr` or to this file (appended). Off by default.
    #[arg(long, env = "TORHAUS_ACCESS_LOG")]
    pub access_log: Option<AccessLogTarget>,
    /// Do not record per-request metrics (for measuring their cost; other metrics stay).
    #[arg(long)]
    pub no_request_metrics: bool,
}

/// Where the admin listener binds, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminBind(pub Option<SocketAddr>);

fn parse_admin_bind(raw: &str) -> Result<AdminBind, String> {
    match raw.trim() {
        "off" | "none" => Ok(AdminBind(None)),
        addr => addr
            .parse()
            .map(|addr| AdminBind(Some(addr)))
            .map_err(|_| format!("{addr:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9901) or `off`")),
    }
}

/// Kubernetes mode: watch the cluster's Gateway API objects instead of a directory.
#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// Serve the Gateway API objects of the cluster (in-cluster service account, else
    /// KUBECONFIG) and write their status.
    #[arg(long, conflicts_with = "config")]
    pub kubernetes: bool,
    #[command(flatten)]
    pub addresses: GatewayAddressArg,
    /// Namespace of the leader-election Lease; defaults to the pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = torhaus_k8s::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Name of the Lease electing the one replica that orders ACME certificates.
    #[arg(long, default_value = torhaus_k8s::DEFAULT_ACME_LEASE_NAME)]
    pub acme_lease_name: String,
    /// This replica's identity in the Lease; defaults to $POD_NAME, then the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Declared listener port → port actually bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap(pub HashMap<u16, u16>);

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn parse_port_map(raw: &str) -> Result<PortMap, String> {
    let mut map = HashMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .split_once(':')
            .ok_or_else(|| format!("{pair:?} is not DECLARED:BOUND, e.g. 80:8080"))?;
        let from: u16 = from
            .trim()
            .parse()
            .map_err(|_| format!("{from:?} in {pair:?} is not a port number"))?;
        let to: u16 = to
            .trim()
            .parse()
            .map_err(|_| format!("{to:?} in {pair:?} is not a port number"))?;
        if map.insert(from, to).is_some() {
            return Err(format!("port {from} is mapped twice"));
        }
    }
    Ok(PortMap(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_map_parses_pairs_and_rejects_garbage() {
        let map = parse_port_map("80:18080, 443:18443").map_err(|e| e.to_string());
        assert_eq!(map, Ok(PortMap(HashMap::from([(80, 18080), (443, 18443)]))));
        assert_eq!(parse_port_map(""), Ok(PortMap::default()));
        assert!(parse_port_map("80").is_err());
        assert!(parse_port_map("80:x").is_err());
        assert!(parse_port_map("80:1,80:2").is_err());
        assert!(parse_port_map("70000:1").is_err());
    }

    #[test]
    fn admin_bind_parses_addresses_and_off() {
        assert_eq!(
            parse_admin_bind("127.0.0.1:9901"),
            Ok(AdminBind(Some(SocketAddr::from(([127, 0, 0, 1], 9901)))))
        );
        assert_eq!(parse_admin_bind("off"), Ok(AdminBind(None)));
        assert!(parse_admin_bind("localhost").is_err());
        assert!(parse_admin_bind("10.0.0.1").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Torhaus,
    Pingora,
}

impl From<EngineArg> for torhaus_gateway::EngineChoice {
    fn from(arg: EngineArg) -> Self {
        match arg {
            EngineArg::Torhaus => torhaus_gateway::EngineChoice::Torhaus,
            EngineArg::Pingora => torhaus_gateway::EngineChoice::Pingora,
        }
    }
}
