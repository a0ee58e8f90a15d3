//! Issue 9 hardening: the watched folder (links, FIFOs, sockets, half-written and oversized files),
//! configuration checks (`check-config` and SIGHUP) and the uniqueness and validity of derived output.
//! Each test runs the real binary (`serve` or `process`) and fails on the code before the fix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn folder_dest(name: &str, path: &Path) -> String {
    entry(
        "destinations",
        &[
            ("name", name.into()),
            ("kind", "folder".into()),
            ("path", path.display().to_string().into()),
        ],
    )
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A daemon watching `<tmp>/watch` (stable after 1 s) that passes every series to the folder
/// destination `<tmp>/export`.
fn watch_daemon(tmp: &Path, extra: &[(&str, &str)]) -> (Daemon, PathBuf, PathBuf) {
    let watch = tmp.join("watch");
    let export = tmp.join("export");
    std::fs::create_dir_all(&watch).unwrap();
    let wv = q(&watch);
    let mut overrides = vec![("watch.dir", wv.as_str()), ("watch.stable_seconds", "1")];
    overrides.extend_from_slice(extra);
    let d = Daemon::new(
        tmp,
        &overrides,
        &(folder_dest("out", &export) + &rule("default", "pass", false, &["out"])),
    );
    (d, watch, export)
}

fn reasons(d: &Daemon) -> Vec<(PathBuf, String)> {
    files(&d.state.join("quarantine"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".reason.txt"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            (p, t)
        })
        .collect()
}

/// Entries (not following links) directly in the quarantine folder.
fn quarantined(d: &Daemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.state.join("quarantine"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Moves a finished series into the watched folder (the atomic-rename convention).
fn rename_in(files: &[PathBuf], watch: &Path) {
    for f in files {
        std::fs::rename(f, watch.join(f.file_name().unwrap())).unwrap();
    }
}

/// A symbolic link to a folder outside the watched folder and one to a file are quarantined as links:
/// nothing outside is moved, read into the spool or exported; the folder keeps working.
#[test]
fn watch_symlinks_are_quarantined_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[]);
    let outside = tmp.path().join("outside");
    let outside_files = write(&spec("hard-watch-outside", 16, 3), &outside);

    let before = digest_tree(&outside);
    std::os::unix::fs::symlink(&outside, watch.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(&outside_files[0], watch.join("linkfile.dcm")).unwrap();
    d.start();
    assert!(
        wait_until(secs(30), POLL, || reasons(&d).len() == 2),
        "{}",
        d.context()
    );
    for (_, text) in reasons(&d) {
        assert!(text.contains("symbolic link"), "{text}");
    }

    let links: Vec<PathBuf> = quarantined(&d)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".reason.txt"))
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    for l in &links {
        assert!(
            std::fs::symlink_metadata(l)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{l:?} is not the link itself"
        );
    }
    // A good series afterwards goes through; by then the links' targets would have been taken too.
    let good = write(&spec("hard-watch-good", 16, 2), &tmp.path().join("stage"));
    rename_in(&good, &watch);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 2 && d.idle()),
        "{}",
        d.context()
    );
    std::thread::sleep(secs(2));
    assert_eq!(digest_tree(&outside), before, "files outside were touched");
    assert_eq!(count_files(&export), 2, "{:?}", files(&export));
    assert_eq!(d.metric("instances_received"), 2.0);
    assert_eq!(d.metric("instances_rejected"), 2.0);
    assert!(files(&watch).is_empty(), "{:?}", files(&watch));
}

/// A FIFO nobody writes to (and a socket) are quarantined without being opened for reading: the SCP,
/// `/healthz` and the folder keep working.
#[test]
fn watch_fifo_and_socket_do_not_freeze_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[]);
    d.start();
    let fifo = watch.join("pipe.dcm");
    let o = Command::new("mkfifo").arg(&fifo).output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let _socket = std::os::unix::net::UnixListener::bind(watch.join("sock.dcm")).unwrap();
    // A character device (like /dev/zero) where the test may create one (root with CAP_MKNOD).
    let device = Command::new("mknod")
        .arg(watch.join("zero.dcm"))
        .args(["c", "1", "5"])
        .output()
        .is_ok_and(|o| o.status.success());
    let expected = if device { 3 } else { 2 };
    assert!(
        wait_until(secs(30), POLL, || reasons(&d).len() == expected),
        "{}",
        d.context()
    );
    let all: String = reasons(&d).into_iter().map(|(_, t)| t).collect();
    assert!(all.contains("FIFO") && all.contains("socket"), "{all}");
    assert!(!device || all.contains("character device"), "{all}");
    // The SCP answers and the daemon is healthy.
    let scu_in = tmp.path().join("scu");
    write(&spec("hard-watch-scu", 16, 2), &scu_in);
    let o = storescu("MODALITY", AE, d.port, &[&scu_in]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(http_get(d.http, "/healthz").unwrap().0, 200);
    // A good file dropped afterwards is still processed.
    let good = write(
        &spec("hard-watch-after-fifo", 16, 1),
        &tmp.path().join("stage"),
    );
    rename_in(&good, &watch);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 3 && d.idle()),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("instances_received"), 3.0);
    assert_eq!(http_get(d.http, "/healthz").unwrap().0, 200);
    assert!(d.peer().alive());
}

/// A writer pausing longer than `stable_seconds` does not get its half file adopted: it stays in
/// place and is taken once complete; a file that stays truncated is quarantined after
/// 10 × stable_seconds.
#[test]
fn watch_half_written_file_waits_for_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[]);
    d.start();
    let stage = tmp.path().join("stage");
    let made = write(&spec("hard-watch-half", 64, 2), &stage);
    let bytes: Vec<Vec<u8>> = made.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let cut = bytes[0].len() * 7 / 10;
    let slow = watch.join("slow.dcm");
    let stuck = watch.join("stuck.dcm");
    std::fs::write(&slow, &bytes[0][..cut]).unwrap();
    std::fs::write(&stuck, &bytes[1][..cut]).unwrap();
    // Five times stable_seconds: neither is taken nor quarantined.
    std::thread::sleep(secs(5));
    assert!(slow.exists() && stuck.exists(), "{}", d.context());
    assert_eq!(d.metric("instances_received"), 0.0, "{}", d.context());
    assert!(reasons(&d).is_empty(), "{:?}", reasons(&d));
    // The writer resumes: the complete file is taken.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&slow)
        .unwrap();
    f.write_all(&bytes[0][cut..]).unwrap();
    drop(f);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 1),
        "{}",
        d.context()
    );
    // The one that never completes is quarantined after 10 × stable_seconds.
    assert!(
        wait_until(secs(60), POLL, || !stuck.exists()
            && !reasons(&d).is_empty()),
        "{}",
        d.context()
    );
    let r = reasons(&d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].1.contains("stuck.dcm"), "{r:?}");
    assert_eq!(d.metric("instances_received"), 1.0);
    assert_eq!(d.metric("instances_rejected"), 1.0);
}

/// A file over `watch.max_file_mib` is quarantined unread, with a reason naming the key.
#[test]
fn watch_file_over_size_limit_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[("watch.max_file_mib", "1")]);
    d.start();
    let big = write(&spec("hard-watch-big", 1024, 1), &tmp.path().join("big"));
    assert!(std::fs::metadata(&big[0]).unwrap().len() > 2 << 20);
    rename_in(&big, &watch);
    assert!(
        wait_until(secs(30), POLL, || reasons(&d).len() == 1),
        "{}",
        d.context()
    );
    let r = reasons(&d);
    assert!(r[0].1.contains("watch.max_file_mib"), "{r:?}");
    let small = write(&spec("hard-watch-small", 16, 1), &tmp.path().join("small"));
    rename_in(&small, &watch);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 1 && d.idle()),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("instances_rejected"), 1.0);
}

/// `check-config` fails, naming the key and its value, for `http.listen == server.listen`, a
/// `watch.dir` that is a file, and a `watch.dir` that contains the state folder.
#[test]
fn check_config_rejects_listen_clash_and_bad_watch_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let tail = rule("default", "drop", false, &[]);
    let d = Daemon::new(tmp.path(), &[], &tail);
    let same = format!("\"127.0.0.1:{}\"", d.port);
    d.write_config(&[("http.listen", &same)], &tail);
    let o = d.command().arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        err.contains("http.listen") && err.contains(&format!("127.0.0.1:{}", d.port)),
        "{}",
        out_text(&o)
    );

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    d.write_config(&[("watch.dir", &q(&file))], &tail);
    let o = d.command().arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        err.contains("watch.dir") && err.contains("a-file") && err.contains("not a folder"),
        "{}",
        out_text(&o)
    );

    d.write_config(&[("watch.dir", &q(tmp.path()))], &tail);
    let o = d.command().arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        err.contains("watch.dir") && err.contains("state folder"),
        "{}",
        out_text(&o)
    );

    d.write_config(&[("watch.dir", &q(&tmp.path().join("incoming")))], &tail);
    let o = d.command().arg("check-config").output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
}

/// SIGHUP runs the `check-config` checks: a rule naming a missing model is refused (ERROR, the old
/// configuration stays and still harmonizes); a changed listen address or state folder is named in a
/// WARN as needing a restart and the daemon keeps serving where it was.
#[test]
fn sighup_checks_models_and_names_restart_only_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let good = folder_dest("out", &export) + &rule("default", "harmonize", false, &["out"]);
    let mut d = Daemon::new(tmp.path(), &[], &good);
    d.start();
    let bad = good.replace("gaussian-soft-baseline", "no-such-model");
    d.write_config(&[], &bad);
    d.peer().signal("HUP");
    assert!(
        wait_until(secs(30), POLL, || d.logs().contains("config_reload_failed")),
        "{}",
        d.context()
    );
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("config_reload_failed"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains("no-such-model"),
        "{line}"
    );
    assert!(!logs.contains("config_reloaded"), "{logs}");
    let s = spec("hard-hup-model", 16, 3);
    write(&s, &tmp.path().join("a"));
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("a")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 3 && d.idle()),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("series_translated"), 1.0, "{}", d.context());

    let other_state = q(&tmp.path().join("other-state"));
    d.write_config(
        &[
            ("server.listen", "\"127.0.0.1:1\""),
            ("state.dir", &other_state),
        ],
        &good,
    );
    d.peer().signal("HUP");
    assert!(
        wait_until(secs(30), POLL, || d.logs().contains("config_reloaded")),
        "{}",
        d.context()
    );
    let logs = d.logs();
    for key in ["server.listen", "state.dir"] {
        let line = logs
            .lines()
            .find(|l| l.contains("config_restart_required") && l.contains(key))
            .unwrap_or_else(|| panic!("no warning for {key}:\n{logs}"));
        assert!(
            line.contains("WARN") && line.contains("requires a restart"),
            "{line}"
        );
    }
    // Still serving on the old port with the old state folder.
    let o = storescu("MODALITY", AE, d.port, &[&tmp.path().join("a")]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(!tmp.path().join("other-state").exists());
    assert!(d.peer().alive());
}

/// Two source series that share SOP Instance UIDs give derived instances with distinct UIDs.
#[test]
fn same_sop_uids_in_two_series_give_distinct_derived_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let a = spec("hard-dup-a", 16, 3);
    let b = spec("hard-dup-b", 16, 3);
    write(&a, &tmp.path().join("a"));
    for z in 0..3 {
        write_edited(&b, z, &tmp.path().join("b").join(format!("{z}.dcm")), |o| {
            put_ui(o, tags::SOP_INSTANCE_UID, &a.sop_instance_uid(z))
        });
    }
    let out = tmp.path().join("out");
    let o = process(
        &[&tmp.path().join("a"), &tmp.path().join("b")],
        &out,
        &[],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let dirs = series_dirs(&out);
    assert_eq!(dirs.len(), 2, "{}", text(&o));
    let all: Vec<String> = files(&out)
        .iter()
        .map(|p| tag_str(&dicom_object::open_file(p).unwrap(), tags::SOP_INSTANCE_UID))
        .collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 6);
    assert_eq!(
        distinct.len(),
        6,
        "shared derived SOP Instance UIDs: {all:#?}"
    );
}

fn dciodvfy_errors(f: &Path) -> String {
    let o = Command::new("dciodvfy").arg(f).output().unwrap();
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("Error"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Source instances with dciodvfy errors (a ReferencedStudySequence item without
/// ReferencedSOPClassUID, a DS value too long, a bad PatientSex) give derived instances that pass
/// dciodvfy with zero errors; each repair is logged once, naming the attribute.
#[test]
fn derived_series_valid_despite_source_defects() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec("hard-defects", 16, 4);
    let input = tmp.path().join("in");
    for z in 0..4 {
        write_edited(&s, z, &input.join(format!("{z}.dcm")), |o| {
            let mut item = InMemDicomObject::new_empty();
            put_ui(&mut item, tags::REFERENCED_SOP_INSTANCE_UID, "1.2.3.4.5");
            o.put(DataElement::new(
                tags::REFERENCED_STUDY_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![item]),
            ));
            o.put(DataElement::new(
                tags::DATA_COLLECTION_DIAMETER,
                VR::DS,
                PrimitiveValue::from("123.4567890123456789"),
            ));
            o.put(DataElement::new(
                tags::PATIENT_SEX,
                VR::CS,
                PrimitiveValue::from("male"),
            ));
        });
    }
    let src_errors = dciodvfy_errors(&input.join("0.dcm"));
    assert!(
        src_errors.contains("ReferencedSOPClassUID") || src_errors.contains("Referenced SOP Class"),
        "the source should carry the defect:\n{src_errors}"
    );
    let out = tmp.path().join("out");
    let o = process(&[&input], &out, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dirs = series_dirs(&out);
    assert_eq!(dirs.len(), 1, "{}", text(&o));
    for f in files(&dirs[0]) {
        let e = dciodvfy_errors(&f);
        assert!(e.is_empty(), "{}:\n{e}", f.display());
    }
    verify_dicom(&dirs[0]);
    let log = text(&o);
    let repairs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("source_attribute_repaired"))
        .collect();
    assert_eq!(repairs.len(), 3, "{log}");
    for name in [
        "ReferencedStudySequence",
        "DataCollectionDiameter",
        "PatientSex",
    ] {
        assert!(repairs.iter().any(|l| l.contains(name)), "{name}: {log}");
    }
}

/// A received file whose preamble holds non-zero bytes (a polyglot) is exported to a folder
/// destination with a zero preamble, the rest byte for byte.
#[test]
fn folder_export_zeroes_the_preamble() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[]);
    d.start();
    let made = write(&spec("hard-preamble", 16, 1), &tmp.path().join("stage"));
    let mut bytes = std::fs::read(&made[0]).unwrap();
    bytes[..2].copy_from_slice(b"MZ");
    bytes[2..128].fill(0x90);
    std::fs::write(&made[0], &bytes).unwrap();
    rename_in(&made, &watch);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 1 && d.idle()),
        "{}",
        d.context()
    );
    let out = std::fs::read(&files(&export)[0]).unwrap();
    assert!(out[..128].iter().all(|&b| b == 0), "{:?}", &out[..16]);
    assert_eq!(&out[128..], &bytes[128..]);
}

/// A Part 10 file (Explicit VR Little Endian) whose data set is a CT header followed by `tail`.
fn hostile_file(path: &Path, sop: &str, tail: &[u8]) {
    let mut o = InMemDicomObject::new_empty();
    for (t, v) in [
        (tags::SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2"),
        (tags::SOP_INSTANCE_UID, sop),
        (tags::STUDY_INSTANCE_UID, "1.2.826.0.1.3680043.10.1.9"),
        (tags::SERIES_INSTANCE_UID, "1.2.826.0.1.3680043.10.1.9.1"),
    ] {
        put_ui(&mut o, t, v);
    }
    let tmp = path.with_extension("tmp");
    ct_harmonizer::dicom::write::write_part10(o, &tmp).unwrap();
    let mut bytes = std::fs::read(&tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    bytes.extend_from_slice(tail);
    std::fs::write(path, bytes).unwrap();
}

/// Files a hostile or broken sender drops into the watched folder: sequences nested 2000 deep in
/// 72 KB (a stack overflow in a recursive parser) and one element declaring 4 GB in a few hundred
/// bytes (an allocation of what it declares). Each is quarantined by the bounded pre-parser with its
/// reason; the daemon stays up with its peak memory near idle, and a good file is still delivered.
#[test]
fn watch_hostile_files_are_refused_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, watch, export) = watch_daemon(tmp.path(), &[]);
    d.start();
    let pid = d.peer().pid();
    let idle = peak_rss(pid);
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let deep = nested_sequences(2000);
    hostile_file(
        &staging.join("deep.dcm"),
        "1.2.826.0.1.3680043.10.1.9.1.1",
        &deep,
    );
    // (0009,0010) OB with a 4-byte length of 0xF0000000 and nothing after it.
    let huge = [
        0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0x00, 0x00, 0x00, 0xF0,
    ];
    hostile_file(
        &staging.join("huge.dcm"),
        "1.2.826.0.1.3680043.10.1.9.1.2",
        &huge,
    );
    rename_in(
        &[staging.join("deep.dcm"), staging.join("huge.dcm")],
        &watch,
    );
    assert!(
        wait_until(secs(60), POLL, || reasons(&d).len() == 2),
        "{}",
        d.context()
    );
    let r = reasons(&d);
    let all: String = r.iter().map(|(_, t)| t.clone()).collect();
    assert!(all.contains("nesting deeper than"), "{r:?}");
    assert!(d.peer().alive(), "{}", d.context());
    assert!(http_get(d.http, "/healthz").is_ok_and(|(s, _)| s == 200));
    let good = write(
        &spec("hard-watch-after-hostile", 16, 1),
        &tmp.path().join("good"),
    );
    rename_in(&good, &watch);
    assert!(
        wait_until(secs(60), POLL, || count_files(&export) == 1 && d.idle()),
        "{}",
        d.context()
    );
    let peak = peak_rss(pid);
    assert!(
        peak < 2 * idle + (16 << 20),
        "peak RSS {peak} bytes against {idle} idle\n{}",
        d.context()
    );
}

/// `spec` written, then compressed by DCMTK's dcmcrle into `<dir>` (RLE Lossless, one fragment per
/// frame). Returns the files in slice order.
fn rle_series(spec: &ct_harmonizer::samples::SeriesSpec, dir: &Path) -> Vec<PathBuf> {
    let plain = write(spec, &dir.with_extension("plain"));
    std::fs::create_dir_all(dir).unwrap();
    plain
        .iter()
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            let o = Command::new("/usr/bin/dcmcrle")
                .arg(f)
                .arg(&to)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", out_text(&o));
            to
        })
        .collect()
}

/// Hostile pixel data that fuzzing (`series_file`) found passing the guard: an RLE fragment whose
/// header declares 4 294 967 295 segments (dicom-rs's decoder allocated 16 GB from those 4 bytes)
/// and an RLE series declaring a 65535 x 65535 matrix (17 GB per slice in our reader before any
/// check; encapsulated, so no length check can see it), each a series of its own beside a good one,
/// in the watched folder with a harmonize rule. Each is quarantined with the file or series and the
/// reason; the good series is harmonized; the daemon runs on (before the fix: a 16 GB or 17 GB
/// allocation per attempt).
#[test]
fn hostile_pixel_data_is_refused_per_series() {
    let tmp = tempfile::tempdir().unwrap();
    let watch = tmp.path().join("watch");
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&watch).unwrap();
    let wv = q(&watch);
    let mut d = Daemon::new(
        tmp.path(),
        &[("watch.dir", wv.as_str()), ("watch.stable_seconds", "1")],
        &(folder_dest("out", &export) + &rule("default", "harmonize", false, &["out"])),
    );
    d.start();
    // Slice 0's segment count set to u32::MAX.
    let rle = rle_series(&spec("hard-rle-segments", 16, 3), &tmp.path().join("rle"));
    let mut bytes = std::fs::read(&rle[0]).unwrap();
    let item = [0xFE, 0xFF, 0x00, 0xE0];
    let items: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == item)
        .map(|(i, _)| i)
        .collect();
    // items[0] is the (empty) basic offset table; items[1] the frame's fragment.
    let fragment = items[1] + 8;
    assert_eq!(&bytes[fragment..fragment + 4], &2u32.to_le_bytes());
    bytes[fragment..fragment + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&rle[0], &bytes).unwrap();
    let hostile_sop = tag_str(
        &dicom_object::open_file(&rle[0]).unwrap(),
        tags::SOP_INSTANCE_UID,
    );
    // Rows and Columns declared 65535 on every slice of another series.
    let huge = rle_series(&spec("hard-huge-matrix", 16, 3), &tmp.path().join("huge"));
    for f in &huge {
        let mut o = dicom_object::open_file(f).unwrap();
        for t in [tags::ROWS, tags::COLUMNS] {
            o.put(DataElement::new(t, VR::US, PrimitiveValue::from(65535u16)));
        }
        o.write_to_file(f).unwrap();
    }
    let good = write(&spec("hard-good-beside", 16, 3), &tmp.path().join("good"));
    for (prefix, series) in [("rle", &rle), ("huge", &huge), ("good", &good)] {
        for f in series {
            let name = format!("{prefix}-{}", f.file_name().unwrap().to_string_lossy());
            std::fs::rename(f, watch.join(name)).unwrap();
        }
    }
    let series_reasons = || -> Vec<String> {
        files(&d.state.join("quarantine"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "reason.txt"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    };
    assert!(
        wait_until(secs(90), POLL, || series_reasons().len() == 2
            && count_files(&export) == 3
            && d.idle()),
        "{}",
        d.context()
    );
    let all = series_reasons().join("\n");
    assert!(
        all.contains(&format!(
            "{hostile_sop}.dcm: cannot decode pixel data: RLE fragment 1: 4294967295 segments declared"
        )),
        "{all}"
    );
    assert!(
        all.contains("matrix 65535x65535") && all.contains("volume.max_matrix = 2048"),
        "{all}"
    );
    assert!(reasons(&d).is_empty(), "{:?}", reasons(&d));
    assert_eq!(read_series(&series_dirs(&export)[0]).len(), 3);
    assert!(d.peer().alive(), "{}", d.context());
}
