//! The durable outbox: one TOML file per job under `<state>/outbox/`, written atomically; failed jobs
//! move to `<state>/dead-letter/` with their reason, from where `ct-harmonizer retry` requeues them.
//!
//! Listing jobs does not re-parse every file each time: an in-memory index per folder keeps each
//! parsed job with the identity of its file (inode, size, modification time; a job is rewritten by
//! rename, so a change always shows). A listing reads the folder and parses only new or changed
//! files, so it always reflects the disk (another process, `retry`, may add jobs) at the cost of a
//! `stat` per job.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::util::fs::sync_dir;

/// One series to one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Deterministic id (series, payload kind, destination): writing it twice is idempotent.
    pub id: String,
    pub study_uid: String,
    pub source_series_uid: String,
    /// The source series' spool folder (deleted once no job needs it).
    pub spool_dir: PathBuf,
    /// Folder of the source's derived outputs (deleted with the spool folder); may be empty.
    pub work_dir: PathBuf,
    /// Folder whose `.dcm` files this job sends.
    pub payload: PathBuf,
    /// "derived" or "original".
    pub kind: String,
    pub destination: String,
    pub attempts: u32,
    /// Unix time in milliseconds before which the job is not tried again.
    pub next_attempt_ms: u64,
    pub last_error: String,
    /// SOP Instance UIDs the destination already acknowledged (progress across attempts: a later
    /// attempt sends only the others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged: Vec<String>,
}

impl Job {
    /// The id of the job for (series, kind, destination).
    pub fn make_id(source_series_uid: &str, kind: &str, destination: &str) -> String {
        let uid = crate::dicom::write::derived_uid(&["job", source_series_uid, kind, destination]);
        format!("{destination}-{kind}-{}", &uid[5..25])
    }
}

/// The outbox and dead-letter folders.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: PathBuf,
    dead: PathBuf,
    queue_index: Arc<Mutex<Index>>,
    dead_index: Arc<Mutex<Index>>,
}

/// Identity of a job file: a rewrite (by rename) changes the inode; an edit in place the size or
/// modification time.
type FileId = (u64, u64, Option<std::time::SystemTime>);

/// Parsed jobs of one folder, by file path.
#[derive(Debug, Default)]
struct Index {
    jobs: HashMap<PathBuf, (FileId, Job)>,
}

fn file_id(meta: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.ino(), meta.len(), meta.modified().ok())
}

/// Errors reading or writing the outbox's job files (the forward stage reports them as
/// `forward::OutboxError::Outbox`, with the same message).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox {path}: {source}")]
    JobParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("outbox {path}: {source}")]
    JobEncode {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
    #[error("outbox {path}: {id:?} is not a job id")]
    NotAJobId { path: PathBuf, id: String },
    #[error("outbox {path}: job index poisoned")]
    IndexPoisoned { path: PathBuf },
}

impl crate::metrics::JobQueue for Outbox {
    fn queued_jobs(&self) -> Option<Vec<(String, u32)>> {
        let jobs = self.queued().ok()?;
        Some(
            jobs.into_iter()
                .map(|j| (j.destination, j.attempts))
                .collect(),
        )
    }
    fn dead_jobs(&self) -> Option<Vec<String>> {
        let jobs = self.dead().ok()?;
        Some(jobs.into_iter().map(|j| j.destination).collect())
    }
}

/// An I/O error on an outbox file or folder.
fn err(path: &Path, source: std::io::Error) -> OutboxError {
    OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 120
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Outbox {
    pub fn open(state_dir: &Path) -> Result<Self, OutboxError> {
        let queue = state_dir.join("outbox");
        let dead = state_dir.join("dead-letter");
        for d in [&queue, &dead] {
            fs::create_dir_all(d).map_err(|e| err(d, e))?;
        }
        Ok(Self {
            queue,
            dead,
            queue_index: Arc::default(),
            dead_index: Arc::default(),
        })
    }

    fn write(dir: &Path, job: &Job) -> Result<(), OutboxError> {
        let path = dir.join(format!("{}.toml", job.id));
        let tmp = dir.join(format!(".{}.tmp", job.id));
        let text = toml::to_string(job).map_err(|source| OutboxError::JobEncode {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        sync_dir(dir).map_err(|e| err(dir, e))
    }

    /// Durably queues (or updates) a job.
    pub fn put(&self, job: &Job) -> Result<(), OutboxError> {
        Self::write(&self.queue, job)
    }

    /// The jobs of `dir`, parsing only files that are new or changed since the last listing.
    fn read_dir(dir: &Path, index: &Mutex<Index>) -> Result<Vec<Job>, OutboxError> {
        let mut index = index.lock().map_err(|_| OutboxError::IndexPoisoned {
            path: dir.to_owned(),
        })?;
        let mut seen = HashSet::new();
        for e in fs::read_dir(dir).map_err(|e| err(dir, e))?.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let id = file_id(&meta);
            if index.jobs.get(&p).is_some_and(|(known, _)| *known == id) {
                seen.insert(p);
                continue;
            }
            let text = match fs::read_to_string(&p) {
                Ok(t) => t,
                // Removed between the listing and the read (delivered meanwhile).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(&p, e)),
            };
            match toml::from_str::<Job>(&text) {
                Ok(j) => {
                    index.jobs.insert(p.clone(), (id, j));
                    seen.insert(p);
                }
                Err(e) => {
                    index.jobs.remove(&p);
                    crate::events::JobUnreadable {
                        path: &p,
                        reason: &e,
                    }
                    .emit()
                }
            }
        }
        index.jobs.retain(|p, _| seen.contains(p));
        let mut out: Vec<Job> = index.jobs.values().map(|(_, j)| j.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every queued job.
    pub fn queued(&self) -> Result<Vec<Job>, OutboxError> {
        Self::read_dir(&self.queue, &self.queue_index)
    }

    /// Every dead-lettered job.
    pub fn dead(&self) -> Result<Vec<Job>, OutboxError> {
        Self::read_dir(&self.dead, &self.dead_index)
    }

    /// One queued job as it is on disk now (`None` once delivered or dead-lettered).
    pub fn get(&self, id: &str) -> Result<Option<Job>, OutboxError> {
        if !is_job_id(id) {
            return Err(OutboxError::NotAJobId {
                path: self.queue.clone(),
                id: id.to_string(),
            });
        }
        let p = self.queue.join(format!("{id}.toml"));
        match fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|source| OutboxError::JobParse { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&p, e)),
        }
    }

    /// Removes a delivered job.
    pub fn done(&self, job: &Job) -> Result<(), OutboxError> {
        let p = self.queue.join(format!("{}.toml", job.id));
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.queue).map_err(|e| err(&self.queue, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&p, e)),
        }
    }

    /// Moves a job to the dead-letter folder with its reason (also written as `<id>.reason.txt`).
    pub fn bury(&self, job: &Job) -> Result<(), OutboxError> {
        // The reason first: once the job file is there, its reason is too.
        let reason = self.dead.join(format!("{}.reason.txt", job.id));
        fs::write(&reason, format!("{}\n", job.last_error)).map_err(|e| err(&reason, e))?;
        Self::write(&self.dead, job)?;
        self.done(job)
    }

    /// Requeues a dead-lettered job with its attempts reset.
    pub fn retry(&self, id: &str) -> Result<Job, OutboxError> {
        if !is_job_id(id) {
            return Err(OutboxError::NotAJobId {
                path: self.dead.clone(),
                id: id.to_string(),
            });
        }
        let p = self.dead.join(format!("{id}.toml"));
        let text = fs::read_to_string(&p).map_err(|e| err(&p, e))?;
        let mut job: Job = toml::from_str(&text).map_err(|source| OutboxError::JobParse {
            path: p.clone(),
            source,
        })?;
        job.attempts = 0;
        job.next_attempt_ms = 0;
        self.put(&job)?;
        fs::remove_file(&p).map_err(|e| err(&p, e))?;
        let _ = fs::remove_file(self.dead.join(format!("{id}.reason.txt")));
        sync_dir(&self.dead).map_err(|e| err(&self.dead, e))?;
        Ok(job)
    }

    /// True when a queued or dead job still needs files of `spool_dir`.
    pub fn needs(&self, spool_dir: &Path) -> Result<bool, OutboxError> {
        Ok(self
            .queued()?
            .iter()
            .chain(self.dead()?.iter())
            .any(|j| j.spool_dir == spool_dir))
    }
}

/// Back-off before attempt `attempts + 1`: initial × 2^(attempts − 1), capped.
pub fn backoff_ms(attempts: u32, initial_s: u64, max_s: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(30);
    initial_s
        .saturating_mul(1u64 << exp)
        .min(max_s)
        .saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            study_uid: "1.2".into(),
            source_series_uid: "1.2.3".into(),
            spool_dir: "/s/1.2/1.2.3".into(),
            work_dir: "/w".into(),
            payload: "/w/x".into(),
            kind: "derived".into(),
            destination: "pacs".into(),
            attempts: 0,
            next_attempt_ms: 0,
            last_error: String::new(),
            acknowledged: Vec::new(),
        }
    }

    #[test]
    fn queue_bury_retry() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let mut j = job("pacs-derived-1");
        o.put(&j).unwrap();
        assert_eq!(o.queued().unwrap(), vec![j.clone()]);
        assert!(o.needs(Path::new("/s/1.2/1.2.3")).unwrap());
        j.attempts = 8;
        j.last_error = "association refused".into();
        o.bury(&j).unwrap();
        assert!(o.queued().unwrap().is_empty());
        assert!(o.needs(Path::new("/s/1.2/1.2.3")).unwrap());
        let r = o.retry("pacs-derived-1").unwrap();
        assert_eq!(r.attempts, 0);
        assert_eq!(o.queued().unwrap().len(), 1);
        assert!(o.dead().unwrap().is_empty());
        assert!(o.retry("../../etc/passwd").is_err());
        o.done(&r).unwrap();
        assert!(!o.needs(Path::new("/s/1.2/1.2.3")).unwrap());
    }

    #[test]
    fn index_follows_the_disk_and_keeps_progress() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let mut j = job("pacs-derived-2");
        o.put(&j).unwrap();
        assert_eq!(o.queued().unwrap(), vec![j.clone()]);
        // Progress is durable in the job file and seen by the next listing (a rewrite by rename).
        j.acknowledged = vec!["1.2.3.1".into(), "1.2.3.2".into()];
        o.put(&j).unwrap();
        assert_eq!(o.queued().unwrap(), vec![j.clone()]);
        assert_eq!(o.get(&j.id).unwrap(), Some(j.clone()));
        // Another process (retry) adding a job, and one removed behind the index's back.
        let other = Outbox::open(dir.path()).unwrap();
        let k = job("pacs-derived-3");
        other.put(&k).unwrap();
        assert_eq!(o.queued().unwrap().len(), 2);
        other.done(&j).unwrap();
        assert_eq!(o.queued().unwrap(), vec![k]);
        assert_eq!(o.get(&j.id).unwrap(), None);
        assert!(o.get("../x").is_err());
        // A job file of an older version (no progress field) still reads.
        let old = "id = \"pacs-original-4\"\nstudy_uid = \"1.2\"\nsource_series_uid = \"1.2.3\"\nspool_dir = \"/s\"\nwork_dir = \"\"\npayload = \"/s\"\nkind = \"original\"\ndestination = \"pacs\"\nattempts = 1\nnext_attempt_ms = 0\nlast_error = \"\"\n";
        fs::write(dir.path().join("outbox/pacs-original-4.toml"), old).unwrap();
        let read = o.get("pacs-original-4").unwrap().unwrap();
        assert!(read.acknowledged.is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1, 5, 300), 5_000);
        assert_eq!(backoff_ms(2, 5, 300), 10_000);
        assert_eq!(backoff_ms(4, 5, 300), 40_000);
        assert_eq!(backoff_ms(20, 5, 300), 300_000);
        assert_eq!(
            Job::make_id("1.2.3", "derived", "pacs"),
            Job::make_id("1.2.3", "derived", "pacs")
        );
    }
}
