//! `ct-harmonizer status`: one look at a running daemon, for people and for Nagios/Icinga.
//!
//! It reads the daemon's `/healthz` and `/metrics` (at `http.listen`) and the state folder (outbox,
//! dead-letter, spool) and prints what an operator asks first: is it up and ready, which stages beat
//! recently, what is in progress, how deep each destination's queue is, which jobs are
//! dead-lettered and why, and when the last instance came in and the last job went out.
//!
//! # Exit status (Nagios/Icinga plugin convention)
//!
//! | code | state    | when |
//! |------|----------|------|
//! | 0    | OK       | ready, nothing waiting on an operator |
//! | 1    | WARNING  | dead-lettered jobs, a destination retrying, free space under twice the watermark |
//! | 2    | CRITICAL | `/healthz` not ready (a stage stalled), free space under the watermark |
//! | 3    | UNKNOWN  | daemon not running (nothing answers at `http.listen`), `/metrics` unparseable, state folder unreadable, configuration unreadable |
//!
//! The first output line is the plugin summary (`OK: ...`, `WARNING: ...`); details follow.
//!
//! One file above ~600 lines because it is one cohesive thing: one command, reading the daemon and
//! its state folder into one report and rendering it (text, JSON, Nagios) from that same report.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Settings;
use crate::jobs::{self, JobState};
use crate::model::Translator;

/// Exit codes (Nagios/Icinga plugin convention).
pub const OK: u8 = 0;
pub const WARNING: u8 = 1;
pub const CRITICAL: u8 = 2;
pub const UNKNOWN: u8 = 3;

/// Why `status` cannot tell (exit code 3, UNKNOWN), each with its own message.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the configuration: {0}")]
    Config(String),
    #[error("http.listen is empty in the configuration: status needs the daemon's /healthz and /metrics (or --address)")]
    NoEndpoint,
    #[error("invalid daemon address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("daemon not running: nothing answers at {addr} (http.listen): {reason}")]
    Down { addr: String, reason: String },
    #[error("daemon at {addr} gave no usable answer to GET {path}: {reason}")]
    Http {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("cannot parse /metrics from {addr}: {reason}")]
    Metrics { addr: String, reason: String },
    #[error("cannot read the state folder {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

// ---------------------------------------------------------------------------------------------
// HTTP (a tiny blocking HTTP/1.1 client: GET, Connection: close).

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are not a ct-harmonizer's.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// The address to reach a daemon listening on `listen` (a wildcard address means loopback).
pub fn connect_address(listen: &str) -> Result<SocketAddr, StatusError> {
    let bad = |reason: String| StatusError::Address {
        addr: listen.to_string(),
        reason,
    };
    let mut a = listen
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))?;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(a)
}

/// GET `path`: (status code, body). Connection failures are [`StatusError::Down`].
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), StatusError> {
    let http = |reason: String| StatusError::Http {
        addr: addr.to_string(),
        path: path.to_string(),
        reason,
    };
    let mut s =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| StatusError::Down {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| http(e.to_string()))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )
    .map_err(|e| http(format!("sending the request: {e}")))?;
    let mut raw = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut raw)
        .map_err(|e| http(format!("reading the answer: {e}")))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| http("not an HTTP answer (no end of header)".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            http(format!(
                "not an HTTP status line: {:?}",
                head.lines().next()
            ))
        })?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| http("malformed chunked body".into()))?;
    }
    let body = String::from_utf8(body).map_err(|_| http("body is not UTF-8 text".into()))?;
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format.

/// One sample of the exposition text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped). Any line that is not a sample
/// is an error naming its line number.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let s = parse_sample(line).ok_or_else(|| {
            let shown: String = line.chars().take(80).collect();
            format!("line {}: not a metric sample: {shown:?}", n + 1)
        })?;
        out.push(s);
    }
    Ok(out)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Option<Sample> {
    let end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map(|(i, _)| i)
        .unwrap_or(line.len());
    if end == 0 {
        return None;
    }
    let name = line[..end].to_string();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            if key.is_empty()
                || !key
                    .chars()
                    .enumerate()
                    .all(|(i, c)| is_name_char(c, i == 0))
            {
                return None;
            }
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[close + 1..];
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut parts = rest.split_whitespace();
    let value: f64 = parts.next()?.parse().ok()?;
    // An optional timestamp, nothing else.
    if let Some(ts) = parts.next() {
        ts.parse::<f64>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Samples by name.
struct Scrape(Vec<Sample>);

const PREFIX: &str = "ct_harmonizer_";

impl Scrape {
    fn value(&self, short: &str) -> Option<f64> {
        let full = format!("{PREFIX}{short}");
        let total = format!("{full}_total");
        self.0
            .iter()
            .find(|s| (s.name == full || s.name == total) && s.labels.is_empty())
            .map(|s| s.value)
    }

    /// (label value, sample value) of a one-label family.
    fn family(&self, short: &str, label: &str) -> Vec<(String, f64)> {
        let full = format!("{PREFIX}{short}");
        self.0
            .iter()
            .filter(|s| s.name == full)
            .filter_map(|s| {
                s.labels
                    .iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| (v.clone(), s.value))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

/// A stage's liveness.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub heartbeat_age_seconds: f64,
    pub stalled: bool,
}

/// A destination's queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Destination {
    pub name: String,
    /// Jobs in the outbox (retrying included).
    pub queued: usize,
    /// Outbox jobs with at least one failed attempt.
    pub retrying: usize,
    /// Dead-lettered jobs.
    pub dead: usize,
    /// The last error of a retrying job, or the reason of a dead one.
    pub last_error: String,
}

/// A job waiting on an operator or retrying.
#[derive(Debug, Clone, Serialize)]
pub struct JobLine {
    pub id: String,
    pub state: JobState,
    pub destination: String,
    pub series_uid: String,
    pub kind: String,
    pub attempts: u32,
    /// Seconds until the next attempt (retrying jobs).
    pub next_attempt_in_seconds: u64,
    pub reason: String,
}

/// A series in the spool (received, not yet delivered everywhere).
#[derive(Debug, Clone, Serialize)]
pub struct SpoolSeries {
    pub study_uid: String,
    pub series_uid: String,
    /// Instances received and not yet handed to processing.
    pub incoming_instances: usize,
    /// Versions handed to processing (being processed or waiting for delivery).
    pub versions: usize,
}

/// When something last happened.
#[derive(Debug, Clone, Serialize)]
pub struct Last {
    /// Unix seconds (from `/metrics`; `None`: not since the daemon started).
    pub unix_seconds: Option<f64>,
    pub seconds_ago: Option<f64>,
    /// The series, from the state folder (best effort: newest series folder).
    pub series_uid: Option<String>,
}

/// Free space of the state file system.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub free_bytes: f64,
    pub min_free_bytes: f64,
}

/// Everything `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "OK", "WARNING", "CRITICAL".
    pub status: &'static str,
    pub exit_code: u8,
    /// Why the status is not OK, most severe first.
    pub problems: Vec<String>,
    pub address: String,
    pub state_dir: PathBuf,
    /// `/healthz` answered.
    pub up: bool,
    /// `/healthz` answered 200.
    pub ready: bool,
    /// `/healthz`'s text ("ok", "stalled: <stage>").
    pub health: String,
    pub stall_threshold_seconds: Option<f64>,
    pub stages: Vec<Stage>,
    /// Series still receiving instances (the series stage's count).
    pub series_receiving: Option<f64>,
    /// Series in the spool (from the state folder).
    pub spool: Vec<SpoolSeries>,
    pub destinations: Vec<Destination>,
    /// Jobs that failed at least once and are still being retried.
    pub retrying: Vec<JobLine>,
    pub dead_letters: Vec<JobLine>,
    pub last_received: Last,
    pub last_forwarded: Last,
    pub disk: Option<Disk>,
    /// The daemon's counters since it started (short names).
    pub counters: BTreeMap<String, f64>,
}

/// Options of `status`.
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    /// `host:port` of the daemon's HTTP endpoint instead of `http.listen`.
    pub address: Option<String>,
}

/// Reads the daemon and the state folder. Errors are UNKNOWN (exit code 3).
pub fn collect(settings: &Settings, opts: &StatusOptions) -> Result<Report, StatusError> {
    let listen = opts
        .address
        .clone()
        .unwrap_or_else(|| settings.http.listen.trim().to_string());
    if listen.is_empty() {
        return Err(StatusError::NoEndpoint);
    }
    let addr = connect_address(&listen)?;
    let (health_code, health_text) = http_get(addr, "/healthz")?;
    let (metrics_code, metrics_text) = http_get(addr, "/metrics")?;
    let bad_metrics = |reason: String| StatusError::Metrics {
        addr: addr.to_string(),
        reason,
    };
    if metrics_code != 200 {
        return Err(bad_metrics(format!("HTTP status {metrics_code}")));
    }
    let samples = parse_metrics(&metrics_text).map_err(bad_metrics)?;
    if !samples.iter().any(|s| s.name.starts_with(PREFIX)) {
        return Err(bad_metrics(
            "no ct_harmonizer_ metric in the answer (is this a ct-harmonizer?)".into(),
        ));
    }
    let scrape = Scrape(samples);
    let state = &settings.state.dir;
    let state_err = |reason: String| StatusError::State {
        path: state.clone(),
        reason,
    };
    match std::fs::metadata(state) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(state_err("not a folder".into())),
        Err(e) => return Err(state_err(e.to_string())),
    }
    let entries = jobs::list(state).map_err(|e| state_err(e.to_string()))?;
    let spool = spool_series(&state.join("spool")).map_err(state_err)?;

    let mut stages: Vec<Stage> = scrape
        .family("stage_heartbeat_age_seconds", "stage")
        .into_iter()
        .map(|(name, age)| Stage {
            stalled: scrape
                .family("stage_stalled", "stage")
                .iter()
                .any(|(n, v)| *n == name && *v > 0.0),
            name,
            heartbeat_age_seconds: age,
        })
        .collect();
    stages.sort_by(|a, b| a.name.cmp(&b.name));

    let mut dests: BTreeMap<String, Destination> = settings
        .destinations
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                Destination {
                    name: d.name.clone(),
                    ..Destination::default()
                },
            )
        })
        .collect();
    let mut retrying = Vec::new();
    let mut dead_letters = Vec::new();
    for e in &entries {
        let d = dests
            .entry(e.job.destination.clone())
            .or_insert_with(|| Destination {
                name: e.job.destination.clone(),
                ..Destination::default()
            });
        match e.state {
            JobState::Queued => d.queued += 1,
            JobState::Retrying => {
                d.queued += 1;
                d.retrying += 1;
                d.last_error = e.reason.clone();
            }
            JobState::Dead => {
                d.dead += 1;
                if d.last_error.is_empty() {
                    d.last_error = e.reason.clone();
                }
            }
        }
        let line = JobLine {
            id: e.job.id.clone(),
            state: e.state,
            destination: e.job.destination.clone(),
            series_uid: e.job.source_series_uid.clone(),
            kind: e.job.kind.clone(),
            attempts: e.job.attempts,
            next_attempt_in_seconds: jobs::seconds_until(e.job.next_attempt_ms),
            reason: e.reason.clone(),
        };
        match e.state {
            JobState::Retrying => retrying.push(line),
            JobState::Dead => dead_letters.push(line),
            JobState::Queued => {}
        }
    }

    let now = crate::util::clock::now_seconds();
    let last = |gauge: &str, series_uid: Option<String>| {
        let t = scrape.value(gauge).filter(|t| *t > 0.0);
        Last {
            unix_seconds: t,
            seconds_ago: t.map(|t| (now - t).max(0.0)),
            series_uid,
        }
    };
    let disk = match (
        scrape.value("state_free_bytes"),
        scrape.value("state_min_free_bytes"),
    ) {
        (Some(free_bytes), Some(min_free_bytes)) => Some(Disk {
            free_bytes,
            min_free_bytes,
        }),
        _ => None,
    };
    let counters: BTreeMap<String, f64> = [
        "instances_received",
        "instances_rejected",
        "associations_rejected",
        "series_completed",
        "series_translated",
        "series_passed",
        "series_failed",
        "jobs_forwarded",
        "forward_failures",
        "jobs_dead",
    ]
    .iter()
    .filter_map(|n| scrape.value(n).map(|v| (n.to_string(), v)))
    .collect();

    let mut report = Report {
        status: "OK",
        exit_code: OK,
        problems: Vec::new(),
        address: addr.to_string(),
        state_dir: state.clone(),
        up: true,
        ready: health_code == 200,
        health: health_text.trim().to_string(),
        stall_threshold_seconds: scrape.value("stall_threshold_seconds"),
        stages,
        series_receiving: scrape.value("pending_series"),
        spool,
        destinations: dests.into_values().collect(),
        retrying,
        dead_letters,
        last_received: last(
            "last_instance_received_timestamp_seconds",
            newest_series(&[state.join("spool"), state.join("kept")]),
        ),
        last_forwarded: last(
            "last_job_delivered_timestamp_seconds",
            newest_series(&[state.join("kept")]),
        ),
        disk,
        counters,
    };
    judge(&mut report);
    Ok(report)
}

/// Sets the status, exit code and problems from what was found.
fn judge(r: &mut Report) {
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    if !r.ready {
        critical.push(format!("not ready: /healthz says {:?}", r.health));
    }
    for s in r.stages.iter().filter(|s| s.stalled) {
        let p = format!(
            "stage {} stalled ({:.0} s without a heartbeat)",
            s.name, s.heartbeat_age_seconds
        );
        if r.ready {
            critical.push(p);
        }
    }
    if let Some(d) = &r.disk {
        if d.min_free_bytes > 0.0 && d.free_bytes < d.min_free_bytes {
            critical.push(format!(
                "state disk full: {} MiB free, under the watermark state.min_free_mib = {} (instances are refused)",
                (d.free_bytes / 1048576.0).floor(),
                (d.min_free_bytes / 1048576.0).floor()
            ));
        } else if d.min_free_bytes > 0.0 && d.free_bytes < 2.0 * d.min_free_bytes {
            warning.push(format!(
                "state disk nearly full: {} MiB free, watermark {} MiB",
                (d.free_bytes / 1048576.0).floor(),
                (d.min_free_bytes / 1048576.0).floor()
            ));
        }
    }
    for d in &r.destinations {
        if d.retrying > 0 {
            warning.push(format!(
                "destination {} retrying {} job(s): {}",
                d.name, d.retrying, d.last_error
            ));
        }
    }
    if !r.dead_letters.is_empty() {
        warning.push(format!(
            "{} dead-letter job(s) (ct-harmonizer jobs list; jobs retry <id>)",
            r.dead_letters.len()
        ));
    }
    (r.status, r.exit_code) = if !critical.is_empty() {
        ("CRITICAL", CRITICAL)
    } else if !warning.is_empty() {
        ("WARNING", WARNING)
    } else {
        ("OK", OK)
    };
    r.problems = critical.into_iter().chain(warning).collect();
}

/// Series folders of the spool with their incoming instances and versions.
fn spool_series(spool: &Path) -> Result<Vec<SpoolSeries>, String> {
    let studies = match std::fs::read_dir(spool) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", spool.display())),
    };
    let mut out = Vec::new();
    for study in studies.flatten() {
        let study_uid = study.file_name().to_string_lossy().to_string();
        if study_uid.starts_with('.') || !study.path().is_dir() {
            continue;
        }
        for series in std::fs::read_dir(study.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !series.path().is_dir() {
                continue;
            }
            let (mut incoming, mut versions) = (0, 0);
            for e in std::fs::read_dir(series.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".dcm") {
                    incoming += 1;
                } else if name.starts_with('v') && e.path().is_dir() {
                    versions += 1;
                }
            }
            out.push(SpoolSeries {
                study_uid: study_uid.clone(),
                series_uid: series.file_name().to_string_lossy().to_string(),
                incoming_instances: incoming,
                versions,
            });
        }
    }
    out.sort_by(|a, b| (&a.study_uid, &a.series_uid).cmp(&(&b.study_uid, &b.series_uid)));
    Ok(out)
}

/// The series folder (`<root>/<study>/<series>`) modified last under any of `roots`.
fn newest_series(roots: &[PathBuf]) -> Option<String> {
    let mut best: Option<(std::time::SystemTime, String)> = None;
    for root in roots {
        for study in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if study.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for series in std::fs::read_dir(study.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(t) = series.metadata().and_then(|m| m.modified()) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(b, _)| t > *b) {
                    best = Some((t, series.file_name().to_string_lossy().to_string()));
                }
            }
        }
    }
    best.map(|(_, s)| s)
}

fn ago(l: &Last) -> String {
    match (l.seconds_ago, &l.series_uid) {
        (Some(s), Some(uid)) => format!("{} ago (series {uid})", human_seconds(s)),
        (Some(s), None) => format!("{} ago", human_seconds(s)),
        (None, _) => "not since the daemon started".into(),
    }
}

fn human_seconds(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The human form: the plugin summary line first, then the details.
pub fn render_human(r: &Report) -> String {
    let mut o = String::new();
    let first = if r.problems.is_empty() {
        format!(
            "ct-harmonizer ready at {}; {} series in the spool, {} job(s) queued",
            r.address,
            r.spool.len(),
            r.destinations.iter().map(|d| d.queued).sum::<usize>()
        )
    } else {
        r.problems.join("; ")
    };
    o.push_str(&format!("{}: {first}\n", r.status));
    o.push_str(&format!(
        "daemon     {} up, {} (/healthz: {})\n",
        r.address,
        if r.ready { "ready" } else { "NOT READY" },
        r.health
    ));
    let threshold = r
        .stall_threshold_seconds
        .map(|t| format!(" (stalled after {t:.0} s)"))
        .unwrap_or_default();
    o.push_str(&format!("stages{threshold}\n"));
    for s in &r.stages {
        o.push_str(&format!(
            "  {:<24} last beat {:>6.1} s ago{}\n",
            s.name,
            s.heartbeat_age_seconds,
            if s.stalled { "  STALLED" } else { "" }
        ));
    }
    o.push_str(&format!(
        "series     {} receiving, {} in the spool\n",
        r.series_receiving.unwrap_or(0.0),
        r.spool.len()
    ));
    for s in &r.spool {
        o.push_str(&format!(
            "  {}  {} incoming instance(s), {} version(s) in processing or delivery\n",
            s.series_uid, s.incoming_instances, s.versions
        ));
    }
    o.push_str(&format!(
        "last       received {}; forwarded {}\n",
        ago(&r.last_received),
        ago(&r.last_forwarded)
    ));
    o.push_str("destinations (queued / retrying / dead)\n");
    if r.destinations.is_empty() {
        o.push_str("  none configured\n");
    }
    for d in &r.destinations {
        o.push_str(&format!(
            "  {:<24} {:>4} / {:>4} / {:>4}{}\n",
            d.name,
            d.queued,
            d.retrying,
            d.dead,
            if d.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", d.last_error)
            }
        ));
    }
    for j in &r.retrying {
        o.push_str(&format!(
            "retrying   {} ({} of series {} to {}), attempt {}, next in {} s: {}\n",
            j.id,
            j.kind,
            j.series_uid,
            j.destination,
            j.attempts,
            j.next_attempt_in_seconds,
            j.reason
        ));
    }
    for j in &r.dead_letters {
        o.push_str(&format!(
            "dead       {} ({} of series {} to {}) after {} attempt(s): {}\n",
            j.id, j.kind, j.series_uid, j.destination, j.attempts, j.reason
        ));
    }
    if let Some(d) = &r.disk {
        o.push_str(&format!(
            "disk       {} MiB free on the state file system (watermark {} MiB)\n",
            (d.free_bytes / 1048576.0).floor(),
            (d.min_free_bytes / 1048576.0).floor()
        ));
    }
    if !r.counters.is_empty() {
        let c: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        o.push_str(&format!("counters   {}\n", c.join(" ")));
    }
    o
}

// ---------------------------------------------------------------------------------------------
// `serve`'s start-up summary.

/// The one start-up summary line of `serve` and its fields (the `daemon_ready` event).
#[derive(Debug, Clone)]
pub struct StartupSummary {
    pub line: String,
    pub http: String,
    pub watch: String,
    pub rules: String,
    pub destinations: String,
    pub models: String,
    pub devices: String,
}

/// Listeners, rules, destinations, models and devices, in one line.
pub fn startup_summary(
    settings: &Settings,
    translators: &HashMap<String, Translator>,
) -> StartupSummary {
    let or_none = |s: String| if s.is_empty() { "none".to_string() } else { s };
    let http = or_none(settings.http.listen.trim().to_string());
    let watch = or_none(settings.watch.dir.trim().to_string());
    let rules = or_none(
        settings
            .rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let destinations = or_none(
        settings
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut names: Vec<&String> = translators.keys().collect();
    names.sort();
    let models = or_none(
        names
            .iter()
            .filter_map(|n| {
                translators
                    .get(*n)
                    .map(|t| format!("{n}@{}:{}", t.manifest().version, t.device()))
            })
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut devs: Vec<&str> = translators.values().map(|t| t.device()).collect();
    devs.sort();
    devs.dedup();
    let devices = or_none(devs.join(","));
    let line = format!(
        "ready: DICOM {} as {}, http {http}, watch {watch}, {} rule(s) [{rules}], {} destination(s) [{destinations}], models [{models}] on {devices}",
        settings.server.listen,
        settings.server.ae_title,
        settings.rules.len(),
        settings.destinations.len(),
    );
    StartupSummary {
        line,
        http,
        watch,
        rules,
        destinations,
        models,
        devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let t = "# HELP a x\n# TYPE a counter\nct_harmonizer_a_total 3\nct_harmonizer_b{stage=\"forward:pacs\",x=\"q\\\"\"} 1.5 1700000000\n# EOF\n";
        let s = parse_metrics(t).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].value, 3.0);
        assert_eq!(
            s[1].labels,
            vec![
                ("stage".to_string(), "forward:pacs".to_string()),
                ("x".to_string(), "q\"".to_string())
            ]
        );
        let scrape = Scrape(s);
        assert_eq!(scrape.value("a"), Some(3.0));
        assert_eq!(
            scrape.family("b", "stage"),
            vec![("forward:pacs".into(), 1.5)]
        );
        for bad in [
            "<html>oops</html>",
            "ct_harmonizer_a",
            "ct_harmonizer_a{x=\"1\" 2",
            "ct_harmonizer_a twelve",
            "9abc 1",
            "a 1 2 3",
        ] {
            assert!(parse_metrics(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }

    #[test]
    fn wildcard_listen_means_loopback() {
        assert_eq!(
            connect_address("0.0.0.0:9102").unwrap(),
            "127.0.0.1:9102".parse().unwrap()
        );
        assert!(connect_address("nonsense").is_err());
    }
}
