//! The daemon's processing stage: takes complete series from the series stage, routes them, runs
//! volume → translate → derive through the same code as `process`, writes the outbound jobs durably,
//! marks the spool version processed and wakes the forwarder. It runs on its own thread because it
//! owns the ONNX Runtime sessions (`Session::run` needs `&mut self`).
//!
//! Each version is processed between a crash marker written before (fsynced) and removed after, so
//! that start-up recovery recognises a series the daemon died in. A failure never stops the stage:
//! a transient one (disk full, I/O error, the state file system under
//! `state.processing_min_free_mib`) leaves the series in the spool, retried with back-off; a series
//! that cannot be harmonized is forwarded as its originals when its rule forwards originals (a
//! warning names the reason), else quarantined; a quarantine that fails leaves the series in the
//! spool, retried later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use crate::config::{PlanKind, Settings};
use crate::dicom::files;
use crate::dicom::series::{self, Series};
use crate::dicom::VolumeError;
use crate::events;
use crate::harmonize::{open_translator, process_series, ProcessError, SeriesError};
use crate::metrics::{Beat, Metrics};
use crate::model::{Control, Translator};
use crate::outbox::{Job, Outbox, OutboxError};
use crate::route::{self, SeriesInfo};
use crate::series::ReadySeries;
use crate::spool::{errno_label, transient_io, Spool, SpoolError};

/// The processing stage.
pub struct Processor {
    pub state_dir: PathBuf,
    pub spool: Spool,
    pub outbox: Outbox,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub rx: mpsc::Receiver<ReadySeries>,
    pub wake: mpsc::Sender<()>,
    pub metrics: Arc<Metrics>,
    pub beat: Beat,
    /// True while a series is being processed.
    pub busy: Arc<AtomicBool>,
    /// Set when the daemon stops: inference gives up at the next tile and the series stays in the
    /// spool for recovery.
    pub cancel: Arc<AtomicBool>,
    /// Models already loaded in ONNX Runtime, by name (those of the start-up check); a model named
    /// later, by a rule added on SIGHUP, is loaded on its first series.
    pub translators: HashMap<String, Translator>,
}

/// Why a series could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Permanent: the series goes to quarantine. (A cause that names the series itself, as the
    /// geometry check's do, is not prefixed twice.)
    #[error("{}", prefixed(series_uid, cause))]
    Series {
        series_uid: String,
        #[source]
        cause: Box<SeriesFailure>,
    },
    /// It may work later (disk full, I/O error): the series stays in the spool and is retried.
    #[error("series {series_uid}: {cause} ({errno}; retried later)")]
    Transient {
        series_uid: String,
        #[source]
        cause: Box<TransientCause>,
        /// The errno label of the I/O error underneath ("state write failed" when there is none).
        errno: String,
    },
    /// The daemon is stopping: not a failure (the series stays in the spool for recovery).
    #[error("series {series_uid}: processing cancelled (the daemon is stopping)")]
    Cancelled { series_uid: String },
}

/// "series <uid>: <cause>", unless the cause already starts so.
fn prefixed(series_uid: &str, cause: &SeriesFailure) -> String {
    let text = cause.to_string();
    let head = format!("series {series_uid}: ");
    if text.starts_with(&head) {
        text
    } else {
        head + &text
    }
}

/// Why a series cannot be harmonized, for good: it is quarantined (or its originals forwarded).
#[derive(Debug, thiserror::Error)]
pub enum SeriesFailure {
    #[error(transparent)]
    Scan(#[from] files::IngestError),
    /// A file of the series cannot be read as DICOM.
    #[error(transparent)]
    Unreadable(VolumeError),
    #[error("{} holds no image", .dir.display())]
    NoImage { dir: PathBuf },
    #[error("{} holds {count} series", .dir.display())]
    SeveralSeries { dir: PathBuf, count: usize },
    #[error("no instances")]
    NoInstances,
    #[error("no routing rule matched")]
    NoRule,
    #[error("processing panicked: {message}")]
    Panicked { message: String },
    #[error(transparent)]
    Model(#[from] ProcessError),
    #[error("model {model} not loaded")]
    ModelNotLoaded { model: String },
    #[error("no input for the next model")]
    NoInput,
    #[error(transparent)]
    Harmonize(#[from] SeriesError),
}

/// Why a series cannot be processed now (the machine's trouble, never the series').
#[derive(Debug, thiserror::Error)]
pub enum TransientCause {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Harmonize(SeriesError),
    #[error("not harmonized now: {0} (state.processing_min_free_mib)")]
    LowSpace(#[source] SpoolError),
}

/// Why a version is tried again after a back-off (it stays in the spool).
#[derive(Debug, thiserror::Error)]
enum Postponed {
    #[error("cannot write the crash marker: {0}")]
    CrashMarker(#[source] SpoolError),
    #[error("{cause}")]
    Transient {
        #[source]
        cause: Box<TransientCause>,
        errno: String,
    },
    #[error("quarantine failed: {0}")]
    Quarantine(#[source] SpoolError),
}

impl Postponed {
    /// The errno label of the I/O error underneath (empty when there is none).
    fn errno(&self) -> String {
        match self {
            Postponed::CrashMarker(e) | Postponed::Quarantine(e) => {
                e.io_error().map(errno_label).unwrap_or_default()
            }
            Postponed::Transient { errno, .. } => errno.clone(),
        }
    }
}

/// The transient I/O error somewhere in `e`'s chain of causes, as its errno label.
pub fn transient_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if transient_io(io) {
                return Some(errno_label(io));
            }
        }
        cur = c.source();
    }
    None
}

/// A series waiting for its next attempt after a transient failure.
struct Retry {
    due: Instant,
    ready: ReadySeries,
    attempts: u32,
}

impl Processor {
    /// Runs on the calling (dedicated) thread until shutdown; `rt` drives the channel waits.
    pub fn run(mut self, rt: tokio::runtime::Handle, shutdown: watch::Receiver<bool>) {
        let mut translators = std::mem::take(&mut self.translators);
        let mut retries: Vec<Retry> = Vec::new();
        let mut last_prune = Instant::now();
        loop {
            self.beat.beat();
            if *shutdown.borrow() || self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let (ready, attempts) = match retries.iter().position(|r| r.due <= now) {
                Some(i) => {
                    let r = retries.remove(i);
                    (r.ready, r.attempts)
                }
                None => {
                    let wait = retries
                        .iter()
                        .map(|r| r.due.saturating_duration_since(now))
                        .min()
                        .unwrap_or(Duration::from_secs(1))
                        .clamp(Duration::from_millis(10), Duration::from_secs(1));
                    let next =
                        rt.block_on(async { tokio::time::timeout(wait, self.rx.recv()).await });
                    match next {
                        Ok(Some(r)) => (r, 0),
                        Ok(None) => return,
                        Err(_) => {
                            if last_prune.elapsed() > Duration::from_secs(30) {
                                last_prune = Instant::now();
                                self.spool.prune_kept(false);
                            }
                            continue;
                        }
                    }
                }
            };
            if !ready.dir.exists() {
                events::SeriesGone {
                    series_uid: &ready.series_uid,
                    version: ready.version,
                    path: &ready.dir,
                }
                .emit();
                continue;
            }
            self.busy.store(true, Ordering::Relaxed);
            let settings = self.settings.borrow().clone();
            let outcome = self.process_one(&settings, &mut translators, &ready, &shutdown);
            self.busy.store(false, Ordering::Relaxed);
            if let Err(reason) = outcome {
                let errno = reason.errno();
                let attempts = attempts + 1;
                let wait = crate::outbox::backoff_ms(
                    attempts,
                    settings.series.retry_initial_seconds.max(1),
                    settings.series.retry_max_seconds.max(1),
                );
                events::SeriesRetry {
                    series_uid: &ready.series_uid,
                    version: ready.version,
                    attempts,
                    wait_ms: wait,
                    errno: &errno,
                    reason: &reason,
                }
                .emit();
                retries.push(Retry {
                    due: Instant::now() + Duration::from_millis(wait),
                    ready,
                    attempts,
                });
            }
        }
    }

    /// Processes one version between its crash marker's writing and removal. `Err` when it is to
    /// be tried again later.
    fn process_one(
        &self,
        settings: &Settings,
        translators: &mut HashMap<String, Translator>,
        ready: &ReadySeries,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Postponed> {
        if let Err(e) = self.spool.mark_processing(&ready.dir) {
            return Err(Postponed::CrashMarker(e));
        }
        let mut audit = crate::audit::SeriesRecord {
            study_uid: ready.study_uid.clone(),
            series_uid: ready.series_uid.clone(),
            version: ready.version,
            calling_ae: ready.calling_ae.clone(),
            called_ae: ready.called_ae.clone(),
            instances: ready.instances,
            ..Default::default()
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle(settings, translators, ready, &mut audit)
        }));
        let result = match result {
            Ok(r) => r,
            Err(p) => {
                // A session a panic went through is not trusted again: models reload on demand.
                translators.clear();
                Err(PipelineError::Series {
                    series_uid: ready.series_uid.clone(),
                    cause: Box::new(SeriesFailure::Panicked {
                        message: crate::util::panic_text(p.as_ref()),
                    }),
                })
            }
        };
        self.spool.clear_processing(&ready.dir);
        let stopping = *shutdown.borrow()
            || self.cancel.load(Ordering::Relaxed)
            || matches!(result, Err(PipelineError::Cancelled { .. }));
        if let (Err(e), true) = (&result, stopping) {
            // Stopping (work cancelled by SIGTERM, say): not the series' fault. It stays in the
            // spool, unprocessed, for start-up recovery.
            if matches!(e, PipelineError::Cancelled { .. }) {
                events::SeriesCancelled {
                    series_uid: &ready.series_uid,
                    version: ready.version,
                }
                .emit();
            } else {
                events::SeriesLeftToRecovery {
                    series_uid: &ready.series_uid,
                    version: ready.version,
                    reason: e,
                }
                .emit();
            }
            let _ = std::fs::remove_dir_all(self.work_dir(ready));
            return Ok(());
        }
        match result {
            Ok(jobs) => {
                audit.jobs = jobs;
                audit.emit();
                if jobs > 0 {
                    let _ = self.wake.try_send(());
                }
                Ok(())
            }
            Err(PipelineError::Transient { cause, errno, .. }) => {
                let _ = std::fs::remove_dir_all(self.work_dir(ready));
                Err(Postponed::Transient { cause, errno })
            }
            Err(e) => {
                events::SeriesFailed {
                    series_uid: &ready.series_uid,
                    reason: &e.to_string(),
                }
                .emit();
                audit.outcome = "failed";
                audit.derived_series_uid.clear();
                audit.reason = e.to_string();
                audit.emit();
                let quarantined = self.quarantine(settings, ready, &e.to_string());
                quarantined.map_err(Postponed::Quarantine)
            }
        }
    }

    fn work_dir(&self, ready: &ReadySeries) -> PathBuf {
        self.state_dir
            .join("derived")
            .join(format!("{}-v{}", ready.series_uid, ready.version))
    }

    fn handle(
        &self,
        settings: &Settings,
        translators: &mut HashMap<String, Translator>,
        ready: &ReadySeries,
        audit: &mut crate::audit::SeriesRecord,
    ) -> Result<usize, PipelineError> {
        let fail = |cause: SeriesFailure| PipelineError::Series {
            series_uid: ready.series_uid.clone(),
            cause: Box::new(cause),
        };
        // Writing to the state folder (outbox, markers) fails only for reasons of the machine,
        // never of the series: always retried.
        let transient = |cause: TransientCause, errno: Option<String>| PipelineError::Transient {
            series_uid: ready.series_uid.clone(),
            cause: Box::new(cause),
            errno: errno.unwrap_or_else(|| "state write failed".into()),
        };
        let spool_transient = |e: SpoolError| {
            let errno = e.io_error().map(errno_label);
            transient(e.into(), errno)
        };
        let originals = ready.instances_dir();
        let series = read_series(&originals).map_err(fail)?;
        let first = series
            .slices
            .first()
            .ok_or_else(|| fail(SeriesFailure::NoInstances))?;
        let info = SeriesInfo::from_header(first, &ready.calling_ae, &ready.called_ae);
        let rule = route::route(&settings.rules, &info)
            .ok_or_else(|| fail(SeriesFailure::NoRule))?
            .clone();
        let late = ready.version > 1;
        let reprocess = settings.series.late_instance == crate::config::LateInstance::Reprocess;
        if late && reprocess && ready.previous.is_none() {
            events::LateInstanceOriginalOnly {
                series_uid: &ready.series_uid,
                version: ready.version,
                instances: ready.instances,
            }
            .emit();
        }
        let plan = if late && (!reprocess || ready.previous.is_none()) {
            PlanKind::Pass
        } else {
            rule.plan
        };
        events::SeriesRouted {
            series_uid: &ready.series_uid,
            rule: &rule.name,
            plan: &format!("{plan:?}"),
        }
        .emit();
        audit.rule = rule.name.clone();
        audit.plan = format!("{plan:?}").to_lowercase();
        let work = self.work_dir(ready);
        let mut payloads: Vec<(PathBuf, &'static str)> = Vec::new();
        match plan {
            PlanKind::Drop => {
                audit.outcome = "dropped";
                self.metrics.series_dropped.inc();
                self.spool.discard(&ready.dir).map_err(spool_transient)?;
                return Ok(0);
            }
            PlanKind::Pass => {
                audit.outcome = "passed";
                self.metrics.series_passed.inc();
                payloads.push((originals.clone(), "original"));
            }
            PlanKind::Harmonize => {
                if let Err(e) = self
                    .spool
                    .check_space_for(settings.state.processing_min_free_mib)
                {
                    return Err(PipelineError::Transient {
                        series_uid: ready.series_uid.clone(),
                        errno: e
                            .io_error()
                            .map(errno_label)
                            .unwrap_or_else(|| "ENOSPC (28)".into()),
                        cause: Box::new(TransientCause::LowSpace(e)),
                    });
                }
                match self.harmonize(settings, translators, ready, &rule, series, &work, audit) {
                    Ok(last_dir) => {
                        audit.outcome = "harmonized";
                        self.metrics.series_translated.inc();
                        payloads.push((last_dir, "derived"));
                        if rule.forward_original {
                            payloads.push((originals.clone(), "original"));
                        }
                    }
                    Err(
                        e @ (PipelineError::Transient { .. } | PipelineError::Cancelled { .. }),
                    ) => return Err(e),
                    Err(e) if rule.forward_original && !rule.destinations.is_empty() => {
                        // A reason not to harmonize is no reason to drop what we acknowledged.
                        let _ = std::fs::remove_dir_all(&work);
                        events::SeriesNotHarmonized {
                            series_uid: &ready.series_uid,
                            version: ready.version,
                            reason: &e,
                        }
                        .emit(&self.metrics);
                        audit.outcome = "originals_forwarded";
                        audit.derived_series_uid.clear();
                        audit.reason = e.to_string();
                        payloads.push((originals.clone(), "original"));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if rule.destinations.is_empty() {
            events::NoDestinations {
                series_uid: &ready.series_uid,
                rule: &rule.name,
            }
            .emit();
            self.spool.discard(&ready.dir).map_err(spool_transient)?;
            let _ = std::fs::remove_dir_all(&work);
            return Ok(0);
        }
        let mut ids = Vec::new();
        for (payload, kind) in &payloads {
            for dest in &rule.destinations {
                let series_key = format!("{}-v{}", ready.series_uid, ready.version);
                let job = Job {
                    id: Job::make_id(&series_key, kind, dest),
                    study_uid: ready.study_uid.clone(),
                    source_series_uid: ready.series_uid.clone(),
                    spool_dir: ready.dir.clone(),
                    work_dir: work.clone(),
                    payload: payload.clone(),
                    kind: (*kind).to_string(),
                    destination: dest.clone(),
                    attempts: 0,
                    next_attempt_ms: 0,
                    last_error: String::new(),
                    acknowledged: Vec::new(),
                };
                self.outbox
                    .put(&job)
                    .map_err(|e| transient(e.into(), None))?;
                ids.push(job.id);
            }
        }
        self.spool
            .mark_processed(&ready.dir, &ids)
            .map_err(spool_transient)?;
        Ok(ids.len())
    }

    /// Runs the rule's models in order; returns the folder of the last derived series.
    #[allow(clippy::too_many_arguments)]
    fn harmonize(
        &self,
        settings: &Settings,
        translators: &mut HashMap<String, Translator>,
        ready: &ReadySeries,
        rule: &crate::config::Rule,
        series: Series,
        work: &Path,
        audit: &mut crate::audit::SeriesRecord,
    ) -> Result<PathBuf, PipelineError> {
        let fail = |cause: SeriesFailure| PipelineError::Series {
            series_uid: ready.series_uid.clone(),
            cause: Box::new(cause),
        };
        let salt = if ready.version > 1 {
            format!("v{}", ready.version)
        } else {
            String::new()
        };
        if work.exists() {
            let _ = std::fs::remove_dir_all(work);
        }
        let mut input = Some(series);
        let mut last_dir = PathBuf::new();
        for (step, model) in rule.models.iter().enumerate() {
            if !translators.contains_key(model) {
                let t = open_translator(settings, Some(model)).map_err(|e| fail(e.into()))?;
                translators.insert(model.clone(), t);
            }
            let Some(t) = translators.get_mut(model) else {
                return Err(fail(SeriesFailure::ModelNotLoaded {
                    model: model.clone(),
                }));
            };
            let before = t.run_stats().0;
            let out = work.join(format!("step{}", step + 1));
            let Some(this) = input.take() else {
                return Err(fail(SeriesFailure::NoInput));
            };
            let control = Control::new(self.beat.clone(), self.cancel.clone());
            let (published, _) = process_series(settings, t, this, &out, false, &salt, &control)
                .map_err(|e| {
                    if let SeriesError::Cancelled { series_uid } = e {
                        return PipelineError::Cancelled { series_uid };
                    }
                    match transient_cause(&e) {
                        Some(errno) => PipelineError::Transient {
                            series_uid: ready.series_uid.clone(),
                            cause: Box::new(TransientCause::Harmonize(e)),
                            errno,
                        },
                        None => fail(e.into()),
                    }
                })?;
            self.metrics
                .inference_seconds
                .inc_by(t.run_stats().0 - before);
            self.metrics
                .inference_slices
                .inc_by(published.slices as u64);
            let m = t.manifest();
            audit.model_run(&m.name, &m.version, &published.derived_series_uid);
            last_dir = published.dir.clone();
            // Chained models hand over through disk on purpose (issue 10 asked for volumes in
            // memory; measured against its two constraints, the disk wins):
            // - byte-identical output: the next model reads what the previous one wrote, HU
            //   rounded to stored int16 pixels, and templates its instances on the previous
            //   step's derived headers (UIDs, SourceImageSequence, series number and description
            //   of step 1); passing float slabs would change the next model's input and its tags;
            // - flat memory: the next model's z-tiles overlap (valid margin), so streaming the
            //   previous model's output slabs into it needs a second slab cache over that output,
            //   and a whole volume in memory (600 slices of 512x512 f32: 600 MiB, more after
            //   a superres model) breaks the bounded-slab property. The hand-over reads each
            //   written header once (read_series keeps the data sets) like any series.
            if step + 1 < rule.models.len() {
                input = Some(read_series(&last_dir).map_err(fail)?);
            }
        }
        Ok(last_dir)
    }

    /// Moves a failed version out of the spool into the quarantine folder with its reason. On
    /// failure the version stays in the spool (an ERROR event) and the caller retries later.
    fn quarantine(
        &self,
        settings: &Settings,
        ready: &ReadySeries,
        reason: &str,
    ) -> Result<(), crate::spool::SpoolError> {
        let name = format!(
            "{}-v{}-{}",
            ready.series_uid,
            ready.version,
            crate::util::clock::now_ms()
        );
        let work = self.work_dir(ready);
        if work.exists() {
            let _ = std::fs::remove_dir_all(&work);
        }
        match self
            .spool
            .quarantine(&ready.dir, &settings.state.quarantine(), &name, reason)
        {
            Ok(q) => {
                events::SeriesQuarantined {
                    series_uid: &ready.series_uid,
                    path: &q,
                    reason,
                }
                .emit(&self.metrics);
                Ok(())
            }
            Err(e) => {
                events::SeriesQuarantineFailed {
                    series_uid: &ready.series_uid,
                    version: ready.version,
                    reason: &e,
                }
                .emit();
                Err(e)
            }
        }
    }
}

/// Reads the one series stored in `dir`: the processing stage's only read of its headers. Each
/// header keeps its data set ([`files::scan_keeping`]), so routing ([`SeriesInfo::from_header`]),
/// frame expansion and the derived instances' templates ([`crate::harmonize`]) open no header
/// again.
pub fn read_series(dir: &Path) -> Result<Series, SeriesFailure> {
    let scan = files::scan_keeping(&[dir.to_owned()])?;
    if let Some(e) = scan.rejected.into_iter().next() {
        return Err(SeriesFailure::Unreadable(e));
    }
    let mut groups = series::group(scan.images);
    match groups.len() {
        1 => Ok(groups.remove(0)),
        0 => Err(SeriesFailure::NoImage {
            dir: dir.to_owned(),
        }),
        count => Err(SeriesFailure::SeveralSeries {
            dir: dir.to_owned(),
            count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::header::opens;
    use crate::samples::{write_phantom_series, SeriesSpec};

    /// A quarantine reason names its series once, whether or not the cause names it too.
    #[test]
    fn a_series_failure_names_its_series_once() {
        let e = |cause| PipelineError::Series {
            series_uid: "1.2.3".into(),
            cause: Box::new(cause),
        };
        let geometry = SeriesFailure::Harmonize(SeriesError::Volume(VolumeError::Geometry {
            series_uid: "1.2.3".into(),
            reason: "has 1 slice(s)".into(),
        }));
        assert_eq!(e(geometry).to_string(), "series 1.2.3: has 1 slice(s)");
        assert_eq!(
            e(SeriesFailure::NoRule).to_string(),
            "series 1.2.3: no routing rule matched"
        );
    }

    fn settings() -> Settings {
        let mut s = Settings::load_with_env(None, Vec::new()).unwrap();
        s.models.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        s
    }

    /// Routes and harmonizes the one series in `input` as the processing stage does, then again
    /// as `process` does (no data sets kept): each header is opened once by the first, and both
    /// write the same bytes.
    fn route_and_harmonize_once(input: &Path, files: &[PathBuf], slices: usize) -> SeriesInfo {
        let tmp = tempfile::tempdir().unwrap();
        let settings = settings();
        let mut t = open_translator(&settings, Some("gaussian-soft-baseline")).unwrap();

        let series = read_series(input).unwrap();
        let first = series.slices.first().unwrap();
        let info = SeriesInfo::from_header(first, "CT1", "HARMONIZER");
        assert_eq!(info.modality, "CT");
        assert_eq!(info.calling_ae, "CT1");
        let kept = tmp.path().join("kept");
        let (published, _) = process_series(
            &settings,
            &mut t,
            series,
            &kept,
            false,
            "",
            &Control::none(),
        )
        .unwrap();
        for f in files {
            assert_eq!(opens::of(f), 1, "{}", f.display());
        }

        // The one-shot path (no data sets kept) opens the headers again and writes the same bytes.
        let mut again = series::group(files::scan(&[input.to_owned()]).unwrap().images);
        let reopened = tmp.path().join("reopened");
        let (other, _) = process_series(
            &settings,
            &mut t,
            again.remove(0),
            &reopened,
            false,
            "",
            &Control::none(),
        )
        .unwrap();
        for f in files {
            // The scan and the template again: what the daemon no longer does.
            assert_eq!(opens::of(f), 3, "{}", f.display());
        }
        assert_eq!(published.derived_series_uid, other.derived_series_uid);
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&published.dir), names(&other.dir));
        assert_eq!(names(&published.dir).len(), slices);
        for n in names(&published.dir) {
            let a = std::fs::read(published.dir.join(&n)).unwrap();
            let b = std::fs::read(other.dir.join(&n)).unwrap();
            assert!(a == b, "{n:?} differs");
        }
        info
    }

    /// Routing and harmonizing a series open each source header once (the scan's), where they used
    /// to open it three times (scan, routing's first header, the derived instance's template).
    #[test]
    fn one_header_open_per_file_for_route_and_harmonize() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        let spec = SeriesSpec::axial("once", 32, 32, 6, [0.8, 0.8, 1.5]);
        let files = write_phantom_series(&spec, &input, 5.0).unwrap();
        let info = route_and_harmonize_once(&input, &files, 6);
        assert_eq!(info.series_description, "SYNTHETIC SHARP");
    }

    /// The same with real scanner headers (private attributes, which the kept data sets leave out:
    /// the derived instances drop them anyway).
    #[test]
    fn one_header_open_per_file_with_real_headers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".deps/pydicom/pydicom/data/test_files/dicomdirtests/98892001/CT5N");
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("CT5N");
        std::fs::create_dir(&input).unwrap();
        let mut files = Vec::new();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let to = input.join(e.file_name());
            std::fs::copy(e.path(), &to).unwrap();
            files.push(to);
        }
        assert_eq!(files.len(), 5);
        route_and_harmonize_once(&input, &files, 5);
    }
}
