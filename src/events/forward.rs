//! Events of the outbox and the forwarding stage.

use std::fmt::Display;
use std::path::Path;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;

/// An outbound job was acknowledged by its destination. Counts a job forwarded and stamps the last
/// delivery time.
pub struct JobDelivered<'a> {
    pub job: &'a str,
    pub series_uid: &'a str,
    pub destination: &'a str,
    pub instances: usize,
    pub attempt: u32,
    pub seconds: f64,
}

impl JobDelivered<'_> {
    pub fn emit(self, metrics: &Metrics) {
        info!(
            event = "job_delivered",
            job = self.job,
            series_uid = self.series_uid,
            destination = self.destination,
            instances = self.instances,
            attempt = self.attempt,
            seconds = self.seconds,
            "delivered"
        );
        metrics.jobs_forwarded.inc();
        metrics
            .last_job_delivered_timestamp_seconds
            .set(crate::util::clock::now_seconds());
    }
}

/// A delivery attempt failed; the job waits and is tried again. Counts a forward failure.
pub struct JobRetry<'a> {
    pub job: &'a str,
    pub destination: &'a str,
    pub attempts: u32,
    pub wait_ms: u64,
    pub reason: &'a str,
}

impl JobRetry<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.forward_failures.inc();
        warn!(
            event = "job_retry",
            job = self.job,
            destination = self.destination,
            attempts = self.attempts,
            wait_ms = self.wait_ms,
            reason = self.reason,
            "delivery failed, will retry"
        );
    }
}

/// A job ran out of attempts and moved to the dead-letter folder. Counts a forward failure and a
/// dead job.
pub struct JobDead<'a> {
    pub job: &'a str,
    pub series_uid: &'a str,
    pub destination: &'a str,
    pub reason: &'a str,
}

impl JobDead<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.forward_failures.inc();
        error!(
            event = "job_dead",
            job = self.job,
            series_uid = self.series_uid,
            destination = self.destination,
            reason = self.reason,
            "delivery abandoned; `ct-harmonizer retry <job>` sends it again"
        );
        metrics.jobs_dead.inc();
    }
}

/// Every destination acknowledged a series; its spool files were deleted.
pub struct SeriesDelivered<'a> {
    pub series_uid: &'a str,
}

impl SeriesDelivered<'_> {
    pub fn emit(self) {
        info!(
            event = "series_delivered",
            series_uid = self.series_uid,
            "all destinations acknowledged; spool cleaned"
        );
    }
}

/// A job file of the outbox cannot be read: left out of the queue.
pub struct JobUnreadable<'a> {
    pub path: &'a Path,
    pub reason: &'a dyn Display,
}

impl JobUnreadable<'_> {
    pub fn emit(self) {
        error!(event = "job_unreadable", path = %self.path.display(), reason = %self.reason)
    }
}

/// A destination refused one instance; the others are sent.
pub struct InstanceRefused<'a> {
    pub destination: &'a str,
    pub sop_instance: &'a str,
    pub status: u16,
    pub comment: &'a str,
}

impl InstanceRefused<'_> {
    pub fn emit(self) {
        warn!(event = "instance_refused", destination = %self.destination, sop_instance = %self.sop_instance, status = format!("0x{:04X}", self.status), comment = %self.comment, "destination refused one instance; sending the others");
    }
}

/// The outbox (or one of its jobs, `job`) cannot be read.
pub struct OutboxUnreadable<'a> {
    pub job: Option<&'a str>,
    pub reason: &'a dyn Display,
}

impl OutboxUnreadable<'_> {
    pub fn emit(self) {
        match self.job {
            Some(job) => error!(event = "outbox_unreadable", job = %job, reason = %self.reason),
            None => error!(event = "outbox_unreadable", reason = %self.reason),
        }
    }
}

/// A job's progress or outcome cannot be written to the outbox.
pub struct OutboxWriteFailed<'a> {
    pub job: &'a str,
    pub reason: &'a dyn Display,
}

impl OutboxWriteFailed<'_> {
    pub fn emit(self) {
        error!(event = "outbox_write_failed", job = %self.job, reason = %self.reason);
    }
}

/// A destination's forwarding lane started.
pub struct ForwardLaneStarted<'a> {
    pub destination: &'a str,
}

impl ForwardLaneStarted<'_> {
    pub fn emit(self) {
        debug!(event = "forward_lane_started", destination = %self.destination);
    }
}

/// A delivered series' spool folder cannot be removed.
pub struct SpoolCleanupFailed<'a> {
    pub reason: &'a dyn Display,
}

impl SpoolCleanupFailed<'_> {
    pub fn emit(self) {
        error!(event = "spool_cleanup_failed", reason = %self.reason);
    }
}
