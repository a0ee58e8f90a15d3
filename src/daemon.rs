//! `ct-harmonizer serve`: wires the stages together, recovers unfinished work, talks to systemd, and
//! handles signals (SIGTERM/SIGINT: graceful stop; SIGHUP: re-read rules and destinations while the
//! listeners and the spool stay).
//!
//! ```text
//! scp / watch --Arrival--> series::Tracker --ReadySeries--> pipeline::Processor (thread)
//!     --jobs in the outbox (durable) + wake--> forward::worker::Forwarder --> destinations
//! ```
//!
//! Every stage's task, the processing thread and the SCP's association tasks belong to one
//! [`Supervisor`]: it passes them the shutdown signal, reports a stage that ends while the daemon
//! runs, and waits for all of them at a stop (see [`crate::supervisor`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::config::Settings;
use crate::forward::worker::Forwarder;
use crate::ingest::scp::Scp;
use crate::ingest::watch::Watch;
use crate::metrics::{Heartbeats, Metrics};
use crate::model::Translator;
use crate::outbox::Outbox;
use crate::pipeline::Processor;
use crate::series::{Arrival, ReadySeries, Tracker};
use crate::spool::Spool;
use crate::supervisor::Supervisor;
use crate::{events, systemd};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] Box<crate::config::ConfigError>),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] crate::harmonize::ProcessError),
    #[error("cannot start the processing thread: {0}")]
    Thread(std::io::Error),
    #[error("invalid configuration: {key} = {value:?}: {reason}")]
    Setting {
        key: String,
        value: String,
        reason: String,
    },
}

/// Runs the real start-up checks without serving: configuration, models (hash and ONNX Runtime),
/// state folders, listen addresses.
pub fn check_config(settings: &Settings) -> Result<Vec<String>, DaemonError> {
    start_up(settings).map(|(notes, _)| notes)
}

/// The start-up checks of [`check_config`], keeping the loaded models (by name) for the processing
/// stage, so that `serve` loads each model in ONNX Runtime once.
fn start_up(
    settings: &Settings,
) -> Result<(Vec<String>, HashMap<String, Translator>), DaemonError> {
    check_settings(settings)?;
    let (mut notes, translators) = check_models(settings)?;
    Spool::open(&settings.state.dir, settings.state.min_free_mib)?;
    Outbox::open(&settings.state.dir)?;
    notes.push(format!("state folder {}", settings.state.dir.display()));
    notes.push(format!(
        "{} rule(s), {} destination(s)",
        settings.rules.len(),
        settings.destinations.len()
    ));
    Ok((notes, translators))
}

/// Loads every model the rules name (manifest, hash, ONNX Runtime session).
fn check_models(
    settings: &Settings,
) -> Result<(Vec<String>, HashMap<String, Translator>), DaemonError> {
    let mut notes = Vec::new();
    let mut translators = HashMap::new();
    let mut models: Vec<&str> = settings
        .rules
        .iter()
        .flat_map(|r| r.models.iter().map(String::as_str))
        .collect();
    models.sort();
    models.dedup();
    for m in models {
        let t = crate::harmonize::open_translator(settings, Some(m))?;
        notes.push(format!(
            "model {m} {} ({:?}) on {}",
            t.manifest().version,
            t.manifest().kind,
            t.device()
        ));
        translators.insert(m.to_string(), t);
    }
    Ok((notes, translators))
}

/// An absolute, symlink-resolved form of `p` (lexical when it does not exist yet).
fn resolved(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_owned())
}

/// Checks of the daemon's addresses and folders that need the file system or several keys at once
/// (single values are checked when the settings load).
pub fn check_settings(settings: &Settings) -> Result<(), DaemonError> {
    let setting = |key: &str, value: &str, reason: String| DaemonError::Setting {
        key: key.into(),
        value: value.into(),
        reason,
    };
    let mut addrs = Vec::new();
    for (key, addr) in [
        ("server.listen", &settings.server.listen),
        ("http.listen", &settings.http.listen),
    ] {
        if !addr.is_empty() {
            let a = addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| DaemonError::Listen {
                    addr: addr.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?;
            addrs.push((key, addr, a));
        }
    }
    if let [(_, _, scp), (key, value, http)] = addrs.as_slice() {
        let clash = scp.port() == http.port()
            && (scp.ip() == http.ip() || scp.ip().is_unspecified() || http.ip().is_unspecified());
        if clash {
            return Err(setting(
                key,
                value,
                format!(
                    "the same address and port as server.listen = {:?}",
                    settings.server.listen
                ),
            ));
        }
    }
    let watch = settings.watch.dir.trim();
    if !watch.is_empty() {
        let w = Path::new(watch);
        if let Ok(m) = std::fs::metadata(w) {
            if !m.is_dir() {
                return Err(setting(
                    "watch.dir",
                    watch,
                    "exists and is not a folder".into(),
                ));
            }
        }
        let w = resolved(w);
        let state = resolved(&settings.state.dir);
        if state.starts_with(&w) {
            return Err(setting(
                "watch.dir",
                watch,
                format!(
                    "contains the state folder state.dir = {:?}",
                    settings.state.dir.display().to_string()
                ),
            ));
        }
        for sub in ["spool", "derived", "outbox", "dead-letter", "quarantine"] {
            if w.starts_with(state.join(sub)) {
                return Err(setting(
                    "watch.dir",
                    watch,
                    format!("is inside the daemon's own {sub} folder"),
                ));
            }
        }
        for d in &settings.destinations {
            if d.kind == crate::config::DestinationKind::Folder
                && resolved(Path::new(&d.path)).starts_with(&w)
            {
                return Err(setting(
                    "watch.dir",
                    watch,
                    format!(
                        "contains folder destination {:?} (path {:?}): exports would be taken in again",
                        d.name, d.path
                    ),
                ));
            }
        }
    }
    // DICOM TLS: certificates and keys readable, keys private to the service user (issue 9).
    crate::tls::check(settings)?;
    Ok(())
}

/// What a SIGHUP applies: the new configuration, with the same checks as `check-config` (models
/// load, destinations exist, addresses and folders). Start-up-only settings keep their running
/// values, each change logged as a warning naming its key.
async fn reload(config: Option<&Path>, current: &Settings) -> Result<Settings, String> {
    let loaded = Settings::load(config).map_err(|e| e.to_string())?;
    for (key, running, configured) in crate::config::restart_only_changes(current, &loaded) {
        events::ConfigRestartRequired {
            key,
            running: &running,
            configured: &configured,
        }
        .emit();
    }
    let merged = crate::config::keep_restart_only(current, loaded);
    let check = merged.clone();
    tokio::task::spawn_blocking(move || {
        check_settings(&check)?;
        check_models(&check).map(|_| ())
    })
    .await
    .map_err(|e| format!("configuration check stopped: {e}"))?
    .map_err(|e| e.to_string())?;
    Ok(merged)
}

/// Serves until SIGTERM/SIGINT. `config` is re-read on SIGHUP.
pub async fn serve(config: Option<PathBuf>, settings: Settings) -> Result<(), DaemonError> {
    let state = settings.state.dir.clone();
    // The bounded pre-parser's limits, for every reader of untrusted files (SCP, watched folder,
    // spool, processor) from the first instant.
    crate::dicom::guard::install(crate::dicom::guard::Limits::from_settings(&settings.server));
    let spool = Spool::open(&state, settings.state.min_free_mib)?
        .with_keep(Duration::from_secs(settings.series.keep_delivered_seconds));
    let outbox = Outbox::open(&state)?;
    let metrics = Metrics::new();
    let watchdog = systemd::watchdog_interval();
    let beats = Arc::new(Heartbeats::new(crate::metrics::stall_threshold_ms(
        settings.http.stall_seconds,
        watchdog,
    )));
    let mut supervisor = Supervisor::new();
    let shutdown_rx = supervisor.shutdown();
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings.clone()));
    let (arrival_tx, arrival_rx) = mpsc::channel::<Arrival>(256);
    let (ready_tx, ready_rx) = mpsc::channel(16);
    let (wake_tx, wake_rx) = mpsc::channel(16);
    let busy = Arc::new(AtomicBool::new(false));
    // Set on SIGTERM/SIGINT: inference stops at its next tile (the series stays in the spool).
    let cancel = Arc::new(AtomicBool::new(false));
    let recent = Arc::new(crate::series::Recent::default());

    // Load the models now: a broken model or runtime must fail start-up, not the first series.
    let (_, translators) = start_up(&settings)?;
    // After the start-up checks, whose own opening of the spool empties `.tmp/`.
    let spool = spool.with_tmp_pool()?;
    let summary = crate::status::startup_summary(&settings, &translators);
    metrics.attach(beats.clone(), Box::new(outbox.clone()), settings_rx.clone());

    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: settings.server.listen.clone(),
            source,
        })?;
    let http = if settings.http.listen.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&settings.http.listen)
                .await
                .map_err(|source| DaemonError::Listen {
                    addr: settings.http.listen.clone(),
                    source,
                })?,
        )
    };

    // Start-up recovery: what the spool holds continues from where it stopped.
    let recovered = recover(&spool, &outbox, &state, &settings, &recent);

    supervisor.spawn(
        "series",
        Tracker {
            spool: spool.clone(),
            recent: recent.clone(),
            quiet: Duration::from_secs(settings.series.quiet_seconds),
            rx: arrival_rx,
            tx: ready_tx,
            metrics: metrics.clone(),
            beat: beats.register("series"),
            settings: settings_rx.clone(),
            queued: recovered.queued,
        }
        .run(shutdown_rx.clone()),
    );
    let processor = Processor {
        state_dir: state.clone(),
        spool: spool.clone(),
        outbox: outbox.clone(),
        settings: settings_rx.clone(),
        rx: ready_rx,
        wake: wake_tx.clone(),
        metrics: metrics.clone(),
        beat: beats.register("processor"),
        busy: busy.clone(),
        cancel: cancel.clone(),
        translators,
    };
    let rt = tokio::runtime::Handle::current();
    let proc_shutdown = shutdown_rx.clone();
    supervisor
        .spawn_thread("processor", move || processor.run(rt, proc_shutdown))
        .map_err(DaemonError::Thread)?;
    supervisor.spawn(
        "forward",
        Forwarder {
            outbox: outbox.clone(),
            spool: spool.clone(),
            settings: settings_rx.clone(),
            metrics: metrics.clone(),
            wake: wake_rx,
            beat: beats.register("forward"),
            beats: beats.clone(),
        }
        .run(shutdown_rx.clone()),
    );

    for a in recovered.arrivals {
        if arrival_tx.send(a).await.is_err() {
            break;
        }
    }

    supervisor.spawn(
        "scp",
        Scp {
            settings: settings_rx.clone(),
            spool: spool.clone(),
            recent: recent.clone(),
            tx: arrival_tx.clone(),
            metrics: metrics.clone(),
            beat: beats.register("scp"),
            associations: supervisor.associations(),
        }
        .run(listener, shutdown_rx.clone()),
    );
    if !settings.watch.dir.trim().is_empty() {
        let dir = PathBuf::from(settings.watch.dir.trim());
        let _ = std::fs::create_dir_all(&dir);
        supervisor.spawn(
            "watch",
            Watch {
                dir,
                stable: Duration::from_secs(settings.watch.stable_seconds),
                max_file_bytes: settings.watch.max_file_mib.saturating_mul(1024 * 1024),
                quarantine: settings.state.quarantine(),
                spool: spool.clone(),
                called_ae: settings.server.ae_title.clone(),
                tx: arrival_tx.clone(),
                metrics: metrics.clone(),
                beat: beats.register("watch"),
            }
            .run(shutdown_rx.clone()),
        );
    }
    if let Some(l) = http {
        supervisor.spawn(
            "http",
            crate::http::serve(l, metrics.clone(), beats.clone(), shutdown_rx.clone()),
        );
    }
    supervisor.spawn(
        "systemd",
        systemd::run(
            metrics.clone(),
            beats.clone(),
            watchdog,
            shutdown_rx.clone(),
        ),
    );
    drop(arrival_tx);

    events::DaemonReady {
        ae_title: &settings.server.ae_title,
        listen: &settings.server.listen,
        http: &summary.http,
        watch: &summary.watch,
        state: &state,
        rules: &summary.rules,
        destinations: &summary.destinations,
        models: &summary.models,
        devices: &summary.devices,
        line: &summary.line,
    }
    .emit();
    systemd::ready();

    supervisor
        .run_until(wait_for_stop(config.as_deref(), &settings_tx))
        .await;
    systemd::stopping();
    events::DaemonStopping.emit();
    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    // The shutdown signal to every stage; then the stages, the associations (a C-STORE in flight
    // is answered) and the processing thread (it gives up its series at the next tile; the series
    // stays in the spool), each within its deadline.
    supervisor.stop().await;
    spool.close_tmp_pool();
    Ok(())
}

async fn wait_for_stop(config: Option<&Path>, settings_tx: &watch::Sender<Arc<Settings>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        events::SignalsUnavailable.emit();
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                systemd::reloading();
                let current = settings_tx.borrow().clone();
                match reload(config, &current).await {
                    Ok(new) => {
                        events::ConfigReloaded { rules: new.rules.len(), destinations: new.destinations.len() }.emit();
                        let _ = settings_tx.send(Arc::new(new));
                    }
                    Err(e) => events::ConfigReloadFailed { reason: &e }.emit(),
                }
                systemd::ready();
            }
        }
    }
}

/// What start-up recovery hands to the stages.
struct Recovered {
    /// Versions handed over before the stop and not processed: straight to processing.
    queued: Vec<ReadySeries>,
    /// Incoming instances not yet handed over: through the series stage (quiet time) again.
    arrivals: Vec<Arrival>,
}

/// Start-up recovery: every series still in the spool continues from where it stopped. Delivered
/// versions leave the spool; versions whose jobs are queued or dead-lettered stay; unprocessed
/// versions are processed again, except one the daemon died in `series.max_crashes` times (its crash
/// marker counts them): that one is quarantined instead of replayed into the same crash. Nothing
/// here parses a dataset.
fn recover(
    spool: &Spool,
    outbox: &Outbox,
    state: &Path,
    settings: &Settings,
    recent: &crate::series::Recent,
) -> Recovered {
    let mut out = Recovered {
        queued: Vec::new(),
        arrivals: Vec::new(),
    };
    // Instances of kept (delivered) versions are known: a re-sent copy is a retransmission.
    for v in spool.kept() {
        recent.insert(
            &v.info.study_uid,
            &v.info.series_uid,
            v.info.version,
            v.sops.iter().cloned().collect(),
        );
    }
    let series = match spool.recover() {
        Ok(s) => s,
        Err(e) => {
            events::RecoveryFailed { reason: &e }.emit();
            return out;
        }
    };
    let max_crashes = settings.series.max_crashes;
    for s in series {
        for v in &s.versions {
            recent.insert(
                &s.study_uid,
                &s.series_uid,
                v.info.version,
                v.sops.iter().cloned().collect(),
            );
            if v.processed {
                match outbox.needs(&v.dir) {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = spool.remove_series(&v.dir);
                        events::SeriesDelivered {
                            series_uid: &s.series_uid,
                        }
                        .emit();
                    }
                    Err(e) => events::RecoveryFailed { reason: &e }.emit(),
                }
            } else if v.sops.is_empty() {
                events::EmptyVersion {
                    series_uid: &s.series_uid,
                    version: v.info.version,
                }
                .emit();
                let _ = spool.discard(&v.dir);
            } else if max_crashes > 0 && v.crashes >= max_crashes {
                let reason = format!(
                    "daemon died while processing this series ({} times); quarantined instead of replayed",
                    v.crashes
                );
                let name = format!(
                    "{}-v{}-{}",
                    s.series_uid,
                    v.info.version,
                    crate::util::clock::now_ms()
                );
                match spool.quarantine(&v.dir, &settings.state.quarantine(), &name, &reason) {
                    Ok(q) => {
                        events::CrashLoopQuarantined {
                            series_uid: &s.series_uid,
                            version: v.info.version,
                            crashes: v.crashes,
                            path: &q,
                            reason: &reason,
                        }
                        .emit();
                    }
                    Err(e) => {
                        // Not replayed either: it stays in the spool until the next start.
                        events::CrashLoopQuarantineFailed {
                            series_uid: &s.series_uid,
                            version: v.info.version,
                            reason: &e,
                        }
                        .emit();
                    }
                }
            } else {
                if v.crashes > 0 {
                    events::SeriesReplayedAfterCrash {
                        series_uid: &s.series_uid,
                        version: v.info.version,
                        crashes: v.crashes,
                        max_crashes,
                    }
                    .emit();
                }
                out.queued.push(ReadySeries::from_version(v));
            }
        }
        if s.instances > 0 {
            // Not yet handed over: it goes through the series stage again.
            let calling = std::fs::read_dir(&s.dir)
                .ok()
                .and_then(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .find(|p| p.extension().is_some_and(|x| x == "dcm"))
                })
                .and_then(|p| crate::spool::source_ae_title(&p))
                .unwrap_or_default();
            for _ in 0..s.instances {
                out.arrivals.push(Arrival {
                    study_uid: s.study_uid.clone(),
                    series_uid: s.series_uid.clone(),
                    sop_instance_uid: String::new(),
                    calling_ae: calling.clone(),
                    called_ae: settings.server.ae_title.clone(),
                    expected: None,
                });
            }
        }
    }
    // Derived folders of series no longer in the spool or the outbox are leftovers of a crash.
    if let (Ok(rd), Ok(jobs)) = (std::fs::read_dir(state.join("derived")), outbox.queued()) {
        let dead = outbox.dead().unwrap_or_default();
        for e in rd.flatten() {
            let p = e.path();
            if !jobs.iter().chain(dead.iter()).any(|j| j.work_dir == p) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    if !out.queued.is_empty() || !out.arrivals.is_empty() {
        events::Recovered {
            versions: out.queued.len(),
            incoming_instances: out.arrivals.len(),
        }
        .emit();
    }
    out
}
