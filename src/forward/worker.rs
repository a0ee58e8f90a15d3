//! The forwarding worker: sends due jobs, backs off on failure, dead-letters after the last attempt,
//! and cleans the spool and derived files of a series once no job needs them.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::outbox::{backoff_ms, now_ms};
use super::{scu, ForwardError, Job, Outbox};
use crate::config::Settings;
use crate::events;
use crate::metrics::{Beat, Metrics};
use crate::spool::Spool;

/// The forwarding stage.
pub struct Forwarder {
    pub outbox: Outbox,
    pub spool: Spool,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub metrics: Arc<Metrics>,
    pub wake: mpsc::Receiver<()>,
    pub beat: Beat,
}

impl Forwarder {
    /// Runs until `shutdown` turns true; an attempt in flight is finished or abandoned (the job
    /// stays queued and is retried after a restart).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.beat.beat();
            if *shutdown.borrow() {
                return;
            }
            let due = match self.outbox.queued() {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(event = "outbox_unreadable", reason = %e);
                    Vec::new()
                }
            };
            self.metrics.outbox_jobs.set(due.len() as i64);
            let now = now_ms();
            let mut next_due: Option<u64> = None;
            for job in due {
                if job.next_attempt_ms > now {
                    next_due =
                        Some(next_due.map_or(job.next_attempt_ms, |n| n.min(job.next_attempt_ms)));
                    continue;
                }
                let settings = self.settings.borrow().clone();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = self.attempt(job, &settings) => {}
                }
                self.beat.beat();
            }
            if let Ok(d) = self.outbox.dead() {
                self.metrics.dead_jobs.set(d.len() as i64);
            }
            let wait = next_due
                .map(|t| t.saturating_sub(now_ms()).clamp(50, 1000))
                .unwrap_or(1000);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.wake.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    async fn attempt(&self, mut job: Job, settings: &Settings) {
        let started = std::time::Instant::now();
        let result = match settings
            .destinations
            .iter()
            .find(|d| d.name == job.destination)
        {
            Some(dest) => scu::send_folder(dest, &settings.forward, &job.payload).await,
            None => Err(ForwardError::UnknownDestination(job.destination.clone())),
        };
        match result {
            Ok(n) => {
                events::job_delivered(
                    &job.id,
                    &job.source_series_uid,
                    &job.destination,
                    n,
                    job.attempts + 1,
                    started.elapsed().as_secs_f64(),
                );
                self.metrics.jobs_forwarded.inc();
                if let Err(e) = self.outbox.done(&job) {
                    tracing::error!(event = "outbox_write_failed", job = %job.id, reason = %e);
                    return;
                }
                self.cleanup(&job);
            }
            Err(e) => {
                self.metrics.forward_failures.inc();
                job.attempts += 1;
                job.last_error = e.to_string();
                if job.attempts >= settings.forward.max_attempts {
                    events::job_dead(
                        &job.id,
                        &job.source_series_uid,
                        &job.destination,
                        &job.last_error,
                    );
                    self.metrics.jobs_dead.inc();
                    if let Err(e) = self.outbox.bury(&job) {
                        tracing::error!(event = "outbox_write_failed", job = %job.id, reason = %e);
                    }
                } else {
                    let wait = backoff_ms(
                        job.attempts,
                        settings.forward.initial_backoff_seconds,
                        settings.forward.max_backoff_seconds,
                    );
                    job.next_attempt_ms = now_ms() + wait;
                    events::job_retry(
                        &job.id,
                        &job.destination,
                        job.attempts,
                        wait,
                        &job.last_error,
                    );
                    if let Err(e) = self.outbox.put(&job) {
                        tracing::error!(event = "outbox_write_failed", job = %job.id, reason = %e);
                    }
                }
            }
        }
    }

    /// Deletes the series' spool folder and derived files once no job needs them.
    fn cleanup(&self, job: &Job) {
        match self.outbox.needs(&job.spool_dir) {
            Ok(false) => {
                if let Err(e) = self.spool.remove_series(&job.spool_dir) {
                    tracing::error!(event = "spool_cleanup_failed", reason = %e);
                }
                if !job.work_dir.as_os_str().is_empty() && job.work_dir.exists() {
                    let _ = std::fs::remove_dir_all(&job.work_dir);
                }
                events::series_delivered(&job.source_series_uid);
            }
            Ok(true) => {}
            Err(e) => tracing::error!(event = "outbox_unreadable", reason = %e),
        }
    }
}
