//! The daemon's runtime: one task per stage (series tracker, forwarder, SCP, watched folder, HTTP,
//! systemd), the processing thread (it owns the ONNX sessions), and the SCP's association tasks,
//! all owned by one [`Supervisor`] that `daemon::serve` starts and stops.
//!
//! Shutdown is one signal (a `watch` channel) passed into every stage. Stopping sends it, then
//! waits, within [`STAGE_STOP_DEADLINE`], for the stage tasks and for every association task (so
//! a C-STORE in flight finishes and gets its answer), then joins the processing thread within
//! [`PROCESSOR_STOP_DEADLINE`] (it gives up its series at the next tile; a tile that outlasts the
//! deadline is abandoned with the process, the series stays in the spool). While the daemon runs,
//! a stage task or thread that ends before the signal is reported (`stage_ended`): its heartbeat
//! stops too, so the health rule and the systemd watchdog see it as well.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::events;

/// How long a stop waits for the stage tasks and the association tasks.
pub const STAGE_STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a stop waits for the processing thread (cancelled at its next tile).
pub const PROCESSOR_STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A stage's task or thread.
struct Thread {
    name: &'static str,
    handle: std::thread::JoinHandle<()>,
}

/// Owns the daemon's tasks and threads and their shutdown signal.
pub struct Supervisor {
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    stages: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
    threads: Vec<Thread>,
    /// Threads say here that they ended (a thread cannot be awaited).
    thread_ended_tx: mpsc::UnboundedSender<&'static str>,
    thread_ended_rx: mpsc::UnboundedReceiver<&'static str>,
    associations: TaskTracker,
    /// Stages that ended before the shutdown signal, in order.
    ended: Vec<&'static str>,
    stage_deadline: Duration,
    processor_deadline: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (thread_ended_tx, thread_ended_rx) = mpsc::unbounded_channel();
        Self {
            shutdown_tx,
            shutdown_rx,
            stages: JoinSet::new(),
            names: HashMap::new(),
            threads: Vec::new(),
            thread_ended_tx,
            thread_ended_rx,
            associations: TaskTracker::new(),
            ended: Vec::new(),
            stage_deadline: STAGE_STOP_DEADLINE,
            processor_deadline: PROCESSOR_STOP_DEADLINE,
        }
    }

    /// The same supervisor with other stop deadlines (stages and associations, processing thread).
    pub fn with_deadlines(mut self, stages: Duration, processor: Duration) -> Self {
        self.stage_deadline = stages;
        self.processor_deadline = processor;
        self
    }

    /// The shutdown signal, for a stage: it turns true once.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown_rx.clone()
    }

    /// Where the SCP spawns its association tasks, awaited at stop.
    pub fn associations(&self) -> TaskTracker {
        self.associations.clone()
    }

    /// Stages that ended before the shutdown signal (reported as `stage_ended`).
    pub fn ended(&self) -> &[&'static str] {
        &self.ended
    }

    /// Runs a stage as a task.
    pub fn spawn<F>(&mut self, name: &'static str, stage: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = self.stages.spawn(stage);
        self.names.insert(task.id(), name);
    }

    /// Runs a stage on its own thread (blocking work: the processing stage).
    pub fn spawn_thread<F>(&mut self, name: &'static str, stage: F) -> std::io::Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let ended = self.thread_ended_tx.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Said even when the stage panics: the guard's drop runs while unwinding.
                struct Ended(mpsc::UnboundedSender<&'static str>, &'static str);
                impl Drop for Ended {
                    fn drop(&mut self) {
                        let _ = self.0.send(self.1);
                    }
                }
                let _ended = Ended(ended, name);
                stage();
            })?;
        self.threads.push(Thread { name, handle });
        Ok(())
    }

    /// Runs until `stop` completes, reporting every stage that ends meanwhile.
    pub async fn run_until(&mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                Some(done) = self.stages.join_next_with_id(), if !self.stages.is_empty() => {
                    let (id, reason) = match done {
                        Ok((id, ())) => (id, "the task returned".to_string()),
                        Err(e) if e.is_panic() => {
                            (e.id(), format!("the task panicked: {}", crate::util::panic_text(e.into_panic().as_ref())))
                        }
                        Err(e) => (e.id(), "the task was cancelled".to_string()),
                    };
                    let name = self.names.remove(&id).unwrap_or("unknown");
                    self.report(name, &reason);
                }
                Some(name) = self.thread_ended_rx.recv() => self.report(name, "the thread returned"),
            }
        }
    }

    fn report(&mut self, stage: &'static str, reason: &str) {
        if *self.shutdown_rx.borrow() {
            return;
        }
        events::StageEnded { stage, reason }.emit();
        self.ended.push(stage);
    }

    /// Sends the shutdown signal and waits for the stages, the associations and the threads, each
    /// within its deadline.
    pub async fn stop(mut self) {
        let _ = self.shutdown_tx.send(true);
        self.associations.close();
        let stages = async {
            while self.stages.join_next().await.is_some() {}
            self.associations.wait().await;
        };
        if tokio::time::timeout(self.stage_deadline, stages)
            .await
            .is_err()
        {
            events::StageStopTimeout {
                seconds: self.stage_deadline.as_secs(),
                stages: self.stages.len(),
                associations: self.associations.len(),
            }
            .emit();
        }
        // Polled, not joined on a blocking task: the runtime must not wait for a thread on exit.
        let deadline = tokio::time::Instant::now() + self.processor_deadline;
        for t in self.threads {
            while !t.handle.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if t.handle.is_finished() {
                let _ = t.handle.join();
            } else {
                events::ProcessorStopTimeout {
                    thread: t.name,
                    seconds: self.processor_deadline.as_secs(),
                }
                .emit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn short() -> Supervisor {
        Supervisor::new().with_deadlines(Duration::from_secs(30), Duration::from_secs(30))
    }

    /// A stage that stops on the signal.
    async fn stage(mut shutdown: watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|s| *s).await;
    }

    #[tokio::test]
    async fn stop_waits_for_an_association_in_flight() {
        let sup = short();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let mut shutdown = sup.shutdown();
        // An association in its C-STORE when the signal comes: it answers before it ends.
        sup.associations().spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.store(true, Ordering::SeqCst);
        });
        sup.stop().await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn stop_gives_up_at_the_deadline() {
        let mut sup = Supervisor::new()
            .with_deadlines(Duration::from_millis(200), Duration::from_millis(200));
        sup.associations().spawn(std::future::pending::<()>());
        sup.spawn("stuck", std::future::pending::<()>());
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        sup.spawn_thread("processor", move || {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .unwrap();
        let started = std::time::Instant::now();
        sup.stop().await;
        // Generous: the deadlines are 0.2 s each, nothing waits for the stuck ones.
        assert!(started.elapsed() < Duration::from_secs(20));
        release.store(true, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_stage_that_ends_is_reported() {
        let mut sup = short();
        sup.spawn("steady", stage(sup.shutdown()));
        sup.spawn("fragile", async {});
        sup.spawn_thread("processor", || panic!("model exploded"))
            .unwrap();
        // Both ends are reported while the daemon runs.
        let started = std::time::Instant::now();
        while sup.ended().len() < 2 && started.elapsed() < Duration::from_secs(60) {
            sup.run_until(tokio::time::sleep(Duration::from_millis(50)))
                .await;
        }
        let mut ended = sup.ended().to_vec();
        ended.sort();
        assert_eq!(ended, vec!["fragile", "processor"]);
        sup.stop().await;
    }

    #[tokio::test]
    async fn stages_that_stop_on_the_signal_are_not_reported() {
        let mut sup = short();
        sup.spawn("steady", stage(sup.shutdown()));
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let shutdown = sup.shutdown();
        sup.spawn_thread("processor", move || {
            while !*shutdown.borrow() {
                std::thread::sleep(Duration::from_millis(10));
            }
            d.store(true, Ordering::SeqCst);
        })
        .unwrap();
        sup.run_until(tokio::time::sleep(Duration::from_millis(100)))
            .await;
        assert!(sup.ended().is_empty());
        sup.stop().await;
        assert!(done.load(Ordering::SeqCst));
    }
}
