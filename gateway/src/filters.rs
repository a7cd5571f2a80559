//! Route filters as pure functions over request and response parts.
