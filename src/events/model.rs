//! Events of the harmonize core (runtime, models, input files, one series), shared by `process`
//! and the daemon.

use std::fmt::Display;
use tracing::{error, info, warn};

/// ONNX Runtime was loaded.
pub struct RuntimeLoaded<'a> {
    pub library: &'a str,
}

impl RuntimeLoaded<'_> {
    pub fn emit(self) {
        info!(
            event = "runtime_loaded",
            library = self.library,
            "loaded ONNX Runtime"
        );
    }
}

/// A model session is ready.
pub struct ModelLoaded<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub device: &'a str,
}

impl ModelLoaded<'_> {
    pub fn emit(self) {
        info!(
            event = "model_loaded",
            model = self.model,
            version = self.version,
            kind = self.kind,
            device = self.device,
            "model ready"
        );
    }
}

/// The CUDA execution provider could not be used; the session runs on the CPU instead.
pub struct CudaFallback<'a> {
    pub model: &'a str,
    pub reason: &'a str,
}

impl CudaFallback<'_> {
    pub fn emit(self) {
        warn!(
            event = "cuda_fallback",
            model = self.model,
            reason = self.reason,
            "CUDA unavailable, running on the CPU"
        );
    }
}

/// A file that is DICOM but holds no image (DICOMDIR, SR, ...) was skipped.
pub struct FileSkipped<'a> {
    pub path: &'a str,
    pub reason: &'a str,
}

impl FileSkipped<'_> {
    pub fn emit(self) {
        info!(
            event = "file_skipped",
            path = self.path,
            reason = self.reason,
            "skipped non-image object"
        );
    }
}

/// An input file could not be read as DICOM.
pub struct FileRejected<'a> {
    pub path: &'a str,
    pub reason: &'a str,
}

impl FileRejected<'_> {
    pub fn emit(self) {
        error!(
            event = "file_rejected",
            path = self.path,
            reason = self.reason,
            "input file rejected"
        );
    }
}

/// A multi-frame instance is read as one slice per frame.
pub struct FramesExpanded<'a> {
    pub series_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub frames: usize,
}

impl FramesExpanded<'_> {
    pub fn emit(self) {
        info!(
            event = "frames_expanded",
            series_uid = %self.series_uid,
            sop_instance_uid = %self.sop_instance_uid,
            frames = self.frames,
            "multi-frame instance read as one slice per frame"
        );
    }
}

/// A series starts through the pipeline.
pub struct SeriesStarted<'a> {
    pub series_uid: &'a str,
    pub slices: usize,
    pub model: &'a str,
}

impl SeriesStarted<'_> {
    pub fn emit(self) {
        info!(
            event = "series_started",
            series_uid = self.series_uid,
            slices = self.slices,
            model = self.model,
            "harmonizing series"
        );
    }
}

/// The series' slices are tilted against the slice normal (gantry tilt); processing continues.
pub struct GantryTilt<'a> {
    pub series_uid: &'a str,
    pub degrees: f64,
}

impl GantryTilt<'_> {
    pub fn emit(self) {
        warn!(
            event = "gantry_tilt",
            series_uid = self.series_uid,
            degrees = self.degrees,
            "gantry tilt detected; output keeps the tilted slice positions"
        );
    }
}

/// An invalid attribute of a source instance was not carried into the derived series.
pub struct SourceAttributeRepaired<'a> {
    pub source_series_uid: &'a str,
    pub derived_series_uid: &'a str,
    pub repair: &'a str,
}

impl SourceAttributeRepaired<'_> {
    pub fn emit(self) {
        warn!(
            event = "source_attribute_repaired",
            source_series_uid = %self.source_series_uid,
            derived_series_uid = %self.derived_series_uid,
            repair = %self.repair,
            "invalid source attribute not carried into the derived series"
        );
    }
}

/// A derived series was published.
pub struct SeriesDone<'a> {
    pub series_uid: &'a str,
    pub derived_series_uid: &'a str,
    pub slices: usize,
    pub seconds: f64,
}

impl SeriesDone<'_> {
    pub fn emit(self) {
        info!(
            event = "series_done",
            series_uid = self.series_uid,
            derived_series_uid = self.derived_series_uid,
            slices = self.slices,
            seconds = self.seconds,
            "derived series written"
        );
    }
}

/// A series failed; nothing of it was published.
pub struct SeriesFailed<'a> {
    pub series_uid: &'a str,
    pub reason: &'a str,
}

impl SeriesFailed<'_> {
    pub fn emit(self) {
        error!(
            event = "series_failed",
            series_uid = self.series_uid,
            reason = self.reason,
            "series failed, nothing published"
        );
    }
}

/// The preview image of a `process` run could not be written (the series itself was).
pub struct PreviewFailed<'a> {
    pub reason: &'a dyn Display,
}

impl PreviewFailed<'_> {
    pub fn emit(self) {
        warn!(event = "preview_failed", reason = %self.reason);
    }
}
