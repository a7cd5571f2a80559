//! The router: compiles a DataPlaneConfig into per-listener lookup tables, and matches requests.
