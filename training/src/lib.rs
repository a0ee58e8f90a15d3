//! `ct-training`: trains, exports and evaluates the ct-harmonizer translator networks (DESIGN §5),
//! laid out like Burn's examples. The library half of the `ct-train` binary.
//!
//! Layers, each importing only from the ones above it in this list (no circles):
//! - [`lib_bridge`]: every import from the `ct_harmonizer` library;
//! - [`config`]: [`config::TrainConfig`] (saved as `train.json`, flattened into the CLI), the
//!   run's enums and the HU window ([`config::HuWindow`]);
//! - [`data`]: the one [`data::Volume`] type, loading (DICOM, NIfTI, InVesalius), training pairs,
//!   the one patch sampler, the one random generator, and `ct-train synth`'s simulation;
//! - [`resample`] (filters, upsampling) and [`metrics`] (MAE, PSNR, SSIM, lung mask, emphysema
//!   index), used by `data` (super-resolution pairs), `eval` and the training pictures;
//! - [`model`]: generators, discriminators, the reversible core; [`losses`]; [`lsq`] (the
//!   least-squares linear filter that can start a skip filter); [`plots`];
//! - [`trainer`]: the steps, the reversible step, the image pool, checkpoints, the loop;
//! - [`export`]: ONNX messages, the Gaussian baseline and trained generators in the contract format;
//! - [`eval`]: held-out evaluation against the baselines, the report and the manifest rows.
//!
//! (`resample` sits below `data` in fact: it needs only [`data::Volume`], which `data/mod.rs`
//! defines without importing `resample`; `data::pairs` then uses `resample`.)

pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod lib_bridge;
pub mod losses;
pub mod lsq;
pub mod metrics;
pub mod model;
pub mod plots;
pub mod resample;
pub mod trainer;
