//! `ct-train train`: trains a 3D RevGAN (seed 000; `shared/MODELS.md` §1) on paired or unpaired
//! volumes, on the CPU (Burn `flex`, or LibTorch's kernels when built with `--features tch`) or,
//! built with `--features cuda`, on a CUDA GPU when one exists (`--backend`, [`run`](mod@run)).
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
//! Options of issue 12, all off by default ([`TrainConfig`]): the SSIM cycle loss, the identity
//! loss, the cycle-perceptual and cycle-style losses on discriminator features (unpaired), the
//! G:D update ratio `k`, separate G/D learning rates, and HA-GAN's amortised mode
//! ([`Trainer::step_amortised`], data from [`crate::data::amortised`]).
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
//! a resumed run continues exactly). `--init-from RUN` starts a new run from another run's
//! checkpoint with a deeper core (issue 11: "A deeper core grown from 1.1.0" in the README): every
//! trained parameter copied with its Adam moments, the added reversible blocks exactly the identity
//! (their F and G end in zero convolutions), the step counter and the learning-rate schedule
//! continued; `grown_from.json` in the run directory records the checkpoint, its step and the
//! blocks, and `ct-train export` names them in the provenance ([`checkpoint::GrownFrom`]).
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
pub use step::{
    cycle_term, identity_generator, lowres_generator, paired_generator, unpaired_generator,
    StepLosses,
};

use crate::config::{CycleLoss, ModeArg, OptionError, TrainConfig};
use crate::data::amortised::{AmortisedSample, LowRes};
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
use burn::tensor::backend::{AutodiffBackend, Backend};
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
    #[error(transparent)]
    Option(#[from] OptionError),
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
    /// Discriminator steps taken by this trainer since it was built or loaded (not saved: with
    /// `k`, which steps train the discriminators follows from the step number).
    pub d_steps: u64,
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

/// Moves a module's parameters from the CPU backend to `B` (into `empty`, a module of the same
/// architecture on `B`) through the full-precision record bytes: exact for f32.
fn move_module<M1, M2, B>(from: M1, empty: M2, device: &B::Device) -> Result<M2, TrainError>
where
    M1: Module<CpuBackend>,
    M2: Module<B>,
    B: burn::tensor::backend::Backend,
{
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    let rec = BinBytesRecorder::<FullPrecisionSettings>::new();
    let moved = |e: burn::record::RecorderError| {
        TrainError::Settings(format!(
            "moving the initial weights to the training device: {e}"
        ))
    };
    let bytes = rec.record(from.into_record(), ()).map_err(moved)?;
    let record = rec.load(bytes, device).map_err(moved)?;
    Ok(empty.load_record(record))
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Fresh weights, seeded by `cfg.seed` (drawn on the CPU backend, see the body).
    pub fn new(
        model_cfg: RevGanConfig,
        cfg: TrainConfig,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        model_cfg.validate()?;
        check_patch(cfg.patch)?;
        cfg.check_options()?;
        // Weights are drawn on the CPU backend whatever `B` is, then moved to `B` by their record:
        // one seed gives the same starting weights on burn-flex, LibTorch and CUDA, so runs on
        // different backends can be compared step by step (issue 13 §2: "losses unchanged for the
        // same seed"). The CPU generator is process-wide: hold a lock from seeding to the last
        // draw so concurrent trainers (tests) still get the weights their seed fixes.
        let (gen, disc) = {
            let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if std::any::TypeId::of::<B::InnerBackend>() == std::any::TypeId::of::<CpuBackend>() {
                // On the CPU backend itself, draw in place (the same values, and parameters made
                // the way every earlier run and test made them).
                B::seed(&device, cfg.seed);
                let gen = RevGan::new(&model_cfg, &device);
                let disc = Discriminators::new(&model_cfg, &device);
                (gen, disc)
            } else {
                let cpu = Default::default();
                CpuBackend::seed(&cpu, cfg.seed);
                let gen = RevGan::<CpuBackend>::new(&model_cfg, &cpu);
                let disc = Discriminators::<CpuBackend>::new(&model_cfg, &cpu);
                (
                    move_module(gen, RevGan::new(&model_cfg, &device), &device)?,
                    move_module(disc, Discriminators::new(&model_cfg, &device), &device)?,
                )
            }
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
            d_steps: 0,
        })
    }

    fn tensor(&self, data: Vec<f32>) -> Tensor<B, 5> {
        let p = self.cfg.patch;
        Tensor::from_data(TensorData::new(data, [1, 1, p, p, p]), &self.device)
    }

    /// One iteration on the patches `(a, b)` (each `patch`³, model units): a G step on both
    /// directions, then a D step (every `k`-th iteration).
    pub fn step(&mut self, a: Vec<f32>, b: Vec<f32>) -> Result<StepLosses, TrainError> {
        self.step_with(a, b, None)
    }

    /// One amortised iteration (HA-GAN, seed 002): [`Self::step`] on the high-resolution patches
    /// plus, before the generator update, the low-resolution whole-volume terms
    /// ([`lowres_generator`]; unpaired: a low-resolution cycle without adversarial term), weighted
    /// by `lambda_lowres` and added to `rec_ab` / `rec_ba`.
    pub fn step_amortised(&mut self, s: AmortisedSample) -> Result<StepLosses, TrainError> {
        let (a, b) = (s.a.patch.clone(), s.b.patch.clone());
        self.step_with(a, b, Some(s))
    }

    /// A whole low-resolution volume as a `[1, 1, d, h, w]` tensor.
    fn low_tensor(&self, low: &LowRes) -> Tensor<B, 5> {
        let [d, h, w] = low.shape;
        Tensor::from_data(
            TensorData::new(low.values.clone(), [1, 1, d, h, w]),
            &self.device,
        )
    }

    /// The low-resolution terms of an amortised step (see [`Self::step_amortised`]).
    fn amortised_terms(
        &self,
        s: &AmortisedSample,
        fakes: [&Tensor<B::InnerBackend, 5>; 2],
        acc: &mut GradientsParams,
    ) -> Result<[f64; 2], TrainError> {
        let paired = self.cfg.mode == ModeArg::Paired;
        let (la, lb) = (self.low_tensor(&s.a.low), self.low_tensor(&s.b.low));
        let rec_weight = if paired {
            self.cfg.lambda_l1
        } else {
            self.cfg.lambda_cycle
        };
        let weight = self.cfg.lambda_lowres * rec_weight;
        let mut out = [0.0; 2];
        for (i, dir) in [Direction::AtoB, Direction::BtoA].into_iter().enumerate() {
            let (src, tgt, view) = match dir {
                Direction::AtoB => (la.clone(), lb.clone(), &s.a),
                Direction::BtoA => (lb.clone(), la.clone(), &s.b),
            };
            let anchor = step::Anchor {
                fake_patch: fakes[i].clone(),
                factor: s.factor,
                cells: s.cells,
                low_origin: view.low_origin(s.factor),
            };
            if paired {
                out[i] += lowres_generator(
                    &self.gen,
                    dir,
                    src,
                    step::LowTerms {
                        target: Some(tgt),
                        anchor: Some(anchor),
                        weight,
                    },
                    &self.cfg,
                    acc,
                )?;
            } else {
                // The low-resolution cycle: plain L1, no adversarial or feature terms (the
                // discriminators judge high-resolution patches).
                let mut low_cfg = self.cfg.clone();
                low_cfg.lambda_gan = 0.0;
                low_cfg.cycle_loss = CycleLoss::L1;
                low_cfg.lambda_perceptual = 0.0;
                low_cfg.lambda_style = 0.0;
                low_cfg.lambda_cycle *= self.cfg.lambda_lowres;
                let (_, cyc, _) =
                    unpaired_generator(&self.gen, &self.disc, dir, src.clone(), &low_cfg, acc)?;
                out[i] += cyc;
                out[i] += lowres_generator(
                    &self.gen,
                    dir,
                    src,
                    step::LowTerms {
                        target: None,
                        anchor: Some(anchor),
                        weight,
                    },
                    &self.cfg,
                    acc,
                )?;
            }
        }
        Ok(out)
    }

    fn step_with(
        &mut self,
        a: Vec<f32>,
        b: Vec<f32>,
        amortised: Option<AmortisedSample>,
    ) -> Result<StepLosses, TrainError> {
        let mut rng = step_rng(self.cfg.seed ^ POOL_STREAM, self.step);
        let lr = self.cfg.lr_g_at(self.step);
        let lr_d = self.cfg.lr_d_at(self.step);
        let (a, b) = (self.tensor(a), self.tensor(b));
        let mut acc = GradientsParams::new();
        let mut l = StepLosses::default();
        let paired = self.cfg.mode == ModeArg::Paired;
        // Before `gan_from_step` the generators train without the adversarial term (the
        // discriminators still train below: their warm-up).
        let warm_cfg;
        let g_cfg = if self.cfg.lambda_gan_at(self.step) == self.cfg.lambda_gan {
            &self.cfg
        } else {
            let mut c = self.cfg.clone();
            c.lambda_gan = self.cfg.lambda_gan_at(self.step);
            warm_cfg = c;
            &warm_cfg
        };
        let (fake_b, fake_a);
        if paired {
            let ab = paired_generator(
                &self.gen,
                &self.disc,
                Direction::AtoB,
                a.clone(),
                b.clone(),
                g_cfg,
                &mut acc,
            )?;
            let ba = paired_generator(
                &self.gen,
                &self.disc,
                Direction::BtoA,
                b.clone(),
                a.clone(),
                g_cfg,
                &mut acc,
            )?;
            (l.gan_ab, l.rec_ab, l.tex_ab, fake_b) = (ab.gan, ab.rec, ab.texture, ab.fake);
            l.tv_ab = ab.tv;
            (l.gan_ba, l.rec_ba, l.tex_ba, fake_a) = (ba.gan, ba.rec, ba.texture, ba.fake);
        } else {
            (l.gan_ab, l.rec_ab, fake_b) = unpaired_generator(
                &self.gen,
                &self.disc,
                Direction::AtoB,
                a.clone(),
                g_cfg,
                &mut acc,
            )?;
            (l.gan_ba, l.rec_ba, fake_a) = unpaired_generator(
                &self.gen,
                &self.disc,
                Direction::BtoA,
                b.clone(),
                g_cfg,
                &mut acc,
            )?;
        }
        if !paired && self.cfg.lambda_identity > 0.0 {
            l.rec_ab +=
                identity_generator(&self.gen, Direction::AtoB, b.clone(), &self.cfg, &mut acc)?;
            l.rec_ba +=
                identity_generator(&self.gen, Direction::BtoA, a.clone(), &self.cfg, &mut acc)?;
        }
        if let Some(s) = &amortised {
            let [low_ab, low_ba] = self.amortised_terms(s, [&fake_b, &fake_a], &mut acc)?;
            l.rec_ab += low_ab;
            l.rec_ba += low_ba;
        }
        self.gen = self.opt_g.step(lr, self.gen.clone(), acc);

        if self.cfg.lambda_gan <= 0.0 {
            // No adversarial term: the discriminators are neither used nor trained.
            self.step += 1;
            return Ok(l);
        }
        if !(self.step + 1).is_multiple_of(self.cfg.k.max(1)) {
            // Seed 004's update ratio: the discriminators step once per k generator steps.
            self.step += 1;
            return Ok(l);
        }
        // D step on detached fakes.
        let (fake_a, fake_b) = (
            Tensor::<B, 5>::from_inner(fake_a),
            Tensor::<B, 5>::from_inner(fake_b),
        );
        let (d_a, d_b) = if paired {
            let res = self.cfg.d_residual;
            let d = |disc: &Discriminator<B>, dir, src: &Tensor<B, 5>, real, fake| {
                let input = |x| self.gen.disc_input(dir, src.clone(), x, res);
                let r = bce_logits(disc.forward(input(real)), 1.0);
                let f = bce_logits(disc.forward(input(fake)), 0.0);
                (r + f) * 0.5
            };
            (
                d(&self.disc.a, Direction::BtoA, &b, a.clone(), fake_a),
                d(&self.disc.b, Direction::AtoB, &a, b.clone(), fake_b),
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
        self.disc = self.opt_d.step(lr_d, self.disc.clone(), grads);
        self.d_steps += 1;
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
