//! `ct-train export` of a MEGAN run (seed 001; [`crate::model::megan`]): two ONNX files, `lr.onnx`
//! and `hr.onnx`, and a **multi-stage** `model.toml` naming both stages, their files and SHA-256,
//! their grids (`downsample`) and conditioning inputs (the form is documented in the daemon's
//! `src/model/manifest.rs`; DESIGN §3).
//!
//! Each graph mirrors [`MeganGenerator::forward`] node for node (the writer of
//! [`super::trained`]): odd axes edge-padded at their end (`Shape`, `Mod`, `Concat`, `Pad`),
//! ReplicationPad → `Pad` edge, Conv3d → `Conv`, the affine InstanceNorm3d →
//! `InstanceNormalization` with the learnt scale and bias (ε = 1e-5), ReLU → `Relu`, the residual
//! sum → `Add`, ConvTranspose3d(k4, s2, p1) → `ConvTranspose`, Tanh → `Tanh`, and a `Slice` back to
//! the input's size. Input `[N, C, D, H, W]` with C fixed (1 for LR, 3 for HR) and the other axes
//! symbolic; output `[N, 1, D, H, W]`.
//!
//! Tiles: the LR stage's tile is `LR_TILE` on its own grid (a whole 600-slice 512² series at
//! factor 4 is 150×128×128: a few tiles along z; 48 LR slices, so that a 100-slice series at factor 2
//! already runs full-size tiles and peak memory does not grow beyond it), its margin the
//! generator's receptive radius; the HR
//! stage's tile is the training patch plus both margins (rounded up to 16; in-plane at least
//! [`super::trained::IN_PLANE_TILE`]), its margin the receptive radius plus the edge map's voxel.

use super::onnx::{self, DataType, Dim};
use super::trained::graph::Writer;
use super::trained::{data_label, synth_summary, tile_edge, ExportModelError, IN_PLANE_TILE};
use super::{write_atomic, INPUT, MANIFEST_FILE, OUTPUT};
use crate::config::TrainConfig;
use crate::lib_bridge::{
    hex, Intensity, Kernels, Manifest, ModelDir, ModelKind, Provenance, Stage, StageInput, Task,
    Tensors,
};
use crate::model::megan::{
    MeganConfig, MeganGenerator, MeganGenerators, HR_IN, LR_IN, MEGAN_OUT_PAD,
};
use crate::trainer::TrainState;
use burn::tensor::backend::Backend;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Stage file names.
pub const LR_FILE: &str = "lr.onnx";
pub const HR_FILE: &str = "hr.onnx";
/// The LR stage's tile on its own grid (z, y, x).
pub const LR_TILE: [usize; 3] = [48, 160, 160];

/// The ONNX graph of one MEGAN generator of `channels` input channels (module docs).
pub fn megan_onnx<B: Backend>(
    gen: &MeganGenerator<B>,
    channels: usize,
    name: &str,
) -> Result<onnx::ModelProto, ExportModelError> {
    let mut w = Writer::new(name);
    w.g.doc(&format!(
        "MEGAN (seed 001) {name} generator: {channels} input channel(s), {} residual blocks.",
        gen.blocks.len()
    ));
    let mut dims = Dim::ncdhw_dynamic();
    dims[1] = Dim::Fixed(channels as i64);
    w.g.input(INPUT, DataType::Float, &dims)?;
    let (x, spatial) = w.pad_odd_axes(INPUT)?;

    let x = w.pad_edge(&x, 1)?;
    let x = w.conv(&x, &gen.conv_in, "conv_in")?;
    let x = w.instance_norm_affine(&x, &gen.norm_in.gamma, &gen.norm_in.beta, "norm_in")?;
    let x = w.relu(&x)?;
    let x = w.conv(&x, &gen.conv_down, "conv_down")?;
    let x = w.instance_norm_affine(&x, &gen.norm_down.gamma, &gen.norm_down.beta, "norm_down")?;
    let mut x = w.relu(&x)?;
    for (i, b) in gen.blocks.iter().enumerate() {
        let p = format!("blocks.{i}");
        let h = w.pad_edge(&x, 1)?;
        let h = w.conv(&h, &b.conv1, &format!("{p}.conv1"))?;
        let h = w.instance_norm_affine(&h, &b.norm1.gamma, &b.norm1.beta, &format!("{p}.norm1"))?;
        let h = w.relu(&h)?;
        let h = w.pad_edge(&h, 1)?;
        let h = w.conv(&h, &b.conv2, &format!("{p}.conv2"))?;
        let h = w.instance_norm_affine(&h, &b.norm2.gamma, &b.norm2.beta, &format!("{p}.norm2"))?;
        x = w.node("Add", &[&x, &h], vec![])?;
    }
    let x = w.conv_transpose(&x, &gen.conv_up, "conv_up")?;
    let x = w.instance_norm_affine(&x, &gen.norm_up.gamma, &gen.norm_up.beta, "norm_up")?;
    let x = w.relu(&x)?;
    let x = w.pad_edge(&x, MEGAN_OUT_PAD)?;
    let x = w.conv(&x, &gen.conv_out, "conv_out")?;
    let y = w.node("Tanh", &[&x], vec![])?;
    w.crop_to_output(&y, &spatial, &Dim::ncdhw_dynamic())?;
    Ok(onnx::model(
        w.g.build()?,
        "ct-train",
        env!("CARGO_PKG_VERSION"),
        "ct-harmonizer MEGAN stage generator (see model.toml).",
    ))
}

/// Manifest fields that do not come from the run.
#[derive(Debug, Clone, PartialEq)]
pub struct MeganMeta {
    pub name: String,
    pub version: String,
    pub hu_window: [f32; 2],
    pub accepts: Vec<String>,
    pub produces: String,
    pub provenance: Provenance,
}

/// The multi-stage manifest of a MEGAN whose stage files hash to `lr_sha` and `hr_sha`.
pub fn megan_manifest(
    cfg: &MeganConfig,
    meta: &MeganMeta,
    lr_sha: String,
    hr_sha: String,
) -> Manifest {
    let lr_margin = [cfg.radius(); 3];
    let hr_margin = [cfg.hr_radius(); 3];
    let hr_tile = [0, 1, 2].map(|a| {
        let t = tile_edge(cfg.patch, hr_margin[a]);
        if a == 0 {
            t
        } else {
            t.max(IN_PLANE_TILE)
        }
    });
    let lr_tile = [0, 1, 2].map(|a| LR_TILE[a].max(2 * lr_margin[a] + 16));
    let stages = vec![
        Stage {
            name: "lr".into(),
            onnx_file: LR_FILE.into(),
            onnx_sha256: lr_sha,
            downsample: cfg.lr_factor,
            inputs: vec![StageInput::Source],
            patch: lr_tile,
            valid_margin: lr_margin,
        },
        Stage {
            name: "hr".into(),
            onnx_file: HR_FILE.into(),
            onnx_sha256: hr_sha.clone(),
            downsample: [1, 1, 1],
            inputs: vec![StageInput::Source, StageInput::Edges, StageInput::Previous],
            patch: hr_tile,
            valid_margin: hr_margin,
        },
    ];
    Manifest {
        name: meta.name.clone(),
        version: meta.version.clone(),
        kind: ModelKind::Trained,
        task: Task::Kernel,
        description: format!(
            "MEGAN (seed 001) two-stage kernel translation: LR stage on the series averaged by {:?}, \
             HR stage on patches conditioned on the up-sampled LR output and a gradient-magnitude \
             edge map; ngf {}, {} residual blocks.",
            cfg.lr_factor, cfg.ngf, cfg.res_blocks
        ),
        notes: None,
        onnx_file: HR_FILE.into(),
        onnx_sha256: hr_sha,
        provenance: meta.provenance.clone(),
        tensors: Tensors {
            input: INPUT.into(),
            output: OUTPUT.into(),
            layout: "NCDHW".into(),
            dtype: "float32".into(),
            patch: hr_tile,
            dynamic_spatial: true,
            scale: [1.0; 3],
            valid_margin: hr_margin,
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
        stages,
    }
}

/// Writes `out/{lr.onnx, hr.onnx, model.toml}` for `gens` and re-opens the directory with the
/// daemon's reader (which checks every stage's hash). Refuses to replace a model unless `force`.
pub fn export_megan<B: Backend>(
    gens: &MeganGenerators<B>,
    cfg: &MeganConfig,
    meta: &MeganMeta,
    out: &Path,
    force: bool,
) -> Result<ModelDir, ExportModelError> {
    for f in [LR_FILE, HR_FILE, MANIFEST_FILE] {
        let p = out.join(f);
        if p.exists() && !force {
            return Err(ExportModelError::Refused {
                path: p,
                reason: "a model is already there; pass --force to replace it".into(),
            });
        }
    }
    let lr = onnx::encode_model(&megan_onnx(&gens.lr, LR_IN, "megan_lr")?);
    let hr = onnx::encode_model(&megan_onnx(&gens.hr, HR_IN, "megan_hr")?);
    let manifest = megan_manifest(
        cfg,
        meta,
        hex(&Sha256::digest(&lr)),
        hex(&Sha256::digest(&hr)),
    );
    let text = manifest.to_toml()?;
    let mp = out.join(MANIFEST_FILE);
    Manifest::from_toml(&text, &mp)?;
    std::fs::create_dir_all(out).map_err(|source| ExportModelError::Io {
        path: out.to_owned(),
        source,
    })?;
    for (f, bytes) in [(LR_FILE, &lr), (HR_FILE, &hr)] {
        let p = out.join(f);
        write_atomic(&p, bytes).map_err(|source| ExportModelError::Io { path: p, source })?;
    }
    write_atomic(&mp, text.as_bytes()).map_err(|source| ExportModelError::Io {
        path: mp.clone(),
        source,
    })?;
    Ok(ModelDir::open(out)?)
}

/// Provenance of a MEGAN run.
pub fn megan_provenance(cfg: &MeganConfig, train: &TrainConfig, state: &TrainState) -> Provenance {
    let data = if train.data.is_empty() {
        "(data not recorded)".to_owned()
    } else {
        let label = data_label(Path::new(&train.data));
        match synth_summary(Path::new(&train.data)) {
            Some(s) => format!("{label} ({s})"),
            None => label,
        }
    };
    Provenance {
        program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
        data: format!(
            "{data}; MEGAN (seed 001, scaled: megan.json) paired kernel training, LR factor {:?}, \
             ngf {}, ndf {}, {} residual blocks, HR patch {}^3, {} steps per stage ({} in all) in \
             {:.0} s on {}, LSGAN + L1 lambda {}, D updated while its accuracy <= {}, Adam lr {} \
             betas ({}, {}), HU window {:?}",
            cfg.lr_factor,
            cfg.ngf,
            cfg.ndf,
            cfg.res_blocks,
            cfg.patch,
            train.steps,
            state.step,
            state.seconds,
            state.device,
            cfg.lambda_l1,
            cfg.d_accuracy_max,
            train.lr,
            train.beta1,
            train.beta2,
            train.hu_window,
        ),
        steps: state.step,
        seed: train.seed,
    }
}
