//! `ct-train train --arch megan`: trains the two stages of a MEGAN (seed 001; `shared/MODELS.md` §2,
//! model in [`crate::model::megan`]) on paired kernel data, one after the other:
//!
//! 1. **LR stage**, `--steps` iterations: each on the *whole* source volume of a random case,
//!    block-averaged by `lr_factor` (`stages::block_mean`, as the daemon does), against the target
//!    block-averaged the same way.
//! 2. **HR stage**, `--steps` iterations: each on a random `patch`³ of a random case; the generator
//!    sees `[source, edges + N(0, 0.01), previous]`, `previous` being the trained LR generator's
//!    output for that case up-sampled nearest-neighbour (`stages::previous_at`): exactly what the
//!    daemon feeds it, the LR output being computed once per case after stage 1.
//!
//! Every iteration (MODELS.md §2): a G step on `LSGAN(D(cond, G(x)), 1) + λ·|G(x) − y|₁` (λ = 10),
//! then the discriminator's accuracy on this step's real and fake outputs (a real output counts as
//! right above 0.5, a fake one below 0.5) decides: D is updated on
//! `0.5·(LSGAN(D(cond, y), 1) + LSGAN(D(cond, G(x)), 0))` only while that accuracy is at most 0.8.
//! Adam 2e-4, betas (0.5, 0.999), one optimizer per network; the learning-rate schedule of
//! [`TrainConfig::lr_at`] per stage.
//!
//! Run directory: `megan.json` ([`MeganConfig`]), `train.json`, `losses.csv` (one row per
//! iteration: stage, step, G adversarial and L1 terms, D loss, D accuracy, whether D was updated)
//! and `checkpoint/` (`megan_generators.mpk`, `megan_discriminators.mpk`, `state.json`) written at
//! the end (no `--resume` for MEGAN yet).

use super::checkpoint::TrainState;
use super::{io_err, TrainError, CHECKPOINT_DIR, LOSSES_CSV, STATE_FILE, TRAIN_CONFIG};
use crate::config::{TaskArg, TrainConfig};
use crate::data::load_pairs;
use crate::data::rng::{step_rng, Rng, RngExt};
use crate::lib_bridge::stages::{block_mean, edge_map, previous_at};
use crate::losses::{l1, mse_const};
use crate::model::megan::{
    MeganConfig, MeganDiscriminators, MeganError, MeganGenerator, MeganGenerators, MEGAN_MIN_EDGE,
};
use crate::model::Discriminator;
use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files of a MEGAN run directory.
pub const MEGAN_CONFIG: &str = "megan.json";
pub const MEGAN_GEN_FILE: &str = "megan_generators";
pub const MEGAN_DISC_FILE: &str = "megan_discriminators";

/// Mixed into the seed for the HR stage's draws (an arbitrary constant).
const HR_STREAM: u64 = 0x4852;

/// `--megan-*` options of `ct-train train --arch megan` (module docs; MODELS.md §2 for the
/// reference values).
#[derive(Debug, Clone, clap::Args)]
pub struct MeganArgs {
    /// Generator base channels (reference 64).
    #[arg(long, default_value_t = 8)]
    pub megan_ngf: usize,
    /// Discriminator base channels (reference 64).
    #[arg(long, default_value_t = 8)]
    pub megan_ndf: usize,
    /// Residual blocks (reference 6).
    #[arg(long, default_value_t = 2)]
    pub megan_res_blocks: usize,
    /// Series voxels per LR-stage voxel, the same on every axis.
    #[arg(long, default_value_t = 4)]
    pub megan_lr_factor: usize,
    /// L1 weight (reference λ = 10).
    #[arg(long, default_value_t = 10.0)]
    pub megan_lambda_l1: f64,
    /// D is updated only while its accuracy is at most this (reference 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub megan_d_accuracy_max: f64,
}

impl MeganArgs {
    /// The configuration these options and the run's `--patch` give.
    pub fn config(&self, patch: usize) -> MeganConfig {
        MeganConfig::new()
            .with_ngf(self.megan_ngf)
            .with_ndf(self.megan_ndf)
            .with_res_blocks(self.megan_res_blocks)
            .with_lr_factor([self.megan_lr_factor; 3])
            .with_patch(patch)
            .with_lambda_l1(self.megan_lambda_l1)
            .with_d_accuracy_max(self.megan_d_accuracy_max)
    }
}

/// The discriminator's accuracy on one step: real outputs above 0.5 and fake outputs below 0.5
/// count as right (LSGAN targets 1 and 0).
pub fn d_accuracy(real: &[f32], fake: &[f32]) -> f64 {
    let right =
        real.iter().filter(|&&v| v > 0.5).count() + fake.iter().filter(|&&v| v < 0.5).count();
    right as f64 / (real.len() + fake.len()).max(1) as f64
}

/// Values of one iteration (the CSV row).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeganStepLog {
    pub g_gan: f64,
    pub g_l1: f64,
    /// D loss (computed whether or not D was updated).
    pub d_loss: f64,
    pub d_accuracy: f64,
    pub d_updated: bool,
}

type Opt<M, B> = OptimizerAdaptor<Adam, M, B>;

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f64>()
}

fn values<B: Backend>(t: Tensor<B, 5>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Both stages' networks and optimizers.
pub struct MeganTrainer<B: AutodiffBackend> {
    pub cfg: MeganConfig,
    pub train: TrainConfig,
    pub gens: MeganGenerators<B>,
    pub discs: MeganDiscriminators<B>,
    opt_lr_g: Opt<MeganGenerator<B>, B>,
    opt_hr_g: Opt<MeganGenerator<B>, B>,
    opt_lr_d: Opt<Discriminator<B>, B>,
    opt_hr_d: Opt<Discriminator<B>, B>,
    pub device: B::Device,
    /// Iterations done per stage (LR, HR).
    pub steps: [u64; 2],
    /// Discriminator updates per stage (LR, HR): the gated ones.
    pub d_updates: [u64; 2],
}

/// Which stage an iteration trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeganStage {
    Lr,
    Hr,
}

impl MeganStage {
    fn index(self) -> usize {
        match self {
            MeganStage::Lr => 0,
            MeganStage::Hr => 1,
        }
    }
}

fn adam(cfg: &TrainConfig) -> AdamConfig {
    AdamConfig::new()
        .with_beta_1(cfg.beta1)
        .with_beta_2(cfg.beta2)
        .with_epsilon(1e-8)
}

/// One iteration of one stage (module docs): returns the updated networks and the row.
#[allow(clippy::too_many_arguments)]
fn gan_step<B: AutodiffBackend>(
    gen: MeganGenerator<B>,
    disc: Discriminator<B>,
    opt_g: &mut Opt<MeganGenerator<B>, B>,
    opt_d: &mut Opt<Discriminator<B>, B>,
    g_in: Tensor<B, 5>,
    d_cond: Tensor<B, 5>,
    target: Tensor<B, 5>,
    cfg: &MeganConfig,
    lr: f64,
) -> (MeganGenerator<B>, Discriminator<B>, MeganStepLog) {
    let mut log = MeganStepLog::default();
    // [1, 1, D, H, W]
    let fake = gen.forward(g_in);
    // [1, 1, d, h, w] patch logits of D on cat(cond, fake)
    let g_gan = mse_const(
        disc.forward(Tensor::cat(vec![d_cond.clone(), fake.clone()], 1)),
        1.0,
    );
    let g_l1 = l1(fake.clone(), target.clone());
    log.g_gan = scalar(&g_gan);
    log.g_l1 = scalar(&g_l1);
    let grads = (g_gan + g_l1 * cfg.lambda_l1).backward();
    let grads = GradientsParams::from_grads(grads, &gen);
    let gen = opt_g.step(lr, gen, grads);

    let fake = fake.detach();
    let real_out = disc.forward(Tensor::cat(vec![d_cond.clone(), target], 1));
    let fake_out = disc.forward(Tensor::cat(vec![d_cond, fake], 1));
    log.d_accuracy = d_accuracy(
        &values(real_out.clone().inner()),
        &values(fake_out.clone().inner()),
    );
    let d_loss = (mse_const(real_out, 1.0) + mse_const(fake_out, 0.0)) * 0.5;
    log.d_loss = scalar(&d_loss);
    if log.d_accuracy <= cfg.d_accuracy_max {
        let grads = GradientsParams::from_grads(d_loss.backward(), &disc);
        log.d_updated = true;
        return (gen, opt_d.step(lr, disc, grads), log);
    }
    (gen, disc, log)
}

/// One training case prepared for both stages (model units).
pub struct MeganCase {
    pub name: String,
    pub dims: [usize; 3],
    pub source: Vec<f32>,
    pub target: Vec<f32>,
    pub low_dims: [usize; 3],
    pub source_low: Vec<f32>,
    pub target_low: Vec<f32>,
    /// The trained LR generator's output on `source_low` (after stage 1).
    pub previous: Vec<f32>,
}

impl MeganCase {
    /// Block-averages a (source, target) pair in model units by the configuration's factor.
    pub fn new(
        name: &str,
        dims: [usize; 3],
        source: Vec<f32>,
        target: Vec<f32>,
        cfg: &MeganConfig,
    ) -> Result<Self, TrainError> {
        let data_err = |reason: String| TrainError::Data {
            path: PathBuf::from(name),
            reason,
        };
        let (source_low, low_dims) =
            block_mean(&source, dims, cfg.lr_factor).map_err(|e| data_err(e.to_string()))?;
        let (target_low, _) =
            block_mean(&target, dims, cfg.lr_factor).map_err(|e| data_err(e.to_string()))?;
        if low_dims.iter().any(|&n| n < MEGAN_MIN_EDGE) {
            return Err(TrainError::Options(
                MeganError::LowTooSmall {
                    name: name.to_owned(),
                    dims,
                    factor: cfg.lr_factor,
                    low: low_dims,
                }
                .to_string(),
            ));
        }
        if dims.iter().any(|&n| n < cfg.patch) {
            return Err(data_err(format!(
                "volume of {dims:?} voxels is smaller than the HR patch {}",
                cfg.patch
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            dims,
            source,
            target,
            low_dims,
            source_low,
            target_low,
            previous: Vec::new(),
        })
    }
}

impl<B: AutodiffBackend> MeganTrainer<B> {
    /// Fresh weights, seeded by `train.seed`.
    pub fn new(
        cfg: MeganConfig,
        train: TrainConfig,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        cfg.validate()
            .map_err(|e| TrainError::Options(e.to_string()))?;
        B::seed(&device, train.seed);
        let gens = MeganGenerators::new(&cfg, &device);
        let discs = MeganDiscriminators::new(&cfg, &device);
        crate::model::materialize(&gens);
        crate::model::materialize(&discs);
        Ok(Self {
            opt_lr_g: adam(&train).init(),
            opt_hr_g: adam(&train).init(),
            opt_lr_d: adam(&train).init(),
            opt_hr_d: adam(&train).init(),
            cfg,
            train,
            gens,
            discs,
            device,
            steps: [0; 2],
            d_updates: [0; 2],
        })
    }

    fn tensor(&self, data: Vec<f32>, dims: [usize; 3], channels: usize) -> Tensor<B, 5> {
        let [d, h, w] = dims;
        Tensor::from_data(TensorData::new(data, [1, channels, d, h, w]), &self.device)
    }

    /// One LR iteration on the whole downsampled `case`.
    pub fn lr_step(&mut self, case: &MeganCase) -> MeganStepLog {
        let lr = self.train.lr_at(self.steps[0]);
        // [1, 1, d, h, w] each, on the LR grid
        let x = self.tensor(case.source_low.clone(), case.low_dims, 1);
        let y = self.tensor(case.target_low.clone(), case.low_dims, 1);
        let (gen, disc, log) = gan_step(
            self.gens.lr.clone(),
            self.discs.lr.clone(),
            &mut self.opt_lr_g,
            &mut self.opt_lr_d,
            x.clone(),
            x,
            y,
            &self.cfg,
            lr,
        );
        (self.gens.lr, self.discs.lr) = (gen, disc);
        self.count(MeganStage::Lr, &log);
        log
    }

    /// The LR generator's output for `case` (no gradients), stored as its `previous`.
    pub fn set_previous(&self, case: &mut MeganCase) {
        let g = self.gens.lr.valid();
        let [d, h, w] = case.low_dims;
        // [1, 1, d, h, w]
        let x = Tensor::<B::InnerBackend, 5>::from_data(
            TensorData::new(case.source_low.clone(), [1, 1, d, h, w]),
            &self.device,
        );
        case.previous = values(g.forward(x));
    }

    /// The HR inputs of the `patch`³ of `case` at `origin` (model units): the generator's
    /// `[source, edges (+ noise), previous]` and the target, flattened channel by channel.
    pub fn hr_inputs(
        &self,
        case: &MeganCase,
        origin: [usize; 3],
        rng: &mut Rng,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let p = self.cfg.patch;
        let [_, h, w] = case.dims;
        let crop = |v: &[f32]| {
            let mut out = Vec::with_capacity(p * p * p);
            for z in origin[0]..origin[0] + p {
                for y in origin[1]..origin[1] + p {
                    let i = (z * h + y) * w + origin[2];
                    out.extend_from_slice(&v[i..i + p]);
                }
            }
            out
        };
        let src = crop(&case.source);
        let tgt = crop(&case.target);
        let edges = edge_map(&src, [p; 3]);
        let mut prev = Vec::with_capacity(p * p * p);
        for z in 0..p {
            for y in 0..p {
                for x in 0..p {
                    prev.push(previous_at(
                        &case.previous,
                        case.low_dims,
                        self.cfg.lr_factor,
                        origin[0] + z,
                        origin[1] + y,
                        origin[2] + x,
                    ));
                }
            }
        }
        let noisy: Vec<f32> = edges
            .iter()
            .map(|&e| e + (rng.normal() * self.cfg.edge_noise) as f32)
            .collect();
        let mut g_in = src;
        g_in.extend_from_slice(&noisy);
        g_in.extend_from_slice(&prev);
        let mut d_cond = edges;
        d_cond.extend_from_slice(&prev);
        (g_in, d_cond, tgt)
    }

    /// One HR iteration on a random patch of `case` (its `previous` set).
    pub fn hr_step(&mut self, case: &MeganCase, rng: &mut Rng) -> MeganStepLog {
        let lr = self.train.lr_at(self.steps[1]);
        let p = self.cfg.patch;
        let origin = [0, 1, 2].map(|a| rng.below(case.dims[a] - p + 1));
        let (g_in, d_cond, tgt) = self.hr_inputs(case, origin, rng);
        // [1, 3, P, P, P], [1, 2, P, P, P], [1, 1, P, P, P]
        let g_in = self.tensor(g_in, [p; 3], 3);
        let d_cond = self.tensor(d_cond, [p; 3], 2);
        let y = self.tensor(tgt, [p; 3], 1);
        let (gen, disc, log) = gan_step(
            self.gens.hr.clone(),
            self.discs.hr.clone(),
            &mut self.opt_hr_g,
            &mut self.opt_hr_d,
            g_in,
            d_cond,
            y,
            &self.cfg,
            lr,
        );
        (self.gens.hr, self.discs.hr) = (gen, disc);
        self.count(MeganStage::Hr, &log);
        log
    }

    fn count(&mut self, stage: MeganStage, log: &MeganStepLog) {
        self.steps[stage.index()] += 1;
        if log.d_updated {
            self.d_updates[stage.index()] += 1;
        }
    }

    /// Writes `dir/{megan_generators,megan_discriminators}.mpk` and `dir/state.json`.
    pub fn save(&self, dir: &Path, state: &TrainState) -> Result<(), TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        self.gens
            .clone()
            .save_file(dir.join(MEGAN_GEN_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        self.discs
            .clone()
            .save_file(dir.join(MEGAN_DISC_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        let json = serde_json::to_string_pretty(state).map_err(|e| ck(e.to_string()))?;
        let p = dir.join(STATE_FILE);
        std::fs::write(&p, json).map_err(io_err(&p))?;
        Ok(())
    }
}

/// Loads a MEGAN run's configurations, state and generators (for `ct-train export`).
pub fn load_megan<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(MeganConfig, TrainConfig, TrainState, MeganGenerators<B>), TrainError> {
    let ck = |path: &Path, reason: String| TrainError::Checkpoint {
        path: path.to_owned(),
        reason,
    };
    let mp = run.join(MEGAN_CONFIG);
    let cfg = MeganConfig::load(&mp).map_err(|e| ck(&mp, e.to_string()))?;
    let tp = run.join(TRAIN_CONFIG);
    let train = TrainConfig::load(&tp).map_err(|e| ck(&tp, e.to_string()))?;
    let dir = run.join(CHECKPOINT_DIR);
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(io_err(&sp))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| ck(&sp, e.to_string()))?;
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let fresh = MeganGenerators::<B>::new(&cfg, device);
    let shapes = crate::model::param_shapes(&fresh);
    let gp = dir.join(MEGAN_GEN_FILE);
    let gens = fresh
        .load_file(&gp, &rec, device)
        .map_err(|e| ck(&gp, e.to_string()))?;
    if crate::model::param_shapes(&gens) != shapes {
        return Err(ck(
            &gp,
            format!("weights do not match the architecture in {}", mp.display()),
        ));
    }
    Ok((cfg, train, state, gens))
}

/// `ct-train train --arch megan` (module docs) on backend `B`.
pub fn train_megan<B: AutodiffBackend>(
    out: &Path,
    megan: &MeganArgs,
    train: &TrainConfig,
    force: bool,
    device: B::Device,
    device_name: &str,
) -> Result<TrainState, TrainError> {
    let cfg = megan.config(train.patch);
    cfg.validate()
        .map_err(|e| TrainError::Options(e.to_string()))?;
    if train.task != TaskArg::Kernel {
        return Err(TrainError::Options(
            "--arch megan: only the kernel task (--task kernel) is supported".into(),
        ));
    }
    if out.join(CHECKPOINT_DIR).join(STATE_FILE).exists() && !force {
        return Err(TrainError::Options(format!(
            "{} already holds a training run: pass --force to replace it (MEGAN runs do not resume)",
            out.display()
        )));
    }
    let data_dir = PathBuf::from(&train.data);
    let data = load_pairs(&data_dir, train.hu_window, train.task)?;
    let mut cases = data
        .pairs
        .into_iter()
        .map(|p| MeganCase::new(&p.a.name, p.a.shape, p.a.values, p.b.values, &cfg))
        .collect::<Result<Vec<_>, _>>()?;
    if cases.is_empty() {
        return Err(TrainError::Data {
            path: data_dir,
            reason: "no training pairs".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let _ = std::fs::remove_dir_all(out.join(CHECKPOINT_DIR));
    let mp = out.join(MEGAN_CONFIG);
    cfg.save(&mp).map_err(io_err(&mp))?;
    let tp = out.join(TRAIN_CONFIG);
    train.save(&tp).map_err(io_err(&tp))?;
    let csv_path = out.join(LOSSES_CSV);
    let mut csv = std::fs::File::create(&csv_path).map_err(io_err(&csv_path))?;
    writeln!(
        csv,
        "stage,step,g_gan,g_l1,d_loss,d_accuracy,d_updated,seconds"
    )
    .map_err(io_err(&csv_path))?;
    let mut t = MeganTrainer::<B>::new(cfg, train.clone(), device)?;
    let started = Instant::now();
    let row = |csv: &mut std::fs::File, stage: &str, step: u64, l: &MeganStepLog, dt: f64| {
        writeln!(
            csv,
            "{stage},{step},{:.6},{:.6},{:.6},{:.4},{},{dt:.3}",
            l.g_gan, l.g_l1, l.d_loss, l.d_accuracy, l.d_updated as u8
        )
        .map_err(io_err(&csv_path))
    };
    for step in 0..train.steps {
        let mut rng = step_rng(train.seed, step);
        let i = rng.below(cases.len());
        let t0 = Instant::now();
        let l = t.lr_step(&cases[i]);
        row(&mut csv, "lr", step + 1, &l, t0.elapsed().as_secs_f64())?;
    }
    for case in &mut cases {
        t.set_previous(case);
    }
    for step in 0..train.steps {
        let mut rng = step_rng(train.seed ^ HR_STREAM, step);
        let i = rng.below(cases.len());
        let t0 = Instant::now();
        let l = t.hr_step(&cases[i], &mut rng);
        row(&mut csv, "hr", step + 1, &l, t0.elapsed().as_secs_f64())?;
    }
    tracing::info!(
        lr_steps = t.steps[0],
        hr_steps = t.steps[1],
        lr_d_updates = t.d_updates[0],
        hr_d_updates = t.d_updates[1],
        "megan trained"
    );
    let state = TrainState {
        step: t.steps[0] + t.steps[1],
        seconds: started.elapsed().as_secs_f64(),
        device: device_name.to_owned(),
    };
    t.save(&out.join(CHECKPOINT_DIR), &state)?;
    Ok(state)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn accuracy_counts_real_above_and_fake_below_one_half() {
        let _serial = crate::autodiff_serial();
        assert_eq!(d_accuracy(&[0.9, 0.6], &[0.1, 0.2]), 1.0);
        assert_eq!(d_accuracy(&[0.4, 0.6], &[0.7, 0.2]), 0.5);
        assert_eq!(d_accuracy(&[0.5], &[0.5]), 0.0);
    }

    fn tiny(max: f64) -> (MeganTrainer<B>, MeganCase) {
        let cfg = MeganConfig::new()
            .with_ngf(2)
            .with_ndf(2)
            .with_res_blocks(1)
            .with_lr_factor([2, 2, 2])
            .with_patch(28)
            .with_d_accuracy_max(max);
        let train = TrainConfig::new(TaskArg::Kernel, crate::config::ModeArg::Paired).with_seed(3);
        let dims = [32, 32, 32];
        let src: Vec<f32> = (0..32 * 32 * 32)
            .map(|i| (((i % 32) / 4 + (i / 1024) / 8) % 2) as f32 * 1.2 - 0.6)
            .collect();
        let tgt: Vec<f32> = src.iter().map(|v| v * 0.8).collect();
        let mut case = MeganCase::new("tiny", dims, src, tgt, &cfg).unwrap();
        let t = MeganTrainer::<B>::new(cfg, train, Default::default()).unwrap();
        t.set_previous(&mut case);
        (t, case)
    }

    /// D is updated exactly on the iterations whose accuracy is at most the threshold: counted
    /// over LR and HR iterations, with a threshold that never, always and sometimes lets it.
    #[test]
    fn discriminator_updates_are_gated_by_accuracy() {
        let _serial = crate::autodiff_serial();
        for max in [-1.0, 2.0, 0.5] {
            let (mut t, case) = tiny(max);
            let d0 = crate::model::param_shapes(&t.discs);
            let before: Vec<f32> = values(
                t.discs
                    .hr
                    .conv1
                    .weight
                    .val()
                    .inner()
                    .reshape([1, 1, 1, 1, -1]),
            );
            let mut allowed = [0u64; 2];
            let mut rng = Rng::new(1);
            for _ in 0..3 {
                let l = t.lr_step(&case);
                allowed[0] += (l.d_accuracy <= max) as u64;
                assert_eq!(l.d_updated, l.d_accuracy <= max);
                let l = t.hr_step(&case, &mut rng);
                allowed[1] += (l.d_accuracy <= max) as u64;
                assert_eq!(l.d_updated, l.d_accuracy <= max);
            }
            assert_eq!(t.steps, [3, 3]);
            assert_eq!(t.d_updates, allowed, "threshold {max}");
            let after: Vec<f32> = values(
                t.discs
                    .hr
                    .conv1
                    .weight
                    .val()
                    .inner()
                    .reshape([1, 1, 1, 1, -1]),
            );
            assert_eq!(crate::model::param_shapes(&t.discs), d0);
            if max < 0.0 {
                assert_eq!(t.d_updates, [0, 0]);
                assert_eq!(before, after, "a gated-off D must not change");
            }
            if max > 1.0 {
                assert_eq!(t.d_updates, [3, 3]);
                assert_ne!(before, after);
            }
        }
    }

    #[test]
    fn hr_inputs_are_source_edges_and_previous_at_the_patch() {
        let _serial = crate::autodiff_serial();
        let (t, case) = tiny(0.8);
        let mut rng = Rng::new(2);
        let (g_in, d_cond, tgt) = t.hr_inputs(&case, [2, 3, 4], &mut rng);
        let n = 28 * 28 * 28;
        assert_eq!(g_in.len(), 3 * n);
        assert_eq!(d_cond.len(), 2 * n);
        assert_eq!(tgt.len(), n);
        // Voxel (0, 0, 0) of the patch is voxel (2, 3, 4) of the case.
        assert_eq!(g_in[0], case.source[(2 * 32 + 3) * 32 + 4]);
        assert_eq!(tgt[0], case.target[(2 * 32 + 3) * 32 + 4]);
        let prev = previous_at(&case.previous, case.low_dims, [2, 2, 2], 2, 3, 4);
        assert_eq!(g_in[2 * n], prev);
        assert_eq!(d_cond[n], prev);
        // The generator's edges are the discriminator's plus N(0, 0.01) noise.
        let diff: f32 = (0..n).map(|i| (g_in[n + i] - d_cond[i]).abs()).sum::<f32>() / n as f32;
        assert!(diff > 1e-3 && diff < 0.02, "{diff}");
    }
}
