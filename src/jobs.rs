//! `ct-harmonizer jobs list|show|retry|drop`: the operator's view of the outbox and the dead-letter
//! folder, safe to use while the daemon runs.
//!
//! Listing reads the job files without creating or changing anything. `retry` moves a dead-lettered
//! job back into the outbox ([`Outbox::retry`]). `drop` deletes a job (queued or dead-lettered) and
//! then, exactly like the forwarding stage after a delivery, deletes the series' spool version and
//! derived files only when no other job (queued or dead) still names that version
//! ([`Outbox::needs`]), and only when the version is fully processed (its `.processed` marker: all
//! its jobs are written), so dropping one destination's job never removes what another destination
//! still needs.
//!
//! A job dropped while the daemon is sending it: when that attempt succeeds nothing changes; when it
//! fails, the daemon writes the job again with its new attempt count (drop it again).

use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

use crate::outbox::{Job, Outbox};
use crate::spool::PROCESSED_MARKER;
use crate::util::fs::sync_dir;

/// Errors of the `jobs` commands.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0:?} is not a job id (letters, digits, '-' and '_'; see `ct-harmonizer jobs list`)")]
    BadId(String),
    #[error("no job {id:?} in {outbox} or {dead} (see `ct-harmonizer jobs list`)")]
    Unknown {
        id: String,
        outbox: PathBuf,
        dead: PathBuf,
    },
    #[error("job {id:?} is queued in {path}, not dead-lettered: the daemon sends it (or drop it)")]
    NotDead { id: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// In the outbox, not yet failed.
    Queued,
    /// In the outbox after at least one failed attempt.
    Retrying,
    /// In the dead-letter folder.
    Dead,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Queued => "queued",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
        })
    }
}

/// One job with where it is and, for a dead one, the reason file's text.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub state: JobState,
    /// The dead-letter reason (`<id>.reason.txt`), or the last error of a queued job.
    pub reason: String,
    /// The job file.
    pub file: PathBuf,
    #[serde(flatten)]
    pub job: Job,
}

/// What `drop` removed.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub entry: Entry,
    /// The spool version folder deleted with it (`None`: another job still needs it, it was not
    /// fully processed, or it was already gone).
    pub spool_removed: Option<PathBuf>,
    /// Why the spool version stayed, when it did.
    pub spool_kept: Option<String>,
}

fn outbox_dir(state: &Path) -> PathBuf {
    state.join("outbox")
}

fn dead_dir(state: &Path) -> PathBuf {
    state.join("dead-letter")
}

fn check_id(id: &str) -> Result<(), JobsError> {
    let ok = !id.is_empty()
        && id.len() <= 120
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(JobsError::BadId(id.to_string()))
    }
}

/// The jobs of one folder (`outbox` or `dead-letter`), read-only. A missing folder has no jobs; a
/// job file that does not parse is reported as an error naming it.
pub fn read_jobs(dir: &Path) -> Result<Vec<(PathBuf, Job)>, JobsError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(JobsError::Read {
                path: dir.to_owned(),
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        if let Some(j) = read_job(&p)? {
            out.push((p, j));
        }
    }
    out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(out)
}

/// One job file; `None` when it is gone (delivered meanwhile).
fn read_job(p: &Path) -> Result<Option<Job>, JobsError> {
    match fs::read_to_string(p) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|source| JobsError::Parse {
                path: p.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JobsError::Read {
            path: p.to_owned(),
            source,
        }),
    }
}

fn dead_reason(state: &Path, job: &Job) -> String {
    fs::read_to_string(dead_dir(state).join(format!("{}.reason.txt", job.id)))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| job.last_error.clone())
}

/// Every job: the outbox's, then the dead-letter folder's.
pub fn list(state: &Path) -> Result<Vec<Entry>, JobsError> {
    let mut out = Vec::new();
    for (file, job) in read_jobs(&outbox_dir(state))? {
        out.push(Entry {
            state: if job.attempts > 0 {
                JobState::Retrying
            } else {
                JobState::Queued
            },
            reason: job.last_error.clone(),
            file,
            job,
        });
    }
    for (file, job) in read_jobs(&dead_dir(state))? {
        out.push(Entry {
            state: JobState::Dead,
            reason: dead_reason(state, &job),
            file,
            job,
        });
    }
    Ok(out)
}

/// One job by id (the outbox first, then the dead-letter folder).
pub fn show(state: &Path, id: &str) -> Result<Entry, JobsError> {
    check_id(id)?;
    let queued = outbox_dir(state).join(format!("{id}.toml"));
    if let Some(job) = read_job(&queued)? {
        return Ok(Entry {
            state: if job.attempts > 0 {
                JobState::Retrying
            } else {
                JobState::Queued
            },
            reason: job.last_error.clone(),
            file: queued,
            job,
        });
    }
    let dead = dead_dir(state).join(format!("{id}.toml"));
    if let Some(job) = read_job(&dead)? {
        return Ok(Entry {
            state: JobState::Dead,
            reason: dead_reason(state, &job),
            file: dead,
            job,
        });
    }
    Err(JobsError::Unknown {
        id: id.to_string(),
        outbox: outbox_dir(state),
        dead: dead_dir(state),
    })
}

/// Moves a dead-lettered job back into the outbox, attempts reset.
pub fn retry(state: &Path, id: &str) -> Result<Job, JobsError> {
    let e = show(state, id)?;
    if e.state != JobState::Dead {
        return Err(JobsError::NotDead {
            id: id.to_string(),
            path: e.file,
        });
    }
    Ok(Outbox::open(state)?.retry(id)?)
}

fn remove(p: &Path) -> Result<(), JobsError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JobsError::Remove {
            path: p.to_owned(),
            source: e,
        }),
    }
}

/// Deletes a job, then its series' spool version and derived files when nothing else needs them.
pub fn drop_job(state: &Path, id: &str) -> Result<Dropped, JobsError> {
    let entry = show(state, id)?;
    let outbox = Outbox::open(state)?;
    match entry.state {
        JobState::Queued | JobState::Retrying => outbox.done(&entry.job)?,
        JobState::Dead => {
            remove(&entry.file)?;
            remove(&dead_dir(state).join(format!("{id}.reason.txt")))?;
            sync_dir(&dead_dir(state)).map_err(|e| JobsError::Remove {
                path: dead_dir(state),
                source: e,
            })?;
        }
    }
    let (spool_removed, spool_kept) = cleanup(state, &outbox, &entry.job)?;
    Ok(Dropped {
        entry,
        spool_removed,
        spool_kept,
    })
}

/// The forwarding stage's clean-up after a delivery, for a dropped job: the version folder (and
/// the derived files) go once no job names the version, the version is fully processed, and the
/// folder is a version folder of this state's spool.
fn cleanup(
    state: &Path,
    outbox: &Outbox,
    job: &Job,
) -> Result<(Option<PathBuf>, Option<String>), JobsError> {
    let dir = &job.spool_dir;
    if outbox.needs(dir)? {
        return Ok((None, Some("another job still needs it".into())));
    }
    let spool = state.join("spool");
    let is_version = dir.starts_with(&spool)
        && dir.strip_prefix(&spool).is_ok_and(|r| {
            let parts: Vec<_> = r.components().collect();
            parts.len() == 3
                && parts[2]
                    .as_os_str()
                    .to_str()
                    .and_then(|v| v.strip_prefix('v'))
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        });
    if !is_version {
        return Ok((None, Some("not a version folder of this spool".into())));
    }
    if !dir.exists() {
        return Ok((None, Some("already gone".into())));
    }
    if !dir.join(PROCESSED_MARKER).exists() {
        return Ok((
            None,
            Some("the series is still being processed (no .processed marker)".into()),
        ));
    }
    fs::remove_dir_all(dir).map_err(|e| JobsError::Remove {
        path: dir.clone(),
        source: e,
    })?;
    // Empty series and study folders go too (a non-empty one stays: remove_dir fails).
    if let Some(series) = dir.parent() {
        let _ = fs::remove_dir(series);
        if let Some(study) = series.parent() {
            let _ = fs::remove_dir(study);
        }
    }
    let derived = state.join("derived");
    let work_needed = list(state)?.iter().any(|e| e.job.work_dir == job.work_dir);
    if !work_needed
        && !job.work_dir.as_os_str().is_empty()
        && job.work_dir.starts_with(&derived)
        && job.work_dir != derived
        && job.work_dir.exists()
    {
        let _ = fs::remove_dir_all(&job.work_dir);
    }
    Ok((Some(dir.clone()), None))
}

/// Seconds until `ms` (Unix milliseconds), 0 when past.
pub fn seconds_until(ms: u64) -> u64 {
    ms.saturating_sub(crate::util::clock::now_ms()) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &Path, id: &str, dest: &str, version: &Path) -> Job {
        Job {
            id: id.into(),
            study_uid: "1.2".into(),
            source_series_uid: "1.2.3".into(),
            spool_dir: version.to_owned(),
            work_dir: state.join("derived/1.2.3"),
            payload: version.join("1.2.3"),
            kind: "original".into(),
            destination: dest.into(),
            attempts: 0,
            next_attempt_ms: 0,
            last_error: String::new(),
            acknowledged: Vec::new(),
        }
    }

    #[test]
    fn drop_keeps_what_another_job_needs() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let version = state.join("spool/1.2/1.2.3/v1");
        fs::create_dir_all(version.join("1.2.3")).unwrap();
        fs::write(version.join("1.2.3/a.dcm"), b"x").unwrap();
        fs::write(version.join(PROCESSED_MARKER), b"").unwrap();
        fs::create_dir_all(state.join("derived/1.2.3")).unwrap();
        let o = Outbox::open(state).unwrap();
        let a = job(state, "pacs-original-1", "pacs", &version);
        let mut b = job(state, "archive-original-1", "archive", &version);
        o.put(&a).unwrap();
        b.attempts = 3;
        b.last_error = "association refused".into();
        o.bury(&b).unwrap();

        let all = list(state).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(show(state, &b.id).unwrap().state, JobState::Dead);
        assert_eq!(show(state, &b.id).unwrap().reason, "association refused");
        assert!(matches!(
            retry(state, &a.id),
            Err(JobsError::NotDead { .. })
        ));

        // The dead job goes; the queued one still needs the version.
        let d = drop_job(state, &b.id).unwrap();
        assert!(d.spool_removed.is_none());
        assert!(version.join("1.2.3/a.dcm").exists());
        assert!(!state
            .join("dead-letter/archive-original-1.reason.txt")
            .exists());
        // The last job goes, and the version and derived files with it.
        let d = drop_job(state, &a.id).unwrap();
        assert_eq!(d.spool_removed, Some(version.clone()));
        assert!(!version.exists());
        assert!(!state.join("spool/1.2").exists());
        assert!(!state.join("derived/1.2.3").exists());
        assert!(list(state).unwrap().is_empty());

        assert!(matches!(
            drop_job(state, "nope-1"),
            Err(JobsError::Unknown { .. })
        ));
        assert!(matches!(drop_job(state, "../x"), Err(JobsError::BadId(_))));
    }

    #[test]
    fn drop_keeps_a_version_still_being_processed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let version = state.join("spool/1.2/1.2.3/v2");
        fs::create_dir_all(&version).unwrap();
        let o = Outbox::open(state).unwrap();
        let a = job(state, "pacs-derived-2", "pacs", &version);
        o.put(&a).unwrap();
        let d = drop_job(state, &a.id).unwrap();
        assert!(d.spool_removed.is_none());
        assert!(version.exists());
    }
}
