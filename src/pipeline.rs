//! The daemon's processing stage: takes complete series from the series stage, routes them, runs
//! volume → translate → derive through the same code as `process`, writes the outbound jobs durably,
//! marks the spool series processed and wakes the forwarder. It runs on its own thread because it
//! owns the ONNX Runtime sessions (`Session::run` needs `&mut self`). A failure on one series is
//! logged, counted and quarantined; it never stops the stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::config::{PlanKind, Settings};
use crate::events;
use crate::forward::{Job, Outbox};
use crate::ingest::files;
use crate::metrics::{Beat, Metrics};
use crate::process::{open_translator, process_series, SeriesError};
use crate::route::{self, SeriesInfo};
use crate::series::{self, ReadySeries, Series};
use crate::spool::Spool;
use crate::translate::{Control, Translator};

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
    #[error("series {series_uid}: {reason}")]
    Series { series_uid: String, reason: String },
    /// The daemon is stopping: not a failure (the series stays in the spool for recovery).
    #[error("series {series_uid}: processing cancelled (the daemon is stopping)")]
    Cancelled { series_uid: String },
}

impl Processor {
    /// Runs on the calling (dedicated) thread until shutdown; `rt` drives the channel waits.
    pub fn run(mut self, rt: tokio::runtime::Handle, shutdown: watch::Receiver<bool>) {
        let mut translators = std::mem::take(&mut self.translators);
        loop {
            self.beat.beat();
            if *shutdown.borrow() || self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let next = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), self.rx.recv()).await
            });
            let ready = match next {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(_) => continue,
            };
            self.busy.store(true, Ordering::Relaxed);
            let settings = self.settings.borrow().clone();
            let uid = ready.series_uid.clone();
            match self.handle(&settings, &mut translators, &ready) {
                Ok(jobs) => {
                    if jobs > 0 {
                        let _ = self.wake.try_send(());
                    }
                }
                Err(PipelineError::Cancelled { .. }) => {
                    // Left in the spool, unprocessed: recovery resumes it after the restart.
                    let _ = std::fs::remove_dir_all(self.work_dir(&ready));
                    tracing::info!(event = "series_cancelled", series_uid = %uid, "processing cancelled by shutdown; the series stays in the spool for recovery");
                }
                Err(e) => {
                    self.metrics.series_failed.inc();
                    self.quarantine(&ready, &e.to_string());
                    events::series_failed(&uid, &e.to_string());
                }
            }
            self.busy.store(false, Ordering::Relaxed);
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
    ) -> Result<usize, PipelineError> {
        let fail = |reason: String| PipelineError::Series {
            series_uid: ready.series_uid.clone(),
            reason,
        };
        let series = read_series(&ready.dir).map_err(&fail)?;
        let first = series
            .slices
            .first()
            .ok_or_else(|| fail("no instances".into()))?;
        let info = SeriesInfo::read(&first.path, &ready.calling_ae, &ready.called_ae)
            .map_err(|e| fail(e.to_string()))?;
        let rule = route::route(&settings.rules, &info)
            .ok_or_else(|| fail("no routing rule matched".into()))?
            .clone();
        let late_ignored = ready.version > 1
            && settings.series.late_instance == crate::config::LateInstance::Ignore;
        let plan = if late_ignored {
            PlanKind::Pass
        } else {
            rule.plan
        };
        events::series_routed(&ready.series_uid, &rule.name, &format!("{plan:?}"));
        let work = self.work_dir(ready);
        let mut payloads: Vec<(PathBuf, &'static str)> = Vec::new();
        match plan {
            PlanKind::Drop => {
                self.metrics.series_dropped.inc();
                self.spool
                    .remove_series(&ready.dir)
                    .map_err(|e| fail(e.to_string()))?;
                return Ok(0);
            }
            PlanKind::Pass => {
                self.metrics.series_passed.inc();
                payloads.push((ready.dir.clone(), "original"));
            }
            PlanKind::Harmonize => {
                let salt = if ready.version > 1 {
                    format!("v{}", ready.version)
                } else {
                    String::new()
                };
                if work.exists() {
                    let _ = std::fs::remove_dir_all(&work);
                }
                let mut input = Some(series);
                let mut last_dir = PathBuf::new();
                for (step, model) in rule.models.iter().enumerate() {
                    if !translators.contains_key(model) {
                        let t = open_translator(settings, Some(model))
                            .map_err(|e| fail(e.to_string()))?;
                        translators.insert(model.clone(), t);
                    }
                    let Some(t) = translators.get_mut(model) else {
                        return Err(fail(format!("model {model} not loaded")));
                    };
                    let before = t.run_stats().0;
                    let out = work.join(format!("step{}", step + 1));
                    let Some(this) = input.take() else {
                        return Err(fail("no input for the next model".into()));
                    };
                    let control = Control::new(self.beat.clone(), self.cancel.clone());
                    let (published, _) = process_series(
                        settings, t, this, &out, false, &salt, &control,
                    )
                    .map_err(|e| match e {
                        SeriesError::Cancelled { series_uid } => {
                            PipelineError::Cancelled { series_uid }
                        }
                        e => fail(e.to_string()),
                    })?;
                    self.metrics
                        .inference_seconds
                        .inc_by(t.run_stats().0 - before);
                    last_dir = published.dir.clone();
                    if step + 1 < rule.models.len() {
                        input = Some(read_series(&last_dir).map_err(&fail)?);
                    }
                }
                self.metrics.series_translated.inc();
                payloads.push((last_dir, "derived"));
                if rule.forward_original {
                    payloads.push((ready.dir.clone(), "original"));
                }
            }
        }
        if rule.destinations.is_empty() {
            tracing::warn!(event = "no_destinations", series_uid = %ready.series_uid, rule = %rule.name, "rule has no destinations; nothing is forwarded");
            self.spool
                .remove_series(&ready.dir)
                .map_err(|e| fail(e.to_string()))?;
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
                self.outbox.put(&job).map_err(|e| fail(e.to_string()))?;
                ids.push(job.id);
            }
        }
        self.spool
            .mark_processed(&ready.dir, &ids)
            .map_err(|e| fail(e.to_string()))?;
        Ok(ids.len())
    }

    /// Moves a failed series out of the spool into `<state>/quarantine/` with its reason.
    fn quarantine(&self, ready: &ReadySeries, reason: &str) {
        let q = self.state_dir.join("quarantine").join(format!(
            "{}-v{}-{}",
            ready.series_uid,
            ready.version,
            crate::forward::outbox::now_ms()
        ));
        let result = std::fs::create_dir_all(self.state_dir.join("quarantine"))
            .and_then(|_| std::fs::rename(&ready.dir, &q))
            .and_then(|_| std::fs::write(q.join("reason.txt"), format!("{reason}\n")));
        let work = self.work_dir(ready);
        if work.exists() {
            let _ = std::fs::remove_dir_all(&work);
        }
        if let Some(study) = ready.dir.parent() {
            let _ = std::fs::remove_dir(study);
        }
        match result {
            Ok(()) => {
                events::series_quarantined(&ready.series_uid, &q.display().to_string(), reason)
            }
            Err(e) => {
                tracing::error!(event = "quarantine_failed", series_uid = %ready.series_uid, reason = %e)
            }
        }
    }
}

/// Reads the one series stored in `dir`.
pub fn read_series(dir: &Path) -> Result<Series, String> {
    let scan = files::scan(&[dir.to_owned()]).map_err(|e| e.to_string())?;
    if let Some(e) = scan.rejected.first() {
        return Err(e.to_string());
    }
    let mut groups = series::group(scan.images);
    match groups.len() {
        1 => Ok(groups.remove(0)),
        0 => Err(format!("{} holds no image", dir.display())),
        n => Err(format!("{} holds {n} series", dir.display())),
    }
}
