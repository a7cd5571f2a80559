//! Unit tests of the filters.
