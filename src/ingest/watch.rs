//! Watched folder: a file counts as arrived when it was renamed into the folder, or when its size
//! has been stable for the configured time. Arrived DICOM files are moved into the spool (never
//! copied and left behind); anything else goes to `<state>/quarantine/` with a `.reason.txt`.

use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::scp::Arrival;
use crate::metrics::{Beat, Metrics};
use crate::spool::{InstanceKey, Spool};
use crate::volume::header::{header_from_object, open_header};

/// The watched-folder stage.
pub struct Watch {
    pub dir: PathBuf,
    pub stable: Duration,
    pub quarantine: PathBuf,
    pub spool: Spool,
    pub called_ae: String,
    pub tx: mpsc::Sender<Arrival>,
    pub metrics: Arc<Metrics>,
    pub beat: Beat,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Moves a rejected file into quarantine with its reason.
pub fn quarantine_file(quarantine: &Path, file: &Path, reason: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(quarantine)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let stamp = crate::forward::outbox::now_ms();
    let target = quarantine.join(format!("{stamp}-{name}"));
    if std::fs::rename(file, &target).is_err() {
        std::fs::copy(file, &target)?;
        std::fs::remove_file(file)?;
    }
    std::fs::write(
        quarantine.join(format!("{stamp}-{name}.reason.txt")),
        format!("{}: {reason}\n", file.display()),
    )?;
    Ok(target)
}

impl Watch {
    /// Counts a rejected file and moves it into quarantine with its reason.
    fn reject(&self, path: &Path, reason: &str) {
        self.metrics.instances_rejected.inc();
        match quarantine_file(&self.quarantine, path, reason) {
            Ok(q) => {
                tracing::warn!(event = "file_quarantined", path = %path.display(), quarantined = %q.display(), reason)
            }
            Err(qe) => {
                tracing::error!(event = "quarantine_failed", path = %path.display(), reason = %qe)
            }
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<PathBuf>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if matches!(
                    ev.kind,
                    EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    for p in ev.paths {
                        let _ = ev_tx.send(p);
                    }
                }
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&self.dir, RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(event = "watch_unavailable", dir = %self.dir.display(), reason = %e, "falling back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(event = "watch_unavailable", dir = %self.dir.display(), reason = %e, "falling back to polling");
                None
            }
        };
        let mut renamed: HashSet<PathBuf> = HashSet::new();
        // path -> (size, first time seen with that size)
        let mut seen: HashMap<PathBuf, (u64, tokio::time::Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(p) = ev_rx.recv() => { renamed.insert(p); }
                _ = tick.tick() => {
                    self.beat.beat();
                    let mut all = Vec::new();
                    files(&self.dir, &mut all);
                    let now = tokio::time::Instant::now();
                    seen.retain(|p, _| all.contains(p));
                    for p in all {
                        let Ok(meta) = std::fs::metadata(&p) else { continue };
                        let size = meta.len();
                        let entry = seen.entry(p.clone()).or_insert((size, now));
                        if entry.0 != size {
                            *entry = (size, now);
                        }
                        let arrived = renamed.remove(&p) || now.duration_since(entry.1) >= self.stable;
                        if arrived {
                            seen.remove(&p);
                            self.take(&p).await;
                        }
                    }
                }
            }
        }
    }

    async fn take(&self, path: &Path) {
        let header = open_header(path).and_then(|o| {
            let h = header_from_object(&o, path)?;
            let calling = o
                .meta()
                .source_application_entity_title
                .clone()
                .unwrap_or_default();
            Ok((h, calling))
        });
        let (h, calling) = match header {
            Ok(x) => x,
            Err(e) => {
                self.reject(path, &e.to_string());
                return;
            }
        };
        let key = InstanceKey {
            study_uid: h.study_uid.clone(),
            series_uid: h.series_uid.clone(),
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
            transfer_syntax: h.transfer_syntax.clone(),
        };
        match self.spool.adopt(&key, path) {
            Ok(_) => {
                self.metrics.instances_received.inc();
                let _ = self
                    .tx
                    .send(Arrival {
                        study_uid: key.study_uid,
                        series_uid: key.series_uid,
                        sop_instance_uid: key.sop_instance_uid,
                        calling_ae: calling.trim_end_matches(['\0', ' ']).to_string(),
                        called_ae: self.called_ae.clone(),
                        expected: None,
                    })
                    .await;
            }
            Err(e @ crate::spool::SpoolError::DiskFull { .. }) => {
                // Left where it is; taken again once there is room.
                tracing::error!(event = "disk_watermark", path = %path.display(), reason = %e);
            }
            Err(e) => {
                self.reject(path, &e.to_string());
            }
        }
    }
}
