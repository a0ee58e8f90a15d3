//! The durable outbox: one TOML file per job under `<state>/outbox/`, written atomically; failed jobs
//! move to `<state>/dead-letter/` with their reason, from where `ct-harmonizer retry` requeues them.

use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

use super::ForwardError;
use crate::spool::sync_dir;

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
}

impl Job {
    /// The id of the job for (series, kind, destination).
    pub fn make_id(source_series_uid: &str, kind: &str, destination: &str) -> String {
        let uid = crate::derive::derived_uid(&["job", source_series_uid, kind, destination]);
        format!("{destination}-{kind}-{}", &uid[5..25])
    }
}

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outbox and dead-letter folders.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: PathBuf,
    dead: PathBuf,
}

fn err(path: &Path, reason: impl ToString) -> ForwardError {
    ForwardError::Outbox {
        path: path.to_owned(),
        reason: reason.to_string(),
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
    pub fn open(state_dir: &Path) -> Result<Self, ForwardError> {
        let queue = state_dir.join("outbox");
        let dead = state_dir.join("dead-letter");
        for d in [&queue, &dead] {
            fs::create_dir_all(d).map_err(|e| err(d, e))?;
        }
        Ok(Self { queue, dead })
    }

    fn write(dir: &Path, job: &Job) -> Result<(), ForwardError> {
        let path = dir.join(format!("{}.toml", job.id));
        let tmp = dir.join(format!(".{}.tmp", job.id));
        let text = toml::to_string(job).map_err(|e| err(&path, e))?;
        fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        sync_dir(dir).map_err(|e| err(dir, e))
    }

    /// Durably queues (or updates) a job.
    pub fn put(&self, job: &Job) -> Result<(), ForwardError> {
        Self::write(&self.queue, job)
    }

    fn read_dir(dir: &Path) -> Result<Vec<Job>, ForwardError> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| err(dir, e))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let text = fs::read_to_string(&p).map_err(|e| err(&p, e))?;
                match toml::from_str::<Job>(&text) {
                    Ok(j) => out.push(j),
                    Err(e) => {
                        tracing::error!(event = "job_unreadable", path = %p.display(), reason = %e)
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every queued job.
    pub fn queued(&self) -> Result<Vec<Job>, ForwardError> {
        Self::read_dir(&self.queue)
    }

    /// Every dead-lettered job.
    pub fn dead(&self) -> Result<Vec<Job>, ForwardError> {
        Self::read_dir(&self.dead)
    }

    /// Removes a delivered job.
    pub fn done(&self, job: &Job) -> Result<(), ForwardError> {
        let p = self.queue.join(format!("{}.toml", job.id));
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.queue).map_err(|e| err(&self.queue, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&p, e)),
        }
    }

    /// Moves a job to the dead-letter folder with its reason (also written as `<id>.reason.txt`).
    pub fn bury(&self, job: &Job) -> Result<(), ForwardError> {
        // The reason first: once the job file is there, its reason is too.
        let reason = self.dead.join(format!("{}.reason.txt", job.id));
        fs::write(&reason, format!("{}\n", job.last_error)).map_err(|e| err(&reason, e))?;
        Self::write(&self.dead, job)?;
        self.done(job)
    }

    /// Requeues a dead-lettered job with its attempts reset.
    pub fn retry(&self, id: &str) -> Result<Job, ForwardError> {
        if !is_job_id(id) {
            return Err(err(&self.dead, format!("{id:?} is not a job id")));
        }
        let p = self.dead.join(format!("{id}.toml"));
        let text = fs::read_to_string(&p).map_err(|e| err(&p, e))?;
        let mut job: Job = toml::from_str(&text).map_err(|e| err(&p, e))?;
        job.attempts = 0;
        job.next_attempt_ms = 0;
        self.put(&job)?;
        fs::remove_file(&p).map_err(|e| err(&p, e))?;
        let _ = fs::remove_file(self.dead.join(format!("{id}.reason.txt")));
        sync_dir(&self.dead).map_err(|e| err(&self.dead, e))?;
        Ok(job)
    }

    /// True when a queued or dead job still needs files of `spool_dir`.
    pub fn needs(&self, spool_dir: &Path) -> Result<bool, ForwardError> {
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
