//! Audit trail (issue 14): `serve` with JSON-line logs (`CT_HARMONIZER_LOG_FORMAT=json`) receives a
//! series from storescu, harmonizes it and forwards it to storescp; its log holds one
//! `audit_association`, one `audit_series` and one `audit_forward` record with the documented fields,
//! never the patient's name or ID. A rejected association (wrong called AE title) gives a rejected
//! record naming the caller and the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::pki::*;
use common::*;
use dicom_dictionary_std::tags;
use serde_json::Value;

const PATIENT_NAME: &str = "AUDITSECRET^ZELDA";
const PATIENT_ID: &str = "PID-AUDIT-90210";

/// Starts `serve` like [`Daemon::start`], with JSON-line logs.
fn start_json(d: &mut Daemon) {
    assert!(d.proc.is_none());
    d.starts += 1;
    let mut c = d.command();
    c.env("CT_HARMONIZER_LOG_FORMAT", "json").arg("serve");
    let mut p = Peer::spawn("ct-harmonizer serve", c, &d.log_path());
    let up = wait_until(secs(60), POLL, || {
        p.log_text().contains("daemon_ready")
            && http_get(d.http, "/healthz").is_ok_and(|(s, _)| s == 200)
            || !p.alive()
    });
    assert!(up && p.alive(), "serve did not start:\n{}", p.log_text());
    d.proc = Some(p);
}

/// The audit records (target `audit`) named `event` in the daemon's log.
fn records(d: &Daemon, event: &str) -> Vec<Value> {
    d.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == event)
        .collect()
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing or not a string in {v}"))
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {v}"))
}

#[test]
fn audit_records_name_who_sent_what_to_whom_never_the_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp("DEST", dest_port, &out, &tmp.path().join("storescp.log"));
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("dest", "DEST", dest_port) + &rule("default", "harmonize", false, &["dest"])),
    );
    start_json(&mut d);
    // Every log line is JSON.
    assert!(
        d.logs()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{}",
        d.logs()
    );

    let mut sp = spec("audit-trail", 24, 4);
    sp.patient_name = PATIENT_NAME.into();
    sp.patient_id = PATIENT_ID.into();
    let input = tmp.path().join("input");
    let files = write(&sp, &input);
    let obj = dicom_object::open_file(&files[0]).unwrap();
    assert_eq!(tag_str(&obj, tags::PATIENT_ID), PATIENT_ID);
    let (study_uid, series_uid) = (
        tag_str(&obj, tags::STUDY_INSTANCE_UID),
        tag_str(&obj, tags::SERIES_INSTANCE_UID),
    );
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();

    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    let done = wait_until(secs(60), POLL, || {
        !records(&d, "audit_forward").is_empty() && count_files(&out) == 4
    });
    assert!(done, "{}", d.context());

    // The association.
    let assoc = records(&d, "audit_association");
    let accepted: Vec<&Value> = assoc
        .iter()
        .filter(|v| v["outcome"] == "accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "{assoc:?}");
    let a = accepted[0];
    assert_eq!(s(a, "calling_ae"), "MODALITY");
    assert_eq!(s(a, "called_ae"), AE);
    assert!(s(a, "peer").starts_with("127.0.0.1:"), "{a}");
    assert_eq!(a["tls"], false);
    assert_eq!(s(a, "tls_subject"), "");
    assert_eq!(s(a, "reason"), "");
    assert_eq!(n(a, "instances"), 4);
    // Data sets without their Part 10 header: less than the files, more than the pixels.
    let stored = n(a, "bytes");
    assert!(
        stored < bytes && stored > 4 * 24 * 24 * 2,
        "{stored} of {bytes}"
    );
    assert!(a["seconds"].as_f64().is_some(), "{a}");
    assert_eq!(n(a, "audit_schema"), 1);
    assert_eq!(a["level"], "INFO");
    assert!(a["timestamp"].as_str().is_some(), "{a}");

    // The series.
    let series = records(&d, "audit_series");
    assert_eq!(series.len(), 1, "{series:?}");
    let r = &series[0];
    assert_eq!(s(r, "study_uid"), study_uid);
    assert_eq!(s(r, "series_uid"), series_uid);
    assert_eq!(s(r, "calling_ae"), "MODALITY");
    assert_eq!(s(r, "called_ae"), AE);
    assert_eq!(s(r, "rule"), "default");
    assert_eq!(s(r, "plan"), "harmonize");
    assert_eq!(s(r, "outcome"), "harmonized");
    assert_eq!(s(r, "reason"), "");
    assert_eq!(s(r, "model"), "gaussian-soft-baseline");
    assert!(!s(r, "model_version").is_empty(), "{r}");
    assert_eq!(n(r, "instances"), 4);
    assert_eq!(n(r, "jobs"), 1);
    assert_eq!(n(r, "version"), 1);
    let derived = s(r, "derived_series_uid");
    assert!(!derived.is_empty() && derived != series_uid, "{r}");
    // The derived series is what storescp received.
    let received = received(&out);
    assert!(
        received.len() == 4 && received.iter().all(|(series, _, _)| series == derived),
        "{received:?}"
    );

    // The delivery.
    let fwd = records(&d, "audit_forward");
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    let f = &fwd[0];
    assert_eq!(s(f, "status"), "delivered");
    assert_eq!(s(f, "reason"), "");
    assert_eq!(s(f, "destination"), "dest");
    assert_eq!(s(f, "destination_ae"), "DEST");
    assert_eq!(
        s(f, "destination_address"),
        format!("127.0.0.1:{dest_port}")
    );
    assert_eq!(s(f, "kind"), "derived");
    assert_eq!(s(f, "study_uid"), study_uid);
    assert_eq!(s(f, "source_series_uid"), series_uid);
    assert_eq!(s(f, "series_uid"), derived);
    assert_eq!(n(f, "instances"), 4);
    assert_eq!(n(f, "attempt"), 1);
    assert!(!s(f, "job").is_empty());

    // A rejected association: the wrong called AE title.
    let o = storescu("INTRUDER", "SOMEONEELSE", d.port, &[&input]);
    assert!(!o.status.success(), "{}", out_text(&o));
    let rejected = wait_until(secs(20), POLL, || {
        records(&d, "audit_association")
            .iter()
            .any(|v| v["outcome"] == "rejected")
    });
    assert!(rejected, "{}", d.logs());
    let all = records(&d, "audit_association");
    let rj: Vec<&Value> = all.iter().filter(|v| v["outcome"] == "rejected").collect();
    assert_eq!(rj.len(), 1, "{all:?}");
    assert_eq!(s(rj[0], "calling_ae"), "INTRUDER");
    assert_eq!(s(rj[0], "called_ae"), "SOMEONEELSE");
    let reason = s(rj[0], "reason").to_lowercase();
    assert!(
        reason.contains("called") && reason.contains("not recognized"),
        "{}",
        rj[0]
    );
    assert_eq!(n(rj[0], "instances"), 0);
    assert_eq!(n(rj[0], "bytes"), 0);

    // Never the patient's name or ID, anywhere in the log.
    let logs = d.logs();
    for secret in [PATIENT_NAME, "AUDITSECRET", "ZELDA", PATIENT_ID, "90210"] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

/// Shipped model manifests record provenance without paths of the machine that trained or
/// evaluated them (data folders by name), and still load (hash checked).
#[test]
fn shipped_manifests_name_no_machine_paths() {
    let models = repo().join("models");
    let mut seen = 0;
    for entry in std::fs::read_dir(&models).unwrap() {
        let dir = entry.unwrap().path();
        let toml = dir.join("model.toml");
        if !toml.is_file() {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&toml).unwrap();
        for machine in [
            "/tmp/", "/home/", "/root/", "/work/", "/var/", "/mnt/", "/Users/",
        ] {
            assert!(
                !text.contains(machine),
                "{} names {machine}",
                toml.display()
            );
        }
        let md = ct_harmonizer::model::ModelDir::open(&dir).unwrap();
        assert!(!md.manifest.provenance.data.is_empty());
        assert!(md
            .manifest
            .evaluation
            .iter()
            .all(|r| !r.dataset.starts_with('/')));
    }
    assert!(seen >= 3, "{seen} manifests");
}

/// Over DICOM TLS the association record names the client certificate's subject; a certificate
/// not on the allow-list and a caller without certificate give rejected records with their reason.
/// A destination that refuses connections gives `retry` then `dead` forward records.
#[test]
fn tls_subjects_and_failed_deliveries_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Pki::new(tmp.path()).dir;
    let f = |n: &str| format!("{:?}", dir.join(n).display().to_string());
    let closed = free_port();
    let (cert, key, ca) = (f("server.crt"), f("server.key"), f("ca.crt"));
    let mut d = Daemon::new(
        tmp.path(),
        &[
            ("server.tls.enabled", "true"),
            ("server.tls.cert", &cert),
            ("server.tls.key", &key),
            ("server.tls.ca", &ca),
            ("server.tls.allowed_subjects", "[\"CN=ct1,O=Hospital\"]"),
            ("forward.max_attempts", "2"),
        ],
        &(scp_dest("gone", "GONE", closed) + &rule("default", "pass", false, &["gone"])),
    );
    start_json(&mut d);
    let input = tmp.path().join("in");
    write(&spec("audit-tls", 24, 2), &input);
    let storescu_tls = |who: Option<&str>| {
        let mut c = std::process::Command::new("/usr/bin/storescu");
        c.env("TCP_NODELAY", "1")
            .args(["-v", "-aet", "MODALITY", "-aec", AE, "+sd", "+r"]);
        match who {
            Some(n) => c
                .arg("+tls")
                .arg(dir.join(format!("{n}.key")))
                .arg(dir.join(format!("{n}.crt"))),
            None => c.arg("+tla"),
        };
        c.arg("+cf")
            .arg(dir.join("ca.crt"))
            .arg("127.0.0.1")
            .arg(d.port.to_string())
            .arg(&input);
        c.output().unwrap()
    };

    let o = storescu_tls(Some("client"));
    assert!(o.status.success(), "{}", text(&o));
    let o = storescu_tls(Some("intruder"));
    assert!(!o.status.success(), "{}", text(&o));
    let o = storescu_tls(None);
    assert!(!o.status.success(), "{}", text(&o));
    let done = wait_until(secs(60), POLL, || {
        records(&d, "audit_association").len() == 3
            && records(&d, "audit_forward")
                .iter()
                .any(|v| v["status"] == "dead")
    });
    assert!(done, "{}", d.logs());

    let assoc = records(&d, "audit_association");
    let ok: Vec<&Value> = assoc
        .iter()
        .filter(|v| v["outcome"] == "accepted")
        .collect();
    assert_eq!(ok.len(), 1, "{assoc:?}");
    assert_eq!(ok[0]["tls"], true);
    assert_eq!(s(ok[0], "tls_subject"), "CN=ct1,O=Hospital");
    assert_eq!(s(ok[0], "calling_ae"), "MODALITY");
    assert_eq!(n(ok[0], "instances"), 2);
    let intruder = assoc
        .iter()
        .find(|v| v["tls_subject"] == "CN=intruder,O=Elsewhere")
        .unwrap_or_else(|| panic!("{assoc:?}"));
    assert_eq!(s(intruder, "outcome"), "rejected");
    assert_eq!(s(intruder, "calling_ae"), "MODALITY");
    assert!(
        s(intruder, "reason").contains("subject not in server.tls.allowed_subjects"),
        "{intruder}"
    );
    let anonymous = assoc
        .iter()
        .find(|v| v["tls_subject"] == "" && v["outcome"] == "rejected")
        .unwrap_or_else(|| panic!("{assoc:?}"));
    assert!(
        anonymous["tls"] == true && s(anonymous, "calling_ae").is_empty(),
        "{anonymous}"
    );
    assert!(
        s(anonymous, "reason").starts_with("TLS handshake failed"),
        "{anonymous}"
    );

    let series = records(&d, "audit_series");
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(s(&series[0], "outcome"), "passed");
    assert_eq!(s(&series[0], "plan"), "pass");
    assert_eq!(s(&series[0], "derived_series_uid"), "");
    assert_eq!(s(&series[0], "model"), "");

    let fwd = records(&d, "audit_forward");
    let statuses: Vec<(&str, u64)> = fwd
        .iter()
        .map(|v| (s(v, "status"), n(v, "attempt")))
        .collect();
    assert_eq!(statuses, vec![("retry", 1), ("dead", 2)], "{fwd:?}");
    for v in &fwd {
        assert_eq!(s(v, "kind"), "original");
        assert_eq!(s(v, "series_uid"), s(&series[0], "series_uid"));
        assert_eq!(s(v, "destination_address"), format!("127.0.0.1:{closed}"));
        assert!(!s(v, "reason").is_empty(), "{v}");
        assert_eq!(n(v, "instances"), 0);
    }
}
