//! Daemon metrics (Prometheus text format through `prometheus-client`) and stage heartbeats that the
//! systemd watchdog and `/healthz` check.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Every counter and gauge the daemon exports.
#[derive(Default)]
pub struct Metrics {
    pub instances_received: Counter,
    pub instances_rejected: Counter,
    pub associations_rejected: Counter,
    pub series_completed: Counter,
    pub series_translated: Counter,
    pub series_failed: Counter,
    pub series_passed: Counter,
    pub series_dropped: Counter,
    pub jobs_forwarded: Counter,
    pub forward_failures: Counter,
    pub jobs_dead: Counter,
    pub inference_seconds: Counter<f64, AtomicU64>,
    pub spool_series: Gauge,
    pub outbox_jobs: Gauge,
    pub dead_jobs: Gauge,
    pub pending_series: Gauge,
    registry: std::sync::OnceLock<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let m = Arc::new(Self::default());
        let mut r = Registry::with_prefix("ct_harmonizer");
        r.register(
            "instances_received",
            "Instances durably spooled",
            m.instances_received.clone(),
        );
        r.register(
            "instances_rejected",
            "Instances refused (bad UID, SOP class, malformed, disk full)",
            m.instances_rejected.clone(),
        );
        r.register(
            "associations_rejected",
            "Associations rejected (AE title or caller not allowed)",
            m.associations_rejected.clone(),
        );
        r.register(
            "series_completed",
            "Series complete (quiet time or expected count)",
            m.series_completed.clone(),
        );
        r.register(
            "series_translated",
            "Series harmonized into a derived series",
            m.series_translated.clone(),
        );
        r.register(
            "series_failed",
            "Series that failed and were quarantined",
            m.series_failed.clone(),
        );
        r.register(
            "series_passed",
            "Series passed through untouched",
            m.series_passed.clone(),
        );
        r.register(
            "series_dropped",
            "Series dropped by a rule",
            m.series_dropped.clone(),
        );
        r.register(
            "jobs_forwarded",
            "Outbound jobs acknowledged by their destination",
            m.jobs_forwarded.clone(),
        );
        r.register(
            "forward_failures",
            "Failed delivery attempts",
            m.forward_failures.clone(),
        );
        r.register(
            "jobs_dead",
            "Jobs moved to the dead-letter folder",
            m.jobs_dead.clone(),
        );
        r.register(
            "inference_seconds",
            "Seconds spent in ONNX Runtime Session::run",
            m.inference_seconds.clone(),
        );
        r.register(
            "spool_series",
            "Series folders in the spool",
            m.spool_series.clone(),
        );
        r.register(
            "outbox_jobs",
            "Jobs waiting in the outbox",
            m.outbox_jobs.clone(),
        );
        r.register(
            "dead_jobs",
            "Jobs in the dead-letter folder",
            m.dead_jobs.clone(),
        );
        r.register(
            "pending_series",
            "Series still receiving instances",
            m.pending_series.clone(),
        );
        let _ = m.registry.set(r);
        m
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(r) = self.registry.get() {
            let _ = encode(&mut s, r);
        }
        s
    }
}

/// Last sign of life of each stage (Unix ms), for the watchdog and `/healthz`.
#[derive(Default)]
pub struct Heartbeats {
    stages: std::sync::Mutex<Vec<(&'static str, Arc<AtomicU64>)>>,
}

impl Heartbeats {
    /// Registers a stage and returns its beat handle.
    pub fn register(&self, stage: &'static str) -> Beat {
        let cell = Arc::new(AtomicU64::new(crate::forward::outbox::now_ms()));
        if let Ok(mut v) = self.stages.lock() {
            v.push((stage, cell.clone()));
        }
        Beat(cell)
    }

    /// Stages whose last beat is older than `max_age_ms`.
    pub fn stale(&self, max_age_ms: u64) -> Vec<&'static str> {
        let now = crate::forward::outbox::now_ms();
        self.stages
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(_, c)| now.saturating_sub(c.load(Ordering::Relaxed)) > max_age_ms)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A stage's heartbeat handle.
#[derive(Clone)]
pub struct Beat(Arc<AtomicU64>);

impl Beat {
    pub fn beat(&self) {
        self.0
            .store(crate::forward::outbox::now_ms(), Ordering::Relaxed);
    }
}
