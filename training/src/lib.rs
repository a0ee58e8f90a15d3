//! `ct-training`: trains, exports and evaluates the ct-harmonizer translator networks (DESIGN §5),
//! laid out like Burn's examples. The library half of the `ct-train` binary.
//!
//! Layers, each importing only from the ones before it in this list (no circles; checked with the
//! script quoted in the restructure's report, which lists `crate::<module>` uses per module):
//! - [`lib_bridge`]: every import from the `ct_harmonizer` library;
//! - [`config`]: [`config::TrainConfig`] (saved as `train.json`, flattened into the CLI), the
//!   run's enums and the HU window ([`config::HuWindow`], the one HU <-> model-unit mapping);
//! - [`volume`]: the one [`volume::Volume`] type;
//! - [`resample`] (separable filters, upsampling) and [`metrics`] (MAE, PSNR, SSIM, lung mask,
//!   emphysema index) beside [`physics`] (ROIs, noise and NPS, MTF, radiomic texture, CCC and
//!   Bland–Altman);
//! - [`data`]: loading (DICOM, NIfTI, InVesalius), training pairs, the one patch sampler, the one
//!   random generator ([`data::rng`]), and `ct-train synth`'s simulation ([`data::synth`]);
//! - [`model`] (generators, discriminators, the reversible core), [`losses`], [`lsq`] (the
//!   least-squares linear filter that can start a skip filter), [`plots`];
//! - [`trainer`]: the steps, the reversible step, the image pool, checkpoints, the loop;
//! - [`export`]: ONNX messages, the Gaussian baseline and trained generators in the contract format;
//! - [`fd`]: the Fréchet distance on our own discriminator's features (no Inception offline);
//! - [`eval`]: held-out evaluation against the baselines, the report and the manifest rows
//!   (with `--fd-features`, the Fréchet distance of [`fd`]).
//!
//! New families (MEGAN, HA-GAN's amortised mode, Cycle-MedGAN losses) slot in as siblings: a
//! `model/<family>.rs`, their loss terms in `losses.rs`, their steps in `trainer/`, their graph in
//! `export/`, new baselines in `eval/baselines.rs` and new figures in `metrics.rs`.

pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod fd;
pub mod lib_bridge;
pub mod losses;
pub mod lsq;
pub mod metrics;
pub mod model;
pub mod physics;
pub mod plots;
pub mod resample;
pub mod trainer;
pub mod volume;

/// Serialises the unit tests that train or differentiate (Burn's autodiff): run side by side in one
/// test process they have been seen to disturb each other's results now and then (a reversible and
/// a plain-autodiff step that must agree differed by 3e-4 once in a full parallel run, never alone).
#[cfg(test)]
pub(crate) fn autodiff_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
