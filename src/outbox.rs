//! The durable outbox: one TOML file per job under `<state>/outbox/`, written atomically; failed jobs
//! move to `<state>/dead-letter/` with their reason, from where `ct-harmonizer retry` requeues them.
//!
//! The jobs are parsed once: [`Outbox::open`] loads both folders into an in-memory index (by job
//! id), and every write of this process (`put`, `done`, `bury`, `retry`) updates it after the
//! durable file operation. A listing reads only the folder's names, so it still shows what another
//! process changed (`ct-harmonizer jobs retry` adds a job, `jobs drop` removes one): a new name is
//! parsed, a vanished one leaves the index. A job file is never re-parsed because the forwarder
//! looked at it again; the files stay the only durable state (a restart loads them again).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// The outbox and dead-letter folders, with the index of their jobs.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: PathBuf,
    dead: PathBuf,
    index: Arc<Index>,
}

/// The parsed jobs of both folders, by id (sorted, as a listing returns them).
#[derive(Debug, Default)]
struct Index {
    queue: Mutex<BTreeMap<String, Job>>,
    dead: Mutex<BTreeMap<String, Job>>,
    /// Job files parsed by this outbox (the index's cost, for the tests).
    parses: AtomicU64,
}

/// Errors reading or writing the outbox's job files (the forward stage reports them as
/// `forward::ForwardError::Outbox`, with the same message).
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

fn lock<'a>(
    dir: &Path,
    m: &'a Mutex<BTreeMap<String, Job>>,
) -> Result<MutexGuard<'a, BTreeMap<String, Job>>, OutboxError> {
    m.lock().map_err(|_| OutboxError::IndexPoisoned {
        path: dir.to_owned(),
    })
}

fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 120
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// True when `p` exists (a failed `stat` other than "not found" counts as existing: the job is
/// not dropped from the index on a transient error).
fn exists(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

impl Outbox {
    /// Opens (creating) both folders and loads their jobs into the index.
    pub fn open(state_dir: &Path) -> Result<Self, OutboxError> {
        let queue = state_dir.join("outbox");
        let dead = state_dir.join("dead-letter");
        for d in [&queue, &dead] {
            fs::create_dir_all(d).map_err(|e| err(d, e))?;
        }
        let o = Self {
            queue,
            dead,
            index: Arc::default(),
        };
        o.refresh(&o.queue, &o.index.queue)?;
        o.refresh(&o.dead, &o.index.dead)?;
        Ok(o)
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

    /// Reads and parses one job file: `Ok(None)` when it is gone, `Ok(Some(Err))` when it does not
    /// parse.
    #[allow(clippy::type_complexity)]
    fn parse(&self, p: &Path) -> Result<Option<Result<Job, toml::de::Error>>, OutboxError> {
        let text = match fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(p, e)),
        };
        self.index.parses.fetch_add(1, Ordering::Relaxed);
        Ok(Some(toml::from_str(&text)))
    }

    /// Durably queues (or updates) a job.
    pub fn put(&self, job: &Job) -> Result<(), OutboxError> {
        Self::write(&self.queue, job)?;
        lock(&self.queue, &self.index.queue)?.insert(job.id.clone(), job.clone());
        Ok(())
    }

    /// Brings the index of `dir` in line with the folder's names: a new file (written by another
    /// process) is parsed, a vanished one (removed by another process) leaves the index. Known
    /// jobs are not read again.
    fn refresh(&self, dir: &Path, index: &Mutex<BTreeMap<String, Job>>) -> Result<(), OutboxError> {
        let mut names = HashSet::new();
        for e in fs::read_dir(dir).map_err(|e| err(dir, e))?.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            if let Some(id) = p.file_stem().and_then(|s| s.to_str()) {
                names.insert(id.to_string());
            }
        }
        let mut jobs = lock(dir, index)?;
        for id in &names {
            if jobs.contains_key(id) {
                continue;
            }
            let p = dir.join(format!("{id}.toml"));
            match self.parse(&p)? {
                Some(Ok(j)) => {
                    jobs.insert(id.clone(), j);
                }
                Some(Err(e)) => crate::events::JobUnreadable {
                    path: &p,
                    reason: &e,
                }
                .emit(),
                // Removed between the listing and the read (delivered meanwhile).
                None => {}
            }
        }
        // A job this process wrote after the listing is still there: only a file that is gone
        // now leaves the index.
        let gone: Vec<String> = jobs
            .keys()
            .filter(|id| !names.contains(*id) && !exists(&dir.join(format!("{id}.toml"))))
            .cloned()
            .collect();
        for id in &gone {
            jobs.remove(id);
        }
        drop(jobs);
        if dir == self.dead && !gone.is_empty() {
            // Requeued by another process (`jobs retry`): seen in the queue at once, so that no
            // clean-up in between takes the series for unneeded.
            let mut queue = lock(&self.queue, &self.index.queue)?;
            for id in gone {
                let p = self.queue.join(format!("{id}.toml"));
                if let std::collections::btree_map::Entry::Vacant(e) = queue.entry(id) {
                    if let Ok(Some(Ok(j))) = self.parse(&p) {
                        e.insert(j);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every queued job.
    pub fn queued(&self) -> Result<Vec<Job>, OutboxError> {
        self.refresh(&self.queue, &self.index.queue)?;
        Ok(lock(&self.queue, &self.index.queue)?
            .values()
            .cloned()
            .collect())
    }

    /// Every dead-lettered job.
    pub fn dead(&self) -> Result<Vec<Job>, OutboxError> {
        self.refresh(&self.dead, &self.index.dead)?;
        Ok(lock(&self.dead, &self.index.dead)?
            .values()
            .cloned()
            .collect())
    }

    /// One queued job as it is on disk now (`None` once delivered, dead-lettered or dropped): from
    /// the index while its file exists; a job the index does not know yet is read from its file.
    pub fn get(&self, id: &str) -> Result<Option<Job>, OutboxError> {
        if !is_job_id(id) {
            return Err(OutboxError::NotAJobId {
                path: self.queue.clone(),
                id: id.to_string(),
            });
        }
        let p = self.queue.join(format!("{id}.toml"));
        let mut jobs = lock(&self.queue, &self.index.queue)?;
        if let Some(j) = jobs.get(id) {
            if exists(&p) {
                return Ok(Some(j.clone()));
            }
            jobs.remove(id);
            return Ok(None);
        }
        match self.parse(&p)? {
            Some(Ok(j)) => {
                jobs.insert(id.to_string(), j.clone());
                Ok(Some(j))
            }
            Some(Err(source)) => Err(OutboxError::JobParse { path: p, source }),
            None => Ok(None),
        }
    }

    /// Removes a delivered job.
    pub fn done(&self, job: &Job) -> Result<(), OutboxError> {
        let p = self.queue.join(format!("{}.toml", job.id));
        let removed = match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.queue).map_err(|e| err(&self.queue, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => return Err(err(&p, e)),
        };
        lock(&self.queue, &self.index.queue)?.remove(&job.id);
        removed
    }

    /// Moves a job to the dead-letter folder with its reason (also written as `<id>.reason.txt`).
    pub fn bury(&self, job: &Job) -> Result<(), OutboxError> {
        // The reason first: once the job file is there, its reason is too.
        let reason = self.dead.join(format!("{}.reason.txt", job.id));
        fs::write(&reason, format!("{}\n", job.last_error)).map_err(|e| err(&reason, e))?;
        Self::write(&self.dead, job)?;
        lock(&self.dead, &self.index.dead)?.insert(job.id.clone(), job.clone());
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
        self.index.parses.fetch_add(1, Ordering::Relaxed);
        let mut job: Job = toml::from_str(&text).map_err(|source| OutboxError::JobParse {
            path: p.clone(),
            source,
        })?;
        job.attempts = 0;
        job.next_attempt_ms = 0;
        self.put(&job)?;
        fs::remove_file(&p).map_err(|e| err(&p, e))?;
        lock(&self.dead, &self.index.dead)?.remove(id);
        let _ = fs::remove_file(self.dead.join(format!("{id}.reason.txt")));
        sync_dir(&self.dead).map_err(|e| err(&self.dead, e))?;
        Ok(job)
    }

    /// True when a queued or dead job still needs files of `spool_dir` (the folders' names are
    /// listed, as for [`Self::queued`]; known jobs are not read again).
    pub fn needs(&self, spool_dir: &Path) -> Result<bool, OutboxError> {
        self.refresh(&self.queue, &self.index.queue)?;
        self.refresh(&self.dead, &self.index.dead)?;
        let needed = |jobs: &BTreeMap<String, Job>| jobs.values().any(|j| j.spool_dir == spool_dir);
        if needed(&*lock(&self.queue, &self.index.queue)?) {
            return Ok(true);
        }
        Ok(needed(&*lock(&self.dead, &self.index.dead)?))
    }

    /// Job files parsed by this outbox since it opened.
    #[cfg(test)]
    fn parses(&self) -> u64 {
        self.index.parses.load(Ordering::Relaxed)
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

    /// Each job file is parsed once, however often the forwarder lists, reads and cleans up: N jobs
    /// loaded at start-up and delivered one by one cost N parses, not N².
    #[test]
    fn jobs_are_parsed_once() {
        let dir = tempfile::tempdir().unwrap();
        let n = 40;
        let writer = Outbox::open(dir.path()).unwrap();
        for i in 0..n {
            let mut j = job(&format!("pacs-derived-{i}"));
            j.spool_dir = format!("/s/1.2/{i}").into();
            writer.put(&j).unwrap();
        }
        // Jobs this process writes are indexed as written: nothing to parse.
        assert_eq!(writer.parses(), 0);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.parses(), n);
        for round in 0..n {
            // What the forwarder does per delivery: list, read the job before its attempt, record
            // progress, remove it, and check whether its series is still needed.
            let queued = o.queued().unwrap();
            assert_eq!(queued.len() as u64, n - round);
            let mut j = o.get(&queued[0].id).unwrap().unwrap();
            j.acknowledged.push("1.2.3.1".into());
            o.put(&j).unwrap();
            assert_eq!(o.get(&j.id).unwrap(), Some(j.clone()));
            o.done(&j).unwrap();
            assert!(!o.needs(&j.spool_dir).unwrap());
            assert!(o.dead().unwrap().is_empty());
        }
        assert!(o.queued().unwrap().is_empty());
        assert_eq!(o.parses(), n);
        // Another process's new job is parsed once when first listed; its removal is seen.
        let k = job("pacs-derived-x");
        writer.put(&k).unwrap();
        assert_eq!(o.queued().unwrap(), vec![k.clone()]);
        assert_eq!(o.queued().unwrap(), vec![k.clone()]);
        assert_eq!(o.parses(), n + 1);
        writer.done(&k).unwrap();
        assert_eq!(o.get(&k.id).unwrap(), None);
        assert!(o.queued().unwrap().is_empty());
    }

    /// A job requeued by another process (`jobs retry`) counts as needed at once, even when the
    /// dead-letter folder is listed before the queue is.
    #[test]
    fn requeued_elsewhere_stays_needed() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let j = job("pacs-derived-5");
        o.put(&j).unwrap();
        o.bury(&j).unwrap();
        assert_eq!(o.dead().unwrap().len(), 1);
        Outbox::open(dir.path())
            .unwrap()
            .retry("pacs-derived-5")
            .unwrap();
        assert!(o.dead().unwrap().is_empty());
        assert!(o.needs(Path::new("/s/1.2/1.2.3")).unwrap());
        assert_eq!(o.queued().unwrap().len(), 1);
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
