//! Events of the series stage (grouping instances into complete series) and the processing stage
//! (routing, harmonizing, quarantine).

use std::fmt::Display;
use std::path::Path;
use tracing::{error, info, warn};

use crate::metrics::Metrics;

/// An instance of a series being processed or delivered was received again: the copy is dropped.
pub struct RetransmissionDropped<'a> {
    pub series_uid: &'a str,
    pub sop_instance_uid: &'a str,
}

impl RetransmissionDropped<'_> {
    pub fn emit(self) {
        info!(event = "retransmission", series_uid = %self.series_uid, sop_instance_uid = %self.sop_instance_uid, "instance of a processed series received again; not reprocessed");
    }
}

/// A series is complete and goes to routing. Counts a series completed.
pub struct SeriesComplete<'a> {
    pub series_uid: &'a str,
    pub instances: usize,
    pub why: &'a str,
}

impl SeriesComplete<'_> {
    pub fn emit(self, metrics: &Metrics) {
        info!(
            event = "series_complete",
            series_uid = self.series_uid,
            instances = self.instances,
            why = self.why,
            "series complete"
        );
        metrics.series_completed.inc();
    }
}

/// A complete series had no instance left to hand over (all were re-sent copies).
pub struct SeriesEmpty<'a> {
    pub series_uid: &'a str,
}

impl SeriesEmpty<'_> {
    pub fn emit(self) {
        info!(event = "series_empty", series_uid = %self.series_uid, "no instance left to hand over (all were re-sent copies)");
    }
}

/// A complete series could not be handed over: it stays in the spool and is tried again.
pub struct HandoverFailed<'a> {
    pub series_uid: &'a str,
    pub reason: &'a dyn Display,
}

impl HandoverFailed<'_> {
    pub fn emit(self) {
        error!(event = "handover_failed", series_uid = %self.series_uid, reason = %self.reason, "series stays in the spool; retried");
    }
}

/// A version handed over is no longer in the spool: skipped.
pub struct SeriesGone<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub path: &'a Path,
}

impl SeriesGone<'_> {
    pub fn emit(self) {
        warn!(event = "series_gone", series_uid = %self.series_uid, version = self.version, path = %self.path.display(), "version folder no longer in the spool; skipped");
    }
}

/// Processing failed for a transient reason: the series is retried after a back-off.
pub struct SeriesRetry<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub attempts: u32,
    pub wait_ms: u64,
    pub errno: &'a str,
    pub reason: &'a dyn Display,
}

impl SeriesRetry<'_> {
    pub fn emit(self) {
        error!(event = "series_retry", series_uid = %self.series_uid, version = self.version, attempts = self.attempts, wait_ms = self.wait_ms, errno = %self.errno, reason = %self.reason, "series stays in the spool; retried after back-off");
    }
}

/// Processing was cancelled by shutdown: the series stays in the spool for recovery.
pub struct SeriesCancelled<'a> {
    pub series_uid: &'a str,
    pub version: u32,
}

impl SeriesCancelled<'_> {
    pub fn emit(self) {
        info!(event = "series_cancelled", series_uid = %self.series_uid, version = self.version, "processing cancelled by shutdown; the series stays in the spool for recovery");
    }
}

/// Processing failed while stopping: the series stays in the spool for recovery.
pub struct SeriesLeftToRecovery<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub reason: &'a dyn Display,
}

impl SeriesLeftToRecovery<'_> {
    pub fn emit(self) {
        info!(event = "series_left_to_recovery", series_uid = %self.series_uid, version = self.version, reason = %self.reason, "stopping: the series stays in the spool");
    }
}

/// Late instances whose earlier instances were released: forwarded as originals only.
pub struct LateInstanceOriginalOnly<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub instances: usize,
}

impl LateInstanceOriginalOnly<'_> {
    pub fn emit(self) {
        warn!(event = "late_instance_original_only", series_uid = %self.series_uid, version = self.version, instances = self.instances, "late instance(s) after the earlier instances of the series were released (series.keep_delivered_seconds): forwarded as originals only, not harmonized");
    }
}

/// The routing rule that matched a series.
pub struct SeriesRouted<'a> {
    pub series_uid: &'a str,
    pub rule: &'a str,
    pub plan: &'a str,
}

impl SeriesRouted<'_> {
    pub fn emit(self) {
        info!(
            event = "series_routed",
            series_uid = self.series_uid,
            rule = self.rule,
            plan = self.plan,
            "routing rule matched"
        );
    }
}

/// A series could not be harmonized; its originals are forwarded. Counts a series failed.
pub struct SeriesNotHarmonized<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub reason: &'a dyn Display,
}

impl SeriesNotHarmonized<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.series_failed.inc();
        warn!(event = "series_not_harmonized", series_uid = %self.series_uid, version = self.version, reason = %self.reason, "series not harmonized; its originals are forwarded");
    }
}

/// The matching rule has no destinations: nothing is forwarded.
pub struct NoDestinations<'a> {
    pub series_uid: &'a str,
    pub rule: &'a str,
}

impl NoDestinations<'_> {
    pub fn emit(self) {
        warn!(event = "no_destinations", series_uid = %self.series_uid, rule = %self.rule, "rule has no destinations; nothing is forwarded");
    }
}

/// A failed series was moved to quarantine. Counts a series failed.
pub struct SeriesQuarantined<'a> {
    pub series_uid: &'a str,
    pub path: &'a Path,
    pub reason: &'a str,
}

impl SeriesQuarantined<'_> {
    pub fn emit(self, metrics: &Metrics) {
        self.log();
        metrics.series_failed.inc();
    }

    /// The line alone (a crash-loop quarantine at start-up is not counted as a failed series).
    pub(super) fn log(self) {
        error!(
            event = "series_quarantined",
            series_uid = self.series_uid,
            path = %self.path.display(),
            reason = self.reason,
            "series quarantined"
        );
    }
}

/// A failed series cannot be moved to quarantine: it stays in the spool, tried again later.
pub struct SeriesQuarantineFailed<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub reason: &'a dyn Display,
}

impl SeriesQuarantineFailed<'_> {
    pub fn emit(self) {
        error!(event = "quarantine_failed", series_uid = %self.series_uid, version = self.version, reason = %self.reason, "series stays in the spool; tried again later");
    }
}

/// A folder given to the spool's clean-up is not a version folder: left in place.
pub struct SpoolCleanupSkipped<'a> {
    pub path: &'a Path,
}

impl SpoolCleanupSkipped<'_> {
    pub fn emit(self) {
        warn!(event = "spool_cleanup_skipped", path = %self.path.display(), "not a version folder of the spool; left in place");
    }
}
