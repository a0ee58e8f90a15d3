//! The model contract (`models/<name>/model.toml`, DESIGN §3): everything the daemon needs to run a
//! translator, written by `ct-train export` and read here. The daemon never guesses.
//!
//! # Single-stage and multi-stage models
//!
//! A single-stage model (every model before MEGAN) is one ONNX file, `onnx_file`, hashed by
//! `onnx_sha256`, whose one input channel is the source in model units.
//!
//! A **multi-stage** model (MEGAN, seed 001; `shared/MODELS.md` §2) adds a `[[stages]]` list, run in
//! order, each naming its ONNX file and hash, the grid it runs on (`downsample`: series voxels per
//! stage voxel along z, y, x) and its conditioning inputs (the input channels, in order):
//! `source` (the series in model units, block-averaged onto the stage's grid), `edges` (the
//! gradient-magnitude edge map of that source, [`super::stages::edge_map`]) and `previous` (the
//! previous stage's output, nearest-neighbour up-sampled onto this stage's grid). Version 1 of the
//! form has exactly two stages: a low-resolution stage that runs over the whole (downsampled)
//! volume held in memory, then the full-resolution stage (`downsample = [1, 1, 1]`) that runs in
//! slabs and tiles like a single-stage model. The top-level `onnx_file`, `onnx_sha256` and
//! `tensors` describe that last stage (so a reader that knows only the single-stage form still
//! sees the model's output grid); `ModelDir::open` checks every stage file's hash.
//!
//! ```toml
//! [[stages]]
//! name = "lr"
//! onnx_file = "lr.onnx"
//! onnx_sha256 = "…"
//! downsample = [4, 4, 4]
//! inputs = ["source"]
//! patch = [32, 48, 48]
//! valid_margin = [12, 12, 12]
//!
//! [[stages]]
//! name = "hr"
//! onnx_file = "hr.onnx"          # = the top-level onnx_file
//! onnx_sha256 = "…"              # = the top-level onnx_sha256
//! downsample = [1, 1, 1]
//! inputs = ["source", "edges", "previous"]
//! patch = [48, 160, 160]         # = tensors.patch
//! valid_margin = [13, 13, 13]    # = tensors.valid_margin
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors reading or checking a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model manifest {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid model manifest {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot read model file {path}: {source}")]
    ReadOnnx {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} of stage {stage} is missing: {source}")]
    MissingStage {
        path: PathBuf,
        stage: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} has sha256 {actual} but its manifest says {expected}: the file was changed or corrupted")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Reconstruction-kernel translation (sharp to soft); output grid = input grid.
    Kernel,
    /// Super-resolution; output grid = input grid times `scale`.
    Superres,
}

/// Where a model's weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Trained by `ct-train`; its evaluation figures are in `[[evaluation]]`.
    Trained,
    /// A classical, closed-form operator (no training) exported in the same format.
    Baseline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name; also the directory name under `models/`.
    pub name: String,
    /// Model version (semver); part of the output UIDs and of the device identity in derived series.
    pub version: String,
    pub kind: ModelKind,
    pub task: Task,
    /// One sentence for humans and for DerivationDescription.
    pub description: String,
    /// Free-text remarks for people choosing a model (what it is measured to be, its inference
    /// cost, a cheaper equivalent variant); the daemon does not read it. Optional: manifests
    /// written before it load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// ONNX file name, relative to the manifest.
    pub onnx_file: String,
    /// Lower-case hex SHA-256 of the ONNX file.
    pub onnx_sha256: String,
    pub provenance: Provenance,
    pub tensors: Tensors,
    pub intensity: Intensity,
    pub kernels: Kernels,
    /// Figures reached on the evaluation set, one row per (data set, method).
    #[serde(default)]
    pub evaluation: Vec<EvaluationRow>,
    /// The stages of a multi-stage model, in the order they run (module docs); empty for a
    /// single-stage model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
}

/// Number of stages of the multi-stage form this version runs (module docs).
pub const STAGES_SUPPORTED: usize = 2;

/// One input channel of a stage (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageInput {
    /// The series in model units, block-averaged onto the stage's grid.
    Source,
    /// The gradient-magnitude edge map of `source` ([`super::stages::edge_map`]).
    Edges,
    /// The previous stage's output, nearest-neighbour up-sampled onto this stage's grid.
    Previous,
}

/// One stage of a multi-stage model (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Stage name, for messages ("lr", "hr").
    pub name: String,
    /// ONNX file name, relative to the manifest.
    pub onnx_file: String,
    /// Lower-case hex SHA-256 of the ONNX file.
    pub onnx_sha256: String,
    /// Series voxels per stage voxel along (z, y, x): the stage runs on the series block-averaged
    /// by these factors; `[1, 1, 1]` for the last stage.
    pub downsample: [usize; 3],
    /// Input channels, in order.
    pub inputs: Vec<StageInput>,
    /// Tile size (z, y, x) on the stage's grid.
    pub patch: [usize; 3],
    /// Receptive-field radius (z, y, x) on the stage's grid: how much of each tile's output the
    /// tiler discards at interior tile faces.
    pub valid_margin: [usize; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Program and version that wrote the model.
    pub program: String,
    /// Training data, or for a baseline how its parameters were derived.
    pub data: String,
    /// Optimizer steps (0 for a baseline).
    pub steps: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tensors {
    pub input: String,
    pub output: String,
    /// Always "NCDHW".
    pub layout: String,
    /// Always "float32".
    pub dtype: String,
    /// Input tile size (z, y, x) the model was trained or designed for.
    pub patch: [usize; 3],
    /// True when D, H and W are dynamic axes (any tile size is accepted).
    pub dynamic_spatial: bool,
    /// Output size / input size per axis (z, y, x); 1.0 for kernel models.
    pub scale: [f32; 3],
    /// Input voxels at each tile face whose output is influenced by the tile border (receptive-field
    /// radius). The tiler discards that much of each tile's output except at the volume's own faces.
    pub valid_margin: [usize; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intensity {
    /// HU window mapped linearly onto [-1, 1] (seed 000: [-1150, 350]).
    pub hu_window: [f32; 2],
    /// Clip input to the window before the model (trained tanh models); a linear baseline need not.
    pub clip_input: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernels {
    /// ConvolutionKernel values the model accepts (case-insensitive); empty = any.
    #[serde(default)]
    pub accepts: Vec<String>,
    /// ConvolutionKernel written into the derived series.
    pub produces: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRow {
    pub dataset: String,
    pub method: String,
    pub mae: f64,
    pub psnr: f64,
    pub ssim: f64,
    // Physics figures of `ct-train eval` (issue 11); optional, so manifests written before them
    // still load and rows without them are written as before.
    /// Emphysema index error (points, output − target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ei_error: Option<f64>,
    /// Perc15 error (HU, output − target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perc15_error: Option<f64>,
    /// Noise std ratio (output / target) in soft-tissue ROIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_ratio_soft: Option<f64>,
    /// Noise std ratio (output / target) in lung ROIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_ratio_lung: Option<f64>,
    /// NPS peak-frequency ratio (output / target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nps_peak_ratio: Option<f64>,
    /// Relative L2 distance of the output's NPS to the target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nps_distance: Option<f64>,
    /// MTF50 ratio (output / target) on the rod phantom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtf50_ratio: Option<f64>,
    /// Share of texture features with CCC >= 0.85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccc_share: Option<f64>,
    /// Share of texture features with CCC >= 0.85 over lung ROIs holding structure (vessels,
    /// airways, nodules), the analogue of the published reproducibility over lesions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccc_share_structure: Option<f64>,
    /// Fréchet distance to the target on our own discriminator's features (`ct-train eval
    /// --fd-features`; issue 12; not FID: no Inception network offline). Optional, like the above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<f64>,
}

impl Manifest {
    /// Parses a manifest from TOML text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        m.validate(path)?;
        Ok(m)
    }

    /// Serializes to TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |reason: String| ManifestError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if self.tensors.layout != "NCDHW" {
            return Err(bad(format!(
                "layout {:?} is not NCDHW",
                self.tensors.layout
            )));
        }
        if self.tensors.dtype != "float32" {
            return Err(bad(format!(
                "dtype {:?} is not float32",
                self.tensors.dtype
            )));
        }
        if self.tensors.patch.contains(&0) {
            return Err(bad("patch has a zero dimension".into()));
        }
        for (axis, s) in self.tensors.scale.iter().enumerate() {
            if !(s.is_finite() && *s >= 1.0 && (s.round() - s).abs() < 1e-6) {
                return Err(bad(format!(
                    "scale[{axis}] = {s} is not a whole number >= 1"
                )));
            }
        }
        if self.task == Task::Kernel && self.tensors.scale != [1.0; 3] {
            return Err(bad("a kernel model must have scale [1, 1, 1]".into()));
        }
        for (axis, (&m, &p)) in self
            .tensors
            .valid_margin
            .iter()
            .zip(&self.tensors.patch)
            .enumerate()
        {
            if 2 * m >= p {
                return Err(bad(format!(
                    "valid_margin[{axis}] = {m} leaves no valid core in patch {p}"
                )));
            }
        }
        let [lo, hi] = self.intensity.hu_window;
        if !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return Err(bad(format!("hu_window [{lo}, {hi}] is empty")));
        }
        if self.onnx_sha256.len() != 64 || !self.onnx_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad("onnx_sha256 is not 64 hex digits".into()));
        }
        if self.onnx_file.contains('/') || self.onnx_file.contains("..") {
            return Err(bad(format!(
                "onnx_file {:?} must be a plain file name",
                self.onnx_file
            )));
        }
        if !self.stages.is_empty() {
            self.validate_stages(path)?;
        }
        Ok(())
    }

    /// The rules of the multi-stage form (module docs).
    fn validate_stages(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |reason: String| ManifestError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if self.stages.len() != STAGES_SUPPORTED {
            return Err(bad(format!(
                "{} stages: this version runs multi-stage models of exactly {STAGES_SUPPORTED} \
                 (a whole-volume low-resolution stage, then the full-resolution stage)",
                self.stages.len()
            )));
        }
        if self.task != Task::Kernel {
            return Err(bad(
                "a multi-stage model must be a kernel model (output grid = input grid)".into(),
            ));
        }
        for (i, st) in self.stages.iter().enumerate() {
            let name = &st.name;
            if name.is_empty() {
                return Err(bad(format!("stage {i} has no name")));
            }
            if st.onnx_file.is_empty() || st.onnx_file.contains('/') || st.onnx_file.contains("..")
            {
                return Err(bad(format!(
                    "stage {name}: onnx_file {:?} must be a plain file name",
                    st.onnx_file
                )));
            }
            if st.onnx_sha256.len() != 64 || !st.onnx_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad(format!(
                    "stage {name}: onnx_sha256 is not 64 hex digits"
                )));
            }
            if st.downsample.contains(&0) {
                return Err(bad(format!(
                    "stage {name}: scale (downsample) {:?} has a zero factor",
                    st.downsample
                )));
            }
            if st.patch.contains(&0) {
                return Err(bad(format!("stage {name}: patch has a zero dimension")));
            }
            for axis in 0..3 {
                if 2 * st.valid_margin[axis] >= st.patch[axis] {
                    return Err(bad(format!(
                        "stage {name}: valid_margin[{axis}] = {} leaves no valid core in patch {}",
                        st.valid_margin[axis], st.patch[axis]
                    )));
                }
            }
            let mut seen = Vec::new();
            for input in &st.inputs {
                if seen.contains(input) {
                    return Err(bad(format!(
                        "stage {name}: input {input:?} is listed twice"
                    )));
                }
                seen.push(*input);
            }
            if !st.inputs.contains(&StageInput::Source) {
                return Err(bad(format!("stage {name}: its inputs must include source")));
            }
            let previous = st.inputs.contains(&StageInput::Previous);
            if i == 0 && previous {
                return Err(bad(format!(
                    "stage {name}: the first stage has no previous stage to be conditioned on"
                )));
            }
            if i > 0 && !previous {
                return Err(bad(format!(
                    "stage {name}: a later stage must be conditioned on the previous one (input \
                     \"previous\")"
                )));
            }
        }
        let (first, last) = (&self.stages[0], &self.stages[self.stages.len() - 1]);
        if last.downsample != [1, 1, 1] {
            return Err(bad(format!(
                "stage {}: the last stage must run on the series grid (scale [1, 1, 1], not {:?})",
                last.name, last.downsample
            )));
        }
        for axis in 0..3 {
            // The previous stage's grid must be a whole multiple of this one's.
            let (f, g) = (first.downsample[axis], last.downsample[axis]);
            if f % g != 0 {
                return Err(bad(format!(
                    "stage {}: scale {:?} is not a whole multiple of stage {}'s {:?} on axis {axis}",
                    first.name, first.downsample, last.name, last.downsample
                )));
            }
        }
        if first.downsample == [1, 1, 1] {
            return Err(bad(format!(
                "stage {}: the low-resolution stage must downsample (scale [1, 1, 1])",
                first.name
            )));
        }
        if last.onnx_file != self.onnx_file
            || !last.onnx_sha256.eq_ignore_ascii_case(&self.onnx_sha256)
            || last.patch != self.tensors.patch
            || last.valid_margin != self.tensors.valid_margin
        {
            return Err(bad(format!(
                "stage {}: the last stage's onnx_file, onnx_sha256, patch and valid_margin must \
                 equal the top-level onnx_file, onnx_sha256, tensors.patch and tensors.valid_margin",
                last.name
            )));
        }
        Ok(())
    }

    /// True for a multi-stage model (module docs).
    pub fn is_multi_stage(&self) -> bool {
        !self.stages.is_empty()
    }

    /// Integer scale factors (z, y, x).
    pub fn scale(&self) -> [usize; 3] {
        self.tensors.scale.map(|s| s.round() as usize)
    }

    /// HU -> model units.
    pub fn hu_to_unit(&self, hu: f32) -> f32 {
        let [lo, hi] = self.intensity.hu_window;
        let hu = if self.intensity.clip_input {
            hu.clamp(lo, hi)
        } else {
            hu
        };
        (hu - lo) / (hi - lo) * 2.0 - 1.0
    }

    /// Model units -> HU.
    pub fn unit_to_hu(&self, v: f32) -> f32 {
        let [lo, hi] = self.intensity.hu_window;
        (v + 1.0) * 0.5 * (hi - lo) + lo
    }

    /// True when this model accepts a series reconstructed with `kernel` (empty list = any).
    pub fn accepts_kernel(&self, kernel: Option<&str>) -> bool {
        self.kernels.accepts.is_empty()
            || kernel.is_some_and(|k| {
                self.kernels
                    .accepts
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(k.trim()))
            })
    }
}

/// A model directory whose ONNX file was checked against its manifest's hash.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
}

impl ModelDir {
    /// Reads `dir/model.toml`, then hashes the ONNX file it names and compares.
    pub fn open(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join("model.toml");
        let text = crate::util::fs::open_regular(&path)
            .and_then(|mut f| {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut f, &mut text).map(|_| text)
            })
            .map_err(|source| ManifestError::Read {
                path: path.clone(),
                source,
            })?;
        let manifest = Manifest::from_toml(&text, &path)?;
        let onnx_path = dir.join(&manifest.onnx_file);
        let actual = sha256_file(&onnx_path).map_err(|source| ManifestError::ReadOnnx {
            path: onnx_path.clone(),
            source,
        })?;
        if !actual.eq_ignore_ascii_case(&manifest.onnx_sha256) {
            return Err(ManifestError::HashMismatch {
                path: onnx_path,
                expected: manifest.onnx_sha256.clone(),
                actual,
            });
        }
        for st in &manifest.stages {
            let p = dir.join(&st.onnx_file);
            let actual = sha256_file(&p).map_err(|source| ManifestError::MissingStage {
                path: p.clone(),
                stage: st.name.clone(),
                source,
            })?;
            if !actual.eq_ignore_ascii_case(&st.onnx_sha256) {
                return Err(ManifestError::HashMismatch {
                    path: p,
                    expected: st.onnx_sha256.clone(),
                    actual,
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            onnx_path,
        })
    }
}

/// Lower-case hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = crate::util::fs::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A two-stage manifest whose stage files hold `lr` and `hr` (the daemon's reader hashes them;
    /// their content is not ONNX here).
    fn two_stage(lr: &[u8], hr: &[u8]) -> Manifest {
        let stage = |name: &str, file: &str, bytes: &[u8], down, inputs, patch, margin| Stage {
            name: name.into(),
            onnx_file: file.into(),
            onnx_sha256: sha(bytes),
            downsample: down,
            inputs,
            patch,
            valid_margin: margin,
        };
        Manifest {
            name: "megan-test".into(),
            version: "0.1.0".into(),
            kind: ModelKind::Trained,
            task: Task::Kernel,
            description: "test".into(),
            notes: None,
            onnx_file: "hr.onnx".into(),
            onnx_sha256: sha(hr),
            provenance: Provenance {
                program: "test".into(),
                data: "none".into(),
                steps: 1,
                seed: 0,
            },
            tensors: Tensors {
                input: "input".into(),
                output: "output".into(),
                layout: "NCDHW".into(),
                dtype: "float32".into(),
                patch: [64, 160, 160],
                dynamic_spatial: true,
                scale: [1.0; 3],
                valid_margin: [17; 3],
            },
            intensity: Intensity {
                hu_window: [-1150.0, 350.0],
                clip_input: true,
            },
            kernels: Kernels {
                accepts: Vec::new(),
                produces: "SOFT".into(),
            },
            evaluation: Vec::new(),
            stages: vec![
                stage(
                    "lr",
                    "lr.onnx",
                    lr,
                    [4, 4, 4],
                    vec![StageInput::Source],
                    [96, 160, 160],
                    [16; 3],
                ),
                stage(
                    "hr",
                    "hr.onnx",
                    hr,
                    [1, 1, 1],
                    vec![StageInput::Source, StageInput::Edges, StageInput::Previous],
                    [64, 160, 160],
                    [17; 3],
                ),
            ],
        }
    }

    fn write_dir(m: &Manifest, files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // Written without validation, as a hand-edited or corrupted directory would be.
        std::fs::write(dir.path().join("model.toml"), m.to_toml().unwrap()).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    fn invalid(m: &Manifest) -> String {
        let text = m.to_toml().unwrap();
        match Manifest::from_toml(&text, Path::new("models/megan-test/model.toml")) {
            Err(e @ ManifestError::Invalid { .. }) => e.to_string(),
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn a_two_stage_manifest_round_trips_and_opens() {
        let m = two_stage(b"lr", b"hr");
        let text = m.to_toml().unwrap();
        assert!(text.contains("[[stages]]"), "{text}");
        assert_eq!(Manifest::from_toml(&text, Path::new("m")).unwrap(), m);
        let dir = write_dir(&m, &[("lr.onnx", b"lr"), ("hr.onnx", b"hr")]);
        let md = ModelDir::open(dir.path()).unwrap();
        assert!(md.manifest.is_multi_stage());
    }

    #[test]
    fn notes_are_optional_and_round_trip() {
        let mut m = two_stage(b"lr", b"hr");
        let text = m.to_toml().unwrap();
        assert!(!text.contains("notes"), "{text}");
        // A manifest written before the field loads with no notes.
        assert_eq!(
            Manifest::from_toml(&text, Path::new("m")).unwrap().notes,
            None
        );
        m.notes = Some("the skip filter alone is as good; see revgan-kernel-linear".into());
        let text = m.to_toml().unwrap();
        assert_eq!(Manifest::from_toml(&text, Path::new("m")).unwrap(), m);
    }

    #[test]
    fn a_missing_stage_file_is_named() {
        let m = two_stage(b"lr", b"hr");
        let dir = write_dir(&m, &[("hr.onnx", b"hr")]);
        let err = ModelDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::MissingStage { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("lr.onnx") && msg.contains("of stage lr is missing"),
            "{msg}"
        );
    }

    #[test]
    fn fifos_in_place_of_model_files_are_named_not_waited_on() {
        let m = two_stage(b"lr", b"hr");
        let mkfifo = crate::util::fs::test_support::make_fifo;
        // A stage's ONNX file (a read of it would wait for a writer).
        let dir = write_dir(&m, &[("hr.onnx", b"hr")]);
        mkfifo(&dir.path().join("lr.onnx"));
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("lr.onnx") && msg.contains("not a regular file"),
            "{msg}"
        );
        // The manifest itself.
        let dir = write_dir(&m, &[("lr.onnx", b"lr"), ("hr.onnx", b"hr")]);
        std::fs::remove_file(dir.path().join("model.toml")).unwrap();
        mkfifo(&dir.path().join("model.toml"));
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("model.toml") && msg.contains("not a regular file"),
            "{msg}"
        );
    }

    #[test]
    fn a_stage_whose_hash_does_not_match_is_refused() {
        let m = two_stage(b"lr", b"hr");
        let dir = write_dir(&m, &[("lr.onnx", b"lr, changed"), ("hr.onnx", b"hr")]);
        let err = ModelDir::open(dir.path()).unwrap_err();
        match &err {
            ManifestError::HashMismatch { path, expected, .. } => {
                assert!(path.ends_with("lr.onnx"));
                assert_eq!(expected, &sha(b"lr"));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("changed or corrupted"));
    }

    #[test]
    fn wrong_scales_are_refused() {
        let mut m = two_stage(b"lr", b"hr");
        m.stages[0].downsample = [4, 0, 4];
        assert!(invalid(&m).contains("stage lr: scale (downsample) [4, 0, 4] has a zero factor"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[1].downsample = [2, 2, 2];
        assert!(invalid(&m).contains("the last stage must run on the series grid"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[0].downsample = [1, 1, 1];
        assert!(invalid(&m).contains("the low-resolution stage must downsample"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[0].patch = [16, 160, 160];
        assert!(invalid(&m).contains("stage lr: valid_margin[0] = 16 leaves no valid core"));
        let mut m = two_stage(b"lr", b"hr");
        m.tensors.scale = [2.0, 1.0, 1.0];
        m.task = Task::Superres;
        assert!(invalid(&m).contains("must be a kernel model"));
    }

    #[test]
    fn stage_layout_rules() {
        let mut m = two_stage(b"lr", b"hr");
        m.stages[1].inputs = vec![StageInput::Source, StageInput::Edges];
        assert!(invalid(&m).contains("must be conditioned on the previous one"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[0].inputs.push(StageInput::Previous);
        assert!(invalid(&m).contains("the first stage has no previous stage"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages.truncate(1);
        assert!(invalid(&m).contains("1 stages: this version runs multi-stage models of exactly 2"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[1].onnx_file = "other.onnx".into();
        assert!(invalid(&m).contains("must equal the top-level onnx_file"));
        let mut m = two_stage(b"lr", b"hr");
        m.stages[0].onnx_file = "../lr.onnx".into();
        assert!(invalid(&m).contains("must be a plain file name"));
    }
}
