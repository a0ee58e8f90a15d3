//! End-to-end tests of `ct-harmonizer serve`: the real binary with a generated configuration, fed by
//! DCMTK's storescu/echoscu (and a small in-test DICOM client for what DCMTK will not send), forwarding
//! to Orthanc, DCMTK's storescp or a small in-test SCP that answers failure statuses. Every peer runs on
//! a free loopback port and is stopped by PID. Covers the happy path and every bad input, fault and
//! abuse of the daemon issue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use ct_harmonizer::dicom::dimse;
use ct_harmonizer::dicom::header::CT_IMAGE_STORAGE;
use ct_harmonizer::dicom::write::write_part10;
use ct_harmonizer::samples::{Rng, SeriesSpec};
use dicom_dictionary_std::tags;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------

/// storescu sends two series; serve harmonizes them with the default model and Orthanc receives the
/// derived series and the originals exactly once; the derived instances pass dciodvfy; health,
/// metrics, an empty spool after delivery, and a clean stop on SIGTERM.
#[test]
fn happy_path_to_orthanc() {
    let tmp = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&tmp.path().join("pacs"));
    let a = spec("daemon-happy-a", 64, 6);
    let b = spec("daemon-happy-b", 24, 8);
    let input = tmp.path().join("in");
    write(&a, &input.join("a"));
    write(&b, &input.join("b"));
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("pacs", &orthanc.aet, orthanc.dicom_port)
            + &rule("default", "harmonize", true, &["pacs"])),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));

    let done = wait_until(secs(90), POLL, || {
        d.metric("jobs_forwarded") >= 4.0 && d.idle()
    });
    assert!(done, "not delivered:\n{}", d.context());
    let series = orthanc.series();
    assert_eq!(series.len(), 4, "{series:#?}");
    let by_uid: BTreeMap<&str, &OrthancSeries> =
        series.iter().map(|s| (s.series_uid.as_str(), s)).collect();
    assert_eq!(by_uid[a.series_uid().as_str()].instances.len(), 6);
    assert_eq!(by_uid[b.series_uid().as_str()].instances.len(), 8);
    let derived: Vec<&OrthancSeries> = series
        .iter()
        .filter(|s| s.series_uid != a.series_uid() && s.series_uid != b.series_uid())
        .collect();
    assert_eq!(derived.len(), 2);
    let mut counts: Vec<usize> = derived.iter().map(|s| s.instances.len()).collect();
    counts.sort();
    assert_eq!(counts, [6, 8]);
    for s in &derived {
        assert!(s.description.contains("HARMONIZED"), "{s:?}");
        let tags = orthanc.instance_tags(&s.instances[0]);
        assert_eq!(json_str(&tags["Modality"]), "CT");
        let export = tmp.path().join("export").join(&s.id);
        std::fs::create_dir_all(&export).unwrap();
        for (i, id) in s.instances.iter().enumerate() {
            orthanc.instance_file(id, &export.join(format!("{i}.dcm")));
        }
        verify_dicom(&export);
    }

    // Exactly once: four jobs, each delivered by one successful association, and nothing after.
    std::thread::sleep(secs(2));
    assert_eq!(d.metric("instances_received"), 14.0);
    assert_eq!(d.metric("series_completed"), 2.0);
    assert_eq!(d.metric("series_translated"), 2.0);
    assert_eq!(d.metric("jobs_forwarded"), 4.0);
    assert_eq!(d.metric("forward_failures"), 0.0);
    assert_eq!(d.metric("outbox_jobs"), 0.0);
    assert!(d.metric("inference_seconds") > 0.0);
    assert_eq!(orthanc.series().len(), 4);
    let (status, body) = http_get(d.http, "/healthz").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(d.idle(), "{}", d.context());
    let logs = d.logs();
    assert!(logs.contains("series_routed"), "{logs}");
    // The start-up check hands its loaded model to the processing stage: loaded once, not again
    // for the first series.
    assert_eq!(logs.matches("model_loaded").count(), 1, "{logs}");
    for s in [&a, &b] {
        assert!(
            !logs.contains(&s.patient_name),
            "patient names must not be logged:\n{logs}"
        );
        assert!(
            !logs.contains(&s.patient_id),
            "patient IDs must not be logged:\n{logs}"
        );
    }

    // SIGTERM: a clean, prompt exit.
    d.peer().signal("TERM");
    let status = d.peer().wait_exit(secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        d.context()
    );
}

/// C-ECHO works; a caller not on the allow-list and a wrong called AE title are rejected at
/// association, nothing is spooled, and the rejections are counted.
#[test]
fn access_control() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(&spec("daemon-acl", 24, 4), &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[("server.allowed_callers", "[\"GOOD@127.0.0.1\"]")],
        &rule("default", "drop", false, &[]),
    );
    d.start();
    let echo = |calling: &str, called: &str| {
        Command::new("/usr/bin/echoscu")
            .env("TCP_NODELAY", "1")
            .args(["-aet", calling, "-aec", called, "127.0.0.1"])
            .arg(d.port.to_string())
            .output()
            .unwrap()
    };
    let o = echo("GOOD", AE);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(d.metric("associations_rejected"), 0.0);

    let o = storescu("BAD", AE, d.port, &[&input]);
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        out_text(&o).contains("Calling AE Title Not Recognized"),
        "{}",
        out_text(&o)
    );
    assert_eq!(d.metric("associations_rejected"), 1.0);
    let o = echo("BAD", AE);
    assert!(!o.status.success(), "{}", out_text(&o));

    let o = echo("GOOD", "SOMEONEELSE");
    assert!(!o.status.success(), "{}", out_text(&o));
    let o = storescu("GOOD", "SOMEONEELSE", d.port, &[&input]);
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        out_text(&o).contains("Called AE Title Not Recognized"),
        "{}",
        out_text(&o)
    );
    assert_eq!(d.metric("associations_rejected"), 4.0);
    assert_eq!(d.metric("instances_received"), 0.0);
    assert!(d.spool_files().is_empty(), "{}", d.context());

    // The allowed caller gets through (and the drop rule leaves nothing behind).
    let o = storescu("GOOD", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(d.metric("instances_received"), 4.0);
    assert!(
        wait_until(secs(30), POLL, || d.metric("series_dropped") == 1.0
            && d.idle()),
        "{}",
        d.context()
    );
    assert!(d.peer().alive());
}

/// An MR Image Storage object: no accepted presentation context, storescu fails, nothing stored.
#[test]
fn unsupported_sop_class() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec("daemon-mr", 24, 2);
    let mr = tmp.path().join("mr/mr.dcm");
    write_edited(&s, 0, &mr, |o| {
        put_ui(o, tags::SOP_CLASS_UID, MR_IMAGE_STORAGE)
    });
    let mut d = Daemon::new(tmp.path(), &[], &rule("default", "drop", false, &[]));
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[mr.parent().unwrap()]);
    let t = out_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("No presentation context for: (MR)"), "{t}");
    assert!(!t.contains("Received Store Response (Success)"), "{t}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.metric("instances_received"), 0.0);
    assert!(d.spool_files().is_empty(), "{}", d.context());
    assert!(d.peer().alive());
}

/// Crafted Study/Series UIDs (`../`, an absolute path, 70 characters) are refused with a failure
/// status, nothing lands outside (or inside) the spool, and the daemon keeps serving.
#[test]
fn crafted_uids_cannot_escape_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();
    let s = spec("daemon-evil", 24, 3);
    let abs = tmp.path().join("evil-absolute");
    let long = format!("1.2.{}", "3".repeat(66));
    let cases: Vec<(&str, dicom_core::Tag, String)> = vec![
        (
            "dotdot",
            tags::SERIES_INSTANCE_UID,
            "../../evil-dotdot".to_string(),
        ),
        (
            "absolute",
            tags::STUDY_INSTANCE_UID,
            abs.display().to_string(),
        ),
        ("long", tags::SERIES_INSTANCE_UID, long.clone()),
    ];
    for (i, (name, tag, value)) in cases.iter().enumerate() {
        let f = tmp.path().join("crafted").join(name).join("x.dcm");
        write_edited(&s, i, &f, |o| put_ui(o, *tag, value));
        let o = storescu("MODALITY", AE, d.port, &[f.parent().unwrap()]);
        let t = out_text(&o);
        assert!(
            !t.contains("Received Store Response (Success)"),
            "{name}: {t}"
        );
        assert!(!o.status.success(), "{name}: {t}");
        assert!(
            t.contains("Received Store Response (Error: CannotUnderstand)"),
            "{name}: {t}"
        );
    }
    assert!(d.peer().alive());
    assert_eq!(d.metric("instances_received"), 0.0);
    assert_eq!(d.metric("instances_rejected"), 3.0);
    assert!(d.spool_files().is_empty(), "{}", d.context());
    assert!(!abs.exists());
    // "../../x" from <state>/spool/<study>/ would land in <state>/, an absolute UID anywhere: every
    // file the test's folder holds is listed, none may be named after the crafted UIDs.
    let everything: Vec<PathBuf> = files(tmp.path())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("evil") && !p.starts_with(tmp.path().join("crafted"))
        })
        .collect();
    assert!(everything.is_empty(), "{everything:?}");
    assert!(!Path::new("/evil-dotdot").exists());

    // A good series still goes through.
    let good = spec("daemon-after-evil", 24, 4);
    write(&good, &tmp.path().join("good"));
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("good")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&storescp_out) == 4
            && d.idle()),
        "{}",
        d.context()
    );
}

/// A dataset truncated mid-element inside a valid association gets a failure status (0xC000); the
/// association and the daemon carry on, and a good series goes through afterwards.
#[test]
fn malformed_dataset_in_valid_association() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();
    let s = spec("daemon-garbage", 24, 4);
    let sop = s.sop_instance_uid(0);
    // (0008,0016) UI complete, then (0008,0018) UI announcing 64 bytes but carrying 10.
    let mut garbage = Vec::new();
    let class = format!("{CT_IMAGE_STORAGE}\0");
    garbage.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, b'U', b'I']);
    garbage.extend_from_slice(&(class.len() as u16).to_le_bytes());
    garbage.extend_from_slice(class.as_bytes());
    garbage.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, b'U', b'I', 64, 0]);
    garbage.extend_from_slice(&sop.as_bytes()[..10]);
    let mut a = raw_associate(d.port);
    let status = raw_store(&mut a, 1, &sop, garbage);
    assert_eq!(
        status,
        dimse::CANNOT_UNDERSTAND,
        "status 0x{status:04X}\n{}",
        d.context()
    );
    // Random bytes too.
    let mut rng = Rng::new(7);
    let noise: Vec<u8> = (0..300).map(|_| rng.next_u64() as u8).collect();
    let status = raw_store(&mut a, 2, &sop, noise);
    assert_ne!(status, dimse::SUCCESS);
    a.release().unwrap();
    assert!(d.peer().alive());
    assert_eq!(d.metric("instances_received"), 0.0);
    assert!(d.spool_files().is_empty(), "{}", d.context());

    write(&s, &tmp.path().join("good"));
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("good")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&storescp_out) == 4
            && d.idle()),
        "{}",
        d.context()
    );
}

/// An association aborted after 5 of 10 instances: the 5 acknowledged are kept, the series completes
/// on quiet time and exactly those 5 are harmonized and forwarded.
#[test]
fn aborted_association_keeps_acknowledged_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[("series.quiet_seconds", "2")],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", true, &["dest"])),
    );
    d.start();
    let s = spec("daemon-abort", 24, 10);
    let mut a = raw_associate(d.port);
    for z in 0..5 {
        let status = raw_store(
            &mut a,
            z as u16 + 1,
            &s.sop_instance_uid(z),
            dataset_bytes(&s, z),
        );
        assert_eq!(status, dimse::SUCCESS, "slice {z}\n{}", d.context());
    }
    a.abort().unwrap();
    let ok = wait_until(secs(60), POLL, || {
        d.metric("jobs_forwarded") == 2.0 && d.idle()
    });
    assert!(ok, "{}", d.context());
    let got = received(&storescp_out);
    let originals: BTreeSet<&str> = got
        .iter()
        .filter(|(series, _, _)| *series == s.series_uid())
        .map(|(_, sop, _)| sop.as_str())
        .collect();
    let expect: Vec<String> = (0..5).map(|z| s.sop_instance_uid(z)).collect();
    assert_eq!(
        originals,
        expect.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let derived = got
        .iter()
        .filter(|(series, _, _)| *series != s.series_uid())
        .count();
    assert_eq!(derived, 5, "{got:#?}");
    assert_eq!(d.metric("series_completed"), 1.0);
    assert!(d.logs().contains("association_aborted"), "{}", d.logs());
}

/// The destination is down for the first ~8 s: the job backs off (a handful of attempts, no busy
/// loop) and everything arrives once storescp is up.
#[test]
fn destination_down_at_first() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let input = tmp.path().join("in");
    write(&spec("daemon-late-dest", 24, 6), &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("late", "LATE", dest_port) + &rule("default", "harmonize", false, &["late"])),
    );
    d.start();
    let sent = Instant::now();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    std::thread::sleep(secs(8).saturating_sub(sent.elapsed()));
    let failures_while_down = d.metric("forward_failures");
    assert!(
        failures_while_down >= 2.0,
        "no retry while down?\n{}",
        d.context()
    );
    assert!(
        failures_while_down <= 6.0,
        "{failures_while_down} attempts in 8 s: busy loop?\n{}",
        d.context()
    );
    assert_eq!(d.metric("jobs_forwarded"), 0.0);
    let _dest = start_storescp(
        "LATE",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let ok = wait_until(secs(30), POLL, || {
        count_files(&storescp_out) == 6 && d.idle()
    });
    assert!(ok, "{}", d.context());
    assert_eq!(d.metric("jobs_forwarded"), 1.0);
    assert!(d.metric("forward_failures") <= 7.0);
    assert!(d.logs().contains("job_retry"));
}

/// The destination answers 0xA700: the job is retried, then dead-lettered with the status in its
/// reason; `ct-harmonizer retry <job>` after the destination recovers delivers it.
#[test]
fn destination_failure_status_dead_letter_and_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeScp::start(true);
    let input = tmp.path().join("in");
    let s = spec("daemon-refused", 24, 4);
    write(&s, &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[("forward.max_attempts", "2")],
        &(scp_dest("fake", "FAKE", fake.port) + &rule("default", "harmonize", false, &["fake"])),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    // The reason file and then the job file are written (`Outbox::bury`): wait for the job file.
    let dead = wait_until(secs(60), POLL, || {
        d.dead_files()
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "toml"))
    });
    assert!(dead, "{}", d.context());
    let job_file = d
        .dead_files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "toml"))
        .unwrap();
    let job = job_file.file_stem().unwrap().to_string_lossy().to_string();
    let reason = std::fs::read_to_string(
        d.state
            .join("dead-letter")
            .join(format!("{job}.reason.txt")),
    )
    .unwrap();
    assert!(reason.contains("0xA700"), "{reason}");
    assert!(wait_until(secs(5), POLL, || d.metric("jobs_dead") == 1.0));
    assert_eq!(d.metric("forward_failures"), 2.0);
    assert_eq!(
        fake.refused.load(Ordering::SeqCst),
        2,
        "one refused instance per attempt"
    );
    assert!(fake.stored.lock().unwrap().is_empty());
    // Dead-lettered: the spool keeps the series.
    assert!(!d.spool_files().is_empty());
    assert!(d.outbox_files().is_empty());

    fake.fail.store(false, Ordering::SeqCst);
    let o = d.command().args(["retry", &job]).output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("requeued"),
        "{}",
        out_text(&o)
    );
    let ok = wait_until(secs(30), POLL, || {
        fake.stored.lock().unwrap().len() == 4 && d.idle()
    });
    assert!(ok, "{}", d.context());
    assert!(d.dead_files().is_empty(), "{:?}", d.dead_files());
    assert_eq!(d.metric("jobs_forwarded"), 1.0);
    // Retrying a job that is not there is an error.
    let o = d.command().args(["retry", &job]).output().unwrap();
    assert!(!o.status.success());
}

/// Free space under the watermark: "out of resources" (0xA700), nothing spooled.
#[test]
fn disk_watermark_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(&spec("daemon-full", 24, 3), &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[("state.min_free_mib", "100000000")],
        &rule("default", "drop", false, &[]),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    let t = out_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("Received Store Response (Refused: OutOfResources)"),
        "{t}"
    );
    assert!(!t.contains("Received Store Response (Success)"), "{t}");
    assert_eq!(d.metric("instances_received"), 0.0);
    assert!(d.metric("instances_rejected") >= 1.0);
    assert!(d.spool_files().is_empty(), "{}", d.context());
    assert!(d.logs().contains("disk_watermark"));
    assert!(d.peer().alive());
}

/// SOPInstanceUIDs whose C-STORE storescu saw acknowledged with success, from its `-v` log.
fn acknowledged(log: &str, sop_of: &HashMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(i) = line.find("Sending file: ") {
            current = Some(line[i + "Sending file: ".len()..].trim().to_string());
        } else if line.contains("Received Store Response (Success)") {
            if let Some(f) = current.take() {
                out.insert(
                    sop_of
                        .get(&f)
                        .cloned()
                        .unwrap_or_else(|| panic!("unknown file {f}")),
                );
            }
        }
    }
    out
}

/// `kill -9` of serve at random points while three series are sent and forwarded, 12 times; after
/// each kill serve restarts on the same state and ports and storescu sends everything again. At the
/// end (one more restart, nothing re-sent) every instance ever acknowledged is in Orthanc and Orthanc
/// holds no duplicate series.
#[test]
fn kill_dash_nine_twelve_times() {
    let tmp = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&tmp.path().join("pacs"));
    let input = tmp.path().join("in");
    let specs: Vec<SeriesSpec> = (0..3)
        .map(|i| spec(&format!("daemon-kill-{i}"), 24, 6))
        .collect();
    let mut sop_of = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        for (z, p) in write(s, &input.join(format!("s{i}")))
            .into_iter()
            .enumerate()
        {
            sop_of.insert(p.display().to_string(), s.sop_instance_uid(z));
        }
    }
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("pacs", &orthanc.aet, orthanc.dicom_port)
            + &rule("default", "harmonize", true, &["pacs"])),
    );
    let mut rng = Rng::new(20240611);
    let mut acked = BTreeSet::new();
    for round in 0..12 {
        d.start();
        let log = tmp.path().join(format!("storescu-{round}.log"));
        let mut sender = Peer::spawn(
            "storescu",
            storescu_command("MODALITY", AE, d.port, &[&input]),
            &log,
        );
        let wait_ms = (rng.uniform() * 2600.0) as u64;
        std::thread::sleep(Duration::from_millis(wait_ms));
        d.kill9();
        sender.wait_exit(secs(10));
        drop(sender);
        let this_round = acknowledged(&std::fs::read_to_string(&log).unwrap(), &sop_of);
        eprintln!(
            "round {round}: killed after {wait_ms} ms; {} acknowledged; left: {} spooled, {} jobs, {} derived files",
            this_round.len(),
            d.spool_files().len(),
            d.outbox_files().len(),
            files(&d.state.join("derived")).len()
        );
        acked.extend(this_round);
    }
    assert!(!acked.is_empty(), "nothing was ever acknowledged");

    // Final restart, nothing re-sent: recovery alone must deliver what was acknowledged.
    d.start();
    let ok = wait_until(secs(90), POLL, || {
        d.idle() && d.metric("pending_series") == 0.0 && d.metric("outbox_jobs") == 0.0
    });
    assert!(ok, "not drained:\n{}", d.context());
    let series = orthanc.series();
    let source_uids: BTreeSet<String> = specs.iter().map(SeriesSpec::series_uid).collect();
    let mut in_orthanc = BTreeSet::new();
    let (mut originals, mut derived) = (0, 0);
    for s in &series {
        if source_uids.contains(&s.series_uid) {
            originals += 1;
            in_orthanc.extend(orthanc_sop_uids(&orthanc, &s.id));
        } else {
            assert!(s.description.contains("HARMONIZED"), "{s:?}");
            derived += 1;
        }
    }
    let missing: Vec<&String> = acked.difference(&in_orthanc).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}\n{}",
        d.context()
    );
    let uids: BTreeSet<&str> = series.iter().map(|s| s.series_uid.as_str()).collect();
    assert_eq!(uids.len(), series.len(), "duplicate series: {series:#?}");
    assert_eq!(
        derived, originals,
        "one derived series per source series: {series:#?}"
    );
    assert!(originals <= 3);
    assert!(d.dead_files().is_empty(), "{:?}", d.dead_files());
    eprintln!(
        "kill -9 x12: {} instances acknowledged over the rounds, {} delivered originals, {} series in Orthanc",
        acked.len(),
        in_orthanc.len(),
        series.len()
    );
}

/// Watched folder: a series renamed in is taken into the spool and forwarded; a non-DICOM file goes
/// to quarantine with a reason; nothing is left in the folder.
#[test]
fn watched_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let watch = tmp.path().join("watch");
    let watch_value = format!("{:?}", watch.display().to_string());
    let mut d = Daemon::new(
        tmp.path(),
        &[("watch.dir", &watch_value), ("watch.stable_seconds", "1")],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();
    let stage = tmp.path().join("stage");
    let written = write(&spec("daemon-watch", 24, 5), &stage);
    std::fs::write(stage.join("notes.txt"), "not a DICOM file\n").unwrap();
    for f in written.iter().chain([&stage.join("notes.txt")]) {
        std::fs::rename(f, watch.join(f.file_name().unwrap())).unwrap();
    }
    let ok = wait_until(secs(60), POLL, || {
        count_files(&storescp_out) == 5 && d.idle()
    });
    assert!(ok, "{}", d.context());
    assert!(files(&watch).is_empty(), "{:?}", files(&watch));
    let q = files(&d.state.join("quarantine"));
    assert_eq!(q.len(), 2, "{q:?}");
    let reason = q
        .iter()
        .find(|p| p.to_string_lossy().ends_with("notes.txt.reason.txt"))
        .unwrap();
    assert!(std::fs::read_to_string(reason)
        .unwrap()
        .contains("notes.txt"));
    assert!(q
        .iter()
        .any(|p| p.to_string_lossy().ends_with("-notes.txt")));
    assert_eq!(d.metric("instances_received"), 5.0);
    assert_eq!(d.metric("instances_rejected"), 1.0);
}

/// SIGHUP re-reads the rules: after switching the default rule to "pass", a new series is forwarded
/// as its original only; the listener stays up.
#[test]
fn sighup_reloads_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let dest = scp_dest("dest", "DEST", dest_port);
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(dest.clone() + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();
    let a = spec("daemon-hup-a", 24, 4);
    write(&a, &tmp.path().join("a"));
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("a")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&storescp_out) == 4
            && d.idle()),
        "{}",
        d.context()
    );
    let got = received(&storescp_out);
    assert!(
        got.iter()
            .all(|(series, _, desc)| *series != a.series_uid() && desc.contains("HARMONIZED")),
        "{got:#?}"
    );

    d.write_config(&[], &(dest + &rule("default", "pass", false, &["dest"])));
    d.peer().signal("HUP");
    assert!(
        wait_until(secs(10), POLL, || d.logs().contains("config_reloaded")),
        "{}",
        d.context()
    );
    let b = spec("daemon-hup-b", 24, 3);
    write(&b, &tmp.path().join("b"));
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("b")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&storescp_out) == 7
            && d.idle()),
        "{}",
        d.context()
    );
    let got = received(&storescp_out);
    let b_files: Vec<_> = got
        .iter()
        .filter(|(series, _, _)| *series == b.series_uid())
        .collect();
    assert_eq!(b_files.len(), 3, "{got:#?}");
    assert_eq!(d.metric("series_passed"), 1.0);
    assert_eq!(d.metric("series_translated"), 1.0);
    assert!(d.peer().alive());
}

/// `check-config` fails with a clear message for an unknown key and for a rule naming an unknown
/// destination, and passes on a good configuration.
#[test]
fn check_config_reports_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::new(
        tmp.path(),
        &[("server.ae_titel", "\"TYPO\"")],
        &rule("default", "drop", false, &[]),
    );
    let o = d.command().arg("check-config").output().unwrap();
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ae_titel"),
        "{}",
        out_text(&o)
    );

    d.write_config(&[], &rule("default", "harmonize", false, &["nowhere"]));
    let o = d.command().arg("check-config").output().unwrap();
    assert!(!o.status.success(), "{}", out_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown destination") && err.contains("nowhere"),
        "{}",
        out_text(&o)
    );

    d.write_config(
        &[],
        &(scp_dest("pacs", "PACS", 104) + &rule("default", "harmonize", false, &["pacs"])),
    );
    let o = d.command().arg("check-config").output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("configuration OK"),
        "{}",
        out_text(&o)
    );
}

/// A modality re-sends a series that was already processed and delivered (a retransmission): it is
/// acknowledged again but not reprocessed, and nothing of it stays in the spool; a genuinely new
/// instance of that series makes a new version of the derived series.
#[test]
fn retransmission_is_not_reprocessed_but_a_late_instance_is() {
    let tmp = tempfile::tempdir().unwrap();
    let storescp_out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "DEST",
        dest_port,
        &storescp_out,
        &tmp.path().join("storescp.log"),
    );
    let s = spec("daemon-retransmit", 24, 5);
    let input = tmp.path().join("in");
    write(&s, &input);
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(30), POLL, || count_files(&storescp_out) == 5
            && d.idle()),
        "{}",
        d.context()
    );
    // The same five instances again.
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(10), POLL, || d
            .logs()
            .matches("retransmission")
            .count()
            >= 5),
        "{}",
        d.context()
    );
    std::thread::sleep(secs(3));
    assert_eq!(d.metric("series_completed"), 1.0, "{}", d.context());
    assert_eq!(count_files(&storescp_out), 5);
    assert!(files(&d.state.join("spool"))
        .iter()
        .all(|p| p.starts_with(d.state.join("spool/.tmp"))));
    // A sixth slice that was never sent before: a late instance, so a new version (new UIDs).
    let late = tmp.path().join("late");
    std::fs::create_dir_all(&late).unwrap();
    let mut more = s.clone();
    more.slices = 6;
    let z = 5;
    write_part10(more.dataset(z, &vec![0.0; 24 * 24]), &late.join("late.dcm")).unwrap();
    let o = storescu("MODALITY", AE, d.port, &[&late]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(20), POLL, || d.metric("series_completed") == 2.0
            && d.idle()),
        "{}",
        d.context()
    );
}
