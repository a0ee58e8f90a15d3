//! Issue 9, spool / series / processing lifecycle: nothing acknowledged is ever lost. The real
//! `serve` binary with generated configurations (fixtures in tests/common/daemon.rs), fed by DCMTK's
//! storescu or the in-test raw client, forwarding to the in-test SCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use ct_harmonizer::dicom::dimse;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The in-test SCP as the only destination of a "harmonize" default rule.
fn tail(fake: &FakeScp, forward_original: bool) -> String {
    scp_dest("fake", "FAKE", fake.port) + &rule("default", "harmonize", forward_original, &["fake"])
}

fn stored(fake: &FakeScp) -> BTreeSet<String> {
    fake.stored.lock().unwrap().clone()
}

/// Sends slices `zs` of `s` (as a series of `s.slices`) on one raw association; each must succeed.
fn send_raw(d: &Daemon, s: &ct_harmonizer::samples::SeriesSpec, zs: &[usize]) {
    let mut a = raw_associate(d.port);
    for (i, &z) in zs.iter().enumerate() {
        let status = raw_store(
            &mut a,
            i as u16 + 1,
            &s.sop_instance_uid(z),
            dataset_bytes(s, z),
        );
        assert_eq!(status, dimse::SUCCESS, "slice {z}\n{}", d.context());
    }
    a.release().unwrap();
}

/// Version folders (`spool/<study>/<series>/v<N>`) of a series.
fn version_dirs(d: &Daemon, series_uid: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = files(&d.state.join("spool"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == ".version"))
        .filter_map(|p| p.parent().map(Path::to_owned))
        // `.v<N>.tmp/` is a hand-over still in progress (undone if the daemon dies now).
        .filter(|v| {
            v.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .filter(|v| {
            v.parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n.to_string_lossy() == series_uid)
        })
        .collect();
    out.sort();
    out
}

fn quarantined(dir: &Path) -> Vec<PathBuf> {
    files(dir)
}

/// Item 1: a late instance acknowledged while version 1 is still being forwarded survives version
/// 1's clean-up (per-version spool folders): version 2 is the whole series plus the late instance,
/// harmonized and delivered; nothing is quarantined. Before, version 1's clean-up deleted the late
/// instance and version 2 failed ("No such file").
#[test]
fn late_instance_while_version_one_is_forwarded_is_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(true);
    let mut d = Daemon::new(
        tmp.path(),
        &[("series.quiet_seconds", "6")],
        &tail(&fake, true),
    );
    d.start();
    let s = spec("spool-late-forwarding", 24, 5);
    send_raw(&d, &s, &[0, 1, 2, 3, 4]);
    // Version 1 is being forwarded (the destination refuses for now).
    assert!(
        wait_until(secs(60), POLL, || fake.refused.load(Ordering::SeqCst) >= 1),
        "{}",
        d.context()
    );
    // The modality sends the series again meanwhile: copies of what version 1 has, dropped from
    // the incoming folder (no new version, nothing left behind).
    send_raw(&d, &s, &[0, 1, 2, 3, 4]);
    let mut more = s.clone();
    more.slices = 6;
    send_raw(&d, &more, &[5]);
    let late = s_sop(&more, 5);
    // The destination recovers: version 1 is delivered (and cleaned) while version 2 is quiet.
    fake.fail.store(false, Ordering::SeqCst);
    let ok = wait_until(secs(90), POLL, || {
        stored(&fake).contains(&late) && d.idle() && d.metric("outbox_jobs") == 0.0
    });
    assert!(ok, "late instance not delivered\n{}", d.context());
    let got = stored(&fake);
    for z in 0..6 {
        assert!(got.contains(&s_sop(&more, z)), "original {z} missing");
    }
    // v1 derived (5) + v2 derived (6, new UIDs) + 6 originals.
    assert_eq!(got.len(), 17, "{got:#?}");
    assert_eq!(d.metric("series_completed"), 2.0);
    assert!(quarantined(&d.state.join("quarantine")).is_empty());
    assert!(!d.logs().contains("quarantine"), "{}", d.logs());
}

fn s_sop(s: &ct_harmonizer::samples::SeriesSpec, z: usize) -> String {
    s.sop_instance_uid(z)
}

/// Smaller item (b): a late instance after delivery makes a version 2 made of the delivered
/// instances (kept for `series.keep_delivered_seconds`) plus the late one, harmonized whole; once the
/// delivered instances were released (keep 0) a late instance is forwarded as an original only, with
/// a warning naming the series. Before, version 2 was a one-slice series.
#[test]
fn late_instance_after_delivery_makes_a_whole_version() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(false);
    let mut d = Daemon::new(tmp.path(), &[], &tail(&fake, true));
    d.start();
    let s = spec("spool-late-delivered", 24, 5);
    send_raw(&d, &s, &[0, 1, 2, 3, 4]);
    assert!(
        wait_until(secs(60), POLL, || stored(&fake).len() == 10 && d.idle()),
        "{}",
        d.context()
    );
    let mut more = s.clone();
    more.slices = 6;
    send_raw(&d, &more, &[5]);
    assert!(
        wait_until(secs(60), POLL, || d.metric("series_completed") == 2.0
            && d.idle()
            && d.metric("outbox_jobs") == 0.0
            && stored(&fake).len() == 17),
        "v2 must be 6 derived instances\n{:#?}\n{}",
        stored(&fake),
        d.context()
    );
    assert_eq!(d.metric("series_translated"), 2.0);
    assert!(quarantined(&d.state.join("quarantine")).is_empty());

    // Delivered instances not kept: the late one goes out as an original, with a warning.
    d.kill9();
    let fake2 = FakeScp::start(false);
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let mut d2 = Daemon::new(
        &tmp.path().join("b"),
        &[("series.keep_delivered_seconds", "0")],
        &tail(&fake2, false),
    );
    d2.start();
    let s2 = spec("spool-late-released", 24, 5);
    send_raw(&d2, &s2, &[0, 1, 2, 3, 4]);
    assert!(
        wait_until(secs(60), POLL, || stored(&fake2).len() == 5 && d2.idle()),
        "{}",
        d2.context()
    );
    let mut more2 = s2.clone();
    more2.slices = 6;
    send_raw(&d2, &more2, &[5]);
    assert!(
        wait_until(secs(60), POLL, || stored(&fake2)
            .contains(&s_sop(&more2, 5))
            && d2.idle()),
        "{}",
        d2.context()
    );
    assert_eq!(stored(&fake2).len(), 6, "{:#?}", stored(&fake2));
    let logs = d2.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("late_instance_original_only") && l.contains(&s2.series_uid())),
        "{logs}"
    );
    assert!(quarantined(&d2.state.join("quarantine")).is_empty());
}

/// Smaller item (a): after kill -9, with a scanner that does not send again, the acknowledged
/// partial series (a gap) is not dropped: its originals are forwarded (the rule forwards originals)
/// with a warning naming the series and the reason. Before, it was quarantined and never forwarded.
#[test]
fn gap_after_kill_forwards_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(false);
    let mut d = Daemon::new(
        tmp.path(),
        &[("series.quiet_seconds", "60")],
        &tail(&fake, true),
    );
    d.start();
    let s = spec("spool-gap", 24, 6);
    send_raw(&d, &s, &[0, 1, 2, 4, 5]);
    d.kill9();
    d.write_config(&[("series.quiet_seconds", "1")], &tail(&fake, true));
    d.start();
    let expect: BTreeSet<String> = [0, 1, 2, 4, 5].iter().map(|&z| s_sop(&s, z)).collect();
    assert!(
        wait_until(secs(60), POLL, || stored(&fake) == expect && d.idle()),
        "{:#?}\n{}",
        stored(&fake),
        d.context()
    );
    let logs = d.logs();
    assert!(
        logs.lines().any(|l| l.contains("series_not_harmonized")
            && l.contains(&s.series_uid())
            && l.contains("gap")),
        "{logs}"
    );
    assert!(quarantined(&d.state.join("quarantine")).is_empty());
}

/// Item 3 (ENOSPC): no room for derived output is a transient condition: the series stays in the
/// spool and is retried with back-off (the log names the series and the errno), never quarantined;
/// once there is room it is harmonized and delivered. The room is `state.processing_min_free_mib`
/// (the real ENOSPC of /dev/full is classified the same way: spool::tests).
#[test]
fn no_room_for_derived_output_is_retried_not_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(false);
    let full = [
        ("state.processing_min_free_mib", "100000000"),
        ("series.retry_initial_seconds", "1"),
        ("series.retry_max_seconds", "2"),
    ];
    let mut d = Daemon::new(tmp.path(), &full, &tail(&fake, false));
    d.start();
    let s = spec("spool-enospc", 24, 4);
    send_raw(&d, &s, &[0, 1, 2, 3]);
    let uid = s.series_uid();
    assert!(
        wait_until(secs(60), POLL, || d
            .logs()
            .lines()
            .filter(|l| l.contains("series_retry") && l.contains(&uid) && l.contains("ENOSPC"))
            .count()
            >= 3),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("series_failed"), 0.0);
    assert!(quarantined(&d.state.join("quarantine")).is_empty());
    assert_eq!(
        d.spool_files()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .count(),
        4,
        "{}",
        d.context()
    );
    assert!(stored(&fake).is_empty());
    // Room again (restart with the default): delivered.
    d.kill9();
    d.write_config(&[], &tail(&fake, false));
    d.start();
    assert!(
        wait_until(secs(60), POLL, || stored(&fake).len() == 4 && d.idle()),
        "{}",
        d.context()
    );
}

/// Item 2 (crash loop): a series whose processing the daemon died in twice (its crash marker says
/// 2) is quarantined at start-up with the reason, not replayed; one it died in once is replayed and
/// delivered. The quarantine is on another file system (/dev/shm): copied, then removed.
#[test]
fn crash_marker_quarantines_instead_of_replaying() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(false);
    let shm = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let q = shm.path().join("quarantine");
    let qv = format!("{:?}", q.display().to_string());
    let held = [
        ("state.processing_min_free_mib", "100000000"),
        ("state.quarantine_dir", qv.as_str()),
    ];
    let mut d = Daemon::new(tmp.path(), &held, &tail(&fake, true));
    d.start();
    let bad = spec("spool-crash-twice", 24, 3);
    let once = spec("spool-crash-once", 24, 3);
    send_raw(&d, &bad, &[0, 1, 2]);
    send_raw(&d, &once, &[0, 1, 2]);
    assert!(
        wait_until(secs(60), POLL, || version_dirs(&d, &bad.series_uid()).len()
            == 1
            && version_dirs(&d, &once.series_uid()).len() == 1),
        "{}",
        d.context()
    );
    d.kill9();
    // As if the daemon had died while processing them (twice, once).
    std::fs::write(
        version_dirs(&d, &bad.series_uid())[0].join(".processing"),
        "2\n",
    )
    .unwrap();
    std::fs::write(
        version_dirs(&d, &once.series_uid())[0].join(".processing"),
        "1\n",
    )
    .unwrap();
    d.write_config(&[("state.quarantine_dir", qv.as_str())], &tail(&fake, true));
    d.start();
    assert!(
        wait_until(secs(60), POLL, || stored(&fake).len() == 6 && d.idle()),
        "{:#?}\n{}",
        stored(&fake),
        d.context()
    );
    let got = stored(&fake);
    assert!((0..3).all(|z| got.contains(&once.sop_instance_uid(z))));
    assert!((0..3).all(|z| !got.contains(&bad.sop_instance_uid(z))));
    let reasons: Vec<PathBuf> = files(&q)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "reason.txt"))
        .collect();
    assert_eq!(reasons.len(), 1, "{:#?}", files(&q));
    assert!(reasons[0].to_string_lossy().contains(&bad.series_uid()));
    assert!(std::fs::read_to_string(&reasons[0])
        .unwrap()
        .contains("daemon died while processing this series"));
    assert_eq!(
        files(&q)
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .count(),
        3
    );
    let logs = d.logs();
    assert!(logs.contains("crash_loop_quarantined"), "{logs}");
    assert!(logs.contains("series_replayed_after_crash"), "{logs}");
}

/// Item 1 (quarantine that fails): the quarantine folder cannot be made (a file is in the way):
/// the series stays in the spool with an ERROR event and is tried again; once the quarantine folder
/// is usable it lands there. Its instances never leave the spool in between.
#[test]
fn failed_quarantine_keeps_the_series_in_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let bad_q = format!("{:?}", blocker.join("quarantine").display().to_string());
    let fake = FakeScp::start(false);
    let overrides = [
        ("state.quarantine_dir", bad_q.as_str()),
        ("series.retry_initial_seconds", "1"),
        ("series.retry_max_seconds", "2"),
    ];
    // Harmonize without originals: a gap is quarantined.
    let mut d = Daemon::new(tmp.path(), &overrides, &tail(&fake, false));
    d.start();
    let s = spec("spool-quarantine-fails", 24, 6);
    send_raw(&d, &s, &[0, 1, 2, 4, 5]);
    assert!(
        wait_until(secs(60), POLL, || d
            .logs()
            .matches("quarantine_failed")
            .count()
            >= 2),
        "{}",
        d.context()
    );
    let dcm = |d: &Daemon| {
        d.spool_files()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .count()
    };
    assert_eq!(dcm(&d), 5, "{}", d.context());
    assert!(d
        .logs()
        .lines()
        .any(|l| l.contains("quarantine_failed") && l.contains("ERROR")));
    d.kill9();
    d.write_config(&[], &tail(&fake, false));
    d.start();
    assert!(
        wait_until(secs(60), POLL, || d.idle()
            && files(&d.state.join("quarantine"))
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .count()
                == 5),
        "{}",
        d.context()
    );
    assert!(stored(&fake).is_empty());
}

/// Item 3 with a real ENOSPC: serve runs in its own mount namespace where `<state>/derived` is a
/// small tmpfs filled to the last byte. Writing the derived series fails with ENOSPC: the series
/// stays in the spool and is retried with back-off (the log names the series and "ENOSPC (28)"),
/// never quarantined; once room is made (through /proc/<pid>/root) it is delivered. Needs the right
/// to make a mount namespace (root): skipped otherwise.
#[test]
fn enospc_writing_the_derived_series_is_retried() {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs \"$d\" && umount \"$d\" && rmdir \"$d\"")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot make a mount namespace with a tmpfs here (needs root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(false);
    let mut d = Daemon::new(
        tmp.path(),
        &[
            ("series.retry_initial_seconds", "1"),
            ("series.retry_max_seconds", "2"),
        ],
        &tail(&fake, false),
    );
    let derived = d.state.join("derived");
    std::fs::create_dir_all(&derived).unwrap();
    let serve = d.command();
    let mut c = std::process::Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=256k tmpfs \"$1\" || exit 97; dd if=/dev/zero of=\"$1/fill\" bs=4k 2>/dev/null; shift; exec \"$@\"")
        .arg("sh")
        .arg(&derived)
        .arg(serve.get_program())
        .args(serve.get_args())
        .arg("serve");
    for (k, v) in serve.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    d.starts += 1;
    let mut p = Peer::spawn("serve (derived on a full tmpfs)", c, &d.log_path());
    let up = wait_until(secs(60), POLL, || {
        p.log_text().contains("daemon_ready")
            && http_get(d.http, "/healthz").is_ok_and(|(s, _)| s == 200)
            || !p.alive()
    });
    assert!(up && p.alive(), "serve did not start:\n{}", p.log_text());
    let pid = p.pid();
    d.proc = Some(p);
    let s = spec("spool-real-enospc", 24, 4);
    send_raw(&d, &s, &[0, 1, 2, 3]);
    let uid = s.series_uid();
    assert!(
        wait_until(secs(60), POLL, || d
            .logs()
            .lines()
            .filter(|l| l.contains("series_retry") && l.contains(&uid) && l.contains("ENOSPC (28)"))
            .count()
            >= 2),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("series_failed"), 0.0);
    assert!(quarantined(&d.state.join("quarantine")).is_empty());
    assert!(stored(&fake).is_empty());
    // Room again: the filler goes (seen through the daemon's own mount namespace).
    std::fs::remove_file(format!("/proc/{pid}/root{}/fill", derived.display())).unwrap();
    assert!(
        wait_until(secs(60), POLL, || stored(&fake).len() == 4 && d.idle()),
        "{}",
        d.context()
    );
    assert!(quarantined(&d.state.join("quarantine")).is_empty());
}
