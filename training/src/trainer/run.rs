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
use crate::data::amortised::{load_domain, AmortisedSampler, DomainSampler, DomainSets};
use crate::data::rng::{step_rng, Rng};
use crate::data::{load_pairs, PatchSampler, TrainingData};
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
    /// Start a new run from the checkpoint of run RUN (its directory or its `checkpoint/`) with a
    /// deeper core: every trained parameter copied, `--blocks` minus the checkpoint's blocks new
    /// reversible blocks appended as the identity, Adam moments continued for the copied
    /// parameters and fresh for the new ones, the step counter continued from the checkpoint's.
    /// Every other option must match RUN's (as for --resume). See `grow_matches`.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Where to train: `auto` is CUDA when built with it and a device exists, else LibTorch's CPU
    /// kernels when built with `--features tch`, else burn-flex. Not saved with the run: a
    /// checkpoint continues on any backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Architecture: the 3D RevGAN (seed 000) or MEGAN (seed 001, see `trainer::megan`).
    #[arg(long, value_enum, default_value = "revgan")]
    pub arch: Arch,
    #[command(flatten)]
    pub megan: super::megan::MeganArgs,
}

/// `--backend` of `ct-train train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Auto,
    /// Burn's own CPU backend (always built).
    Flex,
    /// Burn's LibTorch backend on the CPU (`--features tch`).
    Tch,
    /// Burn's CUDA backend (`--features cuda`; falls back to the CPU without a device).
    Cuda,
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

/// Runs `ct-train train` on the backend `--backend` picks: with `auto`, CUDA when built with
/// `--features cuda` and a device can be created (else the CPU, said in one log line), then
/// LibTorch's CPU kernels when built with `--features tch`, else burn-flex. MEGAN trains on
/// burn-flex.
pub fn run(args: &TrainArgs) -> Result<TrainState, TrainError> {
    let want = args.backend;
    let not_built = |name: &str, feature: &str| {
        TrainError::Options(format!(
            "--backend {name}: this ct-train was built without the `{feature}` feature"
        ))
    };
    if want == BackendArg::Cuda && !cfg!(feature = "cuda") {
        return Err(not_built("cuda", "cuda"));
    }
    if want == BackendArg::Tch && !cfg!(feature = "tch") {
        return Err(not_built("tch", "tch"));
    }
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
    if matches!(want, BackendArg::Auto | BackendArg::Cuda) {
        if let Some(device) = cuda_device() {
            tracing::info!("training on CUDA device {device:?}");
            return train::<burn::backend::Autodiff<burn_cuda::Cuda>>(args, device, "cuda");
        }
        tracing::warn!(
            "built with CUDA support but no CUDA device could be created; training on the CPU"
        );
    }
    #[cfg(feature = "tch")]
    if want != BackendArg::Flex {
        tracing::info!("training on the CPU with LibTorch's kernels (burn-tch)");
        return train::<burn::backend::Autodiff<burn_tch::LibTorch<f32>>>(
            args,
            burn_tch::LibTorchDevice::Cpu,
            "cpu-libtorch",
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
    let t1 = continuation_view(cfg, &t0);
    if t1 != t0 {
        return Err(TrainError::Options(format!(
            "--resume: the training options in {} differ from the ones given",
            run.join(TRAIN_CONFIG).display()
        )));
    }
    Ok(())
}

/// `cfg` with the options a continued run (`--resume`, `--init-from`) may change taken from the
/// saved `t0` (logging the adversarial and texture changes), so that `continuation_view == t0`
/// says everything else matches.
fn continuation_view(cfg: &TrainConfig, t0: &TrainConfig) -> TrainConfig {
    // Everything but the step budget (a resumed run may be extended) and the adversarial
    // fine-tuning options (issue 11: a run trained on L1 alone may go on with the adversarial term,
    // its discriminators warmed up first) must match.
    let mut t1 = cfg.clone();
    t1.steps = t0.steps;
    t1.decay_steps = t0.decay_steps;
    t1.checkpoint_every = t0.checkpoint_every;
    t1.lambda_gan = t0.lambda_gan;
    t1.gan_from_step = t0.gan_from_step;
    t1.lr_d = t0.lr_d;
    t1.d_residual = t0.d_residual;
    // The noise-texture weight may change too (issue 11: a run trained on L1 fine-tuned with it).
    t1.lambda_texture = t0.lambda_texture;
    t1.lambda_texture_ba = t0.lambda_texture_ba;
    t1.texture_blur = t0.texture_blur;
    t1.texture_one_sided = t0.texture_one_sided;
    // And the total-variation weight (issue 11: an L1 run fine-tuned with it).
    t1.lambda_tv = t0.lambda_tv;
    if cfg.lambda_tv != t0.lambda_tv {
        tracing::info!(
            lambda_tv = cfg.lambda_tv,
            was_lambda_tv = t0.lambda_tv,
            "--resume: lambda_tv changed"
        );
    }
    // So may the data folder (issue 11: a run trained on chest phantoms fine-tuned on chests and
    // heads); the new folder is recorded in train.json and the provenance.
    t1.data.clone_from(&t0.data);
    if cfg.data != t0.data {
        tracing::info!(data = %cfg.data, was_data = %t0.data, "--resume: data changed");
    }
    if (
        cfg.texture_weights(),
        cfg.texture_blur,
        cfg.texture_one_sided,
    ) != (t0.texture_weights(), t0.texture_blur, t0.texture_one_sided)
    {
        tracing::info!(
            lambda_texture = ?cfg.texture_weights(),
            was_lambda_texture = ?t0.texture_weights(),
            texture_blur = cfg.texture_blur,
            texture_one_sided = cfg.texture_one_sided,
            "--resume: lambda_texture changed"
        );
    }
    if (cfg.lambda_gan, cfg.gan_from_step, cfg.lr_d, cfg.d_residual)
        != (t0.lambda_gan, t0.gan_from_step, t0.lr_d, t0.d_residual)
    {
        tracing::info!(
            lambda_gan = cfg.lambda_gan,
            gan_from_step = cfg.gan_from_step,
            lr_d = ?cfg.lr_d,
            was_lambda_gan = t0.lambda_gan,
            was_gan_from_step = t0.gan_from_step,
            was_lr_d = ?t0.lr_d,
            d_residual = cfg.d_residual,
            "--resume: adversarial options changed"
        );
    }
    t1
}

/// The keys whose values differ between two configurations saved as JSON objects, each as
/// "`key` is <saved> in <file>, <given> in the options", `skip` keys left out.
fn differing_keys<C: serde::Serialize>(
    saved: &C,
    given: &C,
    file: &Path,
    skip: &[&str],
) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(given))
    else {
        return vec!["the configurations are not JSON objects".into()];
    };
    a.iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && b.get(k.as_str()) != Some(*v))
        .map(|(k, v)| {
            let g = b
                .get(k.as_str())
                .map_or("nothing".into(), |g| g.to_string());
            format!("`{k}` is {v} in {}, {g} in the options", file.display())
        })
        .collect()
}

/// Checks that a run grown with `--init-from` from run `src` (its configs) differs from it only
/// in having at least as many reversible blocks (and in the options `--resume` may change);
/// returns `src`'s architecture. Each mismatch is named with its file and values.
pub fn grow_matches(
    src: &Path,
    model_cfg: &RevGanConfig,
    cfg: &TrainConfig,
) -> Result<RevGanConfig, TrainError> {
    let (m0, t0) = read_configs(src)?;
    let mp = src.join(MODEL_CONFIG);
    if model_cfg.blocks < m0.blocks {
        return Err(TrainError::Options(format!(
            "--init-from: --blocks {} is fewer than the {} reversible blocks in {}: a core can \
             only grow",
            model_cfg.blocks,
            m0.blocks,
            mp.display()
        )));
    }
    let mut diff = differing_keys(&m0, model_cfg, &mp, &["blocks"]);
    let t1 = continuation_view(cfg, &t0);
    diff.extend(differing_keys(&t0, &t1, &src.join(TRAIN_CONFIG), &[]));
    if !diff.is_empty() {
        return Err(TrainError::Options(format!(
            "--init-from: only --blocks (and the options --resume may change) may differ from \
             the run grown from: {}",
            diff.join("; ")
        )));
    }
    Ok(m0)
}

/// Per-step noise-texture terms of a run with `--lambda-texture` > 0 (issue 11):
/// `step,tex_ab,tex_ba`, weighted, beside `losses.csv`.
pub const TEXTURE_CSV: &str = "texture.csv";

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
    let grow_src = match &args.init_from {
        Some(p) => {
            let (src_run, src_ck) = super::checkpoint::locate_checkpoint(p)?;
            let same = |a: &Path| std::fs::canonicalize(a).ok();
            if same(&src_run).is_some() && same(&src_run) == same(run) {
                return Err(TrainError::Options(format!(
                    "--init-from {}: the run to grow from is --out itself; give a new --out",
                    p.display()
                )));
            }
            Some((src_run, src_ck))
        }
        None => None,
    };
    if !args.resume && has_run && !args.force {
        return Err(TrainError::Options(format!(
            "{} already holds a training run: pass --resume to continue it or --force to replace it",
            run.display()
        )));
    }
    cfg.check_options()?;
    if cfg.data.is_empty() && !cfg.separate_domains() {
        return Err(TrainError::Options(
            "no training data: give --data DIR (or --unpaired-a DIR and --unpaired-b DIR)".into(),
        ));
    }
    let data_dir = PathBuf::from(&cfg.data);
    let data = if let (Some(da), Some(db)) = (&cfg.unpaired_a, &cfg.unpaired_b) {
        // Two separate sets: nothing to pair, nothing to fit a least-squares filter on.
        if model_cfg.skip_kernel > 0 && cfg.skip_init == SkipInit::Lsq {
            return Err(TrainError::Options(
                "--skip-init lsq needs paired data (--data), not --unpaired-a/--unpaired-b".into(),
            ));
        }
        let sets = DomainSets {
            a: load_domain(Path::new(da), cfg.hu_window)?,
            b: load_domain(Path::new(db), cfg.hu_window)?,
            paired: false,
        };
        tracing::info!(
            a = sets.a.len(),
            b = sets.b.len(),
            "unpaired sets: {da} (domain A), {db} (domain B)"
        );
        Data::Sets(sets)
    } else {
        let data = load_pairs(&data_dir, cfg.hu_window, cfg.task)?;
        cfg.scale = data.scale;
        Data::Pairs(data)
    };
    if args.resume {
        check_resume_matches(run, &model_cfg, &cfg)?;
    }
    let grow_from = match &grow_src {
        Some((src_run, src_ck)) => {
            let old = grow_matches(src_run, &model_cfg, &cfg)?;
            let at = super::checkpoint::read_state(src_ck)?.step;
            if cfg.steps <= at {
                return Err(TrainError::Options(format!(
                    "--steps {}: the checkpoint {} to grow from is already at step {at}; the step \
                     counter continues, so --steps must exceed it",
                    cfg.steps,
                    src_ck.display()
                )));
            }
            Some((old, src_ck))
        }
        None => None,
    };
    // Least-squares starting filters (fitted before the sampler takes the volumes).
    let fits = if let (Data::Pairs(data), true) = (
        &data,
        model_cfg.skip_kernel > 0
            && cfg.skip_init == SkipInit::Lsq
            && !args.resume
            && grow_from.is_none(),
    ) {
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
    let sampler = Sampling::new(data, &cfg)?;
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
        let _ = std::fs::remove_file(run.join(super::checkpoint::GROWN_FILE));
        if let Some((old, src_ck)) = &grow_from {
            state = t.grow_from(src_ck, old)?;
            t.freeze_skips();
            state.device = device_name.to_owned();
            let grown = super::checkpoint::GrownFrom {
                checkpoint: src_ck.display().to_string(),
                step: state.step,
                blocks_from: old.blocks,
                blocks_to: t.model_cfg.blocks,
            };
            grown.write(run)?;
            tracing::info!(
                step = state.step,
                blocks_from = old.blocks,
                blocks_to = t.model_cfg.blocks,
                "grown from {} (Adam moments of the copied parameters continued, fresh for the \
                 new blocks; the step counter continues)",
                src_ck.display()
            );
        }
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
    // The noise-texture terms (issue 11) go to their own file, so losses.csv keeps its columns.
    let tex_path = run.join(TEXTURE_CSV);
    if args.resume {
        truncate_csv(&tex_path, state.step)?;
    }
    let mut tex_csv = if cfg.texture_on() || cfg.lambda_tv > 0.0 {
        if !(args.resume && tex_path.exists()) {
            std::fs::write(&tex_path, "step,tex_ab,tex_ba,tv_ab\n").map_err(io_err(&tex_path))?;
        }
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&tex_path)
            .map_err(io_err(&tex_path))?;
        Some(f)
    } else {
        None
    };

    let val: Vec<(Vec<f32>, Vec<f32>)> = {
        let mut rng = Rng::new(cfg.seed ^ VAL_SEED);
        (0..VAL_PATCHES)
            .map(|_| sampler.patches(&mut rng))
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
        let t0 = Instant::now();
        let l = sampler.step(&mut t, &mut rng)?;
        let dt = t0.elapsed().as_secs_f64();
        writeln!(
            csv,
            "{},{:.6e},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3}",
            step + 1,
            cfg.lr_g_at(step),
            l.gan_ab,
            l.gan_ba,
            l.rec_ab,
            l.rec_ba,
            l.d_a,
            l.d_b,
            dt
        )
        .map_err(io_err(&csv_path))?;
        if let Some(f) = tex_csv.as_mut() {
            writeln!(
                f,
                "{},{:.6},{:.6},{:.6}",
                step + 1,
                l.tex_ab,
                l.tex_ba,
                l.tv_ab
            )
            .map_err(io_err(&tex_path))?;
        }
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
            if let Some(f) = tex_csv.as_mut() {
                f.flush().map_err(io_err(&tex_path))?;
            }
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

/// The training data: paired cases (`--data`) or two separate unpaired sets.
enum Data {
    Pairs(TrainingData),
    Sets(DomainSets),
}

/// Where each step's patches come from: the patch sampler of before (`--data`), two separate
/// unpaired sets (`--unpaired-a/-b`), or the amortised sampler (`--amortised`, either data).
enum Sampling {
    Patches(PatchSampler, bool),
    Domains(DomainSampler),
    Amortised(AmortisedSampler),
}

impl Sampling {
    fn new(data: Data, cfg: &TrainConfig) -> Result<Self, TrainError> {
        let w = cfg.hu_window;
        Ok(match (data, cfg.amortised) {
            (Data::Pairs(d), false) => Sampling::Patches(
                PatchSampler::new(d.pairs, cfg.patch)?.with_air_hu(-1000.0, w),
                cfg.mode == ModeArg::Paired,
            ),
            (Data::Sets(s), false) => Sampling::Domains(DomainSampler::new(s, cfg.patch, w)?),
            (data, true) => {
                let mut sets = match data {
                    Data::Pairs(d) => DomainSets::from_pairs(d.pairs),
                    Data::Sets(s) => s,
                };
                // Unpaired training on paired cases draws the two domains independently.
                sets.paired &= cfg.mode == ModeArg::Paired;
                let s = AmortisedSampler::new(sets, cfg.patch, cfg.amortised_factor, w)?;
                tracing::info!(
                    factor = ?s.factor(),
                    cells = ?s.cells(),
                    "amortised: whole volumes at low resolution plus one patch per step"
                );
                Sampling::Amortised(s)
            }
        })
    }

    /// One training step on a fresh draw.
    fn step<B: AutodiffBackend>(
        &self,
        t: &mut Trainer<B>,
        rng: &mut Rng,
    ) -> Result<super::StepLosses, TrainError> {
        match self {
            Sampling::Patches(s, paired) => {
                let (a, b) = s.sample(rng, *paired);
                t.step(a, b)
            }
            Sampling::Domains(s) => {
                let (a, b) = s.sample(rng);
                t.step(a, b)
            }
            Sampling::Amortised(s) => t.step_amortised(s.sample(rng)),
        }
    }

    /// `(a, b)` patches for the validation pictures (paired where the data are).
    fn patches(&self, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        match self {
            Sampling::Patches(s, _) => s.sample(rng, true),
            Sampling::Domains(s) => s.sample(rng),
            Sampling::Amortised(s) => s.sample_patches(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn args(extra: &[&str]) -> TrainArgs {
        let mut argv = vec![
            "ct-train",
            "--out",
            "/nonexistent/run",
            "--data",
            "/nonexistent/data",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().train
    }

    #[test]
    fn backend_defaults_to_auto_and_parses_each_name() {
        let _serial = crate::autodiff_serial();
        assert_eq!(args(&[]).backend, BackendArg::Auto);
        for (name, want) in [
            ("flex", BackendArg::Flex),
            ("tch", BackendArg::Tch),
            ("cuda", BackendArg::Cuda),
        ] {
            assert_eq!(args(&["--backend", name]).backend, want);
        }
        assert!(Cli::try_parse_from(["ct-train", "--out", "x", "--backend", "gpu"]).is_err());
    }

    /// A backend this binary was built without is refused before any data is read, naming the
    /// option and the missing feature.
    #[test]
    fn a_backend_not_built_in_is_a_clear_error() {
        let _serial = crate::autodiff_serial();
        let mut missing = Vec::new();
        if !cfg!(feature = "tch") {
            missing.push(("tch", "tch"));
        }
        if !cfg!(feature = "cuda") {
            missing.push(("cuda", "cuda"));
        }
        for (name, feature) in missing {
            let err = run(&args(&["--backend", name])).err().unwrap().to_string();
            assert!(err.contains(&format!("--backend {name}")), "{err}");
            assert!(err.contains(&format!("`{feature}` feature")), "{err}");
        }
    }

    /// `--resume` accepts a new adversarial weight, warm-up step and discriminator rate (issue
    /// 11: L1 training continued with the adversarial term) and a new step budget, and still
    /// refuses any other change, naming the run's train.json.
    #[test]
    fn resume_accepts_new_adversarial_options_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = RevGanConfig::new();
        let mut t =
            crate::config::TrainConfig::new(crate::config::TaskArg::Kernel, ModeArg::Paired);
        t.lambda_gan = 0.0;
        m.save(dir.path().join(MODEL_CONFIG)).unwrap();
        t.save(dir.path().join(TRAIN_CONFIG)).unwrap();
        let mut tuned = t.clone();
        tuned.lambda_gan = 0.1;
        tuned.gan_from_step = 7600;
        tuned.lr_d = Some(2e-4);
        tuned.steps = 8300;
        tuned.decay_steps = Some(800);
        tuned.d_residual = true;
        check_resume_matches(dir.path(), &m, &tuned).unwrap();
        let mut other = tuned.clone();
        other.lambda_l1 = 10.0;
        let e = check_resume_matches(dir.path(), &m, &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.json") && e.contains("differ"), "{e}");
    }

    /// `--resume` accepts a new noise-texture weight (issue 11: a run trained on L1 fine-tuned
    /// with the term), and a run saved before the option existed reads as weight 0.
    #[test]
    fn resume_accepts_a_new_lambda_texture() {
        let dir = tempfile::tempdir().unwrap();
        let m = RevGanConfig::new();
        let t = crate::config::TrainConfig::new(crate::config::TaskArg::Kernel, ModeArg::Paired);
        m.save(dir.path().join(MODEL_CONFIG)).unwrap();
        let mut json = serde_json::to_value(&t).unwrap();
        json.as_object_mut().unwrap().remove("lambda_texture");
        std::fs::write(dir.path().join(TRAIN_CONFIG), json.to_string()).unwrap();
        let mut tuned = t.clone();
        tuned.lambda_texture = 100.0;
        tuned.lambda_texture_ba = Some(0.0);
        tuned.texture_blur = 7;
        tuned.texture_one_sided = true;
        tuned.steps = 9100;
        tuned.decay_steps = Some(800);
        check_resume_matches(dir.path(), &m, &tuned).unwrap();
        let mut other = tuned.clone();
        other.lambda_l1 = 10.0;
        assert!(check_resume_matches(dir.path(), &m, &other).is_err());
    }

    /// `--resume` accepts a new total-variation weight (issue 11), and a run saved before the
    /// option existed reads as weight 0.
    #[test]
    fn resume_accepts_a_new_lambda_tv() {
        let dir = tempfile::tempdir().unwrap();
        let m = RevGanConfig::new();
        let t = crate::config::TrainConfig::new(crate::config::TaskArg::Kernel, ModeArg::Paired);
        m.save(dir.path().join(MODEL_CONFIG)).unwrap();
        let mut json = serde_json::to_value(&t).unwrap();
        json.as_object_mut().unwrap().remove("lambda_tv");
        std::fs::write(dir.path().join(TRAIN_CONFIG), json.to_string()).unwrap();
        let (_, saved) = read_configs(dir.path()).unwrap();
        assert_eq!(saved.lambda_tv, 0.0);
        let mut tuned = t.clone();
        tuned.lambda_tv = 30.0;
        tuned.steps += 1600;
        check_resume_matches(dir.path(), &m, &tuned).unwrap();
        let mut other = tuned.clone();
        other.lambda_l1 = 10.0;
        assert!(check_resume_matches(dir.path(), &m, &other).is_err());
    }

    /// `--resume` accepts a new data folder (issue 11: fine-tuning on chest and head phantoms),
    /// and still refuses any other changed option.
    #[test]
    fn resume_accepts_a_new_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let m = RevGanConfig::new();
        let mut t =
            crate::config::TrainConfig::new(crate::config::TaskArg::Kernel, ModeArg::Paired);
        t.data = "/data/chest".into();
        m.save(dir.path().join(MODEL_CONFIG)).unwrap();
        std::fs::write(
            dir.path().join(TRAIN_CONFIG),
            serde_json::to_string(&t).unwrap(),
        )
        .unwrap();
        let mut moved = t.clone();
        moved.data = "/data/chest-and-head".into();
        moved.steps += 1600;
        check_resume_matches(dir.path(), &m, &moved).unwrap();
        let mut other = moved.clone();
        other.patch = 48;
        let e = check_resume_matches(dir.path(), &m, &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.json") && e.contains("differ"), "{e}");
    }

    /// A negative or NaN `--lambda-texture` is refused before any data is read, naming the option
    /// and the value; with `--mode unpaired` the term has no target to compare with.
    #[test]
    fn a_bad_lambda_texture_is_a_clear_error() {
        let _serial = crate::autodiff_serial();
        for (value, shown) in [("-1", "-1"), ("NaN", "NaN"), ("inf", "inf")] {
            let option = format!("--lambda-texture={value}");
            let err = run(&args(&["--backend", "flex", &option]))
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains(&format!("--lambda-texture {shown}"))
                    && err.contains("finite weight >= 0"),
                "{value}: {err}"
            );
        }
        let err = run(&args(&[
            "--backend",
            "flex",
            "--mode",
            "unpaired",
            "--lambda-texture",
            "1",
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("--lambda-texture") && err.contains("paired only"),
            "{err}"
        );
    }

    /// `--backend flex` never reaches another backend: with missing data it fails on the data,
    /// not on a backend.
    #[test]
    fn flex_is_always_available() {
        let _serial = crate::autodiff_serial();
        let err = run(&args(&["--backend", "flex"]))
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("feature"), "{err}");
        assert!(err.contains("/nonexistent/data"), "{err}");
    }
}

/// `--init-from` (growing a trained core): the run end to end on burn-flex, its provenance, and
/// every bad input, each named with its file and value.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod grow_tests {
    use super::*;
    use crate::config::TaskArg;
    use burn::backend::{Autodiff, Flex};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn parse(argv: &[&str]) -> Result<TrainArgs, clap::Error> {
        let mut v = vec!["ct-train"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).map(|c| c.train)
    }

    /// A paired data directory: `source.nii.gz` and `target.nii.gz`, 32×16×16.
    fn data(dir: &Path) -> PathBuf {
        use crate::data::nifti::{write, WriteType};
        let d = dir.join("data");
        std::fs::create_dir_all(&d).unwrap();
        for (name, seed) in [("source", 1), ("target", 2)] {
            let mut r = Rng::new(seed);
            let v: Vec<f32> = (0..16 * 16 * 32)
                .map(|_| -200.0 + r.uniform() as f32 * 400.0)
                .collect();
            let p = d.join(format!("{name}.nii.gz"));
            write(&p, [16, 16, 32], [1.0; 3], &v, WriteType::Float32).unwrap();
        }
        d
    }

    #[test]
    fn init_from_grows_a_run_and_export_names_it() {
        let _serial = crate::autodiff_serial();
        let dir = tempfile::tempdir().unwrap();
        let d = data(dir.path());
        let (r1, r2) = (dir.path().join("r1"), dir.path().join("r2"));
        let base = |out: &Path, extra: &[&str]| {
            let mut v = vec![
                "--out".to_owned(),
                out.display().to_string(),
                "--data".into(),
                d.display().to_string(),
            ];
            v.extend(
                "--task kernel --mode paired --ndf 2 --patch 16 --residual --lambda-gan 0 \
                 --backend flex --checkpoint-every 100"
                    .split_whitespace()
                    .map(str::to_owned),
            );
            // --ngf 2 and --skip-kernel 3 unless `extra` gives them.
            for (opt, value) in [("--ngf", "2"), ("--skip-kernel", "3")] {
                if !extra.contains(&opt) {
                    v.extend([opt.to_owned(), value.to_owned()]);
                }
            }
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let go = |argv: Vec<String>| {
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let a = parse(&refs).unwrap();
            train::<Autodiff<Flex>>(&a, Default::default(), "cpu")
        };
        go(base(&r1, &["--blocks", "1", "--steps", "2"])).unwrap();
        let from = r1.display().to_string();
        let st = go(base(
            &r2,
            &["--blocks", "2", "--steps", "3", "--init-from", &from],
        ))
        .unwrap();
        assert_eq!(st.step, 3);
        let g = crate::trainer::checkpoint::GrownFrom::read(&r2)
            .unwrap()
            .unwrap();
        assert_eq!((g.step, g.blocks_from, g.blocks_to), (2, 1, 2));
        assert!(g.checkpoint.ends_with("checkpoint"), "{g:?}");
        let (m2, _) = read_configs(&r2).unwrap();
        assert_eq!(m2.blocks, 2);
        let csv = std::fs::read_to_string(r2.join(LOSSES_CSV)).unwrap();
        let steps: Vec<&str> = csv.lines().skip(1).map(|l| &l[..2]).collect();
        assert_eq!(steps, ["3,"], "{csv}");
        // The source run is untouched.
        assert_eq!(
            crate::trainer::checkpoint::read_state(&r1.join(CHECKPOINT_DIR))
                .unwrap()
                .step,
            2
        );
        // A resumed grown run keeps its provenance; export names it, with a 2-block margin.
        go(base(&r2, &["--blocks", "2", "--steps", "4", "--resume"])).unwrap();
        assert!(crate::trainer::checkpoint::GrownFrom::read(&r2)
            .unwrap()
            .is_some());
        let out = dir.path().join("models").join("grown");
        let ea = crate::export::trained::ExportArgs {
            checkpoint: r2.clone(),
            out: out.clone(),
            version: "1.2.0".into(),
            accepts: vec![],
            produces: None,
            allow_untrained: false,
            force: false,
        };
        crate::export::trained::run(&ea).unwrap();
        let toml = std::fs::read_to_string(out.join(crate::export::MANIFEST_FILE)).unwrap();
        assert!(
            toml.contains("core grown from 1 to 2 reversible blocks") && toml.contains("at step 2"),
            "{toml}"
        );
        // The valid margin (the daemon's tiling halo) follows the grown core: 7 + 8 x 2 blocks.
        let v: toml::Value = toml::from_str(&toml).unwrap();
        let margin = v["tensors"]["valid_margin"].as_array().unwrap().clone();
        assert_eq!(margin, vec![toml::Value::Integer(23); 3], "{toml}");
        // A checkpoint directory works as well as its run directory.
        let ck = r1.join(CHECKPOINT_DIR).display().to_string();
        let r3 = dir.path().join("r3");
        go(base(
            &r3,
            &["--blocks", "3", "--steps", "3", "--init-from", &ck],
        ))
        .unwrap();
        // A new run in the same directory without --init-from forgets the provenance.
        go(base(&r3, &["--blocks", "3", "--steps", "1", "--force"])).unwrap();
        assert!(crate::trainer::checkpoint::GrownFrom::read(&r3)
            .unwrap()
            .is_none());

        // Bad inputs, each named.
        let bad = |extra: &[&str], want: &[&str]| {
            let mut e = vec!["--init-from", from.as_str()];
            e.extend_from_slice(extra);
            let err = go(base(&dir.path().join("bad"), &e))
                .unwrap_err()
                .to_string();
            for w in want {
                assert!(err.contains(w), "{extra:?}: {err}");
            }
        };
        bad(
            &["--blocks", "2", "--steps", "2"],
            &["--steps 2", "already at step 2"],
        );
        bad(
            &["--blocks", "0", "--steps", "9"],
            &["--blocks 0", "fewer than the 1", "model.json"],
        );
        bad(
            &["--blocks", "2", "--steps", "9", "--ngf", "4"],
            &["`ngf` is 2", "model.json", "4 in the options"],
        );
        bad(
            &["--blocks", "2", "--steps", "9", "--skip-kernel", "5"],
            &["`skip_kernel` is 3", "model.json"],
        );
        bad(
            &["--blocks", "2", "--steps", "9", "--hu-window=-1000,1000"],
            &["`hu_window`", "train.json"],
        );
        let nowhere = dir.path().join("nowhere");
        let err = go(base(
            &dir.path().join("bad"),
            &[
                "--init-from",
                &nowhere.display().to_string(),
                "--steps",
                "9",
            ],
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("nowhere") && err.contains("not a training run"),
            "{err}"
        );
        let err = go(base(
            &r1,
            &[
                "--blocks",
                "2",
                "--steps",
                "9",
                "--init-from",
                &from,
                "--force",
            ],
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("--out itself"), "{err}");
    }

    /// Bad inputs of `grow_matches` beyond the command line's reach here: another task, another
    /// mode, another seed; the options `--resume` may change (steps, lambda_gan) may change.
    #[test]
    fn grow_matches_names_each_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let m = RevGanConfig::new().with_ngf(16).with_blocks(2);
        let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired);
        m.save(dir.path().join(MODEL_CONFIG)).unwrap();
        t.save(dir.path().join(TRAIN_CONFIG)).unwrap();
        let m4 = m.clone().with_blocks(4);
        let mut ok = t.clone();
        ok.steps = 99_999;
        ok.lambda_gan = 0.0;
        assert_eq!(grow_matches(dir.path(), &m4, &ok).unwrap(), m);
        let sr = TrainConfig::new(TaskArg::Superres, ModeArg::Paired);
        let e = grow_matches(dir.path(), &m4, &sr).unwrap_err().to_string();
        assert!(
            e.contains("`task` is \"kernel\"") && e.contains("train.json"),
            "{e}"
        );
        let un = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired);
        let e = grow_matches(dir.path(), &m4, &un).unwrap_err().to_string();
        assert!(e.contains("`mode`"), "{e}");
        let e = grow_matches(dir.path(), &m4, &t.clone().with_seed(12))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`seed`"), "{e}");
        let e = grow_matches(dir.path(), &m4.clone().with_branch_scale(0.5), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`branch_scale` is 1.0") && e.contains("0.5 in the options"),
            "{e}"
        );
        // --init-from and --resume together are refused by the parser.
        assert!(parse(&["--out", "x", "--resume", "--init-from", "y"]).is_err());
    }
}

/// Burn on LibTorch against burn-flex (issue 13 §2: "losses unchanged to 1e-5 for the same
/// seed"): the same seed gives the same starting weights on both (drawn on the CPU backend), and
/// three paired and unpaired steps give the same losses. Built and run only with
/// `--features tch` (`bash scripts/build_tch.sh` sets up the build; `cargo test -p ct-training
/// --features tch --lib libtorch` with the same environment).
#[cfg(all(test, feature = "tch"))]
mod libtorch_tests {
    use super::*;
    use crate::config::TaskArg;
    use crate::data::rng::Rng;
    use burn::backend::{Autodiff, Flex};

    fn trainer<B: AutodiffBackend>(mode: ModeArg, device: B::Device) -> super::super::Trainer<B> {
        let m = RevGanConfig::new()
            .with_ngf(4)
            .with_ndf(4)
            .with_blocks(1)
            .with_conditional(mode == ModeArg::Paired);
        let t = TrainConfig::new(TaskArg::Kernel, mode)
            .with_patch(16)
            .with_steps(3)
            .with_pool_size(2);
        super::super::Trainer::new(m, t, device).unwrap()
    }

    fn patch(seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..16 * 16 * 16)
            .map(|_| r.uniform() as f32 * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn libtorch_steps_match_flex_to_1e5() {
        let _serial = crate::autodiff_serial();
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let mut f = trainer::<Autodiff<Flex>>(mode, Default::default());
            let mut t =
                trainer::<Autodiff<burn_tch::LibTorch<f32>>>(mode, burn_tch::LibTorchDevice::Cpu);
            for s in 0..3 {
                let (a, b) = (patch(2 * s), patch(2 * s + 1));
                let lf = f.step(a.clone(), b.clone()).unwrap();
                let lt = t.step(a, b).unwrap();
                for (x, y) in [
                    (lf.gan_ab, lt.gan_ab),
                    (lf.gan_ba, lt.gan_ba),
                    (lf.rec_ab, lt.rec_ab),
                    (lf.rec_ba, lt.rec_ba),
                    (lf.d_a, lt.d_a),
                    (lf.d_b, lt.d_b),
                ] {
                    let rel = ((x - y) / x.abs().max(1.0)).abs();
                    assert!(rel <= 1e-5, "{mode:?} step {s}: flex {x} libtorch {y}");
                }
            }
        }
    }

    /// The noise-texture term (issue 11, its fixed box convolutions) gives the same values on
    /// LibTorch as on burn-flex, two-sided and one-sided.
    #[test]
    fn libtorch_texture_term_matches_flex() {
        let _serial = crate::autodiff_serial();
        for one_sided in [false, true] {
            fn textured<B: AutodiffBackend>(t: &mut super::super::Trainer<B>, one_sided: bool) {
                t.cfg.lambda_texture = 100.0;
                t.cfg.texture_one_sided = one_sided;
            }
            let mut f = trainer::<Autodiff<Flex>>(ModeArg::Paired, Default::default());
            let mut t = trainer::<Autodiff<burn_tch::LibTorch<f32>>>(
                ModeArg::Paired,
                burn_tch::LibTorchDevice::Cpu,
            );
            textured(&mut f, one_sided);
            textured(&mut t, one_sided);
            for s in 0..2 {
                // One-sided: a nearly flat target, so that the A->B output has noise in excess.
                let damp = if one_sided { 0.01 } else { 1.0 };
                let (a, b) = (patch(2 * s), patch(2 * s + 1));
                let b: Vec<f32> = b.iter().map(|v| v * damp).collect();
                let lf = f.step(a.clone(), b.clone()).unwrap();
                let lt = t.step(a, b).unwrap();
                assert!(lf.tex_ab > 0.0, "{lf:?}");
                for (x, y) in [(lf.tex_ab, lt.tex_ab), (lf.tex_ba, lt.tex_ba)] {
                    let rel = ((x - y) / x.abs().max(1e-3)).abs();
                    assert!(
                        rel <= 1e-4,
                        "one-sided {one_sided} step {s}: flex {x} libtorch {y}"
                    );
                }
            }
        }
    }
}
