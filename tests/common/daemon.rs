//! Fixtures of the daemon tests: `serve` with a generated configuration ([`Daemon`]), phantom series
//! and datasets, a minimal raw DICOM client on dicom-ul's blocking API, and a scriptable fake SCP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use ct_harmonizer::dicom::dimse;
use ct_harmonizer::dicom::header::CT_IMAGE_STORAGE;
use ct_harmonizer::dicom::write::write_part10;
use ct_harmonizer::samples::{phantom_slice, write_phantom_series, SeriesSpec};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Our AE title in every generated configuration.
pub const AE: &str = "CTHARMONIZER";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const POLL: Duration = Duration::from_millis(100);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A small axial phantom series (24×24 by default in these tests).
pub fn spec(seed: &str, size: usize, slices: usize) -> SeriesSpec {
    SeriesSpec::axial(seed, size, size, slices, [2.0, 0.8, 0.8])
}

/// Writes `spec` into `dir`; returns the files in slice order (z = 0, 1, ...).
pub fn write(spec: &SeriesSpec, dir: &Path) -> Vec<PathBuf> {
    write_phantom_series(spec, dir, 20.0).unwrap()
}

/// Slice `z`'s dataset.
pub fn dataset(spec: &SeriesSpec, z: usize) -> InMemDicomObject {
    spec.dataset(z, &phantom_slice(z, spec.rows, spec.columns, 20.0, 5))
}

/// Writes one slice with `edit` applied to its dataset.
pub fn write_edited(
    spec: &SeriesSpec,
    z: usize,
    path: &Path,
    edit: impl FnOnce(&mut InMemDicomObject),
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut o = dataset(spec, z);
    edit(&mut o);
    write_part10(o, path).unwrap();
}

pub fn put_ui(o: &mut InMemDicomObject, tag: dicom_core::Tag, v: &str) {
    o.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
}

/// One `[[array]]` entry of a configuration (e.g. a destination or a rule), as TOML text to append
/// to a configuration's tail.
pub fn entry(array: &str, fields: &[(&str, toml::Value)]) -> String {
    let item: toml::Table = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut t = toml::Table::new();
    t.insert(
        array.into(),
        toml::Value::Array(vec![toml::Value::Table(item)]),
    );
    toml::to_string(&t).unwrap() + "\n"
}

/// A TOML array of strings.
pub fn strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| toml::Value::from(*s)).collect())
}

/// The fields of a DICOM destination on 127.0.0.1.
pub fn scp_dest_fields(name: &str, ae: &str, port: u16) -> Vec<(&'static str, toml::Value)> {
    vec![
        ("name", name.into()),
        ("kind", "scp".into()),
        ("ae_title", ae.into()),
        ("host", "127.0.0.1".into()),
        ("port", i64::from(port).into()),
    ]
}

pub fn scp_dest(name: &str, ae: &str, port: u16) -> String {
    entry("destinations", &scp_dest_fields(name, ae, port))
}

pub fn rule(name: &str, plan: &str, forward_original: bool, destinations: &[&str]) -> String {
    entry(
        "rules",
        &[
            ("name", name.into()),
            ("plan", plan.into()),
            ("models", strings(&["gaussian-soft-baseline"])),
            ("forward_original", forward_original.into()),
            ("destinations", strings(destinations)),
        ],
    )
}

/// `ct-harmonizer serve` with a generated configuration, its state in `<dir>/state`.
pub struct Daemon {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub http: u16,
    pub proc: Option<Peer>,
    pub starts: usize,
}

impl Daemon {
    /// `overrides`: ("section.key", "TOML value") on top of the test defaults; `tail`: destinations
    /// and rules.
    pub fn new(dir: &Path, overrides: &[(&str, &str)], tail: &str) -> Daemon {
        let d = Daemon {
            dir: dir.to_owned(),
            state: dir.join("state"),
            config: dir.join("ct-harmonizer.toml"),
            port: free_port(),
            http: free_port(),
            proc: None,
            starts: 0,
        };
        d.write_config(overrides, tail);
        d
    }

    /// The test defaults, then `overrides` ("section.key" or "section.sub.key", a TOML value),
    /// then `tail` (TOML: destinations and rules), serialized as one TOML document.
    pub fn write_config(&self, overrides: &[(&str, &str)], tail: &str) {
        let mut config: toml::Table = toml::toml! {
            [runtime]
            device = "cpu"
            intra_threads = 1

            [state]
            min_free_mib = 0

            [server]
            ae_title = "placeholder"
            read_timeout_seconds = 10
            write_timeout_seconds = 10

            [series]
            quiet_seconds = 1

            [forward]
            max_attempts = 30
            initial_backoff_seconds = 1
            max_backoff_seconds = 2
            timeout_seconds = 5

            [http]
            listen = "placeholder"
        };
        let mut set = |path: &str, value: toml::Value| {
            let keys: Vec<&str> = path.split('.').collect();
            let (last, sections) = keys.split_last().unwrap();
            let mut table = &mut config;
            for k in sections {
                table = table
                    .entry(k.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .unwrap_or_else(|| panic!("{path}: {k} is not a table"));
            }
            table.insert(last.to_string(), value);
        };
        set("state.dir", self.state.display().to_string().into());
        set("server.ae_title", AE.into());
        set("server.listen", format!("127.0.0.1:{}", self.port).into());
        set("http.listen", format!("127.0.0.1:{}", self.http).into());
        for (k, v) in overrides {
            let value: toml::Table = toml::from_str(&format!("v = {v}"))
                .unwrap_or_else(|e| panic!("override {k} = {v}: {e}"));
            set(k, value["v"].clone());
        }
        let tail: toml::Table = toml::from_str(tail).unwrap_or_else(|e| panic!("{e}\n{tail}"));
        for (k, v) in tail {
            match (config.get_mut(&k), v) {
                (Some(toml::Value::Table(section)), toml::Value::Table(more)) => {
                    section.extend(more)
                }
                (Some(toml::Value::Array(items)), toml::Value::Array(more)) => items.extend(more),
                (_, v) => {
                    config.insert(k, v);
                }
            }
        }
        std::fs::write(&self.config, toml::to_string(&config).unwrap()).unwrap();
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&self.config)
            .env("CT_HARMONIZER__MODELS__DIR", repo().join("models"))
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        c
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("serve-{}.log", self.starts))
    }

    /// Starts `serve` and waits until it is listening (its ready log line and `/healthz`). The SCP
    /// port is not probed: a bare TCP connect would count as a rejected association.
    pub fn start(&mut self) {
        assert!(self.proc.is_none());
        self.starts += 1;
        let mut c = self.command();
        c.arg("serve");
        let mut p = Peer::spawn("ct-harmonizer serve", c, &self.log_path());
        let up = wait_until(secs(60), Duration::from_millis(25), || {
            p.log_text().contains("daemon_ready")
                && http_get(self.http, "/healthz").is_ok_and(|(s, _)| s == 200)
                || !p.alive()
        });
        assert!(up && p.alive(), "serve did not start:\n{}", p.log_text());
        self.proc = Some(p);
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn peer(&mut self) -> &mut Peer {
        self.proc.as_mut().unwrap()
    }

    /// Every log line of every start so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("serve-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `/metrics` as name -> value (counters carry their `_total` suffix).
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = http_get(self.http, "/metrics").unwrap();
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect()
    }

    /// One metric by its short name (`instances_received`, `outbox_jobs`, ...).
    pub fn metric(&self, name: &str) -> f64 {
        let m = self.metrics();
        let full = format!("ct_harmonizer_{name}");
        m.get(&format!("{full}_total"))
            .or_else(|| m.get(&full))
            .copied()
            .unwrap_or_else(|| panic!("no metric {full} in {m:?}"))
    }

    /// Files in the spool, without the empty files a running daemon keeps ready in `.tmp/`
    /// (`ready.*`: no instance yet; one holding bytes is listed).
    pub fn spool_files(&self) -> Vec<PathBuf> {
        let tmp = self.state.join("spool/.tmp");
        files(&self.state.join("spool"))
            .into_iter()
            .filter(|p| {
                !(p.parent() == Some(tmp.as_path())
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("ready."))
                    && p.metadata().is_ok_and(|m| m.len() == 0))
            })
            .collect()
    }

    pub fn outbox_files(&self) -> Vec<PathBuf> {
        files(&self.state.join("outbox"))
    }

    pub fn dead_files(&self) -> Vec<PathBuf> {
        files(&self.state.join("dead-letter"))
    }

    /// Nothing left to do: spool, outbox and derived folders empty.
    pub fn idle(&self) -> bool {
        self.spool_files().is_empty()
            && self.outbox_files().is_empty()
            && files(&self.state.join("derived")).is_empty()
    }

    pub fn context(&self) -> String {
        format!(
            "state: {:#?}\n--- serve log\n{}",
            files(&self.state),
            self.logs()
        )
    }
}

pub fn out_text(o: &std::process::Output) -> String {
    text(o)
}

/// Files DCMTK's storescp wrote into `dir`, as (SeriesInstanceUID, SOPInstanceUID, description).
pub fn received(dir: &Path) -> Vec<(String, String, String)> {
    files(dir)
        .iter()
        .filter_map(|p| dicom_object::open_file(p).ok())
        .map(|o| {
            (
                tag_str(&o, tags::SERIES_INSTANCE_UID),
                tag_str(&o, tags::SOP_INSTANCE_UID),
                tag_str(&o, tags::SERIES_DESCRIPTION),
            )
        })
        .collect()
}

pub fn count_files(dir: &Path) -> usize {
    files(dir).len()
}

// ---------------------------------------------------------------------------------------------
// A minimal DICOM client and a fake SCP on dicom-ul's blocking API (std TcpStream, no runtime).

/// Opens an association proposing CT Image Storage in Explicit VR Little Endian.
pub fn raw_associate(
    port: u16,
) -> dicom_ul::association::client::ClientAssociation<std::net::TcpStream> {
    let mut a = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("RAWCLIENT")
        .called_ae_title(AE)
        .with_presentation_context(CT_IMAGE_STORAGE, vec![EXPLICIT_LE])
        .read_timeout(secs(10))
        .establish(("127.0.0.1", port))
        .unwrap();
    a.inner_stream().set_nodelay(true).unwrap();
    a
}

/// Sends one C-STORE-RQ with `data` as the dataset; returns the response status.
pub fn raw_store(
    a: &mut dicom_ul::association::client::ClientAssociation<std::net::TcpStream>,
    message_id: u16,
    sop_instance: &str,
    data: Vec<u8>,
) -> u16 {
    let pc = a.presentation_contexts()[0].id;
    let cmd = dimse::store_rq(message_id, CT_IMAGE_STORAGE, sop_instance).unwrap();
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    })
    .unwrap();
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Data,
            is_last: true,
            data,
        }],
    })
    .unwrap();
    let mut buf = Vec::new();
    loop {
        match a.receive().unwrap() {
            Pdu::PData { data } => {
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        buf.extend_from_slice(&v.data);
                        if v.is_last {
                            let c = dimse::decode(&buf).unwrap();
                            assert_eq!(c.field, dimse::C_STORE_RSP);
                            assert_eq!(c.responded_id, message_id);
                            return c.status;
                        }
                    }
                }
            }
            other => panic!("unexpected PDU {other:?}"),
        }
    }
}

/// Slice `z` as dataset bytes in Explicit VR Little Endian (what goes into the P-DATA).
pub fn dataset_bytes(spec: &SeriesSpec, z: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    dataset(spec, z)
        .write_dataset_with_ts(
            &mut buf,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
    buf
}

/// A C-STORE SCP in the test that answers `0xA700` while `fail` is set, success otherwise.
pub struct FakeScp {
    pub port: u16,
    pub fail: Arc<AtomicBool>,
    pub stored: Arc<Mutex<BTreeSet<String>>>,
    pub refused: Arc<AtomicUsize>,
}

impl FakeScp {
    pub fn start(fail: bool) -> FakeScp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = FakeScp {
            port,
            fail: Arc::new(AtomicBool::new(fail)),
            stored: Arc::default(),
            refused: Arc::default(),
        };
        let (fail, stored, refused) = (s.fail.clone(), s.stored.clone(), s.refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let (fail, stored, refused) = (fail.clone(), stored.clone(), refused.clone());
                std::thread::spawn(move || {
                    let _ = Self::association(stream, &fail, &stored, &refused);
                });
            }
        });
        s
    }

    pub fn association(
        stream: std::net::TcpStream,
        fail: &AtomicBool,
        stored: &Mutex<BTreeSet<String>>,
        refused: &AtomicUsize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut a = dicom_ul::ServerAssociationOptions::new()
            .accept_any()
            .ae_title("FAKE")
            .with_abstract_syntax(CT_IMAGE_STORAGE)
            .with_transfer_syntax(EXPLICIT_LE)
            .with_transfer_syntax(IMPLICIT_LE)
            .read_timeout(secs(10))
            .establish(stream)?;
        let mut command = Vec::new();
        let mut pending: Option<(dimse::Command, u8)> = None;
        loop {
            let values = match a.receive()? {
                Pdu::PData { data } => data,
                Pdu::ReleaseRQ => {
                    a.send(&Pdu::ReleaseRP)?;
                    return Ok(());
                }
                _ => return Ok(()),
            };
            for v in values {
                match v.value_type {
                    PDataValueType::Command => {
                        command.extend_from_slice(&v.data);
                        if v.is_last {
                            let c = dimse::decode(&command)?;
                            command.clear();
                            pending = Some((c, v.presentation_context_id));
                        }
                    }
                    PDataValueType::Data => {
                        if !v.is_last {
                            continue;
                        }
                        let Some((c, pc)) = pending.take() else {
                            return Ok(());
                        };
                        let status = if fail.load(Ordering::SeqCst) {
                            refused.fetch_add(1, Ordering::SeqCst);
                            dimse::OUT_OF_RESOURCES
                        } else {
                            stored.lock().unwrap().insert(c.sop_instance.clone());
                            dimse::SUCCESS
                        };
                        let rsp = dimse::response(
                            dimse::C_STORE_RSP,
                            c.message_id,
                            &c.sop_class,
                            &c.sop_instance,
                            status,
                            if status == dimse::SUCCESS {
                                ""
                            } else {
                                "test refuses"
                            },
                        )?;
                        a.send(&Pdu::PData {
                            data: vec![PDataValue {
                                presentation_context_id: pc,
                                value_type: PDataValueType::Command,
                                is_last: true,
                                data: rsp,
                            }],
                        })?;
                    }
                }
            }
        }
    }
}

/// Orthanc instances of one series as SOPInstanceUIDs.
pub fn orthanc_sop_uids(orthanc: &Orthanc, series_id: &str) -> BTreeSet<String> {
    orthanc
        .get_json(&format!("/series/{series_id}/instances"))
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| json_str(&i["MainDicomTags"]["SOPInstanceUID"]))
                .collect()
        })
        .unwrap_or_default()
}

/// A scriptable C-STORE SCP (liveness tests): waits `delay` before each response (a slow but
/// healthy destination), answers 0xC000 to the one SOP Instance UID in `refuse`, and counts every
/// instance it receives by SOP Instance UID (`received`, refused ones included).
pub struct ScriptedScp {
    pub port: u16,
    pub received: Arc<Mutex<HashMap<String, usize>>>,
    pub stored: Arc<Mutex<BTreeSet<String>>>,
}

/// How a [`ScriptedScp`] answers a complete C-STORE (after its delay and status).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reply {
    /// A C-STORE-RSP as the standard has it.
    Status,
    /// A C-STORE-RSP to another message ID.
    WrongMessageId,
    /// A C-STORE-RSP naming another SOP instance.
    WrongInstance,
    /// Command fragments that never set the last bit (64 MiB of them, or until the peer leaves).
    EndlessCommand,
}

impl ScriptedScp {
    pub fn start(delay: Duration, refuse: Option<String>) -> ScriptedScp {
        Self::start_replying(delay, refuse, Reply::Status)
    }

    pub fn start_replying(delay: Duration, refuse: Option<String>, reply: Reply) -> ScriptedScp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = ScriptedScp {
            port: listener.local_addr().unwrap().port(),
            received: Arc::default(),
            stored: Arc::default(),
        };
        let (received, stored) = (s.received.clone(), s.stored.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let (received, stored, refuse) = (received.clone(), stored.clone(), refuse.clone());
                std::thread::spawn(move || {
                    let answer = |c: &dimse::Command| {
                        std::thread::sleep(delay);
                        *received
                            .lock()
                            .unwrap()
                            .entry(c.sop_instance.clone())
                            .or_insert(0) += 1;
                        if refuse.as_deref() == Some(c.sop_instance.as_str()) {
                            dimse::CANNOT_UNDERSTAND
                        } else {
                            stored.lock().unwrap().insert(c.sop_instance.clone());
                            dimse::SUCCESS
                        }
                    };
                    let _ = scripted_association(stream, answer, reply);
                });
            }
        });
        s
    }
}

/// One association of [`ScriptedScp`]: `answer` gives each C-STORE's status.
fn scripted_association(
    stream: std::net::TcpStream,
    answer: impl Fn(&dimse::Command) -> u16,
    reply: Reply,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut a = dicom_ul::ServerAssociationOptions::new()
        .accept_any()
        .ae_title("SCRIPTED")
        .with_abstract_syntax(CT_IMAGE_STORAGE)
        .with_transfer_syntax(EXPLICIT_LE)
        .with_transfer_syntax(IMPLICIT_LE)
        .read_timeout(secs(30))
        .establish(stream)?;
    let (mut command, mut pending) = (Vec::new(), None);
    loop {
        let values = match a.receive()? {
            Pdu::PData { data } => data,
            Pdu::ReleaseRQ => return Ok(a.send(&Pdu::ReleaseRP)?),
            _ => return Ok(()),
        };
        for v in values {
            if v.value_type == PDataValueType::Command {
                command.extend_from_slice(&v.data);
                if v.is_last {
                    pending = Some((dimse::decode(&command)?, v.presentation_context_id));
                    command.clear();
                }
                continue;
            }
            if !v.is_last {
                continue;
            }
            let Some((c, pc)) = pending.take() else {
                continue;
            };
            let status = answer(&c);
            let comment = if status == dimse::SUCCESS {
                ""
            } else {
                "scripted refusal"
            };
            if reply == Reply::EndlessCommand {
                for _ in 0..4096 {
                    a.send(&Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: pc,
                            value_type: PDataValueType::Command,
                            is_last: false,
                            data: vec![0x55; 16 * 1024],
                        }],
                    })?;
                }
                return Ok(());
            }
            let (message_id, sop_instance) = match reply {
                Reply::WrongMessageId => (c.message_id.wrapping_add(1), c.sop_instance.clone()),
                Reply::WrongInstance => (c.message_id, format!("{}.9", c.sop_instance)),
                _ => (c.message_id, c.sop_instance.clone()),
            };
            let rsp = dimse::response(
                dimse::C_STORE_RSP,
                message_id,
                &c.sop_class,
                &sop_instance,
                status,
                comment,
            )?;
            a.send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: rsp,
                }],
            })?;
        }
    }
}

/// Peak resident memory of `pid` in bytes (VmHWM).
pub fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// `depth` nested undefined-length sequences (ReferencedSeriesSequence), 36 bytes per level.
pub fn nested_sequences(depth: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..depth {
        b.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        b.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..depth {
        b.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    b
}
