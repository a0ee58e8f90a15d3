//! MEGAN's multi-stage model contract (DESIGN §3): a tiny MEGAN trained by our program
//! (`train_megan`, the code of `ct-train train --arch megan`) on synthetic NIfTI pairs, exported by
//! `ct-train export` as `lr.onnx` + `hr.onnx` + a multi-stage `model.toml`, run through ONNX Runtime
//! by the daemon's own `Translator` (both stages, the edge map and the up-sampling included),
//! matches the Burn pipeline within 1e-4 (model units). And the bad inputs of the multi-stage form:
//! a stage whose ONNX takes other channels than its manifest lists, a patch smaller than the
//! receptive field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::settings;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use ct_harmonizer::model::manifest::{Manifest, ModelDir, StageInput};
use ct_harmonizer::model::stages::{block_mean, edge_map, previous_at};
use ct_harmonizer::model::{Control, TranslateError, Translator};
use ct_training::config::{ModeArg, TaskArg, TrainConfig};
use ct_training::data::nifti::{self, WriteType};
use ct_training::export::trained::{self as export_model, ExportArgs};
use ct_training::trainer::megan::{load_megan, train_megan, MeganArgs};
use std::path::{Path, PathBuf};

/// Tolerance of the contract, in model units ([-1, 1]).
const TOL: f32 = 1e-4;

/// A synthetic "sharp" volume (HU): blocks of tissue, bone and air with a high-frequency texture;
/// its "soft" target is a 3-tap in-plane smoothing of it.
fn synth_pair(dims: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let [d, h, w] = dims;
    let sharp: Vec<f32> = (0..d * h * w)
        .map(|i| {
            let (z, y, x) = (i / (h * w), (i / w) % h, i % w);
            let base = match ((x / 8) + (y / 8) + (z / 8)) % 3 {
                0 => -800.0,
                1 => 40.0,
                _ => 700.0,
            };
            base + if (x + 2 * y + 3 * z) % 2 == 0 {
                60.0
            } else {
                -60.0
            }
        })
        .collect();
    let soft = (0..d * h * w)
        .map(|i| {
            let x = i % w;
            let l = if x > 0 { sharp[i - 1] } else { sharp[i] };
            let r = if x + 1 < w { sharp[i + 1] } else { sharp[i] };
            0.25 * l + 0.5 * sharp[i] + 0.25 * r
        })
        .collect();
    (sharp, soft)
}

fn megan_args(patch: usize) -> (MeganArgs, TrainConfig) {
    let args = MeganArgs {
        megan_ngf: 2,
        megan_ndf: 2,
        megan_res_blocks: 1,
        megan_lr_factor: 2,
        megan_lambda_l1: 10.0,
        megan_d_accuracy_max: 0.8,
    };
    (
        args,
        TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_steps(4)
            .with_patch(patch)
            .with_seed(5),
    )
}

/// Trains a tiny MEGAN on one synthetic pair and exports it into `dir/megan-tiny`.
fn train_and_export(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let dims = [32, 36, 36];
    let (sharp, soft) = synth_pair(dims);
    for (name, v) in [("source.nii", &sharp), ("target.nii", &soft)] {
        nifti::write(&data.join(name), dims, [1.0; 3], v, WriteType::Float32).unwrap();
    }
    let (args, mut train) = megan_args(28);
    train.data = data.display().to_string();
    let run = dir.join("run");
    let state =
        train_megan::<Autodiff<Flex>>(&run, &args, &train, false, Default::default(), "cpu")
            .unwrap();
    assert_eq!(state.step, 8, "4 LR and 4 HR iterations");
    let csv = std::fs::read_to_string(run.join("losses.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    let out = dir.join("megan-tiny");
    export_model::run(&ExportArgs {
        checkpoint: run,
        out: out.clone(),
        version: "0.1.0".into(),
        accepts: Vec::new(),
        produces: None,
        allow_untrained: false,
        force: false,
    })
    .unwrap();
    out
}

/// The Burn pipeline of both stages on a whole volume (`hu`), in model units.
fn burn_pipeline(run: &Path, m: &Manifest, hu: &[f32], dims: [usize; 3]) -> Vec<f32> {
    let dev = Default::default();
    let (cfg, _, _, gens) = load_megan::<Flex>(run, &dev).unwrap();
    let unit: Vec<f32> = hu.iter().map(|&v| m.hu_to_unit(v)).collect();
    let (low, ld) = block_mean(&unit, dims, cfg.lr_factor).unwrap();
    let t = |v: Vec<f32>, c: usize, d: [usize; 3]| {
        Tensor::<Flex, 5>::from_data(TensorData::new(v, [1, c, d[0], d[1], d[2]]), &dev)
    };
    let prev_low: Vec<f32> = gens.lr.forward(t(low, 1, ld)).into_data().to_vec().unwrap();
    let [d, h, w] = dims;
    let mut x = unit.clone();
    x.extend(edge_map(&unit, dims));
    for z in 0..d {
        for y in 0..h {
            for xx in 0..w {
                x.push(previous_at(&prev_low, ld, cfg.lr_factor, z, y, xx));
            }
        }
    }
    gens.hr.forward(t(x, 3, dims)).into_data().to_vec().unwrap()
}

fn max_diff(m: &Manifest, onnx_hu: &[f32], burn: &[f32]) -> f32 {
    let [lo, hi] = m.intensity.hu_window;
    onnx_hu
        .iter()
        .zip(burn)
        .map(|(&o, &b)| ((o - lo) / (hi - lo) * 2.0 - 1.0 - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn megan_onnx_runtime_matches_burn_through_both_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_and_export(dir.path());
    let md = ModelDir::open(&out).unwrap();
    let m = md.manifest.clone();
    assert!(m.is_multi_stage());
    assert_eq!(m.stages.len(), 2);
    assert_eq!(m.stages[0].downsample, [2, 2, 2]);
    assert_eq!(m.stages[0].inputs, [StageInput::Source]);
    assert_eq!(
        m.stages[1].inputs,
        [StageInput::Source, StageInput::Edges, StageInput::Previous]
    );
    assert_eq!(m.onnx_file, m.stages[1].onnx_file);
    assert!(m.provenance.data.contains("MEGAN"), "{}", m.provenance.data);
    let mut t = Translator::open(md, &settings()).unwrap();
    assert!(t.is_multi_stage());
    // Even and odd sizes; both smaller than the tiles, so tiling is exact.
    for (i, dims) in [[16, 20, 24], [13, 17, 22]].into_iter().enumerate() {
        let (sharp, _) = synth_pair(dims);
        let hu: Vec<f32> = sharp.iter().map(|v| v + 7.0 * i as f32).collect();
        let onnx = t.translate_volume(&hu, dims, &Control::none()).unwrap();
        let burn = burn_pipeline(&dir.path().join("run"), &m, &hu, dims);
        let diff = max_diff(&m, &onnx, &burn);
        eprintln!("{dims:?}: max |onnx - burn| = {diff:e}");
        assert!(diff <= TOL, "{dims:?}: max |onnx - burn| = {diff}");
    }
    // Tiled in all three axes (smaller tiles than the volume): runs, same shape, finite values.
    let mut tiled = Translator::with_runtime(
        ModelDir::open(&out).unwrap(),
        &settings().runtime,
        [32, 32, 32],
    )
    .unwrap();
    let dims = [40, 70, 66];
    let (sharp, _) = synth_pair(dims);
    let y = tiled
        .translate_volume(&sharp, dims, &Control::none())
        .unwrap();
    assert_eq!(y.len(), sharp.len());
    assert!(y.iter().all(|v| v.is_finite()));
    let (runs_seconds, runs) = tiled.run_stats();
    assert!(runs > 1 && runs_seconds >= 0.0);
}

/// A stage's ONNX file must take as many channels as its manifest lists inputs.
#[test]
fn a_stage_with_other_channels_than_its_inputs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_and_export(dir.path());
    let path = out.join("model.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The HR stage takes 3 channels; list only source and previous.
    let edited = text.replacen(
        "inputs = [\n    \"source\",\n    \"edges\",\n    \"previous\",\n]",
        "inputs = [\n    \"source\",\n    \"previous\",\n]",
        1,
    );
    assert_ne!(edited, text, "{text}");
    std::fs::write(&path, edited).unwrap();
    let err = Translator::open(ModelDir::open(&out).unwrap(), &settings())
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            TranslateError::StageChannels {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("hr.onnx") && msg.contains("3 input channels"),
        "{msg}"
    );
}

/// `--arch megan` with a patch smaller than the HR stage's receptive field: a clear error before
/// any data is read.
#[test]
fn megan_patch_smaller_than_its_receptive_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (args, mut train) = megan_args(16);
    train.data = dir.path().join("nowhere").display().to_string();
    let err = train_megan::<Autodiff<Flex>>(
        &dir.path().join("run"),
        &args,
        &train,
        false,
        Default::default(),
        "cpu",
    )
    .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("patch 16 is smaller than the HR stage's receptive field (27 voxels"),
        "{msg}"
    );
}
