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
