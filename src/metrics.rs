//! Daemon metrics (Prometheus text format through `prometheus-client`) and stage heartbeats that the
//! systemd watchdog and `/healthz` check.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use crate::util::heartbeat::Beat;

/// Label sets of the per-stage and per-destination families.
pub type Labels = Vec<(String, String)>;

/// A floating-point gauge (seconds, Unix timestamps).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// What a scrape reads of the job queue (the outbox, a higher layer, implements it).
pub trait JobQueue: Send + Sync {
    /// Destination and attempts so far of each queued job (`None` when the queue cannot be read).
    fn queued_jobs(&self) -> Option<Vec<(String, u32)>>;
    /// Destination of each dead-lettered job (`None` when it cannot be read).
    fn dead_jobs(&self) -> Option<Vec<String>>;
}

/// What `/metrics` reads at each scrape: stage heartbeats, the outbox and the state folder.
struct Attached {
    beats: Arc<Heartbeats>,
    outbox: Box<dyn JobQueue>,
    settings: tokio::sync::watch::Receiver<Arc<crate::config::Settings>>,
}

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
    // Operator metrics (issue 14): set at one site each, or refreshed at each scrape.
    /// Slices written by inference (with `inference_seconds`: seconds per slice).
    pub inference_slices: Counter,
    pub last_instance_received_timestamp_seconds: FloatGauge,
    pub last_job_delivered_timestamp_seconds: FloatGauge,
    /// Refreshed at each scrape from the attached state (see [`Metrics::attach`]).
    pub state_free_bytes: Gauge,
    pub state_min_free_bytes: Gauge,
    pub stall_threshold_seconds: FloatGauge,
    pub stage_heartbeat_age_seconds: Family<Labels, FloatGauge>,
    pub stage_stalled: Family<Labels, Gauge>,
    pub destination_queued_jobs: Family<Labels, Gauge>,
    pub destination_retrying_jobs: Family<Labels, Gauge>,
    pub destination_dead_jobs: Family<Labels, Gauge>,
    attached: std::sync::OnceLock<Attached>,
    /// One scrape at a time (a refresh clears and refills the families).
    scrape: std::sync::Mutex<()>,
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
        r.register(
            "inference_slices",
            "Slices written by inference (inference_seconds / inference_slices: seconds per slice)",
            m.inference_slices.clone(),
        );
        r.register(
            "last_instance_received_timestamp_seconds",
            "Unix time of the last instance spooled (0: none since start)",
            m.last_instance_received_timestamp_seconds.clone(),
        );
        r.register(
            "last_job_delivered_timestamp_seconds",
            "Unix time of the last job acknowledged by its destination (0: none since start)",
            m.last_job_delivered_timestamp_seconds.clone(),
        );
        r.register(
            "state_free_bytes",
            "Free bytes on the state folder's file system",
            m.state_free_bytes.clone(),
        );
        r.register(
            "state_min_free_bytes",
            "Watermark (state.min_free_mib) under which instances are refused",
            m.state_min_free_bytes.clone(),
        );
        r.register(
            "stall_threshold_seconds",
            "A stage silent for longer than this is stalled",
            m.stall_threshold_seconds.clone(),
        );
        r.register(
            "stage_heartbeat_age_seconds",
            "Seconds since each stage last beat",
            m.stage_heartbeat_age_seconds.clone(),
        );
        r.register(
            "stage_stalled",
            "1 when the stage is stalled (silent for longer than the stall threshold)",
            m.stage_stalled.clone(),
        );
        r.register(
            "destination_queued_jobs",
            "Jobs in the outbox per destination",
            m.destination_queued_jobs.clone(),
        );
        r.register(
            "destination_retrying_jobs",
            "Jobs in the outbox per destination that failed at least one attempt",
            m.destination_retrying_jobs.clone(),
        );
        r.register(
            "destination_dead_jobs",
            "Dead-lettered jobs per destination",
            m.destination_dead_jobs.clone(),
        );
        let _ = m.registry.set(r);
        m
    }

    /// Lets each scrape refresh the stage, per-destination and disk metrics from the daemon's
    /// heartbeats, outbox, settings (destinations, state folder) (once, at start-up).
    pub fn attach(
        &self,
        beats: Arc<Heartbeats>,
        outbox: Box<dyn JobQueue>,
        settings: tokio::sync::watch::Receiver<Arc<crate::config::Settings>>,
    ) {
        self.stall_threshold_seconds
            .set(beats.stall_ms() as f64 / 1000.0);
        let _ = self.attached.set(Attached {
            beats,
            outbox,
            settings,
        });
    }

    /// Refreshes the scrape-time metrics (no-op until [`Metrics::attach`]).
    fn refresh(&self) {
        let Some(a) = self.attached.get() else {
            return;
        };
        let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        self.stage_heartbeat_age_seconds.clear();
        self.stage_stalled.clear();
        for (stage, age_ms) in a.beats.ages() {
            self.stage_heartbeat_age_seconds
                .get_or_create(&label("stage", &stage))
                .set(age_ms as f64 / 1000.0);
            self.stage_stalled
                .get_or_create(&label("stage", &stage))
                .set(i64::from(age_ms > a.beats.stall_ms()));
        }
        let settings = a.settings.borrow().clone();
        if let Ok(free) = fs4::available_space(&settings.state.dir) {
            self.state_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let min_free = settings.state.min_free_mib.saturating_mul(1024 * 1024);
        self.state_min_free_bytes
            .set(i64::try_from(min_free).unwrap_or(i64::MAX));
        // Every configured destination shows, with 0 when it has no job.
        let zero = |f: &Family<Labels, Gauge>| {
            for d in &settings.destinations {
                f.get_or_create(&label("destination", &d.name)).set(0);
            }
        };
        if let Some(queued) = a.outbox.queued_jobs() {
            self.destination_queued_jobs.clear();
            self.destination_retrying_jobs.clear();
            zero(&self.destination_queued_jobs);
            zero(&self.destination_retrying_jobs);
            for (destination, attempts) in &queued {
                let l = label("destination", destination);
                self.destination_queued_jobs.get_or_create(&l).inc();
                let retrying = self.destination_retrying_jobs.get_or_create(&l);
                if *attempts > 0 {
                    retrying.inc();
                }
            }
        }
        if let Some(dead) = a.outbox.dead_jobs() {
            self.destination_dead_jobs.clear();
            zero(&self.destination_dead_jobs);
            for destination in &dead {
                self.destination_dead_jobs
                    .get_or_create(&label("destination", destination))
                    .inc();
            }
        }
    }

    /// The exposition text (refreshing the scrape-time metrics first).
    pub fn render(&self) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        let mut s = String::new();
        if let Some(r) = self.registry.get() {
            let _ = encode(&mut s, r);
        }
        s
    }
}

/// Last sign of life of each stage (Unix ms), and the one rule that decides whether the daemon is
/// healthy: `/healthz` and the systemd watchdog both ask [`Heartbeats::health`].
///
/// Every stage beats while it makes progress: the SCP, series and watch stages on their ticks, the
/// processing stage per slab and per tile of inference (and per slab read and written), each
/// forwarding lane per instance sent and every second while an attempt is in flight (each network
/// wait there is bounded by `forward.timeout_seconds`). A stage silent for longer than the stall
/// threshold is stalled; there are no exemptions (a busy stage beats like any other).
pub struct Heartbeats {
    stall_ms: u64,
    stages: std::sync::Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new(DEFAULT_STALL_MS)
    }
}

/// Stall threshold when none is configured (`http.stall_seconds` in the defaults).
pub const DEFAULT_STALL_MS: u64 = 30_000;

/// The stall threshold in use: `http.stall_seconds`, but never longer than the systemd watchdog
/// interval (a stall must show on `/healthz` no later than systemd acts on it), at least one second.
pub fn stall_threshold_ms(stall_seconds: u64, watchdog: Option<std::time::Duration>) -> u64 {
    let configured = stall_seconds.saturating_mul(1000);
    let bounded = match watchdog {
        Some(w) => configured.min(w.as_millis() as u64),
        None => configured,
    };
    bounded.max(1000)
}

impl Heartbeats {
    /// Heartbeats whose stages stall after `stall_ms` without a beat.
    pub fn new(stall_ms: u64) -> Self {
        Self {
            stall_ms,
            stages: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The stall threshold in milliseconds.
    pub fn stall_ms(&self) -> u64 {
        self.stall_ms
    }

    /// Registers a stage and returns its beat handle.
    pub fn register(&self, stage: impl Into<String>) -> Beat {
        let cell = Arc::new(AtomicU64::new(crate::util::clock::now_ms()));
        if let Ok(mut v) = self.stages.lock() {
            v.push((stage.into(), cell.clone()));
        }
        Beat::new(cell)
    }

    /// Stages whose last beat is older than `max_age_ms`.
    pub fn stale(&self, max_age_ms: u64) -> Vec<String> {
        let now = crate::util::clock::now_ms();
        self.stages
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(_, c)| now.saturating_sub(c.load(Ordering::Relaxed)) > max_age_ms)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every stage with the age of its last beat in milliseconds, in registration order.
    pub fn ages(&self) -> Vec<(String, u64)> {
        let now = crate::util::clock::now_ms();
        self.stages
            .lock()
            .map(|v| {
                v.iter()
                    .map(|(n, c)| (n.clone(), now.saturating_sub(c.load(Ordering::Relaxed))))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The health rule: `Ok` when every stage beat within the stall threshold, else the stalled
    /// stages by name.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let stale = self.stale(self.stall_ms);
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rule() {
        let h = Heartbeats::new(50);
        let a = h.register("a");
        let _b = h.register(String::from("forward:pacs"));
        assert!(h.health().is_ok());
        std::thread::sleep(std::time::Duration::from_millis(120));
        a.beat();
        assert_eq!(h.health(), Err(vec!["forward:pacs".to_string()]));
        assert_eq!(stall_threshold_ms(30, None), 30_000);
        assert_eq!(
            stall_threshold_ms(30, Some(std::time::Duration::from_secs(20))),
            20_000
        );
        assert_eq!(stall_threshold_ms(0, None), 1000);
    }
}
