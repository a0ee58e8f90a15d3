//! What a run shows at each checkpoint: `losses.png` and `val/step_NNNNNN.png` (input | A→B output |
//! target, middle slice of each validation patch), and the validation PSNR in the log.

use super::{Trainer, LOSSES_CSV};
use crate::config::HuWindow;
use crate::metrics::psnr_unit;
use crate::model::Direction;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use std::path::Path;

/// Validation patches drawn once per run (fixed by the seed) for the checkpoint pictures (our
/// choice, as the constants below: the papers show no training-time pictures).
pub(crate) const VAL_PATCHES: usize = 3;
/// Mixed into the run seed for the validation draw, so it differs from every step's draw
/// (an arbitrary constant).
pub(crate) const VAL_SEED: u64 = 0x0005_EED0_F7A1;
/// Folder of the validation pictures in a run directory.
pub const VAL_DIR: &str = "val";
pub const LOSSES_PNG: &str = "losses.png";

/// Grey levels of the validation pictures: the seed window [-1150, 350] HU, whatever the model's
/// own window (in a wide window such as [-1150, 3000] soft tissue and lung are nearly black).
const DISPLAY_WINDOW: HuWindow = HuWindow::SEED;

/// Writes `losses.png` and `val/step_NNNNNN.png` (input | A→B output | target, middle slice of
/// each validation patch, in `DISPLAY_WINDOW`), and logs the PSNR of the output and of the input
/// against the target over the whole validation patches (same window). A picture that cannot be
/// drawn is a warning, never a stopped run.
pub fn write_pictures<B: AutodiffBackend>(
    t: &Trainer<B>,
    run: &Path,
    val: &[(Vec<f32>, Vec<f32>)],
    patch: usize,
) {
    let model_window = HuWindow {
        lo: t.cfg.hu_window[0],
        hi: t.cfg.hu_window[1],
    };
    let display = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| DISPLAY_WINDOW.to_unit(model_window.to_hu(x)))
            .collect()
    };
    let (mut outs, mut ins, mut tgts) = (Vec::new(), Vec::new(), Vec::new());
    if let Err(e) = crate::plots::loss_png(&run.join(LOSSES_CSV), &run.join(LOSSES_PNG)) {
        tracing::warn!(error = %e, "loss plot not written");
    }
    let gen = t.gen.valid();
    let plane = patch * patch;
    let mid = patch / 2;
    let rows: Vec<crate::plots::SliceRow> = val
        .iter()
        .map(|(a, b)| {
            let x = Tensor::<B::InnerBackend, 5>::from_data(
                TensorData::new(a.clone(), [1, 1, patch, patch, patch]),
                &t.device,
            );
            let y: Vec<f32> = gen
                .forward(Direction::AtoB, x)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            let (a, y, b) = (display(a), display(&y), display(b));
            let cut = |v: &[f32]| {
                v.get(mid * plane..(mid + 1) * plane)
                    .unwrap_or(&[])
                    .to_vec()
            };
            let row = crate::plots::SliceRow {
                rows: patch,
                columns: patch,
                input: cut(&a),
                output: cut(&y),
                target: cut(&b),
            };
            outs.extend(y);
            ins.extend(a);
            tgts.extend(b);
            row
        })
        .collect();
    tracing::info!(
        step = t.step,
        output_psnr = psnr_unit(&outs, &tgts),
        input_psnr = psnr_unit(&ins, &tgts),
        "validation patches, PSNR in [-1150, 350] HU"
    );
    let dir = run.join(VAL_DIR);
    let out = dir.join(format!("step_{:06}.png", t.step));
    let r = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::plots::slices_png(&out, &rows, 4).map_err(|e| e.to_string()));
    if let Err(e) = r {
        tracing::warn!(error = %e, "validation picture {} not written", out.display());
    }
}
