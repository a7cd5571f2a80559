//! Counting the requests in flight across every port, so a shutdown ends as soon as none is
//! left instead of always waiting out the grace period.
//!
//! pingora's own graceful shutdown sleeps the whole grace period unconditionally; the data plane
//! uses this count to return early (see `DataPlane::wait`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many requests are being handled right now, on all ports together.
#[derive(Debug, Default)]
pub struct InFlightRequests {
    count: AtomicUsize,
}

impl InFlightRequests {
    /// Counts one request until the returned guard is dropped (with the request's context).
    pub fn enter(self: &Arc<Self>) -> ActiveRequest {
        self.count.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(Arc::clone(self))
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One request in flight; dropping it ends the request's count.
#[derive(Debug)]
pub struct ActiveRequest(Arc<InFlightRequests>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_requests_until_dropped() {
        let gauge = Arc::new(InFlightRequests::default());
        let first = gauge.enter();
        let second = gauge.enter();
        assert_eq!(gauge.count(), 2);
        drop(first);
        assert_eq!(gauge.count(), 1);
        drop(second);
        assert_eq!(gauge.count(), 0);
    }
}
