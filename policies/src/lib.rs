//! Identity and authorization for torhaus: the `AuthPolicy` object, OIDC login with the
//! authorization-code flow, bearer JWTs, encrypted session cookies, rules and identity headers,
//! behind a decision API ([`Authenticator`]) that the proxy calls without knowing OIDC.
#![forbid(unsafe_code)]

pub mod authenticator;
pub mod config;
pub mod headers;
pub mod identity;
pub mod jwt;
pub mod pages;
pub mod policy;
pub mod provider;
mod recent;
pub mod redirect;
pub mod revocation;
pub mod rules;
pub mod session;

pub use authenticator::{
    Allow, AuthContext, Authenticator, Decision, Pending, RequestView, SessionHandle,
};
pub use config::AuthPolicy;
pub use pages::Reply;
pub use policy::{AttachLevel, ConfigError, Policy, PolicySet, SecretSource};
