//! `ct-train export-skip` (issue 13 §3): the skip filter of an exported residual generator, written
//! as a model of its own, runs through ONNX Runtime by the daemon's own inference code (whole volume
//! and tiled) and equals a direct edge-padded convolution with the generator's skip weights within
//! 1e-5 (model units); a generator without a skip filter and an existing output are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::settings;

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use ct_harmonizer::model::manifest::{Provenance, Task};
use ct_harmonizer::model::{Control, ModelDir, Translator};
use ct_training::data::rng::Rng;
use ct_training::export::skip::{self, ExportSkipArgs};
use ct_training::export::trained::{self as export_model, ExportMeta};
use ct_training::model::{RevGan, RevGanConfig};

const TOL: f32 = 1e-5;

/// A tiny residual generator whose skip filter (`skip` taps in-plane, `depth` in z) has random
/// weights and bias.
fn tiny(skip: usize, depth: usize) -> (RevGanConfig, RevGan<Flex>) {
    let dev = Default::default();
    let cfg = RevGanConfig::new()
        .with_ngf(2)
        .with_ndf(2)
        .with_blocks(1)
        .with_residual(true)
        .with_skip_kernel(skip)
        .with_skip_depth(depth)
        .with_branch_scale(0.01);
    <Flex as burn::tensor::backend::Backend>::seed(&dev, 5);
    let mut m = RevGan::<Flex>::new(&cfg, &dev);
    if let Some(c) = m.dec_b.skip.as_mut() {
        let dims = c.weight.dims();
        c.weight = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &dev));
        c.bias = Some(Param::from_tensor(Tensor::random(
            [1],
            Distribution::Normal(0.0, 0.1),
            &dev,
        )));
    }
    (cfg, m)
}

fn meta(name: &str) -> ExportMeta {
    ExportMeta {
        name: name.into(),
        version: "0.0.1".into(),
        task: Task::Kernel,
        train_patch: 16,
        scale: [1, 1, 1],
        hu_window: [-1150.0, 3000.0],
        accepts: Vec::new(),
        produces: "SOFT".into(),
        provenance: Provenance {
            program: "test".into(),
            data: "random weights".into(),
            steps: 3,
            seed: 5,
        },
    }
}

/// `x` (z-major `dims`) convolved with `w` (`k` = [kz, ky, kx]) after edge padding, plus `b`.
fn direct_conv(x: &[f32], dims: [usize; 3], w: &[f32], k: [usize; 3], b: f32) -> Vec<f32> {
    let [d, h, wd] = dims;
    let r = k.map(|k| (k / 2) as isize);
    let at = |z: isize, y: isize, xx: isize| {
        let c = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
        x[(c(z, d) * h + c(y, h)) * wd + c(xx, wd)]
    };
    let mut out = vec![0f32; x.len()];
    for z in 0..d as isize {
        for y in 0..h as isize {
            for xx in 0..wd as isize {
                let mut acc = b as f64;
                for dz in 0..k[0] as isize {
                    for dy in 0..k[1] as isize {
                        for dx in 0..k[2] as isize {
                            let wi = ((dz as usize * k[1]) + dy as usize) * k[2] + dx as usize;
                            acc += w[wi] as f64
                                * at(z + dz - r[0], y + dy - r[1], xx + dx - r[2]) as f64;
                        }
                    }
                }
                out[((z as usize * h) + y as usize) * wd + xx as usize] = acc as f32;
            }
        }
    }
    out
}

fn max_diff(model: &ModelDir, tile: [usize; 3], hu: &[f32], dims: [usize; 3], want: &[f32]) -> f32 {
    let s = settings();
    let mut t = Translator::with_runtime(model.clone(), &s.runtime, tile).unwrap();
    let out = t.translate_volume(hu, dims, &Control::none()).unwrap();
    let [lo, hi] = model.manifest.intensity.hu_window;
    out.iter()
        .zip(want)
        // Back to model units as the daemon maps them, without the input clipping (the output of
        // random weights leaves [-1, 1]).
        .map(|(&o, &w)| ((o - lo) / (hi - lo) * 2.0 - 1.0 - w).abs())
        .fold(0.0, f32::max)
}

#[test]
fn skip_model_equals_a_direct_convolution_whole_and_tiled() {
    let dir = tempfile::tempdir().unwrap();
    for (skip, depth) in [(9, 1), (5, 3)] {
        let (cfg, gen) = tiny(skip, depth);
        let src = dir.path().join(format!("gen-{skip}-{depth}"));
        export_model::export_generator(&gen, &cfg, &meta("gen"), &src, false).unwrap();
        let out = dir.path().join(format!("gen-{skip}-{depth}-linear"));
        let md = skip::run(&ExportSkipArgs {
            from: src.clone(),
            out: out.clone(),
            version: "1.0.0".into(),
            force: false,
        })
        .unwrap();
        let m = &md.manifest;
        assert_eq!(m.name, format!("gen-{skip}-{depth}-linear"));
        assert_eq!(m.tensors.valid_margin, [depth / 2, skip / 2, skip / 2]);
        assert_eq!(m.intensity.hu_window, [-1150.0, 3000.0]);
        assert!(m.intensity.clip_input);
        assert_eq!(m.provenance.steps, 3);
        assert!(m.notes.as_deref().unwrap_or("").contains("gen"));
        assert!(m.provenance.data.contains("export-skip of gen 0.0.1"));

        let c = gen.dec_b.skip.as_ref().unwrap();
        let w: Vec<f32> = c.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = c.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        let k = c.kernel_size;
        assert!(b[0] != 0.0 && w.iter().any(|&v| v != 0.0));

        let dims = [7, 21, 18];
        let mut rng = Rng::new(41 + skip as u64);
        // Inside the HU window: the input clipping is the source model's and not under test here.
        let hu: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| -1100.0 + 4000.0 * rng.uniform() as f32)
            .collect();
        let unit: Vec<f32> = hu.iter().map(|&v| m.hu_to_unit(v)).collect();
        let want = direct_conv(&unit, dims, &w, k, b[0]);
        let whole = max_diff(&md, [0, 0, 0], &hu, dims, &want);
        // Tiles smaller than the volume on every axis: the valid margin makes them exact.
        let tiled = max_diff(
            &md,
            [depth + 2, 2 * (skip / 2) + 3, 2 * (skip / 2) + 4],
            &hu,
            dims,
            &want,
        );
        eprintln!("skip {depth}x{skip}x{skip}: whole {whole:e}, tiled {tiled:e}");
        assert!(whole <= TOL && tiled <= TOL, "whole {whole}, tiled {tiled}");

        // An existing model is kept unless --force.
        let again = ExportSkipArgs {
            from: src,
            out,
            version: "1.0.0".into(),
            force: false,
        };
        let e = skip::run(&again).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        skip::run(&ExportSkipArgs {
            force: true,
            ..again
        })
        .unwrap();
    }
}

#[test]
fn a_generator_without_skip_filter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, gen) = tiny(0, 1);
    let src = dir.path().join("plain");
    export_model::export_generator(&gen, &cfg, &meta("plain"), &src, false).unwrap();
    let out = dir.path().join("plain-linear");
    let e = skip::run(&ExportSkipArgs {
        from: src,
        out: out.clone(),
        version: "1.0.0".into(),
        force: false,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no initializer dec_b.skip.weight"), "{e}");
    assert!(!out.exists());
}
