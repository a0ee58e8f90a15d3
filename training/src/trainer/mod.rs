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
//! The reversible core is trained with the memory-efficient backward of [`crate::model::revgan`] unless
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
//!
//! Files: this module (the [`Trainer`] and its iteration), [`step`] (the generator losses and the
//! reversible backward), [`pool`] (the image pool), [`checkpoint`] (run files, save/load),
//! [`pictures`] (validation pictures), [`run`](mod@run) (the `train` command and its loop).

pub mod checkpoint;
pub mod megan;
pub mod pictures;
pub mod pool;
pub mod run;
pub mod step;
#[cfg(test)]
mod tests;

pub use checkpoint::{load_generators, read_configs, read_state, TrainState};
pub use pool::ImagePool;
pub use run::{run, train, TrainArgs};
pub use step::{paired_generator, unpaired_generator, StepLosses};

use crate::config::{ModeArg, TrainConfig};
use crate::data::rng::step_rng;
use crate::data::DataError;
use crate::losses::{bce_logits, mse_const};
use crate::lsq::FilterFit;
use crate::model::{
    check_patch, Direction, Discriminator, Discriminators, ModelError, RevGan, RevGanConfig,
    RevGanError,
};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};
use step::scalar;

/// The CPU backend (Burn `flex`).
pub type CpuBackend = burn::backend::Flex;

/// Mixed into the run seed for the image pool's draws in a step, so they differ from that step's
/// patch draws (an arbitrary constant).
const POOL_STREAM: u64 = 0x5EED;

/// Files of a run directory.
pub const MODEL_CONFIG: &str = "model.json";
pub const TRAIN_CONFIG: &str = "train.json";
pub const LOSSES_CSV: &str = "losses.csv";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const STATE_FILE: &str = "state.json";
pub(crate) const GEN_FILE: &str = "generators";
pub(crate) const DISC_FILE: &str = "discriminators";
pub(crate) const OPT_G_FILE: &str = "optim_g";
pub(crate) const OPT_D_FILE: &str = "optim_d";
pub(crate) const POOL_A_FILE: &str = "pool_a.bin";
pub(crate) const POOL_B_FILE: &str = "pool_b.bin";
/// Errors training a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    RevGan(#[from] RevGanError),
    #[error(transparent)]
    Loading(#[from] DataError),
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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
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
        let mut rng = step_rng(self.cfg.seed ^ POOL_STREAM, self.step);
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
    pub fn set_skip(&mut self, dir: Direction, fit: &FilterFit) {
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
}
