//! Liveness under normal load (issue 9, items 6–8, and per-instance forwarding progress): the real
//! `serve` binary with a slow destination, a long translation, SIGTERM during a translation and a
//! destination that refuses one instance. `/healthz` is polled throughout with a low stall threshold
//! (`http.stall_seconds`), so that any stage that stops beating while it works shows as a 503.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use ct_harmonizer::samples::SeriesSpec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stall threshold in these tests (seconds): far below the default 30, so a stage that does not
/// beat while it works is caught within a few seconds.
const STALL: &str = "3";

/// Polls `/healthz` every 200 ms on a thread until stopped; keeps every answer that is not 200.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    bad: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(port: u16) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let polls: Arc<Mutex<usize>> = Arc::default();
        let (s, b, p) = (stop.clone(), bad.clone(), polls.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match http_get(port, "/healthz") {
                    Ok((200, _)) => {}
                    Ok((status, body)) => b.lock().unwrap().push(format!(
                        "{status} {}",
                        String::from_utf8_lossy(&body).trim()
                    )),
                    Err(e) => b.lock().unwrap().push(format!("no answer: {e}")),
                }
                *p.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        HealthWatch {
            stop,
            bad,
            polls,
            thread: Some(thread),
        }
    }

    /// Stops polling; returns the non-200 answers and the number of polls.
    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let bad = self.bad.lock().unwrap().clone();
        let polls = *self.polls.lock().unwrap();
        (bad, polls)
    }
}

/// A simulated systemd watchdog: the daemon's notify socket, recording when each `WATCHDOG=1`
/// ping arrives.
struct Watchdog {
    pings: Arc<Mutex<Vec<Instant>>>,
    usec: u64,
}

impl Watchdog {
    /// Longest gap between consecutive pings (and from the last ping to now).
    fn longest_gap(&self) -> Duration {
        let pings = self.pings.lock().unwrap().clone();
        let mut gap = Duration::ZERO;
        for w in pings.windows(2) {
            gap = gap.max(w[1] - w[0]);
        }
        if let Some(last) = pings.last() {
            gap = gap.max(last.elapsed());
        }
        gap
    }

    fn count(&self) -> usize {
        self.pings.lock().unwrap().len()
    }
}

/// Starts `serve` as systemd would with `WatchdogSec` = `usec` µs (NOTIFY_SOCKET, WATCHDOG_USEC).
fn start_under_watchdog(d: &mut Daemon, usec: u64) -> Watchdog {
    let sock = d.dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let p = pings.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = listener.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                p.lock().unwrap().push(Instant::now());
            }
        }
    });
    assert!(d.proc.is_none());
    d.starts += 1;
    let mut c = d.command();
    c.arg("serve")
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", usec.to_string());
    let mut p = Peer::spawn("ct-harmonizer serve", c, &d.log_path());
    let up = wait_until(secs(60), Duration::from_millis(25), || {
        p.log_text().contains("daemon_ready")
            && http_get(d.http, "/healthz").is_ok_and(|(s, _)| s == 200)
            || !p.alive()
    });
    assert!(up && p.alive(), "serve did not start:\n{}", p.log_text());
    d.proc = Some(p);
    Watchdog { pings, usec }
}

/// A rule for series sent by `calling_ae`, passing the original through to `destination`.
fn pass_rule_for(name: &str, calling_ae: &str, destination: &str) -> String {
    entry(
        "rules",
        &[
            ("name", name.into()),
            ("calling_ae", strings(&[calling_ae])),
            ("plan", "pass".into()),
            ("destinations", strings(&[destination])),
        ],
    )
}

fn catch_all_pass(destination: &str) -> String {
    entry(
        "rules",
        &[
            ("name", "default".into()),
            ("plan", "pass".into()),
            ("destinations", strings(&[destination])),
        ],
    )
}

/// Item 6: a healthy but slow destination (0.45 s per instance) neither stalls the daemon
/// (`/healthz` stays 200 with a 3 s stall threshold while one job takes far longer) nor delays a
/// series routed to another destination (no head-of-line blocking).
#[test]
fn slow_destination_neither_stalls_nor_blocks_another() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = ScriptedScp::start(Duration::from_millis(450), None);
    let fast_out = tmp.path().join("fast");
    let fast_port = free_port();
    let _fast = start_storescp(
        "FAST",
        fast_port,
        &fast_out,
        &tmp.path().join("storescp.log"),
    );
    let a = spec("liveness-slow-a", 24, 30);
    let b = spec("liveness-fast-b", 24, 8);
    let input = tmp.path().join("in");
    write(&a, &input.join("a"));
    write(&b, &input.join("b"));
    let mut d = Daemon::new(
        tmp.path(),
        &[("http.stall_seconds", STALL)],
        &(scp_dest("slow", "SCRIPTED", slow.port)
            + &scp_dest("fast", "FAST", fast_port)
            + &pass_rule_for("to-slow", "SLOWMOD", "slow")
            + &catch_all_pass("fast")),
    );
    // WatchdogSec=4: the slow job below takes about 14 s.
    let watchdog = start_under_watchdog(&mut d, 4_000_000);
    let health = HealthWatch::start(d.http);

    let o = storescu("SLOWMOD", AE, d.port, &[&input.join("a")]);
    assert!(o.status.success(), "{}", out_text(&o));
    let started = wait_until(secs(30), POLL, || !slow.received.lock().unwrap().is_empty());
    assert!(
        started,
        "the slow destination got nothing:\n{}",
        d.context()
    );

    let o = storescu("FASTMOD", AE, d.port, &[&input.join("b")]);
    assert!(o.status.success(), "{}", out_text(&o));
    let fast_done = wait_until(secs(30), POLL, || count_files(&fast_out) == 8);
    let slow_at_that_time = slow.stored.lock().unwrap().len();
    assert!(
        fast_done,
        "the fast series was not delivered:\n{}",
        d.context()
    );
    assert!(
        slow_at_that_time < 30,
        "the fast series must not wait for the slow job: the slow destination already had all \
         {slow_at_that_time} instances"
    );

    let all = wait_until(secs(60), POLL, || {
        slow.stored.lock().unwrap().len() == 30 && d.idle()
    });
    assert!(all, "{}", d.context());
    let (bad, polls) = health.finish();
    assert!(polls > 10, "{polls}");
    assert!(
        bad.is_empty(),
        "/healthz failed while a slow destination was being served: {bad:?}\n{}",
        d.context()
    );
    let gap = watchdog.longest_gap();
    assert!(
        watchdog.count() > 3 && gap < Duration::from_micros(watchdog.usec),
        "watchdog pings: {}, longest gap {gap:?} (WatchdogSec 4 s)\n{}",
        watchdog.count(),
        d.context()
    );
    // Each instance once: the slow job was one attempt, never restarted.
    assert!(
        slow.received.lock().unwrap().values().all(|&n| n == 1),
        "{:?}",
        slow.received.lock().unwrap()
    );
    assert_eq!(d.metric("forward_failures"), 0.0);
    assert_eq!(d.metric("jobs_forwarded"), 2.0);
}

/// A translation slow on purpose: the baseline model on its smallest possible in-plane tiles (7×7
/// with its 3-voxel margin: 1×1 cores, one ONNX run per output voxel, 65,536 runs per 256×256
/// slice; 0.3 to 1.2 s per slice on the 2-core test VM depending on its load).
const SLOW_TRANSLATION: [(&str, &str); 2] = [
    ("http.stall_seconds", STALL),
    ("translate.tile", "[1, 7, 7]"),
];

/// Seconds between `series_started` and `series_done` in the log, if both are there.
fn processing_seconds(log: &str) -> Option<f64> {
    let raw = log.lines().find(|l| l.contains("series_done"))?;
    // Without the terminal colour codes (ESC [ ... m).
    let mut line = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            line.push(c);
        }
    }
    let i = line.find("seconds=")?;
    let num: String = line[i + "seconds=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// Item 7: a series whose translation takes far longer than the stall threshold keeps `/healthz`
/// at 200 throughout (inference beats per tile; `/healthz` and the watchdog share one rule).
#[test]
fn long_translation_keeps_health() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = FakeScp::start(false);
    let s = spec("liveness-long", 256, 20);
    let input = tmp.path().join("in");
    write(&s, &input);
    let mut d = Daemon::new(
        tmp.path(),
        &SLOW_TRANSLATION,
        &(scp_dest("fake", "FAKE", dest.port) + &rule("default", "harmonize", false, &["fake"])),
    );
    let watchdog = start_under_watchdog(&mut d, 4_000_000);
    let health = HealthWatch::start(d.http);
    let sent = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(sent.status.success(), "{}", out_text(&sent));
    let done = wait_until(secs(120), POLL, || {
        dest.stored.lock().unwrap().len() == 20 && d.idle()
    });
    let (bad, polls) = health.finish();
    assert!(done, "{}", d.context());
    let seconds = processing_seconds(&d.logs()).expect("series_done with its seconds");
    // The test means something only when the translation outlasts the stall threshold.
    assert!(
        seconds > 5.0,
        "the translation took {seconds} s; the workload must outlast the 3 s stall threshold"
    );
    assert!(polls > 10, "{polls}");
    assert!(
        bad.is_empty(),
        "/healthz failed during a {seconds} s translation: {bad:?}\n{}",
        d.context()
    );
    let gap = watchdog.longest_gap();
    assert!(
        watchdog.count() > 3 && gap < Duration::from_micros(watchdog.usec),
        "watchdog pings: {}, longest gap {gap:?} (WatchdogSec 4 s)\n{}",
        watchdog.count(),
        d.context()
    );
    assert_eq!(d.metric("series_translated"), 1.0);
    println!("translation took {seconds:.1} s, /healthz polled {polls} times, all 200");
}

/// Item 8: SIGTERM during a long translation stops the daemon promptly (inference is cancelled at
/// the next tile); the series is not quarantined but stays in the spool, the partial derived output
/// is removed, and the next start delivers it.
#[test]
fn sigterm_cancels_a_long_translation() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = FakeScp::start(false);
    let s = spec("liveness-sigterm", 256, 48);
    let input = tmp.path().join("in");
    write(&s, &input);
    let tail =
        scp_dest("fake", "FAKE", dest.port) + &rule("default", "harmonize", false, &["fake"]);
    let mut d = Daemon::new(tmp.path(), &SLOW_TRANSLATION, &tail);
    d.start();
    let sent = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(sent.status.success(), "{}", out_text(&sent));
    let started = wait_until(secs(30), POLL, || {
        d.peer().log_text().contains("series_started")
    });
    assert!(started, "{}", d.context());
    std::thread::sleep(secs(2));
    let signalled = Instant::now();
    d.peer().signal("TERM");
    let status = d.peer().wait_exit(secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not stop within 15 s of SIGTERM ({status:?}):\n{}",
        d.context()
    );
    let stop_seconds = signalled.elapsed().as_secs_f64();
    d.proc = None;
    let logs = d.logs();
    assert!(logs.contains("series_cancelled"), "{logs}");
    assert!(
        !logs.contains("series_done"),
        "it was meant to be cancelled mid-way:\n{logs}"
    );
    assert!(!logs.contains("series_quarantined"), "{logs}");
    assert_eq!(
        d.spool_files()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .count(),
        48,
        "the series must stay in the spool:\n{}",
        d.context()
    );
    assert!(
        files(&d.state.join("quarantine")).is_empty(),
        "{}",
        d.context()
    );
    assert!(
        files(&d.state.join("derived")).is_empty(),
        "{}",
        d.context()
    );
    assert!(dest.stored.lock().unwrap().is_empty());

    // The restart (with the model's own tiles: fast) resumes and delivers it.
    d.write_config(&[("http.stall_seconds", STALL)], &tail);
    d.start();
    let delivered = wait_until(secs(90), POLL, || {
        dest.stored.lock().unwrap().len() == 48 && d.idle()
    });
    assert!(delivered, "{}", d.context());
    println!("stopped {stop_seconds:.1} s after SIGTERM");
}

/// Per-instance progress: a destination that refuses one instance gets every other instance once,
/// on the first attempt; later attempts send only the refused one; the job dead-letters with a
/// reason naming its SOP Instance UID, and the job file records what was acknowledged.
#[test]
fn one_refused_instance_does_not_hold_back_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec("liveness-refuse-one", 24, 5);
    let refused = s.sop_instance_uid(2);
    let scp = ScriptedScp::start(Duration::ZERO, Some(refused.clone()));
    let input = tmp.path().join("in");
    write(&s, &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[("forward.max_attempts", "3")],
        &(scp_dest("scripted", "SCRIPTED", scp.port) + &catch_all_pass("scripted")),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    let dead = wait_until(secs(60), POLL, || {
        d.dead_files()
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "toml"))
    });
    assert!(dead, "{}", d.context());
    let received = scp.received.lock().unwrap().clone();
    for z in 0..5 {
        let uid = s.sop_instance_uid(z);
        let expected = if z == 2 { 3 } else { 1 };
        assert_eq!(
            received.get(&uid).copied(),
            Some(expected),
            "instance {z} ({uid}): {received:?}"
        );
    }
    assert_eq!(scp.stored.lock().unwrap().len(), 4);
    let job_file = d
        .dead_files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "toml"))
        .unwrap();
    let reason = std::fs::read_to_string(job_file.with_extension("reason.txt")).unwrap();
    assert!(reason.contains(&refused), "{reason}");
    assert!(reason.contains("0xC000"), "{reason}");
    assert!(reason.contains("1 of 1"), "{reason}");
    let job = std::fs::read_to_string(&job_file).unwrap();
    for z in [0, 1, 3, 4] {
        assert!(job.contains(&s.sop_instance_uid(z)), "{job}");
    }
    assert!(!job.contains(&format!("\"{refused}\"")), "{job}");
    assert_eq!(d.metric("forward_failures"), 3.0);
    // Dead-lettered: the spool keeps the series.
    assert_eq!(
        d.spool_files()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .count(),
        5
    );
}

/// Per-instance progress is durable: SIGTERM in the middle of a slow job writes the instances
/// acknowledged so far into the job file, and the next start sends only the others (at most the one
/// instance in flight at the stop is received twice).
#[test]
fn progress_survives_a_stop_mid_job() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = ScriptedScp::start(Duration::from_millis(300), None);
    let s = spec("liveness-stop-mid-job", 24, 20);
    let input = tmp.path().join("in");
    write(&s, &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("slow", "SCRIPTED", slow.port) + &catch_all_pass("slow")),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    let some = wait_until(secs(30), POLL, || slow.stored.lock().unwrap().len() >= 5);
    assert!(some, "{}", d.context());
    d.peer().signal("TERM");
    let status = d.peer().wait_exit(secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        d.context()
    );
    d.proc = None;
    let stored_before = slow.stored.lock().unwrap().clone();
    assert!(stored_before.len() < 20, "the job finished before the stop");
    let jobs = d.outbox_files();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = std::fs::read_to_string(&jobs[0]).unwrap();
    let acked: Vec<usize> = (0..20)
        .filter(|&z| job.contains(&format!("\"{}\"", s.sop_instance_uid(z))))
        .collect();
    assert!(
        acked.len() + 1 >= stored_before.len(),
        "acknowledged in the job file: {acked:?}; stored by the destination: {}\n{job}",
        stored_before.len()
    );
    for &z in &acked {
        assert!(stored_before.contains(&s.sop_instance_uid(z)));
    }

    d.start();
    let all = wait_until(secs(60), POLL, || {
        slow.stored.lock().unwrap().len() == 20 && d.idle()
    });
    assert!(all, "{}", d.context());
    let received = slow.received.lock().unwrap().clone();
    let total: usize = received.values().sum();
    assert!(
        total <= 21,
        "instances re-sent after the restart: {received:?}"
    );
    for &z in &acked {
        assert_eq!(received[&s.sop_instance_uid(z)], 1, "{received:?}");
    }
}

/// Destinations that misbehave on the wire, each with its own series: one accepts the TCP
/// connection and never says a word (no A-ASSOCIATE-AC), one associates and then never answers a
/// C-STORE, one answers the A-ASSOCIATE-RQ with a PDU header declaring 4 GiB. Each attempt ends
/// within its bound (`forward.timeout_seconds`), each job dead-letters after its attempts with a
/// reason naming its destination, the spool keeps every series, memory stays flat, and the
/// daemon is healthy and still delivers to a good destination afterwards.
#[test]
fn hostile_destinations_time_out_and_keep_the_series() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let tmp = tempfile::tempdir().unwrap();
    // Connections are kept open by holding them here until the test ends.
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let silent_conns = Arc::new(Mutex::new(0usize));
    {
        let (held, conns) = (held.clone(), silent_conns.clone());
        std::thread::spawn(move || {
            for s in silent.incoming().flatten() {
                *conns.lock().unwrap() += 1;
                held.lock().unwrap().push(s);
            }
        });
    }
    let liar = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_port = liar.local_addr().unwrap().port();
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for mut s in liar.incoming().flatten() {
                let mut rq = [0u8; 1024];
                let _ = s.read(&mut rq);
                // A-ASSOCIATE-AC (type 2) declaring 0xFFFFFFF0 bytes, then 64 of them.
                let mut pdu = vec![0x02, 0x00];
                pdu.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
                pdu.extend_from_slice(&[0x41; 64]);
                let _ = s.write_all(&pdu);
                held.lock().unwrap().push(s);
            }
        });
    }
    let mute = ScriptedScp::start(Duration::from_secs(3600), None);
    let good_out = tmp.path().join("good");
    let good_port = free_port();
    let _good = start_storescp(
        "GOOD",
        good_port,
        &good_out,
        &tmp.path().join("storescp.log"),
    );

    let series: Vec<(&str, SeriesSpec)> = vec![
        ("silent", spec("liveness-dest-silent", 24, 4)),
        ("mute", spec("liveness-dest-mute", 24, 4)),
        ("liar", spec("liveness-dest-liar", 24, 4)),
        ("good", spec("liveness-dest-good", 24, 4)),
    ];
    let mut d = Daemon::new(
        tmp.path(),
        &[
            ("forward.timeout_seconds", "1"),
            ("forward.max_attempts", "2"),
            ("http.stall_seconds", STALL),
        ],
        &(scp_dest("silent", "SILENT", silent_port)
            + &scp_dest("mute", "SCRIPTED", mute.port)
            + &scp_dest("liar", "LIAR", liar_port)
            + &scp_dest("good", "GOOD", good_port)
            + &pass_rule_for("to-silent", "SILENTMOD", "silent")
            + &pass_rule_for("to-mute", "MUTEMOD", "mute")
            + &pass_rule_for("to-liar", "LIARMOD", "liar")
            + &catch_all_pass("good")),
    );
    d.start();
    let pid = d.peer().pid();
    let idle = peak_rss(pid);
    let health = HealthWatch::start(d.http);
    let started = Instant::now();
    for (name, s) in &series[..3] {
        let input = tmp.path().join("in").join(name);
        write(s, &input);
        let calling = format!("{}MOD", name.to_uppercase());
        let o = storescu(&calling, AE, d.port, &[&input]);
        assert!(o.status.success(), "{name}: {}", out_text(&o));
    }
    // Two attempts each: silent at most its association bound (timeout x (2 + 4 instances)) per
    // attempt, mute 1 s per attempt, liar at once; plus quiet time and back-off.
    let dead = wait_until(secs(60), POLL, || {
        d.dead_files()
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".reason.txt"))
            .count()
            == 3
    });
    let took = started.elapsed();
    assert!(dead, "{}", d.context());
    let reasons: Vec<String> = d
        .dead_files()
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".reason.txt"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for name in ["silent", "mute", "liar"] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(&format!("destination {name}"))),
            "no dead-letter reason names {name}: {reasons:#?}"
        );
    }
    // What each waited for, not dicom-ul's guess ("TLS not enabled, but peer seems to be sending
    // TLS data" for all three before).
    for expected in [
        "destination silent: no answer within 1 s",
        "destination mute: no answer within 1 s",
        "destination liar: association failed: the answer to our A-ASSOCIATE-RQ is not a DICOM PDU",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:#?}"
        );
    }
    assert!(
        *silent_conns.lock().unwrap() >= 2,
        "silent: one connection per attempt"
    );
    assert_eq!(mute.stored.lock().unwrap().len(), 0);
    assert_eq!(d.metric("forward_failures"), 6.0);
    // Dead-lettered, not lost: the spool keeps the three series.
    let kept = d
        .spool_files()
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .count();
    assert_eq!(kept, 12, "{}", d.context());
    let peak = peak_rss(pid);
    assert!(
        peak <= idle + (64 << 20),
        "peak RSS {peak} B against {idle} B idle: the 4 GiB PDU header was believed"
    );

    // The daemon carries on: a good destination gets its series.
    let (_, s) = &series[3];
    let input = tmp.path().join("in").join("good");
    write(s, &input);
    let o = storescu("GOODMOD", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    let delivered = wait_until(secs(30), POLL, || count_files(&good_out) == 4);
    assert!(delivered, "{}", d.context());
    let (bad, polls) = health.finish();
    assert!(polls > 5, "{polls}");
    assert!(
        bad.is_empty(),
        "/healthz failed while destinations misbehaved: {bad:?}\n{}",
        d.context()
    );
    assert!(d.peer().alive());
    println!(
        "three hostile destinations dead-lettered in {:.1} s; idle VmHWM {idle} B, peak {peak} B",
        took.as_secs_f64()
    );
}

/// Destinations that associate and then answer out of protocol: a response to another message
/// ID, a response naming another SOP instance, and a command set that never ends (64 MiB of
/// fragments without the last bit). None of the instances counts as delivered, each job
/// dead-letters with what was wrong, memory stays flat (the endless command is cut at the DIMSE
/// layer's bound) and the spool keeps the series.
#[test]
fn destinations_answering_out_of_protocol_fail_their_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "wrongid",
            Reply::WrongMessageId,
            "not a C-STORE-RSP to message",
        ),
        (
            "wronguid",
            Reply::WrongInstance,
            "not a C-STORE-RSP to message",
        ),
        (
            "endless",
            Reply::EndlessCommand,
            "command set exceeds 65536 bytes",
        ),
    ];
    let scps: Vec<ScriptedScp> = cases
        .iter()
        .map(|(_, reply, _)| ScriptedScp::start_replying(Duration::ZERO, None, *reply))
        .collect();
    let mut tail = String::new();
    for ((name, _, _), scp) in cases.iter().zip(&scps) {
        tail += &scp_dest(name, "SCRIPTED", scp.port);
        tail += &pass_rule_for(
            &format!("to-{name}"),
            &format!("{}MOD", name.to_uppercase()),
            name,
        );
    }
    let sink = tmp.path().join("sink");
    std::fs::create_dir_all(&sink).unwrap();
    tail += &entry(
        "destinations",
        &[
            ("name", "sink".into()),
            ("kind", "folder".into()),
            ("path", sink.display().to_string().into()),
        ],
    );
    tail += &catch_all_pass("sink");
    let mut d = Daemon::new(
        tmp.path(),
        &[
            ("forward.timeout_seconds", "2"),
            ("forward.max_attempts", "2"),
        ],
        &tail,
    );
    d.start();
    let pid = d.peer().pid();
    let idle = peak_rss(pid);
    let mut specs = Vec::new();
    for (name, _, _) in &cases {
        let s = spec(&format!("liveness-protocol-{name}"), 24, 3);
        let input = tmp.path().join("in").join(name);
        write(&s, &input);
        let o = storescu(
            &format!("{}MOD", name.to_uppercase()),
            AE,
            d.port,
            &[&input],
        );
        assert!(o.status.success(), "{name}: {}", out_text(&o));
        specs.push(s);
    }
    let reason_files = |d: &Daemon| -> Vec<std::path::PathBuf> {
        d.dead_files()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".reason.txt"))
            .collect()
    };
    let dead = wait_until(secs(60), POLL, || reason_files(&d).len() == 3);
    assert!(dead, "{}", d.context());
    for (((name, _, expected), scp), s) in cases.iter().zip(&scps).zip(&specs) {
        let reason = reason_files(&d)
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .find(|r| r.contains(&format!("destination {name}:")))
            .unwrap_or_else(|| panic!("no reason names {name}:\n{}", d.context()));
        assert!(reason.contains(expected), "{name}: {reason}");
        // Nothing counts as delivered: the job file records no acknowledged instance.
        let job = reason_files(&d)
            .into_iter()
            .find(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&format!("destination {name}:"))
            })
            .map(|p| {
                let stem = p
                    .to_string_lossy()
                    .trim_end_matches(".reason.txt")
                    .to_string();
                std::fs::read_to_string(format!("{stem}.toml")).unwrap()
            })
            .unwrap();
        let job: toml::Table = toml::from_str(&job).unwrap();
        let acknowledged = job
            .get("acknowledged")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len());
        assert_eq!(acknowledged, 0, "{name}: {job:?}");
        assert!(
            (0..3).any(|z| reason.contains(&s.sop_instance_uid(z))) || *name == "endless",
            "{name}: the reason names the instance: {reason}"
        );
        assert!(
            !scp.received.lock().unwrap().is_empty(),
            "{name} received nothing"
        );
    }
    let kept = d
        .spool_files()
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .count();
    assert_eq!(kept, 9, "{}", d.context());
    let peak = peak_rss(pid);
    assert!(
        peak <= idle + (32 << 20),
        "peak RSS {peak} B against {idle} B idle: the endless command set was buffered"
    );
    assert!(d.peer().alive());
    println!("idle VmHWM {idle} B, peak {peak} B");
}
