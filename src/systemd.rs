//! systemd integration: READY once listeners and spool are up, STATUS with queue depths, WATCHDOG
//! pings while every stage is alive, STOPPING on shutdown. Without systemd these are no-ops.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::metrics::{Heartbeats, Metrics};

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

pub fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// Sends STATUS every few seconds and WATCHDOG pings at half the watchdog interval while no stage
/// is stale (a busy processing stage counts as alive).
pub async fn run(
    metrics: Arc<Metrics>,
    beats: Arc<Heartbeats>,
    processor_busy: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = sd_notify::watchdog_enabled();
    let watchdog = interval.is_some();
    let usec = interval.map_or(0, |d| d.as_micros() as u64);
    let period = interval.map_or(Duration::from_secs(5), |d| d / 2);
    let mut tick = tokio::time::interval(period.min(Duration::from_secs(5)));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let status = format!(
                    "pending series {}, outbox jobs {}, dead jobs {}",
                    metrics.pending_series.get(),
                    metrics.outbox_jobs.get(),
                    metrics.dead_jobs.get()
                );
                let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
                if watchdog {
                    let max_age = (usec / 1000).max(2000);
                    let stale: Vec<_> = beats
                        .stale(max_age)
                        .into_iter()
                        .filter(|s| !(*s == "processor" && processor_busy.load(Ordering::Relaxed)))
                        .collect();
                    if stale.is_empty() {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!(event = "stage_stalled", stages = ?stale, "withholding watchdog ping");
                    }
                }
            }
        }
    }
}
