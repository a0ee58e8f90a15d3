//! `ct-train export`: writes a trained 3D RevGAN's A→B generator in the model contract format
//! (`models/<name>/model.onnx` + `model.toml`, DESIGN §3) for the daemon.
//!
//! The ONNX graph (IR 8, opset 17, written by [`super::onnx`]) mirrors [`RevGan::forward`]
//! operation for operation, with the weights taken straight from the Burn modules (Burn's Conv3d
//! and ConvTranspose3d weight layouts equal ONNX's):
//! - odd D, H or W: `Shape` (start 2) → `Mod 2` → `Concat` into `Pad` pads → `Pad` (edge) by one
//!   voxel at the end of each odd axis; the output is cut back with `Slice` to the input's shape;
//! - ReplicationPad → `Pad` mode `edge`; Conv3d → `Conv` (explicit zero `pads` for the stride-2
//!   one); InstanceNorm3d without affine → `InstanceNormalization` with scale = 1 and bias = 0
//!   initializers and ε = 1e-5; ReLU → `Relu`; ConvTranspose3d → `ConvTranspose` (strides 2, pads
//!   1, output_padding 1); Tanh → `Tanh`;
//! - each coupling block → `Split` into channel halves, `Add` for `y1 = x1 + F(x2)` and
//!   `y2 = x2 + G(y1)`, `Concat`;
//! - a residual generator → `Add` of the decoder's output and the (padded) source, or of the
//!   learnable skip filter's output (`Pad` edge in-plane, `Conv` 1×k×k);
//! - super-resolution → `Resize` (linear, half_pixel) of the input onto the high-resolution grid
//!   first.
//!
//! Input and output are float32 `[N, 1, D, H, W]` with symbolic N, D, H and W.
//!
//! # Tile size and valid margin
//!
//! `valid_margin` is the generator's convolutional receptive-field radius,
//! [`RevGanConfig::receptive_radius`] = 7 + 8·blocks input voxels per axis. Instance normalisation
//! is global per tile (its statistics come from the whole tile), so no margin makes tiled output
//! *exactly* equal to a whole-volume pass; what the margin does guarantee is that no kept voxel
//! sees the tile's padded border through the convolutions. Statistics over a tile larger than
//! the training patch are a closer estimate of the same per-region statistics the model saw in
//! training, so the manifest's tile (`patch`) is the training patch plus both margins, rounded up
//! to a multiple of 16 (in-plane at least [`IN_PLANE_TILE`]): every kept core is at least as large
//! as a training patch. For super-resolution the margins and the tile are in input voxels.

pub(crate) mod graph;

pub use graph::generator_onnx;

use super::onnx::{self, OnnxError};
use super::{INPUT, MANIFEST_FILE, ONNX_FILE, OUTPUT};
use crate::config::{TaskArg, TrainConfig};
use crate::lib_bridge::{
    hex, Intensity, Kernels, Manifest, ManifestError, ModelDir, ModelKind, Provenance, Task,
    Tensors,
};
use crate::model::{RevGan, RevGanConfig};
use crate::trainer::{load_generators, CpuBackend, TrainError, TrainState};
use burn::tensor::backend::Backend;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Errors exporting a trained model.
#[derive(Debug, thiserror::Error)]
pub enum ExportModelError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialize the model manifest: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("the written model does not pass the daemon's own checks: {0}")]
    Manifest(#[from] ManifestError),
    #[error("weights of {0} cannot be read as float32")]
    Weights(String),
}

/// Writes `bytes` to `path` atomically (see [`super::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportModelError> {
    super::write_atomic(path, bytes).map_err(|source| ExportModelError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Manifest fields that do not come from the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMeta {
    pub name: String,
    pub version: String,
    pub task: Task,
    /// Training patch edge (voxels, high-resolution grid).
    pub train_patch: usize,
    /// Output grid / input grid per axis (z, y, x); `[1, 1, 1]` for kernel models.
    pub scale: [usize; 3],
    pub hu_window: [f32; 2],
    pub accepts: Vec<String>,
    pub produces: String,
    pub provenance: Provenance,
}

/// Smallest in-plane tile edge written into a manifest (high-resolution voxels). With the
/// margins of a trained RevGAN (23 voxels at 2 blocks) an 80-voxel tile keeps only 34 of each 80
/// in-plane; 160 keeps 114 (an overhead of 2.0× instead of 5.5× per slab), at about 160 MiB per
/// ngf-16 activation.
pub const IN_PLANE_TILE: usize = 160;

/// The manifest tile edge: training patch + both margins, rounded up to a multiple of 16.
pub fn tile_edge(train_patch: usize, margin: usize) -> usize {
    (train_patch + 2 * margin).div_ceil(16) * 16
}

/// Valid margin in input voxels along an axis of super-resolution factor `scale`: the receptive
/// radius on the high-resolution grid brought back to input voxels, plus the one input voxel the
/// linear resampling reads beyond its cell (none for `scale` 1).
pub fn input_margin(radius: usize, scale: usize) -> usize {
    if scale <= 1 {
        radius
    } else {
        radius.div_ceil(scale) + 1
    }
}

/// The manifest of an exported generator.
pub fn generator_manifest(cfg: &RevGanConfig, meta: &ExportMeta, onnx_sha256: String) -> Manifest {
    let radius = cfg.receptive_radius();
    let margin = meta.scale.map(|s| input_margin(radius, s));
    // The tile on the high-resolution grid holds a training patch inside both margins; in-plane
    // it is at least IN_PLANE_TILE, so that the margins, recomputed for every tile, cost less.
    let tile = [0, 1, 2].map(|a| {
        let hr = tile_edge(meta.train_patch, margin[a] * meta.scale[a]);
        let hr = if a == 0 { hr } else { hr.max(IN_PLANE_TILE) };
        hr.div_ceil(meta.scale[a].max(1))
    });
    let what = match meta.task {
        Task::Kernel => "reconstruction-kernel translation (sharp to soft)",
        Task::Superres => "super-resolution (trilinear resampling, then the generator)",
    };
    Manifest {
        name: meta.name.clone(),
        version: meta.version.clone(),
        kind: ModelKind::Trained,
        task: meta.task,
        description: format!(
            "3D RevGAN (seed 000) A->B generator, ngf {}, {} reversible blocks{}: {what}.",
            cfg.ngf,
            cfg.blocks,
            if cfg.residual {
                ", global residual"
            } else {
                ""
            }
        ),
        notes: None,
        onnx_file: ONNX_FILE.to_owned(),
        onnx_sha256,
        provenance: meta.provenance.clone(),
        tensors: Tensors {
            input: INPUT.to_owned(),
            output: OUTPUT.to_owned(),
            layout: "NCDHW".to_owned(),
            dtype: "float32".to_owned(),
            patch: tile,
            dynamic_spatial: true,
            scale: meta.scale.map(|s| s as f32),
            valid_margin: margin,
        },
        intensity: Intensity {
            hu_window: meta.hu_window,
            clip_input: true,
        },
        kernels: Kernels {
            accepts: meta.accepts.clone(),
            produces: meta.produces.clone(),
        },
        evaluation: Vec::new(),
        stages: Vec::new(),
    }
}

fn refuse(path: &Path, reason: String) -> ExportModelError {
    ExportModelError::Refused {
        path: path.to_owned(),
        reason,
    }
}

/// Writes `out/model.onnx` and `out/model.toml` for `gen`'s A→B generator and re-opens the directory
/// with the daemon's reader. Refuses to replace an existing model unless `force`.
pub fn export_generator<B: Backend>(
    gen: &RevGan<B>,
    cfg: &RevGanConfig,
    meta: &ExportMeta,
    out: &Path,
    force: bool,
) -> Result<ModelDir, ExportModelError> {
    for f in [ONNX_FILE, MANIFEST_FILE] {
        let p = out.join(f);
        if p.exists() && !force {
            return Err(refuse(
                &p,
                "a model is already there; pass --force to replace it".into(),
            ));
        }
    }
    let bytes = onnx::encode_model(&generator_onnx(gen, cfg, meta.scale)?);
    let sha = hex(&Sha256::digest(&bytes));
    let manifest = generator_manifest(cfg, meta, sha);
    let text = manifest.to_toml()?;
    let mp = out.join(MANIFEST_FILE);
    Manifest::from_toml(&text, &mp)?;
    std::fs::create_dir_all(out).map_err(|source| ExportModelError::Io {
        path: out.to_owned(),
        source,
    })?;
    write_atomic(&out.join(ONNX_FILE), &bytes)?;
    write_atomic(&mp, text.as_bytes())?;
    Ok(ModelDir::open(out)?)
}

/// `ct-train export` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Training run directory (holding model.json, train.json and checkpoint/).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model directory to write, e.g. models/revgan-kernel; its name is the model's name.
    #[arg(long)]
    pub out: PathBuf,
    /// Model version written into the manifest (semver).
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// ConvolutionKernel values the model accepts (repeatable; none = any).
    #[arg(long)]
    pub accepts: Vec<String>,
    /// ConvolutionKernel written into derived series (default: SOFT for kernel models, the
    /// input's kernel name "SR" marker for super-resolution).
    #[arg(long)]
    pub produces: Option<String>,
    /// Export even if the checkpoint has 0 training steps.
    #[arg(long)]
    pub allow_untrained: bool,
    /// Replace an existing model in --out.
    #[arg(long)]
    pub force: bool,
}

/// One line describing a `ct-train synth` data set from its `synth.toml` (None when the folder
/// has none, e.g. on another machine).
pub fn synth_summary(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("synth.toml")).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    let cases = v.get("case")?.as_array()?;
    let sources: Vec<String> = cases
        .iter()
        .filter_map(|c| c.get("source").and_then(|s| s.as_str()).map(str::to_owned))
        .collect();
    let shape = cases
        .first()
        .and_then(|c| c.get("shape"))
        .map(|s| s.to_string())
        .unwrap_or_default();
    Some(format!(
        "ct-train synth: {} case(s) of {} voxels ({}), {} photons, {} vs {} filtered back-projection",
        cases.len(),
        shape,
        sources.join(", "),
        v.get("photons").map(|p| p.to_string()).unwrap_or_default(),
        v.get("sharp_filter").and_then(|f| f.as_str()).unwrap_or("?"),
        v.get("soft_filter").and_then(|f| f.as_str()).unwrap_or("?"),
    ))
}

/// How a data folder is named in a manifest: its last component followed by `/` (`/tmp/a_data/train`
/// gives `train/`), never the path on the machine that trained or evaluated the model.
pub fn data_label(path: &Path) -> String {
    let name = path
        .components()
        .rev()
        .find_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_else(|| "(unnamed)".to_owned());
    format!("{name}/")
}

/// Provenance text of a training run.
pub fn provenance(cfg: &TrainConfig, model: &RevGanConfig, state: &TrainState) -> Provenance {
    let data = if cfg.data.is_empty() {
        "(data not recorded)".to_owned()
    } else {
        let label = data_label(Path::new(&cfg.data));
        match synth_summary(Path::new(&cfg.data)) {
            Some(s) => format!("{label} ({s})"),
            None => label,
        }
    };
    let skip = if model.skip_kernel > 0 {
        format!(
            ", {} {}x{}x{} skip filter started as {:?}, branch scale {}",
            if cfg.freeze_skip {
                "fixed"
            } else {
                "learnable"
            },
            model.skip_depth,
            model.skip_kernel,
            model.skip_kernel,
            cfg.skip_init,
            model.branch_scale
        )
    } else {
        String::new()
    };
    Provenance {
        program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
        data: format!(
            "{data}; {:?} {:?} training, {} reversible blocks{}{}{skip}, source resampled x{:?}, HU window {:?}, \
             ngf {}, ndf {}, patch {}^3, {} steps in {:.0} s on {}, Adam lr {} betas ({}, {}), lambda_l1 {}, \
             lambda_cycle {}, lambda_gan {}{}{}",
            cfg.task,
            cfg.mode,
            model.blocks,
            if cfg.naive { " (naive autodiff)" } else { "" },
            if model.residual { ", global residual" } else { "" },
            cfg.scale,
            cfg.hu_window,
            model.ngf,
            model.ndf,
            cfg.patch,
            state.step,
            state.seconds,
            state.device,
            cfg.lr,
            cfg.beta1,
            cfg.beta2,
            cfg.lambda_l1,
            cfg.lambda_cycle,
            cfg.lambda_gan,
            // The adversarial term's first `gan_from_step` steps went without it (issue 11).
            if cfg.gan_from_step > 0 && cfg.lambda_gan > 0.0 {
                format!(" after step {}", cfg.gan_from_step)
            } else {
                String::new()
            },
            // The noise-texture term (issue 11), named only when on.
            match (cfg.texture_weights(), cfg.texture_blur) {
                ([ab, ba], blur) if ab > 0.0 || ba > 0.0 => format!(
                    ", lambda_texture {}{}{}",
                    if ab == ba {
                        format!("{ab}")
                    } else {
                        format!("{ab} (A->B) {ba} (B->A)")
                    },
                    if blur == crate::losses::TEXTURE_BLUR {
                        String::new()
                    } else {
                        format!(" (blur 3x{blur}x{blur})")
                    },
                    if cfg.texture_one_sided {
                        " (one-sided)"
                    } else {
                        ""
                    }
                ),
                _ => String::new(),
            },
        ) + &if cfg.lambda_tv > 0.0 {
            // The total-variation term (issue 11), named only when on.
            format!(", lambda_tv {} (A->B)", cfg.lambda_tv)
        } else {
            String::new()
        },
        steps: state.step,
        seed: cfg.seed,
    }
}

/// The provenance of a run grown with `ct-train train --init-from` names its starting
/// checkpoint, its step and the blocks added (`grown_from.json`); others are unchanged.
pub fn grown_provenance(
    mut p: Provenance,
    grown: Option<&crate::trainer::checkpoint::GrownFrom>,
) -> Provenance {
    if let Some(g) = grown {
        p.data.push_str("; ");
        p.data.push_str(&g.describe());
    }
    p
}

/// Runs `ct-train export`.
pub fn run(args: &ExportArgs) -> Result<ModelDir, ExportModelError> {
    if args
        .checkpoint
        .join(crate::trainer::megan::MEGAN_CONFIG)
        .exists()
    {
        return run_megan(args);
    }
    let device = Default::default();
    let (model_cfg, cfg, state, gen) = load_generators::<CpuBackend>(&args.checkpoint, &device)?;
    if state.step == 0 && !args.allow_untrained {
        return Err(refuse(
            &args.checkpoint,
            "the checkpoint has 0 training steps; pass --allow-untrained to export it anyway"
                .into(),
        ));
    }
    let name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| refuse(&args.out, "the output directory needs a name".into()))?;
    let task = match cfg.task {
        TaskArg::Kernel => Task::Kernel,
        TaskArg::Superres => Task::Superres,
    };
    let produces = args.produces.clone().unwrap_or_else(|| {
        match task {
            Task::Kernel => "SOFT",
            Task::Superres => "SR",
        }
        .to_owned()
    });
    let meta = ExportMeta {
        name,
        version: args.version.clone(),
        task,
        train_patch: cfg.patch,
        scale: cfg.scale,
        hu_window: cfg.hu_window,
        accepts: args.accepts.clone(),
        produces,
        provenance: grown_provenance(
            provenance(&cfg, &model_cfg, &state),
            crate::trainer::checkpoint::GrownFrom::read(&args.checkpoint)?.as_ref(),
        ),
    };
    export_generator(&gen, &model_cfg, &meta, &args.out, args.force)
}

/// `ct-train export` of an `--arch megan` run: the multi-stage model of [`crate::export::megan`].
fn run_megan(args: &ExportArgs) -> Result<ModelDir, ExportModelError> {
    use crate::export::megan::{export_megan, megan_provenance, MeganMeta};
    let device = Default::default();
    let (cfg, train, state, gens) =
        crate::trainer::megan::load_megan::<CpuBackend>(&args.checkpoint, &device)?;
    if state.step == 0 && !args.allow_untrained {
        return Err(refuse(
            &args.checkpoint,
            "the checkpoint has 0 training steps; pass --allow-untrained to export it anyway"
                .into(),
        ));
    }
    let name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| refuse(&args.out, "the output directory needs a name".into()))?;
    let meta = MeganMeta {
        name,
        version: args.version.clone(),
        hu_window: train.hu_window,
        accepts: args.accepts.clone(),
        produces: args.produces.clone().unwrap_or_else(|| "SOFT".to_owned()),
        provenance: megan_provenance(&cfg, &train, &state),
    };
    export_megan(&gens, &cfg, &meta, &args.out, args.force)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn data_folders_are_named_without_machine_paths() {
        assert_eq!(data_label(Path::new("/tmp/a_data/train")), "train/");
        assert_eq!(data_label(Path::new("/tmp/a_data/heldout/")), "heldout/");
        assert_eq!(data_label(Path::new("data")), "data/");
        assert_eq!(data_label(Path::new("/")), "(unnamed)/");
    }

    #[test]
    fn graph_has_the_expected_operators() {
        let cfg = RevGanConfig::new().with_ngf(2).with_blocks(1);
        let gen = RevGan::<Flex>::new(&cfg, &Default::default());
        let m = generator_onnx(&gen, &cfg, [1, 1, 1]).unwrap();
        let g = m.graph.unwrap();
        let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("Split"), 1);
        assert_eq!(count("Add"), 2);
        assert_eq!(count("ConvTranspose"), 1);
        assert_eq!(count("Conv"), 2 + 4 + 1);
        assert_eq!(count("InstanceNormalization"), 2 + 4 + 1);
        assert_eq!(count("Tanh"), 1);
        assert_eq!(g.node.last().unwrap().op_type, "Slice");
    }

    /// A run whose adversarial term started late (`--gan-from-step`, issue 11) says so in its
    /// provenance; a run without the term, or with it from the start, reads as before.
    #[test]
    fn provenance_names_the_step_the_adversarial_term_started() {
        use crate::config::{ModeArg, TaskArg};
        let model = RevGanConfig::new();
        let state = TrainState {
            step: 8300,
            seconds: 1.0,
            device: "cpu".into(),
        };
        let mut cfg = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_gan 1"));
        cfg.gan_from_step = 7600;
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_gan 1 after step 7600"));
        cfg.lambda_gan = 0.0;
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_gan 0"));
        // The noise-texture term (issue 11) is named only when on.
        cfg.lambda_texture = 300.0;
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_gan 0, lambda_texture 300"));
        cfg.lambda_texture_ba = Some(0.0);
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_gan 0, lambda_texture 300 (A->B) 0 (B->A)"));
        cfg.texture_blur = 7;
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("lambda_texture 300 (A->B) 0 (B->A) (blur 3x7x7)"));
        cfg.texture_one_sided = true;
        assert!(provenance(&cfg, &model, &state)
            .data
            .ends_with("(blur 3x7x7) (one-sided)"));
    }

    #[test]
    fn tile_holds_a_training_patch_inside_the_margins() {
        assert_eq!(tile_edge(32, 23), 80);
        assert_eq!(tile_edge(16, 15), 48);
        let t = tile_edge(64, 39);
        assert!(t - 2 * 39 >= 64 && t.is_multiple_of(16));
    }
}
