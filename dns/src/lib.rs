//! DNS providers behind one trait (RFC 2136, PowerDNS, Cloudflare): not built yet, see issue 4.
#![forbid(unsafe_code)]
