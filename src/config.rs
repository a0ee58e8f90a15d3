//! Settings: the documented defaults in `config/ct-harmonizer.toml` (compiled in), overridden by a site
//! file and by `CT_HARMONIZER__SECTION__KEY` environment variables. Unknown keys are errors.
//!
//! One file above ~600 lines because it is one cohesive thing: the settings schema, its defaults
//! and the validation across sections (its tests are a quarter of it).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The documented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/ct-harmonizer.toml");

/// Errors loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration{}: {source}", .path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Load {
        path: Option<PathBuf>,
        source: config::ConfigError,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("configuration file {}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },
}

/// Largest configuration file read (the documented one is under 30 KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of a configuration file: a regular file (followed through links) of at most
/// [`MAX_CONFIG_BYTES`]. Opened without blocking, so a FIFO put in its place (or any special file)
/// is named as such instead of stalling the start or a reload.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let err = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let file = crate::util::fs::open_regular(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    let too_big = |size: u64| err(format!("{size} bytes, more than {MAX_CONFIG_BYTES}"));
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub runtime: RuntimeSettings,
    pub models: ModelSettings,
    pub volume: VolumeSettings,
    pub translate: TranslateSettings,
    pub derive: DeriveSettings,
    pub state: StateSettings,
    pub server: ServerSettings,
    pub watch: WatchSettings,
    pub series: SeriesSettings,
    pub forward: ForwardSettings,
    pub http: HttpSettings,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    pub dir: PathBuf,
    pub min_free_mib: u64,
    /// Where failed series go; empty: `<dir>/quarantine`. May be on another file system.
    pub quarantine_dir: String,
    /// Processing waits (and retries) while the state file system has less free space than this.
    pub processing_min_free_mib: u64,
}

impl StateSettings {
    /// The quarantine folder (`quarantine_dir`, or `<dir>/quarantine` when it is empty).
    pub fn quarantine(&self) -> PathBuf {
        if self.quarantine_dir.trim().is_empty() {
            self.dir.join("quarantine")
        } else {
            PathBuf::from(self.quarantine_dir.trim())
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub ae_title: String,
    pub listen: String,
    pub max_associations: usize,
    pub max_pdu_length: u32,
    pub read_timeout_seconds: u64,
    pub write_timeout_seconds: u64,
    pub allowed_callers: Vec<String>,
    pub passthrough_sop_classes: Vec<String>,
    // -- hardening (issue 9): untrusted input and association slots --
    pub max_dataset_mib: u64,
    pub max_nesting_depth: usize,
    pub max_dataset_elements: u64,
    pub artim_seconds: u64,
    pub max_handshakes: usize,
    pub slot_wait_seconds: u64,
    pub association_idle_seconds: u64,
    /// DICOM TLS on the SCP (issue 9).
    pub tls: ServerTls,
}

/// `[server.tls]`: DICOM TLS on the SCP (see `crate::tls` for the profile).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub enabled: bool,
    /// PEM certificate chain of the SCP.
    pub cert: String,
    /// PEM private key (mode 0600, owned by the service user).
    pub key: String,
    /// PEM CA certificate(s) that sign client certificates.
    pub ca: String,
    pub require_client_cert: bool,
    /// Client certificate subjects (RFC 4514) admitted; empty: any certificate signed by `ca`.
    pub allowed_subjects: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSettings {
    pub dir: String,
    pub stable_seconds: u64,
    /// Largest file taken from the watched folder, in MiB (larger ones are quarantined unread).
    pub max_file_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LateInstance {
    Reprocess,
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSettings {
    pub quiet_seconds: u64,
    pub late_instance: LateInstance,
    /// The last delivered version of a series is kept this long for late instances.
    pub keep_delivered_seconds: u64,
    /// A series whose processing the daemon died in this many times is quarantined at start-up.
    pub max_crashes: u32,
    /// Back-off of a series whose processing failed for a transient reason (disk full, I/O).
    pub retry_initial_seconds: u64,
    pub retry_max_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSettings {
    pub max_attempts: u32,
    pub initial_backoff_seconds: u64,
    pub max_backoff_seconds: u64,
    pub calling_ae_title: String,
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    /// A stage silent for longer than this is stalled (`/healthz` 503 and no systemd watchdog ping).
    pub stall_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Scp,
    Folder,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub name: String,
    pub kind: DestinationKind,
    #[serde(default)]
    pub ae_title: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub path: String,
    // -- DICOM TLS (issue 9), scp only --
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificate(s) the destination's certificate must chain to (required with tls).
    #[serde(default)]
    pub ca: String,
    /// PEM client certificate and key we present (both or neither).
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub key: String,
    /// Name checked against the destination's certificate; empty: `host`.
    #[serde(default)]
    pub server_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    Harmonize,
    Pass,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub modality: Vec<String>,
    #[serde(default)]
    pub convolution_kernel: Vec<String>,
    #[serde(default)]
    pub manufacturer: Vec<String>,
    #[serde(default)]
    pub station_name: Vec<String>,
    #[serde(default)]
    pub series_description: Vec<String>,
    #[serde(default)]
    pub slice_thickness_mm: Option<[f64; 2]>,
    #[serde(default)]
    pub calling_ae: Vec<String>,
    #[serde(default)]
    pub called_ae: Vec<String>,
    pub plan: PlanKind,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub forward_original: bool,
    #[serde(default)]
    pub destinations: Vec<String>,
}

impl Rule {
    /// True when the rule has no conditions (it matches every series).
    pub fn is_catch_all(&self) -> bool {
        self.modality.is_empty()
            && self.convolution_kernel.is_empty()
            && self.manufacturer.is_empty()
            && self.station_name.is_empty()
            && self.series_description.is_empty()
            && self.slice_thickness_mm.is_none()
            && self.calling_ae.is_empty()
            && self.called_ae.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    pub onnxruntime_library: String,
    pub device: Device,
    pub intra_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub dir: PathBuf,
    pub default: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    pub spacing_tolerance: f64,
    pub max_tilt_degrees: f64,
    pub max_matrix: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateSettings {
    pub tile: [usize; 3],
    pub slabs_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveSettings {
    pub series_number_offset: i32,
    pub series_description_suffix: String,
    pub manufacturer: String,
    pub institution: String,
}

impl Settings {
    /// Loads defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            let text = read_config_file(path)?;
            b = b.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CT_HARMONIZER__"))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("CT_HARMONIZER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let load_err = |source| ConfigError::Load {
            path: file.map(Path::to_owned),
            source,
        };
        let settings: Settings = b
            .build()
            .map_err(load_err)?
            .try_deserialize()
            .map_err(load_err)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.volume;
        if !(v.spacing_tolerance > 0.0 && v.spacing_tolerance < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "volume.spacing_tolerance = {} must be in (0, 1)",
                v.spacing_tolerance
            )));
        }
        if v.max_matrix < 16 {
            return Err(ConfigError::Invalid(format!(
                "volume.max_matrix = {} must be at least 16",
                v.max_matrix
            )));
        }
        if !(0.0..90.0).contains(&v.max_tilt_degrees) {
            return Err(ConfigError::Invalid(format!(
                "volume.max_tilt_degrees = {} must be in [0, 90)",
                v.max_tilt_degrees
            )));
        }
        if self.translate.slabs_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "translate.slabs_in_flight must be at least 1".into(),
            ));
        }
        if self.models.default.trim().is_empty() {
            return Err(ConfigError::Invalid("models.default is empty".into()));
        }
        self.validate_daemon()
    }

    fn validate_daemon(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let ae = &self.server.ae_title;
        if ae.trim().is_empty() || ae.len() > 16 || ae.contains('\\') {
            return bad(format!(
                "server.ae_title {ae:?} must be 1 to 16 characters without backslash"
            ));
        }
        if self.server.max_associations == 0 {
            return bad("server.max_associations must be at least 1".into());
        }
        if self.server.max_pdu_length < 4096 {
            return bad("server.max_pdu_length must be at least 4096".into());
        }
        self.validate_server_limits()?;
        for c in &self.server.allowed_callers {
            if !c.contains('@') {
                return bad(format!(
                    "server.allowed_callers entry {c:?} is not AETITLE@address"
                ));
            }
        }
        if self.watch.stable_seconds == 0 {
            return bad("watch.stable_seconds = 0 must be at least 1".into());
        }
        if self.watch.max_file_mib == 0 {
            return bad("watch.max_file_mib = 0 must be at least 1".into());
        }
        if self.forward.max_attempts == 0 {
            return bad("forward.max_attempts must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.destinations {
            if !names.insert(d.name.as_str()) {
                return bad(format!("destination {:?} is defined twice", d.name));
            }
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!(
                    "destination name {:?} must be letters, digits, - or _",
                    d.name
                ));
            }
            match d.kind {
                DestinationKind::Scp
                    if d.ae_title.is_empty() || d.host.is_empty() || d.port == 0 =>
                {
                    return bad(format!(
                        "destination {:?}: an scp needs ae_title, host and port",
                        d.name
                    ));
                }
                DestinationKind::Folder if d.path.trim().is_empty() => {
                    return bad(format!("destination {:?}: a folder needs path", d.name));
                }
                _ => {}
            }
        }
        match self.rules.last() {
            Some(r) if r.is_catch_all() => {}
            _ => {
                return bad(
                    "the last [[rules]] entry must be a default rule without conditions".into(),
                )
            }
        }
        for r in &self.rules {
            for d in &r.destinations {
                if !names.contains(d.as_str()) {
                    return bad(format!("rule {:?} names unknown destination {d:?}", r.name));
                }
            }
            if r.plan == PlanKind::Harmonize && r.models.is_empty() {
                return bad(format!(
                    "rule {:?}: plan harmonize needs at least one model",
                    r.name
                ));
            }
        }
        Ok(())
    }

    // ---- [server] hardening limits (issue 9): one block, owned by the SCP work. ----
    /// Bounds of the SCP's limits: a PDU at most [`MAX_PDU_LENGTH_LIMIT`], timeouts of at least one
    /// second, a data set between 1 MiB and 4 GiB, nesting between 1 and 256.
    fn validate_server_limits(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if s.max_pdu_length > MAX_PDU_LENGTH_LIMIT {
            return bad(format!(
                "server.max_pdu_length = {} exceeds the upper bound {MAX_PDU_LENGTH_LIMIT} (4 MiB)",
                s.max_pdu_length
            ));
        }
        for (key, v) in [
            ("read_timeout_seconds", s.read_timeout_seconds),
            ("write_timeout_seconds", s.write_timeout_seconds),
            ("artim_seconds", s.artim_seconds),
            ("association_idle_seconds", s.association_idle_seconds),
        ] {
            if v == 0 {
                return bad(format!(
                    "server.{key} = 0: must be at least 1 (0 would mean no timeout)"
                ));
            }
        }
        if !(1..=4096).contains(&s.max_dataset_mib) {
            return bad(format!(
                "server.max_dataset_mib = {} must be in [1, 4096]",
                s.max_dataset_mib
            ));
        }
        if !(1..=256).contains(&s.max_nesting_depth) {
            return bad(format!(
                "server.max_nesting_depth = {} must be in [1, 256]",
                s.max_nesting_depth
            ));
        }
        if s.max_dataset_elements == 0 {
            return bad("server.max_dataset_elements must be at least 1".into());
        }
        if s.max_handshakes == 0 {
            return bad("server.max_handshakes must be at least 1".into());
        }
        self.validate_tls()
    }
    // ---- end of [server] hardening limits ----

    // ---- DICOM TLS keys (issue 9): files are read by `tls::check` (check-config, start-up) ----
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let t = &self.server.tls;
        if t.enabled {
            if t.cert.trim().is_empty() || t.key.trim().is_empty() {
                return bad("server.tls.enabled needs server.tls.cert and server.tls.key".into());
            }
            if t.require_client_cert && t.ca.trim().is_empty() {
                return bad(
                    "server.tls.require_client_cert needs server.tls.ca (the CA of the client certificates)"
                        .into(),
                );
            }
        } else if !t.allowed_subjects.is_empty() {
            return bad("server.tls.allowed_subjects needs server.tls.enabled = true".into());
        }
        for dn in &t.allowed_subjects {
            if !crate::util::dn::is_dn(dn) {
                return bad(format!(
                    "server.tls.allowed_subjects entry {dn:?} is not a distinguished name like \"CN=ct1,O=Hospital\""
                ));
            }
        }
        for d in &self.destinations {
            let any = !(d.ca.is_empty()
                && d.cert.is_empty()
                && d.key.is_empty()
                && d.server_name.is_empty());
            if (d.tls || any) && d.kind != DestinationKind::Scp {
                return bad(format!(
                    "destination {:?}: tls, ca, cert, key and server_name are for kind = \"scp\"",
                    d.name
                ));
            }
            if !d.tls && any {
                return bad(format!(
                    "destination {:?}: ca, cert, key or server_name given without tls = true",
                    d.name
                ));
            }
            if d.tls && d.ca.trim().is_empty() {
                return bad(format!(
                    "destination {:?}: tls = true needs ca (the CA of its certificate)",
                    d.name
                ));
            }
            if d.cert.trim().is_empty() != d.key.trim().is_empty() {
                return bad(format!(
                    "destination {:?}: give both cert and key, or neither",
                    d.name
                ));
            }
        }
        Ok(())
    }
    // ---- end of DICOM TLS keys ----
}

/// Settings a running daemon only reads at start-up: a SIGHUP that changes one of them keeps the
/// running value (with a warning naming the key) while the rest of the new configuration applies.
pub fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut cmp = |key: &'static str, a: String, b: String| {
        if a != b {
            out.push((key, a, b));
        }
    };
    cmp(
        "state.dir",
        old.state.dir.display().to_string(),
        new.state.dir.display().to_string(),
    );
    cmp(
        "state.min_free_mib",
        old.state.min_free_mib.to_string(),
        new.state.min_free_mib.to_string(),
    );
    cmp(
        "server.listen",
        old.server.listen.clone(),
        new.server.listen.clone(),
    );
    cmp(
        "http.listen",
        old.http.listen.clone(),
        new.http.listen.clone(),
    );
    cmp("watch.dir", old.watch.dir.clone(), new.watch.dir.clone());
    cmp(
        "server.tls",
        format!("{:?}", old.server.tls),
        format!("{:?}", new.server.tls),
    );
    cmp(
        "watch.stable_seconds",
        old.watch.stable_seconds.to_string(),
        new.watch.stable_seconds.to_string(),
    );
    cmp(
        "watch.max_file_mib",
        old.watch.max_file_mib.to_string(),
        new.watch.max_file_mib.to_string(),
    );
    cmp(
        "series.quiet_seconds",
        old.series.quiet_seconds.to_string(),
        new.series.quiet_seconds.to_string(),
    );
    cmp(
        "series.keep_delivered_seconds",
        old.series.keep_delivered_seconds.to_string(),
        new.series.keep_delivered_seconds.to_string(),
    );
    cmp(
        "state.quarantine_dir",
        old.state.quarantine_dir.clone(),
        new.state.quarantine_dir.clone(),
    );
    cmp(
        "server.max_associations",
        old.server.max_associations.to_string(),
        new.server.max_associations.to_string(),
    );
    cmp(
        "server.max_handshakes",
        old.server.max_handshakes.to_string(),
        new.server.max_handshakes.to_string(),
    );
    cmp(
        "http.stall_seconds",
        old.http.stall_seconds.to_string(),
        new.http.stall_seconds.to_string(),
    );
    out
}

/// `new` with the start-up-only settings of `old` (see [`restart_only_changes`]).
pub fn keep_restart_only(old: &Settings, mut new: Settings) -> Settings {
    new.state.dir = old.state.dir.clone();
    new.state.min_free_mib = old.state.min_free_mib;
    new.server.listen = old.server.listen.clone();
    new.server.tls = old.server.tls.clone();
    new.http.listen = old.http.listen.clone();
    new.watch = old.watch.clone();
    new.series.quiet_seconds = old.series.quiet_seconds;
    new.series.keep_delivered_seconds = old.series.keep_delivered_seconds;
    new.state.quarantine_dir = old.state.quarantine_dir.clone();
    new.server.max_associations = old.server.max_associations;
    new.server.max_handshakes = old.server.max_handshakes;
    new.http.stall_seconds = old.http.stall_seconds;
    new
}

/// Upper bound of `server.max_pdu_length` (4 MiB): one PDU is buffered whole per association.
pub const MAX_PDU_LENGTH_LIMIT: u32 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_file_must_be_a_small_regular_text_file() {
        let dir = tempfile::tempdir().unwrap();
        let load = |p: &Path| {
            Settings::load_with_env(Some(p), Vec::new())
                .unwrap_err()
                .to_string()
        };
        // A FIFO in its place is named, not waited on (a read would block until a writer came).
        let fifo = dir.path().join("fifo.toml");
        crate::util::fs::test_support::make_fifo(&fifo);
        let e = load(&fifo);
        assert!(
            e.contains("fifo.toml") && e.contains("not a regular file"),
            "{e}"
        );
        let e = load(dir.path());
        assert!(e.contains("not a regular file"), "{e}");
        let missing = dir.path().join("missing.toml");
        let e = load(&missing);
        assert!(
            e.contains("missing.toml") && e.contains("No such file"),
            "{e}"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        let e = load(&big);
        assert!(
            e.contains("big.toml") && e.contains("bytes, more than"),
            "{e}"
        );
        let binary = dir.path().join("binary.toml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(load(&binary).contains("not UTF-8"), "{}", load(&binary));
        // A link to a good file is followed (the usual /etc layout).
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[series]\nquiet_seconds = 7\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let s = Settings::load_with_env(Some(&link), Vec::new()).unwrap();
        assert_eq!(s.series.quiet_seconds, 7);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.models.default, "revgan-kernel");
        assert_eq!(s.runtime.device, Device::Auto);
        assert_eq!(s.translate.tile, [0, 0, 0]);
    }

    #[test]
    fn env_overrides() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CT_HARMONIZER__RUNTIME__INTRA_THREADS", "3"),
                ("CT_HARMONIZER__DERIVE__SERIES_NUMBER_OFFSET", "77"),
            ]),
        )
        .unwrap();
        assert_eq!(s.runtime.intra_threads, 3);
        assert_eq!(s.derive.series_number_offset, 77);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[volume]\nspacing_tolerence = 0.2\n").unwrap();
        let e = Settings::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(e.to_string().contains("spacing_tolerence"), "{e}");
        let e = Settings::load_with_env(None, env(&[("CT_HARMONIZER__NOPE__X", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn server_limits_are_bounded() {
        for (k, v, word) in [
            (
                "CT_HARMONIZER__SERVER__MAX_PDU_LENGTH",
                "4294967295",
                "max_pdu_length",
            ),
            (
                "CT_HARMONIZER__SERVER__READ_TIMEOUT_SECONDS",
                "0",
                "read_timeout_seconds",
            ),
            ("CT_HARMONIZER__SERVER__ARTIM_SECONDS", "0", "artim_seconds"),
            (
                "CT_HARMONIZER__SERVER__MAX_NESTING_DEPTH",
                "0",
                "max_nesting_depth",
            ),
            (
                "CT_HARMONIZER__SERVER__MAX_DATASET_MIB",
                "0",
                "max_dataset_mib",
            ),
        ] {
            let e = Settings::load_with_env(None, env(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(word), "{k}: {e}");
        }
        let s = Settings::load_with_env(
            None,
            env(&[("CT_HARMONIZER__SERVER__MAX_PDU_LENGTH", "4194304")]),
        )
        .unwrap();
        assert_eq!(s.server.max_pdu_length, MAX_PDU_LENGTH_LIMIT);
    }

    #[test]
    fn invalid_values_are_errors() {
        let e = Settings::load_with_env(
            None,
            env(&[("CT_HARMONIZER__VOLUME__SPACING_TOLERANCE", "2")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spacing_tolerance"), "{e}");
        for (k, v, name) in [
            (
                "CT_HARMONIZER__WATCH__STABLE_SECONDS",
                "0",
                "watch.stable_seconds",
            ),
            (
                "CT_HARMONIZER__WATCH__MAX_FILE_MIB",
                "0",
                "watch.max_file_mib",
            ),
            (
                "CT_HARMONIZER__VOLUME__MAX_MATRIX",
                "8",
                "volume.max_matrix",
            ),
        ] {
            let e = Settings::load_with_env(None, env(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn restart_only_keys_are_named_and_kept() {
        let old = Settings::load_with_env(None, env(&[])).unwrap();
        let new = Settings::load_with_env(
            None,
            env(&[
                ("CT_HARMONIZER__STATE__DIR", "/elsewhere"),
                ("CT_HARMONIZER__SERVER__LISTEN", "127.0.0.1:1"),
                ("CT_HARMONIZER__FORWARD__MAX_ATTEMPTS", "3"),
            ]),
        )
        .unwrap();
        let keys: Vec<&str> = restart_only_changes(&old, &new)
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(keys, ["state.dir", "server.listen"]);
        let kept = keep_restart_only(&old, new);
        assert_eq!(kept.state.dir, old.state.dir);
        assert_eq!(kept.server.listen, old.server.listen);
        assert_eq!(kept.forward.max_attempts, 3);

        // Every key named as restart-only is also kept: after keeping, nothing differs.
        let changed = Settings::load_with_env(
            None,
            env(&[
                ("CT_HARMONIZER__STATE__DIR", "/elsewhere"),
                ("CT_HARMONIZER__STATE__MIN_FREE_MIB", "7"),
                ("CT_HARMONIZER__STATE__QUARANTINE_DIR", "/q"),
                ("CT_HARMONIZER__SERVER__LISTEN", "127.0.0.1:1"),
                ("CT_HARMONIZER__SERVER__MAX_ASSOCIATIONS", "3"),
                ("CT_HARMONIZER__SERVER__MAX_HANDSHAKES", "5"),
                ("CT_HARMONIZER__HTTP__LISTEN", "127.0.0.1:2"),
                ("CT_HARMONIZER__HTTP__STALL_SECONDS", "9"),
                ("CT_HARMONIZER__WATCH__STABLE_SECONDS", "11"),
                ("CT_HARMONIZER__SERIES__QUIET_SECONDS", "13"),
                ("CT_HARMONIZER__SERIES__KEEP_DELIVERED_SECONDS", "17"),
            ]),
        )
        .unwrap();
        assert_eq!(restart_only_changes(&old, &changed).len(), 11);
        assert!(restart_only_changes(&old, &keep_restart_only(&old, changed)).is_empty());
    }

    #[test]
    fn tls_keys_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let dest = "[[destinations]]\nname = \"pacs\"\nkind = \"scp\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\n";
        let rule = "[[rules]]\nname = \"d\"\nplan = \"drop\"\nmodels = []\ndestinations = []\n";
        for (text, word) in [
            ("[server.tls]\nenabled = true\n", "server.tls.cert"),
            (
                "[server.tls]\nenabled = true\ncert = \"c\"\nkey = \"k\"\n",
                "server.tls.ca",
            ),
            (
                "[server.tls]\nallowed_subjects = [\"CN=x\"]\n",
                "needs server.tls.enabled",
            ),
            (
                "[server.tls]\nenabled = true\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\nallowed_subjects = [\"ct1\"]\n",
                "not a distinguished name",
            ),
            (&format!("{dest}tls = true\n"), "needs ca"),
            (&format!("{dest}ca = \"a\"\n"), "without tls = true"),
            (
                &format!("{dest}tls = true\nca = \"a\"\ncert = \"c\"\n"),
                "both cert and key",
            ),
        ] {
            std::fs::write(&path, format!("{text}\n{rule}")).unwrap();
            let e = Settings::load_with_env(Some(&path), Vec::new()).unwrap_err();
            assert!(e.to_string().contains(word), "{text}: {e}");
        }
        std::fs::write(
            &path,
            format!("{dest}tls = true\nca = \"a\"\nserver_name = \"pacs.example\"\n\n{rule}"),
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), Vec::new()).unwrap();
        assert!(s.destinations[0].tls && !s.server.tls.enabled);
        assert!(s.server.tls.require_client_cert);
    }
}
