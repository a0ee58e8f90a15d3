//! systemd integration: READY once listeners and spool are up, STATUS with queue depths, WATCHDOG
//! pings while every stage is alive, STOPPING on shutdown. Without systemd these are no-ops.

use sd_notify::NotifyState;
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

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sends STATUS every few seconds and WATCHDOG pings at half the watchdog interval while the
/// health rule ([`Heartbeats::health`], the one `/healthz` uses) holds.
pub async fn run(
    metrics: Arc<Metrics>,
    beats: Arc<Heartbeats>,
    interval: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watchdog = interval.is_some();
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
                    match beats.health() {
                        Ok(()) => {
                            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                        }
                        Err(stale) => {
                            crate::events::StageStalled { stages: &stale }.emit();
                        }
                    }
                }
            }
        }
    }
}
