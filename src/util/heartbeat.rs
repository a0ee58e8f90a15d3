//! A stage's sign of life: a shared cell holding the Unix time (ms) of its last beat. The daemon's
//! heartbeats (`metrics::Heartbeats`) read the cells; long work (inference) beats them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A stage's heartbeat handle.
#[derive(Clone)]
pub struct Beat(Arc<AtomicU64>);

impl Beat {
    /// A handle on `cell`, which holds the last beat in Unix ms (read by the daemon's heartbeats).
    pub fn new(cell: Arc<AtomicU64>) -> Self {
        Beat(cell)
    }

    pub fn beat(&self) {
        self.0
            .store(crate::util::clock::now_ms(), Ordering::Relaxed);
    }

    /// A handle registered nowhere (for callers outside the daemon).
    pub fn detached() -> Self {
        Beat(Arc::new(AtomicU64::new(0)))
    }
}
