//! The forwarding stage: one lane (task) per destination, so a slow or failing destination never
//! delays another's jobs. Each lane sends its due jobs, backs off on failure, dead-letters after the
//! last attempt, and cleans the spool and derived files of a series once no job needs them.
//!
//! The dispatcher lists the outbox (its in-memory index: a listing reads the folder's names and
//! parses only files another process added) when woken by the processing stage and every second
//! (`retry` adds jobs from another process), and hands each lane the ids of its jobs; a lane takes
//! each job from the index right before its attempt, checking that its file is still there, so a
//! job delivered or dropped meanwhile is never sent twice. Each lane beats its own heartbeat
//! (`forward:<destination>`) per instance acknowledged and every second while an attempt waits on
//! the destination (every such wait is bounded by `forward.timeout_seconds`), and records the SOP
//! instances acknowledged in the job file, so a later attempt sends only the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use super::{scu, ForwardError};
use crate::config::Settings;
use crate::events;
use crate::metrics::{Beat, Heartbeats, Metrics};
use crate::outbox::backoff_ms;
use crate::outbox::{Job, Outbox};
use crate::spool::Spool;
use crate::util::clock::now_ms;

/// How often a lane writes the acknowledged instances of a job in progress to its job file (and
/// always at the end of an attempt).
const PROGRESS_PERSIST: Duration = Duration::from_secs(2);

/// The forwarding stage.
pub struct Forwarder {
    pub outbox: Outbox,
    pub spool: Spool,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub metrics: Arc<Metrics>,
    pub wake: mpsc::Receiver<()>,
    /// The dispatcher's heartbeat.
    pub beat: Beat,
    /// Where each destination's lane registers its heartbeat.
    pub beats: Arc<Heartbeats>,
}

/// What the lanes share.
struct Shared {
    outbox: Outbox,
    spool: Spool,
    settings: watch::Receiver<Arc<Settings>>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Runs until `shutdown` turns true; an attempt in flight is abandoned (the job stays queued,
    /// with the instances acknowledged so far written to it, and is retried after a restart).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let shared = Arc::new(Shared {
            outbox: self.outbox.clone(),
            spool: self.spool.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
        });
        let mut lanes: HashMap<String, watch::Sender<Vec<String>>> = HashMap::new();
        let mut handles = Vec::new();
        loop {
            self.beat.beat();
            if *shutdown.borrow() {
                break;
            }
            let queued = match self.outbox.queued() {
                Ok(jobs) => jobs,
                Err(e) => {
                    events::OutboxUnreadable {
                        job: None,
                        reason: &e,
                    }
                    .emit();
                    Vec::new()
                }
            };
            self.metrics.outbox_jobs.set(queued.len() as i64);
            let mut by_dest: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for j in queued {
                by_dest.entry(j.destination).or_default().push(j.id);
            }
            for (dest, ids) in &by_dest {
                let lane = lanes.entry(dest.clone()).or_insert_with(|| {
                    let (tx, rx) = watch::channel(Vec::new());
                    let beat = self.beats.register(format!("forward:{dest}"));
                    handles.push(tokio::spawn(lane(
                        shared.clone(),
                        dest.clone(),
                        rx,
                        beat,
                        shutdown.clone(),
                    )));
                    tx
                });
                lane.send_if_modified(|cur| replace_if_changed(cur, ids));
            }
            for (dest, lane) in &lanes {
                if !by_dest.contains_key(dest) {
                    lane.send_if_modified(|cur| replace_if_changed(cur, &[]));
                }
            }
            if let Ok(d) = self.outbox.dead() {
                self.metrics.dead_jobs.set(d.len() as i64);
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = self.wake.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for h in handles {
            let _ = h.await;
        }
    }
}

fn replace_if_changed(cur: &mut Vec<String>, ids: &[String]) -> bool {
    if cur.as_slice() == ids {
        false
    } else {
        *cur = ids.to_vec();
        true
    }
}

/// One destination's lane: its jobs one after the other, never waiting for another destination.
async fn lane(
    shared: Arc<Shared>,
    destination: String,
    mut ids: watch::Receiver<Vec<String>>,
    beat: Beat,
    mut shutdown: watch::Receiver<bool>,
) {
    events::ForwardLaneStarted {
        destination: &destination,
    }
    .emit();
    loop {
        beat.beat();
        if *shutdown.borrow() {
            return;
        }
        let list = ids.borrow_and_update().clone();
        let mut next_due: Option<u64> = None;
        for id in list {
            if *shutdown.borrow() {
                return;
            }
            // The job as it is now: delivered, dead-lettered or dropped meanwhile means gone.
            let job = match shared.outbox.get(&id) {
                Ok(Some(j)) => j,
                Ok(None) => continue,
                Err(e) => {
                    events::OutboxUnreadable {
                        job: Some(&id),
                        reason: &e,
                    }
                    .emit();
                    continue;
                }
            };
            let now = now_ms();
            if job.next_attempt_ms > now {
                next_due =
                    Some(next_due.map_or(job.next_attempt_ms, |n| n.min(job.next_attempt_ms)));
                continue;
            }
            let settings = shared.settings.borrow().clone();
            if !shared.attempt(job, &settings, &beat, &mut shutdown).await {
                return;
            }
            beat.beat();
        }
        let wait = next_due
            .map(|t| t.saturating_sub(now_ms()).clamp(50, 1000))
            .unwrap_or(1000);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ids.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

impl Shared {
    /// One delivery attempt. Returns false when the daemon is stopping: the attempt was abandoned
    /// and the instances acknowledged so far are written to the job file first.
    async fn attempt(
        &self,
        mut job: Job,
        settings: &Settings,
        beat: &Beat,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let started = Instant::now();
        let skip: HashSet<String> = job.acknowledged.iter().cloned().collect();
        let before = job.acknowledged.len();
        let result = match settings
            .destinations
            .iter()
            .find(|d| d.name == job.destination)
        {
            Some(dest) => {
                let payload = job.payload.clone();
                let outbox = &self.outbox;
                let mut persisted = Instant::now();
                let progress = &mut job;
                let mut on_ack = |sop: &str| {
                    beat.beat();
                    progress.acknowledged.push(sop.to_string());
                    if persisted.elapsed() >= PROGRESS_PERSIST {
                        persisted = Instant::now();
                        if let Err(e) = outbox.put(progress) {
                            events::OutboxWriteFailed {
                                job: &progress.id,
                                reason: &e,
                            }
                            .emit();
                        }
                    }
                };
                let mut send = Box::pin(scu::send_folder(
                    dest,
                    &settings.forward,
                    &payload,
                    &skip,
                    &mut on_ack,
                ));
                // The lane beats while the attempt waits on the destination: a slow destination
                // is not a stalled daemon (each wait is bounded by forward.timeout_seconds).
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let outcome = loop {
                    tokio::select! {
                        r = &mut send => break Some(r),
                        _ = tick.tick() => beat.beat(),
                        _ = shutdown.changed() => break None,
                    }
                };
                drop(send);
                match outcome {
                    Some(r) => r,
                    None => {
                        if job.acknowledged.len() > before {
                            if let Err(e) = self.outbox.put(&job) {
                                events::OutboxWriteFailed {
                                    job: &job.id,
                                    reason: &e,
                                }
                                .emit();
                            }
                        }
                        return false;
                    }
                }
            }
            None => Err(ForwardError::UnknownDestination(job.destination.clone())),
        };
        let dest = settings
            .destinations
            .iter()
            .find(|d| d.name == job.destination);
        let audit = |job: &Job, instances: usize, status: &str, reason: &str| {
            crate::audit::ForwardRecord {
                job: &job.id,
                destination: &job.destination,
                destination_ae: dest.map(|d| d.ae_title.as_str()).unwrap_or_default(),
                destination_address: dest
                    .map(|d| match d.kind {
                        crate::config::DestinationKind::Folder => d.path.clone(),
                        crate::config::DestinationKind::Scp => format!("{}:{}", d.host, d.port),
                    })
                    .unwrap_or_default(),
                kind: &job.kind,
                study_uid: &job.study_uid,
                source_series_uid: &job.source_series_uid,
                series_uid: crate::audit::payload_series_uid(&job.payload),
                instances,
                attempt: job.attempts + 1,
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit(status, reason)
        };
        match result {
            Ok(n) => {
                audit(&job, n + before, "delivered", "");
                events::JobDelivered {
                    job: &job.id,
                    series_uid: &job.source_series_uid,
                    destination: &job.destination,
                    instances: n + before,
                    attempt: job.attempts + 1,
                    seconds: started.elapsed().as_secs_f64(),
                }
                .emit(&self.metrics);
                if let Err(e) = self.outbox.done(&job) {
                    events::OutboxWriteFailed {
                        job: &job.id,
                        reason: &e,
                    }
                    .emit();
                    return true;
                }
                self.cleanup(&job);
            }
            Err(e) => {
                job.last_error = e.to_string();
                let status = if job.attempts + 1 >= settings.forward.max_attempts {
                    "dead"
                } else {
                    "retry"
                };
                audit(&job, job.acknowledged.len(), status, &job.last_error);
                job.attempts += 1;
                if job.attempts >= settings.forward.max_attempts {
                    events::JobDead {
                        job: &job.id,
                        series_uid: &job.source_series_uid,
                        destination: &job.destination,
                        reason: &job.last_error,
                    }
                    .emit(&self.metrics);
                    if let Err(e) = self.outbox.bury(&job) {
                        events::OutboxWriteFailed {
                            job: &job.id,
                            reason: &e,
                        }
                        .emit();
                    }
                } else {
                    let wait = backoff_ms(
                        job.attempts,
                        settings.forward.initial_backoff_seconds,
                        settings.forward.max_backoff_seconds,
                    );
                    job.next_attempt_ms = now_ms() + wait;
                    events::JobRetry {
                        job: &job.id,
                        destination: &job.destination,
                        attempts: job.attempts,
                        wait_ms: wait,
                        reason: &job.last_error,
                    }
                    .emit(&self.metrics);
                    if let Err(e) = self.outbox.put(&job) {
                        events::OutboxWriteFailed {
                            job: &job.id,
                            reason: &e,
                        }
                        .emit();
                    }
                }
            }
        }
        true
    }

    /// Deletes the series' spool folder and derived files once no job needs them.
    fn cleanup(&self, job: &Job) {
        match self.outbox.needs(&job.spool_dir) {
            Ok(false) => {
                if let Err(e) = self.spool.remove_series(&job.spool_dir) {
                    events::SpoolCleanupFailed { reason: &e }.emit();
                }
                if !job.work_dir.as_os_str().is_empty() && job.work_dir.exists() {
                    let _ = std::fs::remove_dir_all(&job.work_dir);
                }
                events::SeriesDelivered {
                    series_uid: &job.source_series_uid,
                }
                .emit();
            }
            Ok(true) => {}
            Err(e) => events::OutboxUnreadable {
                job: None,
                reason: &e,
            }
            .emit(),
        }
    }
}
