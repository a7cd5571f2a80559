//! The one error type every provider, lookup and planner returns, with a retry classification
//! so that callers (the ACME loop) back off instead of hammering a server that said no.

use std::time::Duration;

/// What went wrong talking to DNS. Each variant names the provider and the object involved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The provider configuration is invalid; `field` is the path of the offending field.
    #[error("invalid DNS provider configuration: {field}: {reason}")]
    Config { field: String, reason: String },
    /// A name handed to the provider is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// No zone the provider manages contains `name`.
    #[error("{provider}: no zone found that contains {name}")]
    ZoneNotFound { provider: String, name: String },
    /// The server rejected the credentials (wrong TSIG key, API key or token). Retrying with the
    /// same configuration cannot succeed.
    #[error("{provider}: credentials rejected: {detail}")]
    Unauthorized { provider: String, detail: String },
    /// The server understood the request but refused the change (policy, prerequisites,
    /// validation). Retrying unchanged will not help.
    #[error("{provider}: change to {name} rejected: {detail}")]
    Rejected {
        provider: String,
        name: String,
        detail: String,
    },
    /// The server could not be reached or did not answer in time. Retrying later may succeed.
    #[error("{provider}: {endpoint} unreachable: {detail}")]
    Unreachable {
        provider: String,
        endpoint: String,
        detail: String,
    },
    /// The server answered with something this client cannot interpret.
    #[error("{provider}: unexpected answer: {detail}")]
    Protocol { provider: String, detail: String },
    /// The TXT value did not become visible on every authoritative server before the deadline.
    #[error(
        "TXT {value:?} at {name} not visible on {} after {waited:?}",
        pending.join(", ")
    )]
    PropagationTimeout {
        name: String,
        value: String,
        /// The servers that still did not answer with the value.
        pending: Vec<String>,
        waited: Duration,
    },
}

impl DnsError {
    /// Whether the same request may succeed later without a configuration change. Credential,
    /// configuration and policy errors are permanent: callers should alert, not loop.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Protocol { .. } | Self::PropagationTimeout { .. }
        )
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
