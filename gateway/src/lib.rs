//! torhaus's data plane on pingora: listeners, the SNI certificate resolver, the router over an
//! immutable compiled route table, filters, upstream choice and request metrics.
#![forbid(unsafe_code)]

pub mod filters;
pub mod router;
