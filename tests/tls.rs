//! DICOM TLS (issue 9): the real `serve` binary with `[server.tls]` and TLS destinations, against
//! DCMTK's storescu/echoscu/storescp `+tls`. Certificates are made by /usr/bin/openssl in the test's
//! temporary folder: a CA, a server certificate for localhost/127.0.0.1, client certificates, and a
//! server certificate for another name (hostname verification).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::pki::*;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `Daemon::new` with overrides given as owned pairs (the `[server.tls]` section needs dotted keys).
fn daemon(dir: &Path, overrides: &[(String, String)], tail: &str) -> Daemon {
    // `Daemon::write_config` splits "section.key" at the first dot: "server.tls.enabled" becomes
    // key "tls.enabled" in [server], a dotted key TOML reads as [server.tls] enabled.
    let o: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Daemon::new(dir, &o, tail)
}

fn storescu_tls(pki: &Pki, who: Option<&str>, calling: &str, port: u16, dir: &Path) -> Output {
    let mut c = Command::new("/usr/bin/storescu");
    c.env("TCP_NODELAY", "1")
        .args(["-v", "-aet", calling, "-aec", AE, "+sd", "+r"])
        .args(pki.dcmtk_args(who))
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(dir);
    c.output().unwrap()
}

fn start_storescp_tls(pki: &Pki, cert: &str, aet: &str, port: u16, out: &Path, log: &Path) -> Peer {
    std::fs::create_dir_all(out).unwrap();
    let mut c = Command::new("/usr/bin/storescp");
    c.env("TCP_NODELAY", "1")
        .args(["-v", "-aet", aet, "-od"])
        .arg(out)
        .args(pki.dcmtk_args(Some(cert)))
        .arg(port.to_string());
    let mut p = Peer::spawn("storescp +tls", c, log);
    let up = wait_until(secs(10), Duration::from_millis(50), || port_open(port));
    assert!(up && p.alive(), "storescp did not start:\n{}", p.log_text());
    p
}

/// storescu +tls with a client certificate on the allow-list → our TLS SCP accepts and spools; the
/// derived series goes out over TLS (client certificate, hostname verified) to storescp +tls.
/// echoscu +tls checks the handshake first.
#[test]
fn tls_scp_and_scu_with_dcmtk() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp_tls(
        &pki,
        "server",
        "DEST",
        dest_port,
        &out,
        &tmp.path().join("storescp.log"),
    );
    let mut d = daemon(
        tmp.path(),
        &pki.server_overrides("[\"CN=ct1,O=Hospital\"]"),
        &(pki.tls_dest("dest", "DEST", dest_port, "")
            + &rule("default", "harmonize", false, &["dest"])),
    );
    d.start();

    let mut echo = Command::new("/usr/bin/echoscu");
    echo.env("TCP_NODELAY", "1")
        .args(["-v", "-aet", "MODALITY", "-aec", AE])
        .args(pki.dcmtk_args(Some("client")))
        .arg("127.0.0.1")
        .arg(d.port.to_string());
    let o = echo.output().unwrap();
    assert!(
        o.status.success(),
        "echoscu +tls: {}\n{}",
        text(&o),
        d.context()
    );

    let input = tmp.path().join("in");
    write(&spec("tls-happy", 24, 3), &input);
    let o = storescu_tls(&pki, Some("client"), "MODALITY", d.port, &input);
    assert!(
        o.status.success(),
        "storescu +tls: {}\n{}",
        text(&o),
        d.context()
    );
    assert!(
        wait_until(secs(60), POLL, || count_files(&out) == 3),
        "storescp +tls did not receive 3 instances\n{}",
        d.context()
    );
    assert!(wait_until(secs(30), POLL, || d
        .logs()
        .contains("job_delivered")));
    let got = received(&out);
    assert!(got.iter().all(|(_, _, desc)| !desc.is_empty()), "{got:?}");
    assert_eq!(d.metric("instances_received"), 3.0);
}

fn wait_log(d: &Daemon, needle: &str) -> bool {
    wait_until(secs(20), POLL, || d.logs().contains(needle))
}

/// Bad TLS callers: no client certificate (handshake refused, logged with the peer address), a
/// certificate not on `allowed_subjects` (A-ASSOCIATE-RJ, logged naming the subject), plain TCP on
/// the TLS port (closed at once, and a silent socket within ARTIM). None holds the only slot: a good
/// caller is served afterwards and while a silent socket is open.
#[test]
fn tls_scp_refuses_bad_callers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let mut o = pki.server_overrides("[\"CN=ct1,O=Hospital\"]");
    o.push(("server.max_associations".into(), "1".into()));
    o.push(("server.artim_seconds".into(), "3".into()));
    let mut d = daemon(tmp.path(), &o, &rule("default", "drop", false, &[]));
    d.start();
    let input = tmp.path().join("in");
    write(&spec("tls-bad", 24, 1), &input);

    // No client certificate.
    let out = storescu_tls(&pki, None, "MODALITY", d.port, &input);
    assert!(
        !out.status.success(),
        "anonymous TLS accepted: {}",
        text(&out)
    );
    assert!(
        wait_log(&d, "tls_handshake_failed"),
        "no tls_handshake_failed\n{}",
        d.context()
    );
    let line = d
        .logs()
        .lines()
        .find(|l| l.contains("tls_handshake_failed"))
        .unwrap()
        .to_string();
    eprintln!("{line}");
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // A certificate from our CA whose subject is not on the list.
    let out = storescu_tls(&pki, Some("intruder"), "MODALITY", d.port, &input);
    assert!(!out.status.success(), "intruder accepted: {}", text(&out));
    assert!(
        text(&out).contains("Rejected") || text(&out).contains("rejected"),
        "{}",
        text(&out)
    );
    assert!(
        wait_log(&d, "tls_subject_rejected"),
        "no tls_subject_rejected\n{}",
        d.context()
    );
    assert!(d.logs().contains("CN=intruder,O=Elsewhere"), "{}", d.logs());
    eprintln!(
        "{}",
        d.logs()
            .lines()
            .filter(|l| l.contains("tls_subject_rejected") || l.contains("no TLS handshake"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Plain DICOM on the TLS port: the handshake fails at once.
    let before = d.logs().matches("tls_handshake_failed").count();
    let out = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(!out.status.success(), "plain TCP accepted: {}", text(&out));
    assert!(wait_until(secs(20), POLL, || d
        .logs()
        .matches("tls_handshake_failed")
        .count()
        > before));

    // A silent socket is closed within ARTIM (3 s) and holds no slot meanwhile.
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    silent.set_read_timeout(Some(secs(30))).unwrap();
    let t0 = Instant::now();
    let out = storescu_tls(&pki, Some("client"), "MODALITY", d.port, &input);
    assert!(
        out.status.success(),
        "good caller refused: {}\n{}",
        text(&out),
        d.context()
    );
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "silent socket got data");
    assert!(
        t0.elapsed() < secs(25),
        "silent socket not closed within ARTIM"
    );
    assert!(wait_log(&d, "no TLS handshake within 3 s"), "{}", d.logs());

    // A TLS session that completes its handshake and then says nothing: closed within the same
    // ARTIM time (the handshake and the A-ASSOCIATE-RQ share it).
    let mut c = Command::new("/usr/bin/openssl");
    c.args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", d.port))
        .args(["-cert", &pki.crt("client"), "-key", &pki.key("client")])
        .args(["-CAfile", &pki.crt("ca")]);
    let mut quiet = Peer::spawn("openssl s_client", c, &tmp.path().join("s_client.log"));
    assert!(
        quiet.wait_exit(secs(30)).is_some(),
        "silent TLS session still open after 30 s (ARTIM 3 s)\n{}",
        d.logs()
    );
    assert!(wait_log(&d, "no A-ASSOCIATE-RQ within 3 s"), "{}", d.logs());

    assert!(d.peer().alive());
    assert_eq!(d.metric("instances_received"), 1.0);
}

/// A destination whose certificate does not carry the name we connect to: each attempt fails naming
/// the destination and the reason, and is retried; the same storescp reached with the right
/// `server_name` gets the series.
#[test]
fn tls_destination_hostname_is_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp_tls(
        &pki,
        "other",
        "DEST",
        dest_port,
        &out,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(pki.tls_dest("wrongname", "DEST", dest_port, "")
            + &pki.tls_dest("rightname", "DEST", dest_port, "other.example")
            + &rule("default", "pass", true, &["wrongname", "rightname"])),
    );
    d.start();
    let input = tmp.path().join("in");
    write(&spec("tls-name", 24, 2), &input);
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        wait_until(secs(60), POLL, || count_files(&out) == 2),
        "rightname did not deliver\n{}",
        d.context()
    );
    let retries = || {
        d.logs()
            .lines()
            .filter(|l| l.contains("job_retry") && l.contains("wrongname"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(secs(30), POLL, || retries().len() >= 2),
        "wrongname not retried\n{}",
        d.context()
    );
    let line = &retries()[0];
    eprintln!("{line}");
    assert!(line.contains("not valid for name"), "{line}");
    assert!(line.contains("127.0.0.1"), "{line}");
    assert_eq!(count_files(&out), 2, "wrongname delivered despite the name");
}

/// `check-config` fails naming the key file when it is missing or readable by group or others.
#[test]
fn check_config_rejects_bad_key_files() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let check = |d: &Daemon| {
        let o = d.command().arg("check-config").output().unwrap();
        (o.status.success(), text(&o))
    };
    let drop_rule = rule("default", "drop", false, &[]);
    let d = daemon(tmp.path(), &pki.server_overrides("[]"), &drop_rule);
    let (ok, t) = check(&d);
    assert!(ok, "valid TLS configuration refused: {t}");

    let key = pki.key("server");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, t) = check(&d);
    assert!(!ok, "world-readable key accepted: {t}");
    assert!(t.contains(&key) && t.contains("0644"), "{t}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, t) = check(&d);
    assert!(!ok && t.contains(&key), "group-readable key accepted: {t}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut o = pki.server_overrides("[]");
    let missing = tmp.path().join("missing.key").display().to_string();
    o[2].1 = format!("{missing:?}");
    let d = daemon(tmp.path(), &o, &drop_rule);
    let (ok, t) = check(&d);
    assert!(!ok && t.contains(&missing), "missing key accepted: {t}");
    let not_a_file = tmp.path().join("pki").display().to_string();
    o[2].1 = format!("{not_a_file:?}");
    let d = daemon(tmp.path(), &o, &drop_rule);
    let (ok, t) = check(&d);
    assert!(
        !ok && t.contains(&not_a_file) && t.contains("not a regular file"),
        "a folder as key accepted: {t}"
    );

    // A destination's client key is checked the same way.
    let ckey = pki.key("client");
    std::fs::set_permissions(&ckey, std::fs::Permissions::from_mode(0o604)).unwrap();
    let tail = format!(
        "{}\ntls = true\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n{}",
        scp_dest("pacs", "PACS", 104).trim_end(),
        pki.crt("ca"),
        pki.crt("client"),
        ckey,
        rule("default", "drop", false, &[])
    );
    let d = Daemon::new(tmp.path(), &[], &tail);
    let (ok, t) = check(&d);
    assert!(
        !ok && t.contains(&ckey),
        "world-readable client key accepted: {t}"
    );

    // Client certificates required without a CA is a configuration error.
    let mut o = pki.server_overrides("[]");
    o[3].1 = "\"\"".into();
    let d = daemon(tmp.path(), &o, &drop_rule);
    let (ok, t) = check(&d);
    assert!(!ok && t.contains("require_client_cert"), "{t}");
}

/// Orthanc with `DicomTlsEnabled` (its DICOM port speaks TLS only, client certificates required).
fn start_orthanc_tls(dir: &Path, pki: &Pki) -> Orthanc {
    Orthanc::start_with(
        dir,
        serde_json::json!({
            "DicomTlsEnabled": true,
            "DicomTlsCertificate": pki.crt("server"),
            "DicomTlsPrivateKey": pki.key("server"),
            "DicomTlsTrustedCertificates": pki.crt("ca"),
            "DicomTlsRemoteCertificateRequired": true,
        }),
    )
}

/// Forwarding over TLS to Orthanc with DicomTlsEnabled (our client certificate required): the
/// original and the derived series arrive.
#[test]
fn tls_forward_to_orthanc() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let orthanc = start_orthanc_tls(&tmp.path().join("pacs"), &pki);
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(pki.tls_dest("pacs", &orthanc.aet, orthanc.dicom_port, "localhost")
            + &rule("default", "harmonize", true, &["pacs"])),
    );
    d.start();
    let input = tmp.path().join("in");
    let s = spec("tls-orthanc", 24, 3);
    write(&s, &input);
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", text(&o));
    let done = wait_until(secs(90), POLL, || {
        d.metric("jobs_forwarded") >= 2.0 && d.idle()
    });
    assert!(
        done,
        "not delivered over TLS:\n{}\n--- orthanc\n{}",
        d.context(),
        orthanc.peer.log_text()
    );
    let series = orthanc.series();
    assert_eq!(series.len(), 2, "{series:#?}");
    assert!(series.iter().all(|x| x.instances.len() == 3), "{series:#?}");
    assert!(series.iter().any(|x| x.series_uid == s.series_uid()));
    assert!(series.iter().any(|x| x.description.contains("HARMONIZED")));
}
