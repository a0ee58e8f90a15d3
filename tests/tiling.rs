//! Tiled inference equals a single whole-volume pass (no seams), in z-slabs and in-plane, through the
//! real ONNX Runtime session of the shipped classical baseline: a model whose receptive field fits in
//! its `valid_margin` (the trained RevGANs' instance normalisation takes per-tile statistics, so
//! for them tiling is close to, not equal to, one pass).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ct_harmonizer::config::Settings;
use ct_harmonizer::model::{volume_slabs, Control, ModelDir, OutSlab, Translator};
use ct_harmonizer::samples::Rng;
use std::path::PathBuf;

fn translator(tile: [usize; 3]) -> Translator {
    let mut s = Settings::load_with_env(None, Vec::new()).unwrap();
    s.translate.tile = tile;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join("gaussian-soft-baseline");
    Translator::open(ModelDir::open(&dir).unwrap(), &s).unwrap()
}

/// Runs the volume through `t` slab by slab, as `process` does (the model's one driver,
/// `translate_slabs`), and returns the whole output.
fn run(t: &mut Translator, vol: &[f32], dims: [usize; 3]) -> Vec<f32> {
    let [d, h, w] = dims;
    let tiles = t.plan(0, d).unwrap();
    let mut out = Vec::new();
    t.translate_slabs(
        volume_slabs(vol, dims, tiles),
        &Control::none(),
        |_, o: OutSlab| {
            assert_eq!(o.z0 * h * w, out.len());
            out.extend(o.hu);
            true
        },
    )
    .unwrap();
    // `translate_volume` (eval's and the tests' entry point) places the same slabs.
    assert_eq!(
        t.translate_volume(vol, dims, &Control::none()).unwrap(),
        out
    );
    out
}

#[test]
fn tiled_output_equals_whole_volume_pass() {
    let dims = [37, 70, 53];
    let mut rng = Rng::new(5);
    // Sharp structure everywhere (noise plus edges), in HU, including values outside the window.
    let vol: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| {
            let edge = if (i / 7) % 3 == 0 { 900.0 } else { -800.0 };
            (edge + 200.0 * rng.normal()) as f32
        })
        .collect();
    let whole = run(&mut translator([64, 128, 128]), &vol, dims);
    let mut small = translator([9, 17, 13]);
    let tiled = run(&mut small, &vol, dims);
    assert!(
        small.run_stats().1 > 20,
        "the small tiles must really tile: {:?}",
        small.run_stats()
    );
    assert_eq!(whole.len(), tiled.len());
    let max = whole
        .iter()
        .zip(&tiled)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max < 1e-2,
        "max difference {max} HU between tiled and whole-volume output"
    );
    // And the model really changed the image (not an identity).
    let changed = whole
        .iter()
        .zip(&vol)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(changed > 100.0, "{changed}");
}
