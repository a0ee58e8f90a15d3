//! Named events: every log line that matters is one function here, with structured fields first.
//! Logs name UIDs, file paths and AE titles, never patient names or IDs. ERROR is kept for what an
//! operator must act on.

use tracing::{error, info, warn};

/// ONNX Runtime was loaded.
pub fn runtime_loaded(library: &str) {
    info!(event = "runtime_loaded", library, "loaded ONNX Runtime");
}

/// A model session is ready.
pub fn model_loaded(model: &str, version: &str, kind: &str, device: &str) {
    info!(
        event = "model_loaded",
        model, version, kind, device, "model ready"
    );
}

/// The CUDA execution provider could not be used; the session runs on the CPU instead.
pub fn cuda_fallback(model: &str, reason: &str) {
    warn!(
        event = "cuda_fallback",
        model, reason, "CUDA unavailable, running on the CPU"
    );
}

/// A file that is DICOM but holds no image (DICOMDIR, SR, ...) was skipped.
pub fn file_skipped(path: &str, reason: &str) {
    info!(
        event = "file_skipped",
        path, reason, "skipped non-image object"
    );
}

/// An input file could not be read as DICOM.
pub fn file_rejected(path: &str, reason: &str) {
    error!(event = "file_rejected", path, reason, "input file rejected");
}

/// A series starts through the pipeline.
pub fn series_started(series_uid: &str, slices: usize, model: &str) {
    info!(
        event = "series_started",
        series_uid, slices, model, "harmonizing series"
    );
}

/// The series' slices are tilted against the slice normal (gantry tilt); processing continues.
pub fn gantry_tilt(series_uid: &str, degrees: f64) {
    warn!(
        event = "gantry_tilt",
        series_uid, degrees, "gantry tilt detected; output keeps the tilted slice positions"
    );
}

/// A derived series was published.
pub fn series_done(series_uid: &str, derived_series_uid: &str, slices: usize, seconds: f64) {
    info!(
        event = "series_done",
        series_uid, derived_series_uid, slices, seconds, "derived series written"
    );
}

/// A series failed; nothing of it was published.
pub fn series_failed(series_uid: &str, reason: &str) {
    error!(
        event = "series_failed",
        series_uid, reason, "series failed, nothing published"
    );
}

/// An outbound job was acknowledged by its destination.
pub fn job_delivered(
    job: &str,
    series_uid: &str,
    destination: &str,
    instances: usize,
    attempt: u32,
    seconds: f64,
) {
    info!(
        event = "job_delivered",
        job, series_uid, destination, instances, attempt, seconds, "delivered"
    );
}

/// A delivery attempt failed; the job waits and is tried again.
pub fn job_retry(job: &str, destination: &str, attempts: u32, wait_ms: u64, reason: &str) {
    warn!(
        event = "job_retry",
        job, destination, attempts, wait_ms, reason, "delivery failed, will retry"
    );
}

/// A job ran out of attempts and moved to the dead-letter folder.
pub fn job_dead(job: &str, series_uid: &str, destination: &str, reason: &str) {
    error!(
        event = "job_dead",
        job,
        series_uid,
        destination,
        reason,
        "delivery abandoned; `ct-harmonizer retry <job>` sends it again"
    );
}

/// Every destination acknowledged a series; its spool files were deleted.
pub fn series_delivered(series_uid: &str) {
    info!(
        event = "series_delivered",
        series_uid, "all destinations acknowledged; spool cleaned"
    );
}

/// An association was rejected.
pub fn association_rejected(calling_ae: &str, called_ae: &str, peer: &str, reason: &str) {
    warn!(
        event = "association_rejected",
        calling_ae, called_ae, peer, reason, "association rejected"
    );
    #[cfg(feature = "daemon")]
    crate::audit::rejected(reason);
}

/// An instance was refused with a failure status.
pub fn instance_rejected(calling_ae: &str, sop_instance_uid: &str, status: u16, reason: &str) {
    warn!(
        event = "instance_rejected",
        calling_ae, sop_instance_uid, status, reason, "instance refused"
    );
}

/// A series is complete and goes to routing.
pub fn series_complete(series_uid: &str, instances: usize, why: &str) {
    info!(
        event = "series_complete",
        series_uid, instances, why, "series complete"
    );
}

/// The routing rule that matched a series.
pub fn series_routed(series_uid: &str, rule: &str, plan: &str) {
    info!(
        event = "series_routed",
        series_uid, rule, plan, "routing rule matched"
    );
}

/// A failed series was moved to quarantine.
pub fn series_quarantined(series_uid: &str, path: &str, reason: &str) {
    error!(
        event = "series_quarantined",
        series_uid, path, reason, "series quarantined"
    );
}
