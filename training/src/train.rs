//! `ct-train train`: trains a 3D RevGAN (seed 000; `shared/MODELS.md` §1) on paired or unpaired
//! volumes, on the CPU (Burn `flex`) or, built with `--features cuda`, on a CUDA GPU when one exists.
//!
//! Losses (MODELS.md §1, all configurable):
//! - paired (pix2pix): `BCE(D_B(a, G_ab(a)), 1) + λ·|G_ab(a) − b|₁` plus the same for B→A, λ = 100;
//!   conditional discriminators, D loss `0.5·(BCE(D(src, real), 1) + BCE(D(src, fake), 0))`.
//! - unpaired (CycleGAN): `MSE(D_B(G_ab(a)), 1) + λ·|G_ba(G_ab(a)) − a|₁` plus B→A→B, λ = 10, no
//!   identity loss (0 in 3-D), image pool of 50, D loss `0.5·(MSE(D(real), 1) + MSE(D(pool(fake)), 0))`.
//! - Adam lr 2e-4, betas (0.5, 0.999), one optimizer for both generators (and the shared core), one
//!   for both discriminators; G step then D step each iteration; batch 1; lr constant, then linear
//!   decay to 0 over the last `decay_steps` (default: 1/6 of the steps, the reference's 25 decay
//!   epochs of 150).
//!
//! The reversible core is trained with the memory-efficient backward of [`crate::revgan`] unless
//! `--naive` asks for plain autodiff (the reference in tests and in the memory benchmark).
//!
//! Data: `DIR/source` and `DIR/target` (aliases `sharp`/`soft` for the kernel task, `thick`/`soft`
//! or `low`/`high` for super-resolution, as `ct-train synth` writes them), each a DICOM series
//! folder or a `.nii`/`.nii.gz` file, either directly in `DIR` or in each sub-directory of `DIR`
//! (one case each). A super-resolution source is resampled trilinearly onto its target's grid
//! (the factor is recorded as `scale` in `train.json`). The HU window
//! [-1150, 350] maps to [-1, 1] (seed 000). Patches are cubes sampled uniformly, retried up to 10
//! times while their mean is air (foreground bias), with random flips along each axis.
//!
//! Run directory (`--out`): `model.json` (architecture, [`RevGanConfig`]), `train.json`
//! ([`TrainConfig`]), `losses.csv`, and `checkpoint/` (weights, optimizer states, image pools,
//! `state.json`), replaced atomically every `--checkpoint-every` steps and at the end, when
//! `losses.png` and `val/step_NNNNNN.png` are redrawn too ([`crate::plots`]). `--resume` continues from
//! it; the same seed gives the same run (patch positions and pool choices are drawn from a
//! generator seeded by (seed, step), and the unpaired image pool is saved with the checkpoint, so
//! a resumed run continues exactly).

use crate::data::{load_volume, HuWindow};
use crate::model::{check_patch, param_shapes, Discriminator, ModelError, RevGanConfig};
use crate::revgan::{CoreSegment, Direction, RevGan, RevGanError};
use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The seed's HU window (seed 000: "uniformly redistributed from [-1150, 350] HU" to [-1, 1]).
pub const HU_WINDOW: [f32; 2] = [-1150.0, 350.0];
/// Files of a run directory.
pub const MODEL_CONFIG: &str = "model.json";
pub const TRAIN_CONFIG: &str = "train.json";
pub const LOSSES_CSV: &str = "losses.csv";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const STATE_FILE: &str = "state.json";
const GEN_FILE: &str = "generators";
const DISC_FILE: &str = "discriminators";
const OPT_G_FILE: &str = "optim_g";
const OPT_D_FILE: &str = "optim_d";
const POOL_A_FILE: &str = "pool_a.bin";
const POOL_B_FILE: &str = "pool_b.bin";
/// Patch retries while the patch's mean is below [`AIR_MEAN`] (foreground bias).
const FOREGROUND_TRIES: usize = 10;
/// Mean (model units) under which a patch is treated as mostly air: -1000 HU in the seed window.
const AIR_MEAN: f32 = (-1000.0 - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) * 2.0 - 1.0;

/// Errors training a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    RevGan(#[from] RevGanError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("training data {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Options(String),
    #[error("settings: {0}")]
    Settings(String),
    #[error("progress bar template: {0}")]
    Progress(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a model translates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskArg {
    /// Sharp to soft reconstruction kernel (same grid).
    Kernel,
    /// Low to high resolution; the source is resampled onto the high-resolution grid first (MODELS.md
    /// §1: "the network sees equal input and output sizes").
    Superres,
}

/// How a learnable skip filter starts (`--skip-init`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SkipInit {
    /// A→B: the baseline Gaussian (`RevGanConfig::skip_sigma`); B→A: the identity.
    Baseline,
    /// Both directions: the least-squares linear filter on the training pairs ([`crate::lsq`]).
    Lsq,
}

/// Paired (pix2pix loss) or unpaired (CycleGAN loss) training.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    Paired,
    Unpaired,
}

/// Everything that decides a training run (saved as `train.json`; a resumed run must match).
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    pub task: TaskArg,
    pub mode: ModeArg,
    /// Plain autodiff through the core instead of the reversible backward.
    #[config(default = false)]
    pub naive: bool,
    /// Optimizer steps (iterations of one G step and one D step, batch 1).
    #[config(default = 1000)]
    pub steps: u64,
    /// Cubic patch edge in voxels (seed 000: 64 kernel, 128 super-resolution; smaller on the CPU).
    #[config(default = 32)]
    pub patch: usize,
    #[config(default = 0)]
    pub seed: u64,
    /// Adam learning rate (MODELS.md §1: 2e-4).
    #[config(default = 2e-4)]
    pub lr: f64,
    /// Adam betas (MODELS.md §1: (0.5, 0.999)).
    #[config(default = 0.5)]
    pub beta1: f32,
    #[config(default = 0.999)]
    pub beta2: f32,
    /// Paired L1 weight (MODELS.md §1: λ = 100).
    #[config(default = 100.0)]
    pub lambda_l1: f64,
    /// Unpaired cycle weight (MODELS.md §1: λ = 10 per direction).
    #[config(default = 10.0)]
    pub lambda_cycle: f64,
    /// Weight of the adversarial term in the generator loss (MODELS.md §1: 1). 0 trains the
    /// generators on the L1 / cycle term alone and skips the discriminators (a departure, used
    /// where the figure of merit is PSNR, which an adversarial term trades away).
    #[config(default = 1.0)]
    pub lambda_gan: f64,
    /// Keep the learnable skip filters fixed at their starting taps (with `--skip-init lsq`: the
    /// least-squares filter, which is already the best linear map in the squared-error sense; Adam
    /// moves each of its hundreds of taps by about the learning rate per step, which undoes it).
    #[config(default = false)]
    pub freeze_skip: bool,
    /// Unpaired image pool size (MODELS.md §1: 50).
    #[config(default = 50)]
    pub pool_size: usize,
    /// Steps of linear learning-rate decay at the end; `None` = steps / 6.
    pub decay_steps: Option<u64>,
    /// Steps of linear learning-rate warm-up at the start (0 = none, as the reference). Adam's
    /// first steps move every weight by about the learning rate whatever its gradient, which
    /// throws a zero-started residual branch far off at once; a warm-up avoids that.
    #[config(default = 0)]
    pub warmup_steps: u64,
    #[config(default = 100)]
    pub checkpoint_every: u64,
    /// HU window mapped onto [-1, 1].
    #[config(default = "[-1150.0, 350.0]")]
    pub hu_window: [f32; 2],
    /// Description of the training data (for the manifest's provenance).
    #[config(default = "String::new()")]
    pub data: String,
    /// Target grid / source grid per axis (z, y, x), measured from the data: `[1, 1, 1]` for the
    /// kernel task, `[4, 2, 2]` for `ct-train synth`'s thick-slice source.
    #[config(default = "[1, 1, 1]")]
    pub scale: [usize; 3],
    /// Start of the learnable skip filters (only with `RevGanConfig::skip_kernel` > 0).
    #[config(default = "SkipInit::Baseline")]
    pub skip_init: SkipInit,
}

impl TrainConfig {
    /// Learning rate at `step` (0-based): linear from lr / warm-up steps up to lr over the warm-up,
    /// constant, then linear to 0 over the last decay steps.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        warm * self.decayed_lr(step)
    }

    fn decayed_lr(&self, step: u64) -> f64 {
        let decay = self
            .decay_steps
            .unwrap_or(self.steps / 6)
            .clamp(1, self.steps.max(1));
        let start = self.steps.saturating_sub(decay);
        if step < start {
            self.lr
        } else {
            self.lr * (self.steps - step) as f64 / (decay + 1) as f64
        }
    }
}

/// Progress saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Wall-clock seconds spent training, summed over resumes.
    pub seconds: f64,
    /// Backend the last steps ran on.
    pub device: String,
}

/// A volume in model units, `[z][y][x]` contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub name: String,
    pub dims: [usize; 3],
    pub data: Vec<f32>,
}

/// One case: the same anatomy in domain A (source) and B (target), on the same grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedVolume {
    pub a: Volume,
    pub b: Volume,
}

/// Source-domain member names per task, and the target's (module docs).
const KERNEL_A: [&str; 2] = ["source", "sharp"];
const SUPERRES_A: [&str; 3] = ["source", "thick", "low"];
const B_NAMES: [&str; 3] = ["target", "soft", "high"];

/// The first of `names` present in `dir`: a DICOM series folder, `NAME.nii.gz` or `NAME.nii`.
pub fn find_member(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        [
            dir.join(n),
            dir.join(format!("{n}.nii.gz")),
            dir.join(format!("{n}.nii")),
        ]
        .into_iter()
        .find(|p| p.exists())
    })
}

fn to_model_units(v: &crate::data::Volume, window: HuWindow) -> Volume {
    Volume {
        name: v.name.clone(),
        dims: v.shape,
        data: v.hu.iter().map(|&h| window.to_unit(h)).collect(),
    }
}

/// Training pairs and the super-resolution factor (z, y, x) between their source and target grids.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingData {
    pub pairs: Vec<PairedVolume>,
    /// `[1, 1, 1]` for the kernel task.
    pub scale: [usize; 3],
}

/// Loads `DIR/{source,target}` or `DIR/*/{source,target}` (aliases in the module docs), each a
/// DICOM series folder or a NIfTI file. For super-resolution the source is resampled onto the
/// target's grid by trilinear interpolation (MODELS.md §1; the exported model does the same with
/// ONNX `Resize`), and every case must have the same whole-number factor per axis.
pub fn load_pairs(
    dir: &Path,
    hu_window: [f32; 2],
    task: TaskArg,
) -> Result<TrainingData, TrainError> {
    let a_names: &[&str] = match task {
        TaskArg::Kernel => &KERNEL_A,
        TaskArg::Superres => &SUPERRES_A,
    };
    let window = HuWindow::new(hu_window[0], hu_window[1]).map_err(|e| TrainError::Data {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut cases = Vec::new();
    if let (Some(a), Some(b)) = (find_member(dir, a_names), find_member(dir, &B_NAMES)) {
        cases.push((a, b));
    } else {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        for s in subs {
            if let (Some(a), Some(b)) = (find_member(&s, a_names), find_member(&s, &B_NAMES)) {
                cases.push((a, b));
            }
        }
    }
    if cases.is_empty() {
        return Err(TrainError::Data {
            path: dir.to_owned(),
            reason: format!(
                "no case found: expected members {a_names:?} and {B_NAMES:?} (DICOM series folders or \
                 .nii/.nii.gz files), directly or in one folder per case"
            ),
        });
    }
    let mut scale: Option<[usize; 3]> = None;
    let mut pairs = Vec::new();
    for (pa, pb) in cases {
        let data_err = |path: &Path, reason: String| TrainError::Data {
            path: path.to_owned(),
            reason,
        };
        let a = load_volume(&pa).map_err(|e| data_err(&pa, e.to_string()))?;
        let b = load_volume(&pb).map_err(|e| data_err(&pb, e.to_string()))?;
        let mut f = [1usize; 3];
        for (fa, (&na, &nb)) in f.iter_mut().zip(a.shape.iter().zip(&b.shape)) {
            if na == 0 || !nb.is_multiple_of(na) || (task == TaskArg::Kernel && na != nb) {
                return Err(data_err(
                    &pb,
                    format!(
                        "grid {:?} does not match its source {} {:?}{}",
                        b.shape,
                        pa.display(),
                        a.shape,
                        match task {
                            TaskArg::Kernel => " (the kernel task needs equal grids)",
                            TaskArg::Superres => " (each axis must be a whole multiple)",
                        }
                    ),
                ));
            }
            *fa = nb / na;
        }
        if *scale.get_or_insert(f) != f {
            return Err(data_err(
                &pb,
                format!(
                    "scale {f:?} differs from the other cases' {:?}",
                    scale.unwrap_or(f)
                ),
            ));
        }
        let a = if f == [1, 1, 1] {
            a
        } else {
            crate::eval::upsample(&a, b.shape, crate::eval::Interp::Linear)
        };
        pairs.push(PairedVolume {
            a: to_model_units(&a, window),
            b: to_model_units(&b, window),
        });
    }
    Ok(TrainingData {
        pairs,
        scale: scale.unwrap_or([1; 3]),
    })
}

/// SplitMix64 (the library's [`ct_harmonizer::samples::Rng`]): a small, fully specified generator,
/// so runs reproduce across crate versions.
#[derive(Debug, Clone)]
pub struct SplitMix(ct_harmonizer::samples::Rng);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(ct_harmonizer::samples::Rng::new(seed))
    }

    /// The generator for `step` of a run seeded with `seed`.
    pub fn for_step(seed: u64, step: u64) -> Self {
        let state =
            (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut s = Self::new(state);
        s.next_u64();
        s
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.uniform()
    }
}

/// A patch position and flips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PatchSpec {
    case: usize,
    origin: [usize; 3],
    flip: [bool; 3],
}

fn extract(v: &Volume, p: usize, spec: &PatchSpec) -> Vec<f32> {
    let [_, h, w] = v.dims;
    let mut out = Vec::with_capacity(p * p * p);
    for z in 0..p {
        let sz = spec.origin[0] + if spec.flip[0] { p - 1 - z } else { z };
        for y in 0..p {
            let sy = spec.origin[1] + if spec.flip[1] { p - 1 - y } else { y };
            let row = (sz * h + sy) * w + spec.origin[2];
            if spec.flip[2] {
                out.extend(v.data[row..row + p].iter().rev());
            } else {
                out.extend_from_slice(&v.data[row..row + p]);
            }
        }
    }
    out
}

fn patch_mean(v: &Volume, p: usize, spec: &PatchSpec) -> f32 {
    let d = extract(v, p, spec);
    d.iter().sum::<f32>() / d.len().max(1) as f32
}

/// Random cubic patches of paired (or, for unpaired training, independently drawn) volumes.
#[derive(Debug, Clone)]
pub struct PatchSampler {
    pairs: Vec<PairedVolume>,
    patch: usize,
    /// Patch mean (model units) under which a draw is retried: -1000 HU in the run's window.
    air: f32,
}

impl PatchSampler {
    /// Checks every volume holds a `patch`³ cube.
    pub fn new(pairs: Vec<PairedVolume>, patch: usize) -> Result<Self, TrainError> {
        for pv in &pairs {
            for v in [&pv.a, &pv.b] {
                if v.dims.iter().any(|&d| d < patch) {
                    return Err(TrainError::Data {
                        path: PathBuf::from(&v.name),
                        reason: format!(
                            "volume {:?} (z, y, x) is smaller than the {patch}^3 patch",
                            v.dims
                        ),
                    });
                }
            }
        }
        if pairs.is_empty() {
            return Err(TrainError::Options("no training volumes".into()));
        }
        Ok(Self {
            pairs,
            patch,
            air: AIR_MEAN,
        })
    }

    fn draw(&self, rng: &mut SplitMix, domain_b: bool) -> PatchSpec {
        let p = self.patch;
        let mut spec = PatchSpec {
            case: 0,
            origin: [0; 3],
            flip: [false; 3],
        };
        for _ in 0..FOREGROUND_TRIES {
            let case = rng.below(self.pairs.len());
            let v = if domain_b {
                &self.pairs[case].b
            } else {
                &self.pairs[case].a
            };
            spec = PatchSpec {
                case,
                origin: v.dims.map(|d| rng.below(d - p + 1)),
                flip: [rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1],
            };
            if patch_mean(v, p, &spec) > self.air {
                break;
            }
        }
        spec
    }

    /// `(a, b)` patches of `patch`³ values: the same place of one case when `paired`, else two
    /// independent draws.
    pub fn sample(&self, rng: &mut SplitMix, paired: bool) -> (Vec<f32>, Vec<f32>) {
        let sa = self.draw(rng, false);
        let sb = if paired { sa } else { self.draw(rng, true) };
        (
            extract(&self.pairs[sa.case].a, self.patch, &sa),
            extract(&self.pairs[sb.case].b, self.patch, &sb),
        )
    }

    pub fn patch(&self) -> usize {
        self.patch
    }

    /// Sets the air threshold to `hu` in the HU `window` (the default is -1000 HU in the seed's).
    pub fn with_air_hu(mut self, hu: f32, window: [f32; 2]) -> Self {
        self.air = (hu - window[0]) / (window[1] - window[0]) * 2.0 - 1.0;
        self
    }
}

/// Both discriminators: `a` judges domain A images, `b` domain B images.
#[derive(Module, Debug)]
pub struct Discriminators<B: Backend> {
    pub a: Discriminator<B>,
    pub b: Discriminator<B>,
}

impl<B: Backend> Discriminators<B> {
    pub fn new(cfg: &RevGanConfig, device: &B::Device) -> Self {
        let d = Self {
            a: Discriminator::new(cfg.disc_channels(), cfg.ndf, device),
            b: Discriminator::new(cfg.disc_channels(), cfg.ndf, device),
        };
        crate::model::materialize(&d);
        d
    }

    /// The discriminator of `dir`'s target domain.
    pub fn target(&self, dir: Direction) -> &Discriminator<B> {
        match dir {
            Direction::AtoB => &self.b,
            Direction::BtoA => &self.a,
        }
    }
}

/// Mean binary cross-entropy of logits `x` against a constant `target` (numerically stable form
/// `max(x, 0) − x·t + log(1 + e^−|x|)`).
pub fn bce_logits<B: Backend>(x: Tensor<B, 5>, target: f64) -> Tensor<B, 1> {
    let soft = x.clone().abs().neg().exp().log1p();
    (x.clone().clamp_min(0.0) - x * target + soft).mean()
}

/// Mean squared error against a constant (LSGAN).
pub fn mse_const<B: Backend>(x: Tensor<B, 5>, target: f64) -> Tensor<B, 1> {
    (x - target).powi_scalar(2).mean()
}

/// Mean absolute error.
pub fn l1<B: Backend>(x: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 1> {
    (x - y).abs().mean()
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f64>()
}

/// Loss values of one step (for the CSV and the progress line).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLosses {
    /// Generator adversarial terms A→B and B→A.
    pub gan_ab: f64,
    pub gan_ba: f64,
    /// L1 (paired) or cycle (unpaired) terms, already weighted by λ: A→B (or A→B→A) and B→A.
    pub rec_ab: f64,
    pub rec_ba: f64,
    /// Discriminator losses.
    pub d_a: f64,
    pub d_b: f64,
}

impl StepLosses {
    pub fn generator(&self) -> f64 {
        self.gan_ab + self.gan_ba + self.rec_ab + self.rec_ba
    }
}

/// The core as a tracked tensor (`naive`) or a detached [`CoreSegment`] whose leaf stands in.
fn core_stage<B: AutodiffBackend>(
    gen: &RevGan<B>,
    dir: Direction,
    h: Tensor<B, 5>,
    naive: bool,
) -> (Tensor<B, 5>, Option<CoreSegment<B>>) {
    if naive {
        (gen.core_forward(dir, h), None)
    } else {
        let seg = gen.core_detached(dir, h);
        (seg.leaf.clone(), Some(seg))
    }
}

/// Backward of a stage loss whose graph may read a core segment's leaf: merges the generators'
/// gradients into `acc`, then runs the reversible backward and the encoder's backward.
fn backward_stage<B: AutodiffBackend>(
    gen: &RevGan<B>,
    loss: Tensor<B, 1>,
    seg: Option<CoreSegment<B>>,
    acc: &mut GradientsParams,
) -> Result<B::Gradients, TrainError> {
    let mut grads = loss.backward();
    gen.absorb(&mut grads, acc);
    if let Some(seg) = seg {
        let sur = gen.core_surrogate(seg, &grads, acc)?;
        let mut g = sur.backward();
        gen.absorb(&mut g, acc);
    }
    Ok(grads)
}

/// Generator gradients of one paired direction: `BCE(D(src, fake), 1) + λ·|fake − tgt|`.
/// Returns (gan, weighted L1, fake) values.
pub fn paired_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    disc: &Discriminators<B>,
    dir: Direction,
    src: Tensor<B, 5>,
    tgt: Tensor<B, 5>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<(f64, f64, Tensor<B::InnerBackend, 5>), TrainError> {
    let h = gen.encode(dir, src.clone());
    let (core_out, seg) = core_stage(gen, dir, h, cfg.naive);
    let fake = gen.decode(dir, core_out, src.clone());
    let rec = l1(fake.clone(), tgt) * cfg.lambda_l1;
    let gan = (cfg.lambda_gan > 0.0).then(|| {
        bce_logits(
            disc.target(dir)
                .forward(Tensor::cat(vec![src, fake.clone()], 1)),
            1.0,
        )
    });
    let values = (gan.as_ref().map_or(0.0, scalar), scalar(&rec));
    backward_stage(gen, with_adversarial(rec, gan, cfg), seg, acc)?;
    Ok((values.0, values.1, fake.inner()))
}

/// Generator gradients of one unpaired cycle `src → fake → rec`:
/// `MSE(D(fake), 1) + λ·|rec − src|`. Returns (gan, weighted cycle, fake) values.
pub fn unpaired_generator<B: AutodiffBackend>(
    gen: &RevGan<B>,
    disc: &Discriminators<B>,
    dir: Direction,
    src: Tensor<B, 5>,
    cfg: &TrainConfig,
    acc: &mut GradientsParams,
) -> Result<(f64, f64, Tensor<B::InnerBackend, 5>), TrainError> {
    let back = dir.reverse();
    if cfg.naive {
        let fake = gen.forward_even(dir, src.clone());
        let rec = gen.forward_even(back, fake.clone());
        let gan = adversarial(disc.target(dir), fake.clone(), cfg);
        let cyc = l1(rec, src) * cfg.lambda_cycle;
        let values = (gan.as_ref().map_or(0.0, scalar), scalar(&cyc));
        backward_stage(gen, with_adversarial(cyc, gan, cfg), None, acc)?;
        return Ok((values.0, values.1, fake.inner()));
    }
    // Stage 1: src -> fake (its core detached); stage 2: fake (as a leaf) -> rec.
    let h1 = gen.encode(dir, src.clone());
    let (o1, seg1) = core_stage(gen, dir, h1, false);
    let fake = gen.decode(dir, o1, src.clone());
    let gan = adversarial(disc.target(dir), fake.clone(), cfg);
    // The fake image enters stage 2 twice when the generator is residual (encoder input and skip);
    // each path gets its own leaf, since each backward pass consumes the graph it walks.
    let fake_leaf = Tensor::<B, 5>::from_inner(fake.clone().inner()).require_grad();
    let skip_leaf = Tensor::<B, 5>::from_inner(fake.clone().inner()).require_grad();
    let h2 = gen.encode(back, fake_leaf.clone());
    let (o2, seg2) = core_stage(gen, back, h2, false);
    let rec = gen.decode(back, o2, skip_leaf.clone());
    let cyc = l1(rec, src) * cfg.lambda_cycle;
    let values = (gan.as_ref().map_or(0.0, scalar), scalar(&cyc));
    // Stage 2's backward (its core, then its encoder) gives the gradient at the fake image ...
    let mut grads = cyc.backward();
    let g_skip = skip_leaf.grad(&grads);
    gen.absorb(&mut grads, acc);
    let sur2 = match seg2 {
        Some(seg) => gen.core_surrogate(seg, &grads, acc)?,
        None => return Err(RevGanError::MissingGradient("the cycle's core").into()),
    };
    let mut g2 = sur2.backward();
    let mut g_fake = fake_leaf
        .grad(&g2)
        .ok_or(RevGanError::MissingGradient("the translated image"))?;
    if let Some(g) = g_skip {
        g_fake = g_fake + g;
    }
    gen.absorb(&mut g2, acc);
    // ... which stage 1 backpropagates together with the adversarial term.
    let through = (fake.clone() * Tensor::from_inner(g_fake)).sum();
    let stage1 = with_adversarial(through, gan, cfg);
    backward_stage(gen, stage1, seg1, acc)?;
    Ok((values.0, values.1, fake.inner()))
}

/// The unpaired generator's adversarial term `MSE(D(fake), 1)` (LSGAN), or `None` when
/// `lambda_gan` is 0.
fn adversarial<B: AutodiffBackend>(
    disc: &Discriminator<B>,
    fake: Tensor<B, 5>,
    cfg: &TrainConfig,
) -> Option<Tensor<B, 1>> {
    (cfg.lambda_gan > 0.0).then(|| mse_const(disc.forward(fake), 1.0))
}

/// `rest + lambda_gan · gan` (just `rest` without an adversarial term).
fn with_adversarial<B: Backend>(
    rest: Tensor<B, 1>,
    gan: Option<Tensor<B, 1>>,
    cfg: &TrainConfig,
) -> Tensor<B, 1> {
    match gan {
        Some(g) => g * cfg.lambda_gan + rest,
        None => rest,
    }
}

/// The unpaired image pool (CycleGAN): until full, every fake is stored and returned; then each
/// fake is, with probability 1/2, swapped for a random stored one.
#[derive(Debug, Default)]
pub struct ImagePool<B: Backend> {
    size: usize,
    images: Vec<Tensor<B, 5>>,
}

impl<B: Backend> ImagePool<B> {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            images: Vec::new(),
        }
    }

    pub fn query(&mut self, fake: Tensor<B, 5>, rng: &mut SplitMix) -> Tensor<B, 5> {
        if self.size == 0 {
            return fake;
        }
        if self.images.len() < self.size {
            self.images.push(fake.clone());
            return fake;
        }
        if rng.unit() < 0.5 {
            let i = rng.below(self.images.len());
            std::mem::replace(&mut self.images[i], fake)
        } else {
            fake
        }
    }

    /// Stored images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Writes the stored images to `path`: little-endian `u64` count, then per image its 5 dims
    /// (`u64`) and its values (`f32`).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(self.images.len() as u64).to_le_bytes());
        for t in &self.images {
            for d in t.dims() {
                bytes.extend_from_slice(&(d as u64).to_le_bytes());
            }
            let v = t.to_data().convert::<f32>().to_vec::<f32>().map_err(|e| {
                TrainError::Checkpoint {
                    path: path.to_owned(),
                    reason: format!("image pool: {e:?}"),
                }
            })?;
            for x in v {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(path, bytes).map_err(io_err(path))
    }

    /// Reads images written by [`Self::save`] (replacing the stored ones).
    pub fn load(&mut self, path: &Path, device: &B::Device) -> Result<(), TrainError> {
        let bad = |reason: &str| TrainError::Checkpoint {
            path: path.to_owned(),
            reason: format!("image pool: {reason}"),
        };
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let mut at = 0usize;
        let u64_at = |at: &mut usize| -> Result<usize, TrainError> {
            let b = bytes
                .get(*at..*at + 8)
                .ok_or_else(|| bad("truncated file"))?;
            *at += 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(a)).map_err(|_| bad("size out of range"))
        };
        let n = u64_at(&mut at)?;
        if n > self.size {
            return Err(bad(&format!("{n} images for a pool of {}", self.size)));
        }
        let mut images = Vec::with_capacity(n);
        for _ in 0..n {
            let mut dims = [0usize; 5];
            for d in &mut dims {
                *d = u64_at(&mut at)?;
            }
            let len: usize = dims.iter().product();
            let raw = bytes
                .get(at..at + 4 * len)
                .ok_or_else(|| bad("truncated file"))?;
            at += 4 * len;
            let v: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            images.push(Tensor::from_data(TensorData::new(v, dims), device));
        }
        if at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        self.images = images;
        Ok(())
    }
}

/// Everything a training run holds.
pub struct Trainer<B: AutodiffBackend> {
    pub model_cfg: RevGanConfig,
    pub cfg: TrainConfig,
    pub gen: RevGan<B>,
    pub disc: Discriminators<B>,
    opt_g: burn::optim::adaptor::OptimizerAdaptor<burn::optim::Adam, RevGan<B>, B>,
    opt_d: burn::optim::adaptor::OptimizerAdaptor<burn::optim::Adam, Discriminators<B>, B>,
    pool_a: ImagePool<B::InnerBackend>,
    pool_b: ImagePool<B::InnerBackend>,
    pub device: B::Device,
    pub step: u64,
}

/// Serialises seeding and weight initialisation (see [`Trainer::new`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn adam(cfg: &TrainConfig) -> AdamConfig {
    // PyTorch's Adam epsilon (1e-8), which the reference uses.
    AdamConfig::new()
        .with_beta_1(cfg.beta1)
        .with_beta_2(cfg.beta2)
        .with_epsilon(1e-8)
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Fresh weights, seeded by `cfg.seed`.
    pub fn new(
        model_cfg: RevGanConfig,
        cfg: TrainConfig,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        model_cfg.validate()?;
        check_patch(cfg.patch)?;
        // The backend's generator is process-wide: hold a lock from seeding to the last draw so
        // concurrent trainers (tests) still get the weights their seed fixes.
        let (gen, disc) = {
            let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(&device, cfg.seed);
            let gen = RevGan::new(&model_cfg, &device);
            let disc = Discriminators::new(&model_cfg, &device);
            (gen, disc)
        };
        Ok(Self {
            opt_g: adam(&cfg).init(),
            opt_d: adam(&cfg).init(),
            pool_a: ImagePool::new(cfg.pool_size),
            pool_b: ImagePool::new(cfg.pool_size),
            model_cfg,
            cfg,
            gen,
            disc,
            device,
            step: 0,
        })
    }

    fn tensor(&self, data: Vec<f32>) -> Tensor<B, 5> {
        let p = self.cfg.patch;
        Tensor::from_data(TensorData::new(data, [1, 1, p, p, p]), &self.device)
    }

    /// One iteration on the patches `(a, b)` (each `patch`³, model units): a G step on both
    /// directions, then a D step.
    pub fn step(&mut self, a: Vec<f32>, b: Vec<f32>) -> Result<StepLosses, TrainError> {
        let mut rng = SplitMix::for_step(self.cfg.seed ^ 0x5EED, self.step);
        let lr = self.cfg.lr_at(self.step);
        let (a, b) = (self.tensor(a), self.tensor(b));
        let mut acc = GradientsParams::new();
        let mut l = StepLosses::default();
        let paired = self.cfg.mode == ModeArg::Paired;
        let (fake_b, fake_a);
        if paired {
            (l.gan_ab, l.rec_ab, fake_b) = paired_generator(
                &self.gen,
                &self.disc,
                Direction::AtoB,
                a.clone(),
                b.clone(),
                &self.cfg,
                &mut acc,
            )?;
            (l.gan_ba, l.rec_ba, fake_a) = paired_generator(
                &self.gen,
                &self.disc,
                Direction::BtoA,
                b.clone(),
                a.clone(),
                &self.cfg,
                &mut acc,
            )?;
        } else {
            (l.gan_ab, l.rec_ab, fake_b) = unpaired_generator(
                &self.gen,
                &self.disc,
                Direction::AtoB,
                a.clone(),
                &self.cfg,
                &mut acc,
            )?;
            (l.gan_ba, l.rec_ba, fake_a) = unpaired_generator(
                &self.gen,
                &self.disc,
                Direction::BtoA,
                b.clone(),
                &self.cfg,
                &mut acc,
            )?;
        }
        self.gen = self.opt_g.step(lr, self.gen.clone(), acc);

        if self.cfg.lambda_gan <= 0.0 {
            // No adversarial term: the discriminators are neither used nor trained.
            self.step += 1;
            return Ok(l);
        }
        // D step on detached fakes.
        let (fake_a, fake_b) = (
            Tensor::<B, 5>::from_inner(fake_a),
            Tensor::<B, 5>::from_inner(fake_b),
        );
        let (d_a, d_b) = if paired {
            let d = |disc: &Discriminator<B>, src: &Tensor<B, 5>, real, fake| {
                let r = bce_logits(disc.forward(Tensor::cat(vec![src.clone(), real], 1)), 1.0);
                let f = bce_logits(disc.forward(Tensor::cat(vec![src.clone(), fake], 1)), 0.0);
                (r + f) * 0.5
            };
            (
                d(&self.disc.a, &b, a.clone(), fake_a),
                d(&self.disc.b, &a, b.clone(), fake_b),
            )
        } else {
            let fa = Tensor::from_inner(self.pool_a.query(fake_a.inner(), &mut rng));
            let fb = Tensor::from_inner(self.pool_b.query(fake_b.inner(), &mut rng));
            let d = |disc: &Discriminator<B>, real, fake| {
                (mse_const(disc.forward(real), 1.0) + mse_const(disc.forward(fake), 0.0)) * 0.5
            };
            (d(&self.disc.a, a, fa), d(&self.disc.b, b, fb))
        };
        l.d_a = scalar(&d_a);
        l.d_b = scalar(&d_b);
        let grads = GradientsParams::from_grads((d_a + d_b).backward(), &self.disc);
        self.disc = self.opt_d.step(lr, self.disc.clone(), grads);
        self.step += 1;
        Ok(l)
    }

    /// Takes the skip filters out of training (`freeze_skip`); the other parameters are untouched.
    pub fn freeze_skips(&mut self) {
        if self.cfg.freeze_skip {
            for dec in [&mut self.gen.dec_a, &mut self.gen.dec_b] {
                dec.skip = dec.skip.take().map(|c| c.no_grad());
            }
        }
    }

    /// Replaces the skip filter of the generator `dir` (its taps and bias) by `fit`.
    pub fn set_skip(&mut self, dir: Direction, fit: &crate::lsq::FilterFit) {
        let dec = match dir {
            Direction::AtoB => &mut self.gen.dec_b,
            Direction::BtoA => &mut self.gen.dec_a,
        };
        if let Some(c) = dec.skip.as_mut() {
            let shape = c.weight.dims();
            c.weight = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(fit.taps.clone(), shape),
                &self.device,
            ));
            c.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![fit.bias], [1]),
                &self.device,
            )));
        }
    }

    /// Writes `dir/{generators,discriminators,optim_g,optim_d}.mpk` and `dir/state.json`.
    pub fn save(&self, dir: &Path, state: &TrainState) -> Result<(), TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        self.gen
            .clone()
            .save_file(dir.join(GEN_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        self.disc
            .clone()
            .save_file(dir.join(DISC_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        rec.record(self.opt_g.to_record(), dir.join(OPT_G_FILE))
            .map_err(|e| ck(e.to_string()))?;
        rec.record(self.opt_d.to_record(), dir.join(OPT_D_FILE))
            .map_err(|e| ck(e.to_string()))?;
        self.pool_a.save(&dir.join(POOL_A_FILE))?;
        self.pool_b.save(&dir.join(POOL_B_FILE))?;
        let json = serde_json::to_string_pretty(state).map_err(|e| ck(e.to_string()))?;
        let p = dir.join(STATE_FILE);
        std::fs::write(&p, json).map_err(io_err(&p))?;
        Ok(())
    }

    /// Loads a checkpoint written by [`Self::save`] into this (freshly built) trainer.
    pub fn load(&mut self, dir: &Path) -> Result<TrainState, TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason: format!("{reason} (was it written by a different architecture?)"),
        };
        let state = read_state(dir)?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let (gs, ds) = (param_shapes(&self.gen), param_shapes(&self.disc));
        self.gen = self
            .gen
            .clone()
            .load_file(dir.join(GEN_FILE), &rec, &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.disc = self
            .disc
            .clone()
            .load_file(dir.join(DISC_FILE), &rec, &self.device)
            .map_err(|e| ck(e.to_string()))?;
        if param_shapes(&self.gen) != gs || param_shapes(&self.disc) != ds {
            return Err(ck(
                "parameter shapes differ from this run's architecture".into()
            ));
        }
        let og = rec
            .load(dir.join(OPT_G_FILE), &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.opt_g = self.opt_g.clone().load_record(og);
        let od = rec
            .load(dir.join(OPT_D_FILE), &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.opt_d = self.opt_d.clone().load_record(od);
        let inner = self.device.clone();
        for (pool, file) in [
            (&mut self.pool_a, POOL_A_FILE),
            (&mut self.pool_b, POOL_B_FILE),
        ] {
            let p = dir.join(file);
            if p.exists() {
                pool.load(&p, &inner)?;
            } else {
                tracing::warn!(checkpoint = %dir.display(), "no {file} in the checkpoint: the image pool starts empty");
            }
        }
        self.step = state.step;
        Ok(state)
    }
}

/// Reads `dir/state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: p,
        reason: e.to_string(),
    })
}

/// Loads only the generators of a run directory (for export and evaluation).
pub fn load_generators<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(RevGanConfig, TrainConfig, TrainState, RevGan<B>), TrainError> {
    let (model_cfg, cfg) = read_configs(run)?;
    let ck = run.join(CHECKPOINT_DIR);
    let state = read_state(&ck)?;
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let fresh = RevGan::<B>::new(&model_cfg, device);
    let expected = param_shapes(&fresh);
    let mismatch = |reason: String| TrainError::Checkpoint {
        path: ck.clone(),
        reason: format!(
            "{reason}: the weights do not match the architecture in {} ({model_cfg:?})",
            run.join(MODEL_CONFIG).display()
        ),
    };
    let gen = fresh
        .load_file(ck.join(GEN_FILE), &rec, device)
        .map_err(|e| mismatch(e.to_string()))?;
    if param_shapes(&gen) != expected {
        return Err(mismatch("parameter shapes differ".into()));
    }
    Ok((model_cfg, cfg, state, gen))
}

/// Reads `run/model.json` and `run/train.json`.
pub fn read_configs(run: &Path) -> Result<(RevGanConfig, TrainConfig), TrainError> {
    let load_err = |p: PathBuf, e: String| TrainError::Checkpoint { path: p, reason: e };
    let mp = run.join(MODEL_CONFIG);
    let tp = run.join(TRAIN_CONFIG);
    let m: RevGanConfig =
        load_with_defaults(&mp, &RevGanConfig::new()).map_err(|e| load_err(mp.clone(), e))?;
    // `task` and `mode` have no defaults: the saved file's own values fill them first.
    let t: TrainConfig =
        load_with_defaults(&tp, &TrainConfig::new(TaskArg::Kernel, ModeArg::Paired))
            .map_err(|e| load_err(tp.clone(), e))?;
    Ok((m, t))
}

/// Reads a saved config, taking fields the file lacks (written by an older `ct-train`, before the
/// option existed) from `defaults`, which are that option's neutral values.
fn load_with_defaults<C: serde::Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    defaults: &C,
) -> Result<C, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut merged = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
    match (&mut merged, saved) {
        (serde_json::Value::Object(m), serde_json::Value::Object(s)) => m.extend(s),
        _ => return Err("not a JSON object".into()),
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

/// `ct-train train` options.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Training data: DIR/{source,target} (or sharp/soft, low/high), or one such folder per case.
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory (configs, checkpoint, losses.csv).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "kernel")]
    pub task: TaskArg,
    #[arg(long, value_enum, default_value = "paired")]
    pub mode: ModeArg,
    /// Reversible blocks in the shared core (seed 000's "+2R" = 2).
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Plain autodiff through the core (reference for tests and the memory benchmark).
    #[arg(long)]
    pub naive: bool,
    /// Global residual generator: output = source + decoder (see `RevGanConfig::residual`).
    #[arg(long)]
    pub residual: bool,
    /// With --residual: a learnable in-plane k×k linear skip filter instead of the identity skip
    /// (odd, 3..=15; the A→B one starts as the baseline Gaussian). 0 = identity skip.
    #[arg(long, default_value_t = 0)]
    pub skip_kernel: usize,
    /// With --residual: factor on the decoder branch (residual scaling; 1 = none).
    #[arg(long, default_value_t = 1.0)]
    pub branch_scale: f64,
    /// With --skip-kernel: z taps of the skip filter (odd; 1 = in-plane only).
    #[arg(long, default_value_t = 1)]
    pub skip_depth: usize,
    /// With --skip-kernel: start the skip filters as the baseline Gaussian / identity, or as the
    /// least-squares linear filters fitted on the training pairs.
    #[arg(long, value_enum, default_value = "baseline")]
    pub skip_init: SkipInit,
    /// HU window mapped onto [-1, 1] as "LO,HI" (seed 000: -1150,350). Input outside it is clipped,
    /// so a model meant to keep bone and metal faithful needs a wider one.
    #[arg(long, default_value = "-1150,350", value_parser = parse_window)]
    pub hu_window: [f32; 2],
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Cubic patch edge (multiple of 4, at least 16).
    #[arg(long, default_value_t = 32)]
    pub patch: usize,
    /// Generator base channels (reference: 32).
    #[arg(long, default_value_t = 32)]
    pub ngf: usize,
    /// Discriminator base channels (reference: 64).
    #[arg(long, default_value_t = 64)]
    pub ndf: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.5)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    /// Paired L1 weight.
    #[arg(long, default_value_t = 100.0)]
    pub lambda_l1: f64,
    /// Unpaired cycle weight.
    #[arg(long, default_value_t = 10.0)]
    pub lambda_cycle: f64,
    /// Adversarial weight in the generator loss; 0 = L1 / cycle only, discriminators untrained.
    #[arg(long, default_value_t = 1.0)]
    pub lambda_gan: f64,
    /// With --skip-kernel: keep the skip filters at their starting taps (train the branch only).
    #[arg(long)]
    pub freeze_skip: bool,
    #[arg(long, default_value_t = 50)]
    pub pool_size: usize,
    /// Steps of linear learning-rate decay at the end (default: steps / 6).
    #[arg(long)]
    pub decay_steps: Option<u64>,
    /// Steps of linear learning-rate warm-up at the start (default: none).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run even if --out already holds one (it is replaced).
    #[arg(long)]
    pub force: bool,
}

/// Parses "LO,HI" into an HU window (LO < HI, both finite).
pub fn parse_window(s: &str) -> Result<[f32; 2], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    match v[..] {
        [lo, hi] if lo.is_finite() && hi.is_finite() && lo < hi => Ok([lo, hi]),
        _ => Err(format!("{s:?}: expected LO,HI with LO < HI")),
    }
}

impl TrainArgs {
    pub fn configs(&self) -> (RevGanConfig, TrainConfig) {
        let m = RevGanConfig::new()
            .with_ngf(self.ngf)
            .with_ndf(self.ndf)
            .with_blocks(self.blocks)
            .with_conditional(self.mode == ModeArg::Paired)
            .with_residual(self.residual)
            .with_skip_kernel(self.skip_kernel)
            .with_branch_scale(self.branch_scale)
            .with_skip_depth(self.skip_depth);
        let t = TrainConfig::new(self.task, self.mode)
            .with_naive(self.naive)
            .with_steps(self.steps)
            .with_patch(self.patch)
            .with_seed(self.seed)
            .with_lr(self.lr)
            .with_beta1(self.beta1)
            .with_beta2(self.beta2)
            .with_lambda_l1(self.lambda_l1)
            .with_lambda_cycle(self.lambda_cycle)
            .with_lambda_gan(self.lambda_gan)
            .with_freeze_skip(self.freeze_skip)
            .with_pool_size(self.pool_size)
            .with_decay_steps(self.decay_steps)
            .with_warmup_steps(self.warmup_steps)
            .with_checkpoint_every(self.checkpoint_every.max(1))
            .with_data(self.data.display().to_string())
            .with_skip_init(self.skip_init)
            .with_hu_window(self.hu_window);
        (m, t)
    }
}

/// The CPU backend (Burn `flex`).
pub type CpuBackend = burn::backend::Flex;

/// Runs `ct-train train`: on CUDA when built with `--features cuda` and a device can be created
/// (else on the CPU, said in one log line), otherwise on the CPU.
pub fn run(args: &TrainArgs) -> Result<TrainState, TrainError> {
    #[cfg(feature = "cuda")]
    {
        if let Some(device) = cuda_device() {
            tracing::info!("training on CUDA device {device:?}");
            return train::<burn::backend::Autodiff<burn_cuda::Cuda>>(args, device, "cuda");
        }
        tracing::warn!(
            "built with CUDA support but no CUDA device could be created; training on the CPU"
        );
    }
    train::<burn::backend::Autodiff<CpuBackend>>(args, Default::default(), "cpu")
}

/// Creates a CUDA device and runs one tiny operation on it; `None` when that panics (no driver,
/// no GPU). The default panic message is silenced for the probe.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Option<burn_cuda::CudaDevice> {
    use burn_cuda::{Cuda, CudaDevice};
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = CudaDevice::default();
        let t = Tensor::<Cuda, 1>::zeros([1], &device) + 1.0;
        let _ = t.into_data();
        device
    });
    std::panic::set_hook(hook);
    probe.ok()
}

fn check_resume_matches(
    run: &Path,
    model_cfg: &RevGanConfig,
    cfg: &TrainConfig,
) -> Result<(), TrainError> {
    let (m0, t0) = read_configs(run)?;
    if &m0 != model_cfg {
        return Err(TrainError::Options(format!(
            "--resume: the architecture in {} ({m0:?}) differs from the options ({model_cfg:?})",
            run.join(MODEL_CONFIG).display()
        )));
    }
    // Everything but the step budget (a resumed run may be extended) must match.
    let mut t1 = cfg.clone();
    t1.steps = t0.steps;
    t1.decay_steps = t0.decay_steps;
    t1.checkpoint_every = t0.checkpoint_every;
    if t1 != t0 {
        return Err(TrainError::Options(format!(
            "--resume: the training options in {} differ from the ones given",
            run.join(TRAIN_CONFIG).display()
        )));
    }
    Ok(())
}

/// Keeps the CSV rows of steps `<= step` (the ones the checkpoint has seen).
fn truncate_csv(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_none_or(|s| s <= step)
        })
        .collect();
    std::fs::write(path, kept.join("\n") + "\n").map_err(io_err(path))
}

/// Replaces `run/checkpoint` atomically (write beside, then rename).
/// Validation patches drawn once per run (fixed by the seed) for the checkpoint pictures.
const VAL_PATCHES: usize = 3;
/// Mixed into the run seed for the validation draw, so it differs from every step's draw.
const VAL_SEED: u64 = 0x0005_EED0_F7A1;
/// Folder of the validation pictures in a run directory.
pub const VAL_DIR: &str = "val";
pub const LOSSES_PNG: &str = "losses.png";

/// Grey levels of the validation pictures: the seed window [-1150, 350] HU, whatever the model's
/// own window (in a wide window such as [-1150, 3000] soft tissue and lung are nearly black).
const DISPLAY_WINDOW: HuWindow = HuWindow {
    lo: -1150.0,
    hi: 350.0,
};

/// PSNR (data range 2) of `a` against `b`, both in [-1, 1] units of `DISPLAY_WINDOW`.
fn psnr_unit(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / n;
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// Writes `losses.png` and `val/step_NNNNNN.png` (input | A→B output | target, middle slice of
/// each validation patch, in `DISPLAY_WINDOW`), and logs the PSNR of the output and of the input
/// against the target over the whole validation patches (same window). A picture that cannot be
/// drawn is a warning, never a stopped run.
fn write_pictures<B: AutodiffBackend>(
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

fn checkpoint<B: AutodiffBackend>(
    t: &Trainer<B>,
    run: &Path,
    state: &TrainState,
) -> Result<(), TrainError> {
    let tmp = run.join(".checkpoint.tmp");
    let old = run.join(".checkpoint.old");
    let dst = run.join(CHECKPOINT_DIR);
    let _ = std::fs::remove_dir_all(&tmp);
    t.save(&tmp, state)?;
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The training loop on backend `B`.
pub fn train<B: AutodiffBackend>(
    args: &TrainArgs,
    device: B::Device,
    device_name: &str,
) -> Result<TrainState, TrainError> {
    let (model_cfg, mut cfg) = args.configs();
    model_cfg.validate()?;
    check_patch(cfg.patch)?;
    if !(cfg.lambda_gan >= 0.0 && cfg.lambda_gan.is_finite()) {
        return Err(TrainError::Options(format!(
            "--lambda-gan {}: expected a finite weight >= 0",
            cfg.lambda_gan
        )));
    }
    let run = &args.out;
    let has_run = run.join(CHECKPOINT_DIR).join(STATE_FILE).exists();
    if args.resume && !has_run {
        return Err(TrainError::Options(format!(
            "--resume: {} holds no checkpoint",
            run.display()
        )));
    }
    if !args.resume && has_run && !args.force {
        return Err(TrainError::Options(format!(
            "{} already holds a training run: pass --resume to continue it or --force to replace it",
            run.display()
        )));
    }
    let data = load_pairs(&args.data, cfg.hu_window, cfg.task)?;
    cfg.scale = data.scale;
    if args.resume {
        check_resume_matches(run, &model_cfg, &cfg)?;
    }
    // Least-squares starting filters (fitted before the sampler takes the volumes).
    let fits = if model_cfg.skip_kernel > 0 && cfg.skip_init == SkipInit::Lsq && !args.resume {
        let (d, k) = (model_cfg.skip_depth, model_cfg.skip_kernel);
        let fit = |reverse| {
            crate::lsq::fit_filter(&data.pairs, reverse, d, k, crate::lsq::SAMPLES, cfg.seed)
                .map_err(|e| TrainError::Data {
                    path: args.data.clone(),
                    reason: e.to_string(),
                })
        };
        let (ab, ba) = (fit(false)?, fit(true)?);
        for (dir, f) in [("A->B", &ab), ("B->A", &ba)] {
            tracing::info!(
                direction = dir,
                mae = f.mae,
                identity_mae = f.identity_mae,
                samples = f.samples,
                "least-squares {d}x{k}x{k} skip filter fitted"
            );
        }
        Some((ab, ba))
    } else {
        None
    };
    let sampler = PatchSampler::new(data.pairs, cfg.patch)?.with_air_hu(-1000.0, cfg.hu_window);
    std::fs::create_dir_all(run).map_err(io_err(run))?;
    let mp = run.join(MODEL_CONFIG);
    let tp = run.join(TRAIN_CONFIG);
    model_cfg.save(&mp).map_err(io_err(&mp))?;
    cfg.save(&tp).map_err(io_err(&tp))?;

    let mut t = Trainer::<B>::new(model_cfg, cfg.clone(), device)?;
    if let Some((ab, ba)) = fits {
        t.set_skip(Direction::AtoB, &ab);
        t.set_skip(Direction::BtoA, &ba);
    }
    t.freeze_skips();
    let mut state = TrainState {
        step: 0,
        seconds: 0.0,
        device: device_name.to_owned(),
    };
    let csv_path = run.join(LOSSES_CSV);
    if args.resume {
        state = t.load(&run.join(CHECKPOINT_DIR))?;
        t.freeze_skips();
        state.device = device_name.to_owned();
        truncate_csv(&csv_path, state.step)?;
        tracing::info!(step = state.step, "resumed {}", run.display());
    } else {
        let _ = std::fs::remove_dir_all(run.join(CHECKPOINT_DIR));
        std::fs::write(
            &csv_path,
            "step,lr,gan_ab,gan_ba,rec_ab,rec_ba,d_a,d_b,seconds\n",
        )
        .map_err(io_err(&csv_path))?;
    }
    let mut csv = std::fs::OpenOptions::new()
        .append(true)
        .open(&csv_path)
        .map_err(io_err(&csv_path))?;

    let val: Vec<(Vec<f32>, Vec<f32>)> = {
        let mut rng = SplitMix::new(cfg.seed ^ VAL_SEED);
        (0..VAL_PATCHES)
            .map(|_| sampler.sample(&mut rng, true))
            .collect()
    };
    let bar = indicatif::ProgressBar::new(cfg.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .map_err(|e| TrainError::Progress(e.to_string()))?
        .progress_chars("=> "),
    );
    bar.set_position(state.step);
    let started = Instant::now();
    let seconds0 = state.seconds;
    while t.step < cfg.steps {
        let step = t.step;
        let mut rng = SplitMix::for_step(cfg.seed, step);
        let (a, b) = sampler.sample(&mut rng, cfg.mode == ModeArg::Paired);
        let t0 = Instant::now();
        let l = t.step(a, b)?;
        let dt = t0.elapsed().as_secs_f64();
        writeln!(
            csv,
            "{},{:.6e},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3}",
            step + 1,
            cfg.lr_at(step),
            l.gan_ab,
            l.gan_ba,
            l.rec_ab,
            l.rec_ba,
            l.d_a,
            l.d_b,
            dt
        )
        .map_err(io_err(&csv_path))?;
        bar.set_message(format!(
            "G {:.3} (gan {:.3}/{:.3} rec {:.3}/{:.3}) D {:.3}/{:.3} {:.2} s/it",
            l.generator(),
            l.gan_ab,
            l.gan_ba,
            l.rec_ab,
            l.rec_ba,
            l.d_a,
            l.d_b,
            dt
        ));
        bar.inc(1);
        if t.step % cfg.checkpoint_every == 0 || t.step == cfg.steps {
            state.step = t.step;
            state.seconds = seconds0 + started.elapsed().as_secs_f64();
            checkpoint(&t, run, &state)?;
            csv.flush().map_err(io_err(&csv_path))?;
            write_pictures(&t, run, &val, cfg.patch);
        }
    }
    bar.finish();
    state.step = t.step;
    state.seconds = seconds0 + started.elapsed().as_secs_f64();
    if !run.join(CHECKPOINT_DIR).join(STATE_FILE).exists() {
        checkpoint(&t, run, &state)?;
    }
    Ok(state)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    fn tiny(mode: ModeArg, naive: bool) -> Trainer<A> {
        let m = RevGanConfig::new()
            .with_ngf(2)
            .with_ndf(2)
            .with_blocks(1)
            .with_conditional(mode == ModeArg::Paired);
        let t = TrainConfig::new(TaskArg::Kernel, mode)
            .with_patch(16)
            .with_steps(4)
            .with_naive(naive)
            .with_pool_size(2);
        Trainer::new(m, t, Default::default()).unwrap()
    }

    /// Runs `f` on a one-thread rayon pool: burn-flex's threaded reductions split work as threads
    /// steal it, so their float sums can differ in the last bits from run to run, and Adam's first
    /// step (about ±lr on every weight whatever the gradient's size) turns that into visible
    /// differences on these tiny networks. Tests comparing two computations pin the order.
    fn one_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(f)
    }

    /// A tensor's values (for comparing weights before and after a step).
    fn vals<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn patch(seed: u64) -> Vec<f32> {
        let mut r = SplitMix::new(seed);
        (0..16 * 16 * 16)
            .map(|_| r.unit() as f32 * 2.0 - 1.0)
            .collect()
    }

    /// The reversible and the naive training steps give the same losses and the same weights.
    #[test]
    fn reversible_step_equals_naive_step() {
        one_thread(reversible_equals_naive)
    }

    fn reversible_equals_naive() {
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let mut r = tiny(mode, false);
            let mut n = tiny(mode, true);
            for s in 0..2 {
                let lr = r.step(patch(s), patch(s + 10)).unwrap();
                let ln = n.step(patch(s), patch(s + 10)).unwrap();
                assert!(
                    (lr.generator() - ln.generator()).abs() < 1e-4,
                    "{lr:?} {ln:?}"
                );
            }
            // Compare the core's weights after two optimizer steps.
            let wr: Vec<f32> = vals(r.gen.core[0].f.conv2.weight.val());
            let wn: Vec<f32> = vals(n.gen.core[0].f.conv2.weight.val());
            let d = wr
                .iter()
                .zip(&wn)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-5, "{mode:?}: weights differ by {d}");
        }
    }

    /// `freeze_skip`: the skip filters keep their taps through steps, a checkpoint and a resume,
    /// while the rest of the generator learns.
    #[test]
    fn frozen_skip_filters_do_not_move() {
        let m = RevGanConfig::new()
            .with_ngf(2)
            .with_ndf(2)
            .with_blocks(1)
            .with_residual(true)
            .with_skip_kernel(3)
            .with_skip_depth(3);
        let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_patch(16)
            .with_steps(4)
            .with_freeze_skip(true);
        let mut tr = Trainer::<A>::new(m.clone(), t.clone(), Default::default()).unwrap();
        tr.freeze_skips();
        let taps = |tr: &Trainer<A>| -> Vec<f32> {
            let c = tr.gen.dec_b.skip.as_ref().unwrap();
            vals(c.weight.val())
        };
        // The decoder's last conv: zero at the start, so the first gradients reach only it.
        let branch = |tr: &Trainer<A>| -> Vec<f32> { vals(tr.gen.dec_b.conv_out.weight.val()) };
        let (s0, b0) = (taps(&tr), branch(&tr));
        tr.step(patch(1), patch(2)).unwrap();
        assert_eq!(taps(&tr), s0);
        assert_ne!(branch(&tr), b0);
        let dir = tempfile::tempdir().unwrap();
        let state = TrainState {
            step: tr.step,
            seconds: 0.0,
            device: "cpu".into(),
        };
        tr.save(dir.path(), &state).unwrap();
        let mut back = Trainer::<A>::new(m, t, Default::default()).unwrap();
        back.load(dir.path()).unwrap();
        back.freeze_skips();
        back.step(patch(3), patch(4)).unwrap();
        assert_eq!(taps(&back), s0);
    }

    /// `lambda_gan = 0`: no adversarial loss, the discriminators stay as they were, the
    /// generators still learn; reversible and naive steps still agree.
    #[test]
    fn without_the_adversarial_term_only_the_generators_learn() {
        one_thread(adversarial_off)
    }

    fn adversarial_off() {
        let weights = |t: &Trainer<A>| -> (Vec<f32>, Vec<f32>) {
            let d = vals(t.disc.a.conv1.weight.val());
            let g = vals(t.gen.enc_a.conv_in.weight.val());
            (d, g)
        };
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let mut runs = Vec::new();
            for naive in [false, true] {
                let mut t = tiny(mode, naive);
                t.cfg.lambda_gan = 0.0;
                let (d0, g0) = weights(&t);
                let l = t.step(patch(1), patch(2)).unwrap();
                let (d1, g1) = weights(&t);
                assert_eq!(d0, d1, "{mode:?}: a discriminator changed");
                assert_ne!(g0, g1, "{mode:?}: the generator did not learn");
                assert_eq!((l.gan_ab, l.gan_ba, l.d_a, l.d_b), (0.0, 0.0, 0.0, 0.0));
                assert!(l.rec_ab > 0.0 && l.rec_ba > 0.0, "{l:?}");
                runs.push((l, g1));
            }
            let (r, n) = (&runs[0], &runs[1]);
            assert!(
                (r.0.generator() - n.0.generator()).abs() < 1e-4,
                "{r:?} {n:?}"
            );
        }
    }

    #[test]
    fn configs_of_older_runs_load_with_neutral_defaults() {
        let dir = tempfile::tempdir().unwrap();
        // model.json / train.json as ct-train wrote them before the residual options existed.
        std::fs::write(
            dir.path().join(MODEL_CONFIG),
            r#"{"ngf": 16, "ndf": 32, "blocks": 2, "conditional": true}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join(TRAIN_CONFIG),
            r#"{"task": "superres", "mode": "unpaired", "steps": 250, "patch": 32}"#,
        )
        .unwrap();
        let (m, t) = read_configs(dir.path()).unwrap();
        assert_eq!(
            (m.ngf, m.blocks, m.residual, m.skip_kernel),
            (16, 2, false, 0)
        );
        assert_eq!(
            (t.task, t.mode, t.steps),
            (TaskArg::Superres, ModeArg::Unpaired, 250)
        );
        assert_eq!(t.scale, [1, 1, 1]);
        std::fs::write(dir.path().join(MODEL_CONFIG), "[1, 2]").unwrap();
        let e = read_configs(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.json") && e.contains("JSON object"), "{e}");
    }

    #[test]
    fn lr_schedule_decays_linearly_to_zero() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_steps(12)
            .with_decay_steps(Some(3));
        assert_eq!(c.lr_at(0), 2e-4);
        assert_eq!(c.lr_at(8), 2e-4);
        assert!((c.lr_at(9) - 2e-4 * 3.0 / 4.0).abs() < 1e-12);
        assert!((c.lr_at(11) - 2e-4 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn lr_warms_up_linearly() {
        let c = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
            .with_steps(100)
            .with_warmup_steps(4);
        assert!((c.lr_at(0) - 2e-4 / 4.0).abs() < 1e-12);
        assert!((c.lr_at(2) - 2e-4 * 3.0 / 4.0).abs() < 1e-12);
        assert_eq!(c.lr_at(3), 2e-4);
        assert_eq!(c.lr_at(50), 2e-4);
    }

    #[test]
    fn sampler_is_reproducible_and_checks_sizes() {
        let v = |n: &str, off: f32| Volume {
            name: n.into(),
            dims: [20, 24, 28],
            data: (0..20 * 24 * 28).map(|i| (i as f32 * 1e-4) + off).collect(),
        };
        let s = PatchSampler::new(
            vec![PairedVolume {
                a: v("a", 0.0),
                b: v("b", 1.0),
            }],
            16,
        )
        .unwrap();
        let (a1, b1) = s.sample(&mut SplitMix::for_step(3, 5), true);
        let (a2, b2) = s.sample(&mut SplitMix::for_step(3, 5), true);
        assert_eq!((a1.clone(), b1.clone()), (a2, b2));
        // Paired patches come from the same place.
        assert!(a1.iter().zip(&b1).all(|(x, y)| (y - x - 1.0).abs() < 1e-5));
        assert!(PatchSampler::new(
            vec![PairedVolume {
                a: v("a", 0.0),
                b: v("b", 0.0)
            }],
            32
        )
        .is_err());
    }

    #[test]
    fn checkpoint_round_trip() {
        // Unpaired runs also need their image pool back to continue exactly.
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let dir = tempfile::tempdir().unwrap();
            let mut t = tiny(mode, false);
            t.step(patch(1), patch(2)).unwrap();
            t.step(patch(5), patch(6)).unwrap();
            let st = TrainState {
                step: 2,
                seconds: 0.5,
                device: "cpu".into(),
            };
            t.save(dir.path(), &st).unwrap();
            let mut u = tiny(mode, false);
            assert_eq!(u.load(dir.path()).unwrap(), st);
            assert_eq!(u.pool_a.len(), t.pool_a.len());
            if mode == ModeArg::Unpaired {
                assert_eq!(u.pool_a.len(), 2);
            }
            let w = |m: &Trainer<A>| -> Vec<f32> { vals(m.gen.enc_a.conv_in.weight.val()) };
            assert_eq!(w(&t), w(&u));
            // Same next steps from both (the pool answers the same from the second on).
            for k in [3, 7] {
                let l1 = t.step(patch(k), patch(k + 1)).unwrap();
                let l2 = u.step(patch(k), patch(k + 1)).unwrap();
                assert!(
                    (l1.generator() - l2.generator()).abs() < 1e-6
                        && (l1.d_a + l1.d_b - l2.d_a - l2.d_b).abs() < 1e-6,
                    "{mode:?}: {l1:?} vs {l2:?}"
                );
            }
        }
    }
}
