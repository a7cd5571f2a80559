//! Identity and authorization (OIDC, JWT, rules): not built yet, see issue 5.
#![forbid(unsafe_code)]
