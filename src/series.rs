//! Series stage of the daemon: completes series on quiet time (or expected count) and hands each
//! version over to processing. Grouping headers into series is [`crate::dicom::series`].

use std::collections::BTreeMap;

/// A version of a series handed to processing: its instances are in `dir` (a version folder of
/// the spool, see [`crate::spool`]), complete by quiet time or expected count.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadySeries {
    pub study_uid: String,
    pub series_uid: String,
    /// The version folder (markers; `<dir>/<series_uid>/` holds the instances).
    pub dir: std::path::PathBuf,
    pub calling_ae: String,
    pub called_ae: String,
    pub instances: usize,
    /// 1 for the first completion; higher when instances arrived after the series was handed over.
    pub version: u32,
    /// The earlier version whose instances this one carries over (late instances), if any.
    pub previous: Option<u32>,
}

impl ReadySeries {
    /// The version folder `v` as a series ready for processing.
    pub fn from_version(v: &crate::spool::SpooledVersion) -> Self {
        Self {
            study_uid: v.info.study_uid.clone(),
            series_uid: v.info.series_uid.clone(),
            dir: v.dir.clone(),
            calling_ae: v.info.calling_ae.clone(),
            called_ae: v.info.called_ae.clone(),
            instances: v.sops.len(),
            version: v.info.version,
            previous: v.info.previous,
        }
    }

    /// Folder of the version's instances.
    pub fn instances_dir(&self) -> std::path::PathBuf {
        self.dir.join(&self.series_uid)
    }
}

/// An instance durably spooled, handed to the series stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
    /// Instances the headers say the series will have, when they say it.
    pub expected: Option<usize>,
}

#[derive(Clone)]
struct Pending {
    sops: std::collections::HashSet<String>,
    calling_ae: String,
    called_ae: String,
    instances: usize,
    expected: Option<usize>,
    last: tokio::time::Instant,
}

/// The daemon's series stage: counts arrivals per series, completes each one after a quiet time
/// (or as soon as the expected number of instances is in), hands its instances over to a new version
/// folder of the spool and queues it for processing. It never waits for the processing stage: ready
/// versions wait in its own queue (the spool holds them durably) while it keeps receiving arrivals
/// and beating. Time comes from `tokio::time`.
pub struct Tracker {
    pub spool: crate::spool::Spool,
    pub recent: std::sync::Arc<Recent>,
    pub quiet: std::time::Duration,
    pub rx: tokio::sync::mpsc::Receiver<Arrival>,
    pub tx: tokio::sync::mpsc::Sender<ReadySeries>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub beat: crate::metrics::Beat,
    /// Read for `series.late_instance` at each hand-over.
    pub settings: tokio::sync::watch::Receiver<std::sync::Arc<crate::config::Settings>>,
    /// Versions found unprocessed in the spool at start-up: queued first.
    pub queued: Vec<ReadySeries>,
}

/// How many completed series are remembered to recognise retransmissions.
const DONE_MEMORY: usize = 10_000;

/// The instances of recently completed series, shared by the series stage (which fills it) and
/// the receivers (which consult it): a modality re-sending an instance of a series that was
/// already processed is a retransmission, not a late instance.
#[derive(Default)]
pub struct Recent {
    inner: std::sync::Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    /// (highest version handed over, instances of every version) per series.
    series: std::collections::HashMap<(String, String), (u32, std::collections::HashSet<String>)>,
    order: std::collections::VecDeque<(String, String)>,
}

impl Recent {
    /// Records version `version` of a series handed over and its instances, added to those of its
    /// earlier versions (the most recent DONE_MEMORY series are kept).
    pub fn insert(
        &self,
        study_uid: &str,
        series_uid: &str,
        version: u32,
        sops: std::collections::HashSet<String>,
    ) {
        if let Ok(mut g) = self.inner.lock() {
            let key = (study_uid.to_string(), series_uid.to_string());
            if let Some((v, known)) = g.series.get_mut(&key) {
                // Every instance of every version is known: a later copy of any is re-sent.
                *v = version.max(*v);
                known.extend(sops);
            } else {
                g.series.insert(key.clone(), (version, sops));
                g.order.push_back(key);
                if g.order.len() > DONE_MEMORY {
                    if let Some(old) = g.order.pop_front() {
                        g.series.remove(&old);
                    }
                }
            }
        }
    }

    /// True when the instance belongs to a series already completed.
    pub fn contains(&self, study_uid: &str, series_uid: &str, sop_instance_uid: &str) -> bool {
        self.inner.lock().is_ok_and(|g| {
            g.series
                .get(&(study_uid.to_string(), series_uid.to_string()))
                .is_some_and(|(_, s)| s.contains(sop_instance_uid))
        })
    }

    /// The version the next completion of this series gets (1 for a series not seen before).
    pub fn next_version(&self, study_uid: &str, series_uid: &str) -> u32 {
        self.inner
            .lock()
            .ok()
            .and_then(|g| {
                g.series
                    .get(&(study_uid.to_string(), series_uid.to_string()))
                    .map(|(v, _)| v + 1)
            })
            .unwrap_or(1)
    }
}

impl Tracker {
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut pending: BTreeMap<(String, String), Pending> = BTreeMap::new();
        let mut ready: std::collections::VecDeque<ReadySeries> =
            std::mem::take(&mut self.queued).into();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                permit = self.tx.reserve(), if !ready.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(r) = ready.pop_front() {
                        permit.send(r);
                    }
                }
                a = self.rx.recv() => {
                    let Some(a) = a else { return };
                    let key = (a.study_uid.clone(), a.series_uid.clone());
                    if !pending.contains_key(&key)
                        && self.recent.contains(&a.study_uid, &a.series_uid, &a.sop_instance_uid)
                    {
                        // Stored again while a version holding it is being processed or delivered:
                        // that version has it; the copy is removed from the incoming folder.
                        crate::events::RetransmissionDropped {
                            series_uid: &a.series_uid,
                            sop_instance_uid: &a.sop_instance_uid,
                        }
                        .emit();
                        let spool = self.spool.clone();
                        tokio::task::spawn_blocking(move || {
                            spool.drop_copy(&a.study_uid, &a.series_uid, &a.sop_instance_uid)
                        });
                        continue;
                    }
                    let p = pending.entry(key).or_insert_with(|| Pending {
                        sops: Default::default(),
                        calling_ae: a.calling_ae.clone(),
                        called_ae: a.called_ae.clone(),
                        instances: 0,
                        expected: a.expected,
                        last: tokio::time::Instant::now(),
                    });
                    p.instances += 1;
                    if !a.sop_instance_uid.is_empty() {
                        p.sops.insert(a.sop_instance_uid.clone());
                    }
                    p.last = tokio::time::Instant::now();
                    p.expected = a.expected.or(p.expected);
                }
                _ = tick.tick() => {
                    self.beat.beat();
                    let now = tokio::time::Instant::now();
                    let complete: Vec<(String, String)> = pending
                        .iter()
                        .filter(|(_, p)| now.duration_since(p.last) >= self.quiet || p.expected.is_some_and(|n| p.instances >= n))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in complete {
                        let Some(p) = pending.remove(&key) else { continue };
                        let why = if now.duration_since(p.last) >= self.quiet { "quiet time" } else { "expected count reached" };
                        match self.hand_over(&key, &p).await {
                            Ok(Some(r)) => {
                                crate::events::SeriesComplete {
                                    series_uid: &key.1,
                                    instances: r.instances,
                                    why,
                                }
                                .emit(&self.metrics);
                                ready.push_back(r);
                            }
                            Ok(None) => {
                                crate::events::SeriesEmpty { series_uid: &key.1 }.emit();
                            }
                            Err(e) => {
                                // The instances stay in the incoming folder; tried again after the
                                // quiet time.
                                crate::events::HandoverFailed {
                                    series_uid: &key.1,
                                    reason: &e,
                                }
                                .emit();
                                let mut p = p;
                                p.last = tokio::time::Instant::now();
                                pending.insert(key, p);
                            }
                        }
                    }
                    self.metrics.pending_series.set(pending.len() as i64);
                }
            }
        }
    }

    /// Moves the incoming instances of a complete series into a new version folder and records
    /// its instances as processed (later copies are retransmissions).
    async fn hand_over(
        &self,
        key: &(String, String),
        p: &Pending,
    ) -> Result<Option<ReadySeries>, String> {
        let carry_over =
            self.settings.borrow().series.late_instance == crate::config::LateInstance::Reprocess;
        let min_version = self.recent.next_version(&key.0, &key.1);
        let spool = self.spool.clone();
        let (study, series) = key.clone();
        let (calling, called) = (p.calling_ae.clone(), p.called_ae.clone());
        let frozen = tokio::task::spawn_blocking(move || {
            spool.freeze(&study, &series, min_version, &calling, &called, carry_over)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(frozen.map(|v| {
            self.recent.insert(
                &key.0,
                &key.1,
                v.info.version,
                v.sops.iter().cloned().collect(),
            );
            ReadySeries::from_version(&v)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{mpsc, watch};

    fn arrival(series: &str, sop: &str) -> Arrival {
        Arrival {
            study_uid: "1.2".into(),
            series_uid: series.into(),
            sop_instance_uid: sop.into(),
            calling_ae: "MOD".into(),
            called_ae: "US".into(),
            expected: None,
        }
    }

    /// Item 7 of issue 9: a processor that takes nothing must not stop the series stage: it keeps
    /// draining arrivals (far more than its channel holds), completing series and beating.
    #[tokio::test]
    async fn a_stalled_processor_never_stalls_arrivals() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::spool::Spool::open(dir.path(), 0).unwrap();
        let settings =
            crate::config::Settings::load_with_env(None, Vec::<(String, String)>::new()).unwrap();
        let (_settings_tx, settings_rx) = watch::channel(Arc::new(settings));
        let (arrival_tx, arrival_rx) = mpsc::channel(16);
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let beats = crate::metrics::Heartbeats::default();
        let metrics = crate::metrics::Metrics::new();
        let tracker = Tracker {
            spool: spool.clone(),
            recent: Arc::default(),
            quiet: Duration::from_secs(1),
            rx: arrival_rx,
            tx: ready_tx,
            metrics: metrics.clone(),
            beat: beats.register("series"),
            settings: settings_rx,
            queued: Vec::new(),
        };
        tokio::spawn(tracker.run(shutdown_rx));
        for i in 0..20 {
            let series = format!("1.2.{}", i + 10);
            let sop = format!("{series}.1");
            let key = crate::spool::InstanceKey {
                study_uid: "1.2".into(),
                series_uid: series.clone(),
                sop_instance_uid: sop.clone(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
            };
            spool.store(&key, "MOD", b"").unwrap();
            arrival_tx.send(arrival(&series, &sop)).await.unwrap();
        }
        // Every series completes although nobody takes them (one waits in the channel).
        for _ in 0..100 {
            if metrics.series_completed.get() == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(metrics.series_completed.get(), 20);
        // Arrivals keep flowing: 300 more than the 16 the channel holds.
        for i in 0..300 {
            tokio::time::timeout(
                Duration::from_secs(5),
                arrival_tx.send(arrival("1.2.99", &format!("1.2.99.{i}"))),
            )
            .await
            .expect("the series stage stopped taking arrivals")
            .unwrap();
        }
        // When the processor comes back it gets every version, in order.
        for i in 0..20 {
            let r = tokio::time::timeout(Duration::from_secs(5), ready_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.series_uid, format!("1.2.{}", i + 10));
            assert_eq!(r.version, 1);
            assert!(r
                .instances_dir()
                .join(format!("1.2.{}.1.dcm", i + 10))
                .exists());
        }
    }

    #[test]
    fn recent_series_remember_versions_and_instances() {
        let r = Recent::default();
        assert_eq!(r.next_version("1.2", "1.2.3"), 1);
        r.insert(
            "1.2",
            "1.2.3",
            1,
            ["1.2.3.1".to_string()].into_iter().collect(),
        );
        assert!(r.contains("1.2", "1.2.3", "1.2.3.1"));
        assert!(!r.contains("1.2", "1.2.3", "1.2.3.2"));
        assert_eq!(r.next_version("1.2", "1.2.3"), 2);
        for i in 0..DONE_MEMORY {
            r.insert("9", &format!("9.{i}"), 1, Default::default());
        }
        // The oldest series was forgotten: memory stays bounded.
        assert!(!r.contains("1.2", "1.2.3", "1.2.3.1"));
        assert_eq!(r.next_version("1.2", "1.2.3"), 1);
    }
}
