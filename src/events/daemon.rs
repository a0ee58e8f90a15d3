//! Events of the daemon's life cycle: start, stop, reload, start-up recovery and the watchdog.

use std::fmt::Display;
use std::path::Path;
use tracing::{error, info, warn};

/// A reloaded key that only a restart applies changed; the running value stays.
pub struct ConfigRestartRequired<'a> {
    pub key: &'a str,
    pub running: &'a str,
    pub configured: &'a str,
}

impl ConfigRestartRequired<'_> {
    pub fn emit(self) {
        let (key, running, configured) = (self.key, self.running, self.configured);
        warn!(
            event = "config_restart_required",
            key,
            running = %running,
            configured = %configured,
            "{key} changed from {running:?} to {configured:?}: requires a restart; the running value stays"
        );
    }
}

/// The daemon is ready (listeners bound, stages started); `line` is the one-line summary.
pub struct DaemonReady<'a> {
    pub ae_title: &'a str,
    pub listen: &'a str,
    pub http: &'a dyn Display,
    pub watch: &'a dyn Display,
    pub state: &'a Path,
    pub rules: &'a dyn Display,
    pub destinations: &'a dyn Display,
    pub models: &'a dyn Display,
    pub devices: &'a dyn Display,
    pub line: &'a str,
}

impl DaemonReady<'_> {
    pub fn emit(self) {
        info!(event = "daemon_ready", ae_title = %self.ae_title, listen = %self.listen, http = %self.http, watch = %self.watch, state = %self.state.display(), rules = %self.rules, destinations = %self.destinations, models = %self.models, devices = %self.devices, "{}", self.line);
    }
}

/// The daemon is stopping.
pub struct DaemonStopping;

impl DaemonStopping {
    pub fn emit(self) {
        info!(
            event = "daemon_stopping",
            "stopping: no new associations; unfinished work stays in the spool"
        );
    }
}

/// The processing stage (thread `thread`) did not stop within its deadline.
pub struct ProcessorStopTimeout<'a> {
    pub thread: &'a str,
    pub seconds: u64,
}

impl ProcessorStopTimeout<'_> {
    pub fn emit(self) {
        warn!(
            event = "processor_stop_timeout",
            thread = self.thread,
            seconds = self.seconds,
            "the processing stage did not stop in time; its series stays in the spool for recovery"
        );
    }
}

/// A stage task or thread ended while the daemon runs (returned, panicked or was cancelled).
pub struct StageEnded<'a> {
    pub stage: &'a str,
    pub reason: &'a str,
}

impl StageEnded<'_> {
    pub fn emit(self) {
        error!(
            event = "stage_ended",
            stage = self.stage,
            reason = self.reason,
            "a stage ended while the daemon runs; its heartbeat stops"
        );
    }
}

/// Stages or associations still ran at the stop deadline: abandoned with the process.
pub struct StageStopTimeout {
    pub seconds: u64,
    pub stages: usize,
    pub associations: usize,
}

impl StageStopTimeout {
    pub fn emit(self) {
        warn!(
            event = "stage_stop_timeout",
            seconds = self.seconds,
            stages = self.stages,
            associations = self.associations,
            "stages or associations still running at the stop deadline; abandoned with the process"
        );
    }
}

/// The signal handlers cannot be installed: the daemon stops.
pub struct SignalsUnavailable;

impl SignalsUnavailable {
    pub fn emit(self) {
        error!(
            event = "signals_unavailable",
            "cannot install signal handlers; stopping"
        );
    }
}

/// SIGHUP reloaded the rules and destinations.
pub struct ConfigReloaded {
    pub rules: usize,
    pub destinations: usize,
}

impl ConfigReloaded {
    pub fn emit(self) {
        info!(
            event = "config_reloaded",
            rules = self.rules,
            destinations = self.destinations,
            "rules and destinations reloaded; listeners and spool unchanged"
        );
    }
}

/// SIGHUP's configuration is invalid: the previous one stays.
pub struct ConfigReloadFailed<'a> {
    pub reason: &'a dyn Display,
}

impl ConfigReloadFailed<'_> {
    pub fn emit(self) {
        error!(event = "config_reload_failed", reason = %self.reason, "keeping the previous configuration");
    }
}

/// Start-up recovery cannot read the spool or the outbox.
pub struct RecoveryFailed<'a> {
    pub reason: &'a dyn Display,
}

impl RecoveryFailed<'_> {
    pub fn emit(self) {
        error!(event = "recovery_failed", reason = %self.reason);
    }
}

/// A version folder without instances was removed at start-up.
pub struct EmptyVersion<'a> {
    pub series_uid: &'a str,
    pub version: u32,
}

impl EmptyVersion<'_> {
    pub fn emit(self) {
        warn!(event = "empty_version", series_uid = %self.series_uid, version = self.version, "version folder without instances removed");
    }
}

/// The daemon died `crashes` times processing this series: quarantined instead of replayed. Also
/// writes the `series_quarantined` line (not counted as a failed series).
pub struct CrashLoopQuarantined<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub crashes: u32,
    pub path: &'a Path,
    pub reason: &'a str,
}

impl CrashLoopQuarantined<'_> {
    pub fn emit(self) {
        error!(event = "crash_loop_quarantined", series_uid = %self.series_uid, version = self.version, crashes = self.crashes, path = %self.path.display(), "daemon died while processing this series; quarantined instead of replayed");
        super::SeriesQuarantined {
            series_uid: self.series_uid,
            path: self.path,
            reason: self.reason,
        }
        .log();
    }
}

/// A crash-loop series cannot be quarantined: it stays in the spool, not processed.
pub struct CrashLoopQuarantineFailed<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub reason: &'a dyn Display,
}

impl CrashLoopQuarantineFailed<'_> {
    pub fn emit(self) {
        error!(event = "quarantine_failed", series_uid = %self.series_uid, version = self.version, reason = %self.reason, "crash-loop series left in the spool, not processed");
    }
}

/// The daemon died processing this series before: it is processed again.
pub struct SeriesReplayedAfterCrash<'a> {
    pub series_uid: &'a str,
    pub version: u32,
    pub crashes: u32,
    pub max_crashes: u32,
}

impl SeriesReplayedAfterCrash<'_> {
    pub fn emit(self) {
        warn!(event = "series_replayed_after_crash", series_uid = %self.series_uid, version = self.version, crashes = self.crashes, max_crashes = self.max_crashes, "the daemon died while processing this series; processing it again");
    }
}

/// Unfinished series were resumed from the spool at start-up.
pub struct Recovered {
    pub versions: usize,
    pub incoming_instances: usize,
}

impl Recovered {
    pub fn emit(self) {
        info!(
            event = "recovered",
            versions = self.versions,
            incoming_instances = self.incoming_instances,
            "unfinished series resumed from the spool"
        );
    }
}

/// A stage is stalled: the systemd watchdog ping is withheld.
pub struct StageStalled<'a> {
    pub stages: &'a [String],
}

impl StageStalled<'_> {
    pub fn emit(self) {
        error!(event = "stage_stalled", stages = ?self.stages, "withholding watchdog ping");
    }
}
