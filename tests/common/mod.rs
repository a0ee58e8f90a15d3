//! Shared helpers for the integration tests: run the real binary, build fixtures with the project's
//! own writer, read outputs back, and check them with dicom3tools.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod daemon;
pub mod pki;

use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ct-harmonizer"))
}

/// `ct-harmonizer process` with the repository's models and the baseline as the default model;
/// extra env pairs override settings.
pub fn process(inputs: &[&Path], out: &Path, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("process");
    for i in inputs {
        c.arg(i);
    }
    c.arg("--out").arg(out).args(extra);
    c.env("CT_HARMONIZER__MODELS__DIR", repo().join("models"));
    // The DICOM and pipeline tests pin the classical baseline (fast, exactly linear); the shipped
    // trained default is exercised by its own tests.
    c.env("CT_HARMONIZER__MODELS__DEFAULT", "gaussian-soft-baseline");
    c.env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, recursively, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Published series folders under `out` (hidden partial folders excluded).
pub fn series_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_dir());
    v.sort();
    v
}

/// Entries of `out` whose name starts with a dot (partial or old folders): must be none after a run.
pub fn hidden_entries(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A derived slice read back: its position along z and its HU plane.
pub struct Slice {
    pub path: PathBuf,
    pub z: f64,
    pub hu: Vec<f32>,
    pub obj: dicom_object::DefaultDicomObject,
}

pub fn read_slice(path: &Path) -> Slice {
    use dicom_pixeldata::PixelDecoder;
    let obj = dicom_object::open_file(path).unwrap();
    let ipp = obj
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap();
    let hu: Vec<f32> = obj.decode_pixel_data().unwrap().to_vec().unwrap();
    Slice {
        path: path.to_owned(),
        z: ipp[2],
        hu,
        obj,
    }
}

/// Reads a series folder sorted by z.
pub fn read_series(dir: &Path) -> Vec<Slice> {
    let mut v: Vec<Slice> = files(dir).iter().map(|p| read_slice(p)).collect();
    v.sort_by(|a, b| a.z.total_cmp(&b.z));
    v
}

pub fn tag_str(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .map(|e| e.to_str().unwrap().trim().to_string())
        .unwrap_or_default()
}

/// A tag of the first item of the sequence `seq` of `obj` (trailing NUL and spaces cut).
pub fn item_str(
    obj: &dicom_object::DefaultDicomObject,
    seq: dicom_core::Tag,
    tag: dicom_core::Tag,
) -> String {
    let item = &obj.element(seq).unwrap().items().unwrap()[0];
    item.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// The tags every derived instance carries (DESIGN §4): DERIVED image type, the source's study, a
/// series of its own, the not-for-diagnosis description, the model named in the derivation
/// description and as contributing equipment (serial number `<model>-<version>`), and a source
/// image reference to the instance it came from (`src`). `first` is the source series' first
/// instance (its study and series UIDs).
pub fn assert_derived_from(
    out: &dicom_object::DefaultDicomObject,
    src: &dicom_object::DefaultDicomObject,
    first: &dicom_object::DefaultDicomObject,
    model: &str,
) {
    assert!(tag_str(out, tags::IMAGE_TYPE).starts_with("DERIVED\\"));
    assert_eq!(
        tag_str(out, tags::STUDY_INSTANCE_UID),
        tag_str(first, tags::STUDY_INSTANCE_UID)
    );
    assert_ne!(
        tag_str(out, tags::SERIES_INSTANCE_UID),
        tag_str(first, tags::SERIES_INSTANCE_UID)
    );
    assert_ne!(
        tag_str(out, tags::SOP_INSTANCE_UID),
        tag_str(src, tags::SOP_INSTANCE_UID)
    );
    assert!(tag_str(out, tags::SERIES_DESCRIPTION).contains("NOT FOR DIAGNOSTIC USE"));
    assert!(tag_str(out, tags::DERIVATION_DESCRIPTION).contains(model));
    assert_eq!(
        item_str(
            out,
            tags::SOURCE_IMAGE_SEQUENCE,
            tags::REFERENCED_SOP_INSTANCE_UID
        ),
        tag_str(src, tags::SOP_INSTANCE_UID)
    );
    let serial = item_str(
        out,
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        tags::DEVICE_SERIAL_NUMBER,
    );
    assert!(serial.starts_with(model), "{serial}");
}

/// dciodvfy on each file (zero errors) and dcentvfy across the series.
pub fn verify_dicom(dir: &Path) {
    let all = files(dir);
    assert!(!all.is_empty());
    for f in &all {
        let o = Command::new("dciodvfy")
            .arg(f)
            .output()
            .expect("dciodvfy (dicom3tools) is installed by scripts/setup.sh");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !err.contains("Error"),
            "dciodvfy {}:\n{err}",
            f.display()
        );
    }
    let o = Command::new("dcentvfy").args(&all).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("Error"),
        "dcentvfy:\n{err}"
    );
}

/// SHA-256 of every file under `dir`, to prove inputs are never modified.
pub fn digest_tree(dir: &Path) -> Vec<(PathBuf, String)> {
    files(dir)
        .into_iter()
        .map(|p| {
            let h = ct_harmonizer::model::manifest::sha256_file(&p).unwrap();
            (p, h)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Daemon tests: real peers (DCMTK, Orthanc) on free loopback ports, each stopped by PID.

/// A free loopback TCP port (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every `every` until it holds or `within` has passed. Returns whether it held.
pub fn wait_until(
    within: std::time::Duration,
    every: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// True once something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(200),
    )
    .is_ok()
}

/// A child process with its output in a log file; killed (SIGKILL) and reaped when dropped.
pub struct Peer {
    pub name: String,
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Peer {
    /// Starts `cmd` with TCP_NODELAY=1, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Peer {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.env("TCP_NODELAY", "1")
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e} (bash scripts/setup.sh installs it)"));
        Peer {
            name: name.to_string(),
            child,
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("HUP", "TERM", ...) to this process only.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("/bin/kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for the process to exit; returns its status.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(within, std::time::Duration::from_millis(50), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port` (std only): (status, body). Handles chunked bodies.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
                .map_err(std::io::Error::other)?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body = out;
    }
    Ok((status, body))
}

/// Orthanc from Debian's package, in the foreground, with its storage in `dir`.
pub struct Orthanc {
    pub peer: Peer,
    pub aet: String,
    pub dicom_port: u16,
    pub http_port: u16,
}

/// A JSON string's text ("" for anything else, as Orthanc leaves out empty tags).
pub fn json_str(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// One series as Orthanc holds it.
#[derive(Debug, Clone)]
pub struct OrthancSeries {
    pub id: String,
    pub series_uid: String,
    pub description: String,
    /// Orthanc instance ids.
    pub instances: Vec<String>,
}

impl Orthanc {
    pub fn start(dir: &Path) -> Orthanc {
        Self::start_with(dir, serde_json::json!({}))
    }

    /// As [`Orthanc::start`], with `extra` configuration entries (a JSON object whose members are
    /// added), e.g. its DICOM TLS settings.
    pub fn start_with(dir: &Path, extra: serde_json::Value) -> Orthanc {
        let storage = dir.join("orthanc-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let dicom_port = free_port();
        let http_port = free_port();
        let aet = "ORTHANC".to_string();
        let mut cfg = serde_json::json!({
            "Name": "ct-harmonizer-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": false,
            "DicomServerEnabled": true,
            "HttpServerEnabled": true,
            "Plugins": [],
            "StableAge": 1,
            "ConcurrentJobs": 1
        });
        if let (Some(cfg), serde_json::Value::Object(extra)) = (cfg.as_object_mut(), extra) {
            cfg.extend(extra);
        }
        let cfg = serde_json::to_string_pretty(&cfg).unwrap();
        let cfg_path = dir.join("orthanc.json");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut c = Command::new("/usr/sbin/Orthanc");
        c.arg(&cfg_path).current_dir(dir);
        let mut peer = Peer::spawn("Orthanc", c, &dir.join("orthanc.log"));
        let up = wait_until(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(50),
            || http_get(http_port, "/system").is_ok_and(|(s, _)| s == 200) && port_open(dicom_port),
        );
        assert!(
            up && peer.alive(),
            "Orthanc did not start:\n{}",
            peer.log_text()
        );
        Orthanc {
            peer,
            aet,
            dicom_port,
            http_port,
        }
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.http_port, path).unwrap();
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", String::from_utf8_lossy(&body)))
    }

    /// Every series Orthanc holds.
    pub fn series(&self) -> Vec<OrthancSeries> {
        let ids: Vec<String> = serde_json::from_value(self.get_json("/series")).unwrap();
        ids.into_iter()
            .map(|id| {
                let s = self.get_json(&format!("/series/{id}"));
                let tags = &s["MainDicomTags"];
                OrthancSeries {
                    series_uid: json_str(&tags["SeriesInstanceUID"]),
                    description: json_str(&tags["SeriesDescription"]),
                    instances: serde_json::from_value(s["Instances"].clone()).unwrap(),
                    id,
                }
            })
            .collect()
    }

    /// `/instances/{id}/simplified-tags`.
    pub fn instance_tags(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/instances/{id}/simplified-tags"))
    }

    /// Downloads one instance's DICOM file.
    pub fn instance_file(&self, id: &str, to: &Path) {
        let (status, body) = http_get(self.http_port, &format!("/instances/{id}/file")).unwrap();
        assert_eq!(status, 200);
        std::fs::write(to, body).unwrap();
    }
}

/// DCMTK's storescp as a destination, writing what it receives into `out`.
pub fn start_storescp(aet: &str, port: u16, out: &Path, log: &Path) -> Peer {
    std::fs::create_dir_all(out).unwrap();
    let mut c = Command::new("/usr/bin/storescp");
    c.args(["-aet", aet, "-od"]).arg(out).arg(port.to_string());
    let mut p = Peer::spawn("storescp", c, log);
    let up = wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || port_open(port),
    );
    assert!(up && p.alive(), "storescp did not start:\n{}", p.log_text());
    p
}

/// `storescu` (DCMTK) sending every file under `dirs` (recursively); returns its output.
pub fn storescu(calling: &str, called: &str, port: u16, dirs: &[&Path]) -> Output {
    let mut c = storescu_command(calling, called, port, dirs);
    c.output().unwrap()
}

pub fn storescu_command(calling: &str, called: &str, port: u16, dirs: &[&Path]) -> Command {
    let mut c = Command::new("/usr/bin/storescu");
    c.env("TCP_NODELAY", "1")
        .args([
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            "+sd",
            "+r",
            "127.0.0.1",
        ])
        .arg(port.to_string());
    for d in dirs {
        c.arg(d);
    }
    c
}
