//! The one-shot path (`ct-harmonizer process`): reads files and folders ([`crate::dicom::files`]),
//! groups them into series and runs each through the harmonize core
//! ([`crate::harmonize::process_series`]), then writes the optional preview PNG.

use std::path::PathBuf;

use crate::config::Settings;
use crate::dicom::files;
use crate::dicom::series;
use crate::dicom::VolumeError;
use crate::events;
use crate::harmonize::{open_translator, process_series};
pub use crate::harmonize::{ProcessError, Published, SeriesError};
use crate::model::Control;
use crate::preview;

/// What `process` should do.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub model: Option<String>,
    /// Write an input | output | difference PNG of the first published series here.
    pub preview: Option<PathBuf>,
}

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub published: Vec<Published>,
    pub failed: Vec<(String, SeriesError)>,
    pub rejected_files: Vec<VolumeError>,
    pub skipped_files: Vec<(PathBuf, String)>,
    pub preview: Option<PathBuf>,
    /// Summed `Session::run` wall time and number of runs.
    pub inference_seconds: f64,
    pub inference_runs: u64,
    pub device: &'static str,
}

impl Report {
    /// True when every input file and every series went through.
    pub fn all_ok(&self) -> bool {
        self.failed.is_empty() && self.rejected_files.is_empty()
    }
}

/// Runs the one-shot pipeline.
pub fn run(settings: &Settings, opts: &ProcessOptions) -> Result<Report, ProcessError> {
    let mut translator = open_translator(settings, opts.model.as_deref())?;
    let scan = files::scan(&opts.inputs)?;
    let mut report = Report {
        rejected_files: scan.rejected,
        skipped_files: scan.skipped,
        device: translator.device(),
        ..Default::default()
    };
    for s in series::group(scan.images) {
        let uid = s.series_uid.clone();
        let want_preview = opts.preview.is_some() && report.preview.is_none();
        match process_series(
            settings,
            &mut translator,
            s,
            &opts.out,
            want_preview,
            "",
            &Control::none(),
        ) {
            Ok((p, shots)) => {
                if let (Some(path), false) = (&opts.preview, shots.is_empty()) {
                    match preview::write_png(path, &shots) {
                        Ok(()) => report.preview = Some(path.clone()),
                        Err(e) => events::PreviewFailed { reason: &e }.emit(),
                    }
                }
                report.published.push(p);
            }
            Err(e) => {
                events::SeriesFailed {
                    series_uid: &uid,
                    reason: &e.to_string(),
                }
                .emit();
                report.failed.push((uid, e));
            }
        }
    }
    let (secs, runs) = translator.run_stats();
    report.inference_seconds = secs;
    report.inference_runs = runs;
    Ok(report)
}
