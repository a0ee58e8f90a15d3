//! Model contract (DESIGN §3): an exported RevGAN generator run through ONNX Runtime by the daemon's
//! own inference code (`Translator`) matches Burn's forward pass within 1e-4 (model units), and
//! `ct-train export` refuses untrained checkpoints and existing models unless told otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::settings;

use burn::backend::{Autodiff, Flex};
use burn::config::Config;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor, TensorData};
use ct_harmonizer::dicom::slab::Slab;
use ct_harmonizer::model::manifest::{Provenance, Task};
use ct_harmonizer::model::{ModelDir, Translator};
use ct_training::config::{ModeArg, TaskArg, TrainConfig};
use ct_training::data::rng::Rng;
use ct_training::export::trained::{self as export_model, ExportArgs, ExportMeta};
use ct_training::model::RevGanConfig;
use ct_training::model::{Direction, RevGan};
use ct_training::resample::{upsample, Interp};
use ct_training::trainer::{TrainState, Trainer, CHECKPOINT_DIR, MODEL_CONFIG, TRAIN_CONFIG};
use ct_training::volume::Volume;
use std::path::{Path, PathBuf};

/// Tolerance of the contract, in model units ([-1, 1]).
const TOL: f32 = 1e-4;

/// A tiny generator whose zero-initialised convolutions (core, residual decoder) are randomised,
/// so the coupling blocks and the residual path are exercised too.
fn tiny_model(blocks: usize, residual: bool, skip: usize) -> (RevGanConfig, RevGan<Flex>) {
    let dev = Default::default();
    let cfg = RevGanConfig::new()
        .with_ngf(4)
        .with_ndf(2)
        .with_blocks(blocks)
        .with_residual(residual)
        .with_skip_kernel(skip)
        .with_branch_scale(if skip > 0 { 0.25 } else { 1.0 });
    <Flex as burn::tensor::backend::Backend>::seed(&dev, 11);
    let mut m = RevGan::<Flex>::new(&cfg, &dev);
    let mut zeroed = vec![&mut m.dec_b.conv_out];
    if let Some(c) = m.dec_b.skip.as_mut() {
        zeroed.push(c);
    }
    for b in &mut m.core {
        zeroed.push(&mut b.f.conv2);
        zeroed.push(&mut b.g.conv2);
    }
    for c in zeroed {
        let dims = c.weight.dims();
        c.weight = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.2), &dev));
        let [n] = c.bias.as_ref().unwrap().dims();
        c.bias = Some(Param::from_tensor(Tensor::random(
            [n],
            Distribution::Normal(0.0, 0.2),
            &dev,
        )));
    }
    (cfg, m)
}

fn meta(name: &str, scale: [usize; 3]) -> ExportMeta {
    ExportMeta {
        name: name.into(),
        version: "0.0.1".into(),
        task: if scale == [1, 1, 1] {
            Task::Kernel
        } else {
            Task::Superres
        },
        train_patch: 16,
        scale,
        hu_window: [-1150.0, 350.0],
        accepts: Vec::new(),
        produces: "SOFT".into(),
        provenance: Provenance {
            program: "test".into(),
            data: "random weights".into(),
            steps: 0,
            seed: 11,
        },
    }
}

/// Runs `[d, h, w]` random HU through the Translator and through Burn (after the trilinear
/// resampling of the training data when the model has a scale); returns max |diff| in model units.
fn compare(model: &ModelDir, gen: &RevGan<Flex>, dims: [usize; 3], seed: u64) -> f32 {
    let [d, h, w] = dims;
    let [sz, sy, sx] = model.manifest.scale();
    let m = &model.manifest;
    let mut rng = Rng::new(seed);
    let hu: Vec<f32> = (0..d * h * w)
        .map(|_| -1150.0 + 1500.0 * rng.uniform() as f32)
        .collect();
    let units: Vec<f32> = hu.iter().map(|&v| m.hu_to_unit(v)).collect();

    let mut t = Translator::open(model.clone(), &settings()).unwrap();
    let zt = t.plan(0, d).unwrap();
    assert_eq!(zt.len(), 1, "the test volume must fit one tile");
    let slab = Slab {
        z0: 0,
        depth: d,
        rows: h,
        columns: w,
        hu,
    };
    let out = t.translate(&slab, zt[0]).unwrap();
    let hr = [d * sz, h * sy, w * sx];
    assert_eq!([out.depth, out.rows, out.columns], hr);

    let up = upsample(&Volume::new("x", dims, [1.0; 3], units), hr, Interp::Linear);
    let x = Tensor::<Flex, 5>::from_data(
        TensorData::new(up.values, [1, 1, hr[0], hr[1], hr[2]]),
        &Default::default(),
    );
    let y: Vec<f32> = gen
        .forward(Direction::AtoB, x)
        .into_data()
        .to_vec()
        .unwrap();
    out.hu
        .iter()
        .zip(&y)
        .map(|(&o, &b)| {
            // Back to model units exactly as the daemon maps them.
            let ou = (o - m.intensity.hu_window[0])
                / (m.intensity.hu_window[1] - m.intensity.hu_window[0])
                * 2.0
                - 1.0;
            (ou - b).abs()
        })
        .fold(0.0, f32::max)
}

#[test]
fn onnx_runtime_matches_burn_forward() {
    let dir = tempfile::tempdir().unwrap();
    for (blocks, residual, skip) in [(0, false, 0), (2, false, 0), (1, true, 0), (1, true, 5)] {
        let (cfg, gen) = tiny_model(blocks, residual, skip);
        let out = dir
            .path()
            .join(format!("revgan-{blocks}-{residual}-{skip}"));
        let md = export_model::export_generator(&gen, &cfg, &meta("tiny", [1, 1, 1]), &out, false)
            .unwrap();
        assert_eq!(
            md.manifest.tensors.valid_margin,
            [cfg.receptive_radius(); 3]
        );
        assert!(md.manifest.intensity.clip_input);
        // Even and odd sizes (odd axes are padded and cropped inside the graph).
        for (i, dims) in [[8, 8, 8], [9, 12, 7]].into_iter().enumerate() {
            let diff = compare(&md, &gen, dims, 100 + i as u64);
            eprintln!("blocks {blocks} skip {skip}, {dims:?}: max |onnx - burn| = {diff:e}");
            assert!(
                diff <= TOL,
                "blocks {blocks} skip {skip}, {dims:?}: max |onnx - burn| = {diff}"
            );
        }
    }
}

/// A super-resolution export takes the thick volume: ONNX `Resize` in the graph equals the
/// trilinear resampling the training data went through, and the output grid is scale times the
/// input's.
#[test]
fn superres_export_resamples_like_the_training_data() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, gen) = tiny_model(1, true, 0);
    let out = dir.path().join("revgan-sr");
    let md = export_model::export_generator(&gen, &cfg, &meta("tiny-sr", [4, 2, 2]), &out, false)
        .unwrap();
    let t = &md.manifest.tensors;
    assert_eq!(t.scale, [4.0, 2.0, 2.0]);
    let r = cfg.receptive_radius();
    assert_eq!(
        t.valid_margin,
        [r.div_ceil(4) + 1, r.div_ceil(2) + 1, r.div_ceil(2) + 1]
    );
    assert!((0..3).all(|a| t.patch[a] >= 2 * t.valid_margin[a]));
    for (i, dims) in [[3, 5, 6], [4, 6, 6]].into_iter().enumerate() {
        let diff = compare(&md, &gen, dims, 300 + i as u64);
        eprintln!("superres {dims:?}: max |onnx - burn| = {diff:e}");
        assert!(diff <= TOL, "superres {dims:?}: max |onnx - burn| = {diff}");
    }
}

fn write_run(run: &Path, steps: u64) -> PathBuf {
    let m = RevGanConfig::new().with_ngf(2).with_ndf(2).with_blocks(1);
    let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired).with_patch(16);
    std::fs::create_dir_all(run).unwrap();
    m.save(run.join(MODEL_CONFIG)).unwrap();
    t.save(run.join(TRAIN_CONFIG)).unwrap();
    let tr = Trainer::<Autodiff<Flex>>::new(m, t, Default::default()).unwrap();
    let st = TrainState {
        step: steps,
        seconds: 1.0,
        device: "cpu".into(),
    };
    tr.save(&run.join(CHECKPOINT_DIR), &st).unwrap();
    run.to_owned()
}

#[test]
fn export_refuses_untrained_and_existing_models() {
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(&dir.path().join("run"), 0);
    let out = dir.path().join("models").join("tiny-kernel");
    let mut args = ExportArgs {
        checkpoint: run,
        out: out.clone(),
        version: "1.0.0".into(),
        accepts: vec!["B70f".into()],
        produces: None,
        allow_untrained: false,
        force: false,
    };
    let e = export_model::run(&args).unwrap_err().to_string();
    assert!(
        e.contains("0 training steps") && e.contains("--allow-untrained"),
        "{e}"
    );
    assert!(!out.exists());
    args.allow_untrained = true;
    let md = export_model::run(&args).unwrap();
    assert_eq!(md.manifest.name, "tiny-kernel");
    assert_eq!(md.manifest.kernels.produces, "SOFT");
    assert_eq!(md.manifest.kernels.accepts, ["B70f"]);
    assert_eq!(md.manifest.provenance.steps, 0);
    let e = export_model::run(&args).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    args.force = true;
    export_model::run(&args).unwrap();
    // A checkpoint of another architecture is a clear error.
    RevGanConfig::new()
        .with_ngf(4)
        .with_blocks(1)
        .save(args.checkpoint.join(MODEL_CONFIG))
        .unwrap();
    let e = export_model::run(&args).unwrap_err().to_string();
    assert!(e.contains("architecture"), "{e}");
}

/// A core grown from 1 to 4 reversible blocks (`ct-train train --init-from`): exported, its ONNX
/// graph still matches Burn through ONNX Runtime, and its valid margin (the daemon's tiling halo)
/// is the deeper core's receptive radius, 7 + 8 × 4 = 39 voxels, with its new blocks as grown
/// (the identity) and once they have moved (randomised here).
#[test]
fn grown_core_exports_with_the_deeper_margin() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg1, old) = tiny_model(1, true, 5);
    let cfg4 = cfg1.clone().with_blocks(4);
    let dev = Default::default();
    let grown = RevGan::<Flex>::new(&cfg4, &dev).grown_from(old).unwrap();
    let out = dir.path().join("revgan-grown");
    let md = export_model::export_generator(&grown, &cfg4, &meta("tiny", [1, 1, 1]), &out, false)
        .unwrap();
    assert_eq!(md.manifest.tensors.valid_margin, [39; 3]);
    assert!(md.manifest.tensors.patch.iter().all(|&p| p >= 2 * 39));
    let diff = compare(&md, &grown, [8, 10, 12], 500);
    assert!(
        diff <= TOL,
        "grown, identity blocks: max |onnx - burn| = {diff}"
    );
    let mut moved = grown;
    for b in &mut moved.core[1..] {
        for c in [&mut b.f.conv2, &mut b.g.conv2] {
            let dims = c.weight.dims();
            c.weight =
                Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.2), &dev));
        }
    }
    let out = dir.path().join("revgan-grown-moved");
    let md = export_model::export_generator(&moved, &cfg4, &meta("tiny", [1, 1, 1]), &out, false)
        .unwrap();
    let diff = compare(&md, &moved, [9, 12, 7], 501);
    assert!(
        diff <= TOL,
        "grown, moved blocks: max |onnx - burn| = {diff}"
    );
}
