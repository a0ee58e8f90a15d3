//! `ct-train train`: its arguments (the run directory, the flattened [`RevGanConfig`] and
//! [`TrainConfig`], `--resume`, `--force`), the backend choice (CUDA when built with it and a device
//! exists, else the CPU) and the training loop: patches, steps, the loss CSV, checkpoints.

use super::checkpoint::{checkpoint, read_configs, TrainState};
use super::pictures::{write_pictures, VAL_PATCHES, VAL_SEED};
use super::{
    io_err, CpuBackend, TrainError, Trainer, CHECKPOINT_DIR, LOSSES_CSV, MODEL_CONFIG, STATE_FILE,
    TRAIN_CONFIG,
};
use crate::config::{ModeArg, SkipInit, TrainConfig};
use crate::data::rng::{step_rng, Rng};
use crate::data::{load_pairs, PatchSampler};
use crate::model::{check_patch, Direction, RevGanConfig};
use burn::config::Config;
use burn::tensor::backend::AutodiffBackend;
#[cfg(feature = "cuda")]
use burn::tensor::Tensor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `ct-train train` options: the two saved configurations, flattened, and what is not saved.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Run directory (configs, checkpoint, losses.csv).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: RevGanConfig,
    #[command(flatten)]
    pub train: TrainConfig,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run even if --out already holds one (it is replaced).
    #[arg(long)]
    pub force: bool,
    /// Architecture: the 3D RevGAN (seed 000) or MEGAN (seed 001, see `trainer::megan`).
    #[arg(long, value_enum, default_value = "revgan")]
    pub arch: Arch,
    #[command(flatten)]
    pub megan: super::megan::MeganArgs,
}

/// `--arch` of `ct-train train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// 3D RevGAN (seed 000).
    Revgan,
    /// MEGAN multi-scale patch GAN (seed 001): two stages, exported as a multi-stage model.
    Megan,
}

impl TrainArgs {
    /// The run's configurations as saved: conditional discriminators for paired training, a
    /// checkpoint interval of at least 1.
    pub fn configs(&self) -> (RevGanConfig, TrainConfig) {
        let mut m = self.model.clone();
        m.conditional = self.train.mode == ModeArg::Paired;
        let mut t = self.train.clone();
        t.checkpoint_every = t.checkpoint_every.max(1);
        (m, t)
    }
}

/// Runs `ct-train train`: on CUDA when built with `--features cuda` and a device can be created
/// (else on the CPU, said in one log line), otherwise on the CPU.
pub fn run(args: &TrainArgs) -> Result<TrainState, TrainError> {
    if args.arch == Arch::Megan {
        return super::megan::train_megan::<burn::backend::Autodiff<CpuBackend>>(
            &args.out,
            &args.megan,
            &args.train,
            args.force,
            Default::default(),
            "cpu",
        );
    }
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
    let data_dir = PathBuf::from(&cfg.data);
    let data = load_pairs(&data_dir, cfg.hu_window, cfg.task)?;
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
                    path: data_dir.clone(),
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
        let mut rng = Rng::new(cfg.seed ^ VAL_SEED);
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
        let mut rng = step_rng(cfg.seed, step);
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
