//! Certificate lifecycle: the local CA that makes HTTPS work out of the box, later ACME.
#![forbid(unsafe_code)]
