//! `ct-train`: the ct-harmonizer training program (DESIGN §5).
//!
//! Subcommands:
//! - `export-baseline --out models/<name> [--sigma S]`: writes the classical in-plane Gaussian
//!   sharp-to-soft baseline (`model.onnx` + `model.toml`); σ defaults to the least-squares fit of a
//!   Gaussian MTF to the Hann/ramp filter ratio.
//! - `synth --out DIR [--source cranium|phantom|head-phantom|DIR|file.nii] [--photons N] [--seed S]`: paired
//!   (sharp, soft) data by FBP simulation and thick-slice sources (`ct_training::data::synth`).
//! - `eval --pairs DIR --model models/NAME ... --csv FILE [--tune DIR] [--baselines LIST]
//!   [--fir DxKxK] [--no-physics]`: metrics table of models and baselines, physics figures and
//!   plots (`ct_training::eval`).
//! - `train --data DIR --out RUN --task kernel|superres --mode paired|unpaired --blocks N [--naive]
//!   [--steps S] [--patch P] [--ngf C] [--seed S] [--resume]`: trains a 3D RevGAN
//!   (`ct_training::trainer`); with `--arch megan [--megan-*]` a two-stage MEGAN
//!   (`ct_training::trainer::megan`).
//! - `export --checkpoint RUN --out models/NAME [--allow-untrained] [--force]`: writes the trained
//!   A->B generator as ONNX + manifest (`ct_training::export::trained`).
//! - `export-skip --from models/NAME --out models/NAME-linear [--force]`: writes the linear skip
//!   filter of an exported residual generator alone as a model (`ct_training::export::skip`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use ct_training::export;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ct-train",
    version,
    about = "Trains and exports ct-harmonizer translators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing the arguments buys nothing
enum Command {
    /// Write the classical sharp-to-soft baseline: an in-plane (y, x) Gaussian low-pass, no z blur.
    ExportBaseline {
        /// Model directory to write (model.onnx + model.toml), e.g. models/gaussian-soft-baseline.
        #[arg(long)]
        out: PathBuf,
        /// Gaussian standard deviation in pixels; default: the least-squares fit of a Gaussian MTF
        /// to the Hann-windowed / plain ramp filter ratio 0.5*(1+cos 2 pi f), f in [0, 0.5].
        #[arg(long)]
        sigma: Option<f64>,
    },
    /// Simulate paired (sharp, soft) kernel data and thick-slice super-resolution sources (DESIGN §5).
    Synth(ct_training::data::synth::SynthArgs),
    /// Evaluate models and baselines on held-out pairs: MAE, PSNR, 3-D SSIM, emphysema index, noise,
    /// NPS, MTF, Perc15, Bland-Altman and texture CCC.
    Eval(ct_training::eval::EvalArgs),
    /// Train a 3D RevGAN (paired or unpaired, reversible core) with checkpoints and a loss CSV.
    Train(ct_training::trainer::TrainArgs),
    /// Export a training run's A->B generator as models/<name>/{model.onnx, model.toml}.
    Export(ct_training::export::trained::ExportArgs),
    /// Export the linear skip filter of an exported residual generator alone, as a model of its own.
    ExportSkip(ct_training::export::skip::ExportSkipArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::ExportBaseline { out, sigma } => export_baseline(out, sigma),
        Command::Synth(a) => ct_training::data::synth::run_cli(a),
        Command::Eval(a) => ct_training::eval::run_cli(a),
        Command::Train(a) => {
            let st = ct_training::trainer::run(&a)
                .with_context(|| format!("training into {}", a.out.display()))?;
            println!(
                "trained {} steps in {:.0} s on {}; run directory {}",
                st.step,
                st.seconds,
                st.device,
                a.out.display()
            );
            Ok(())
        }
        Command::ExportSkip(a) => {
            let md = ct_training::export::skip::run(&a).with_context(|| {
                format!(
                    "exporting the skip filter of {} to {}",
                    a.from.display(),
                    a.out.display()
                )
            })?;
            println!(
                "wrote {}/{{{}, {}}} (onnx sha256 {})",
                md.dir.display(),
                export::ONNX_FILE,
                export::MANIFEST_FILE,
                md.manifest.onnx_sha256
            );
            Ok(())
        }
        Command::Export(a) => {
            let md = ct_training::export::trained::run(&a).with_context(|| {
                format!(
                    "exporting {} to {}",
                    a.checkpoint.display(),
                    a.out.display()
                )
            })?;
            if md.manifest.is_multi_stage() {
                for st in &md.manifest.stages {
                    println!(
                        "wrote {}/{} (stage {}, onnx sha256 {})",
                        md.dir.display(),
                        st.onnx_file,
                        st.name,
                        st.onnx_sha256
                    );
                }
                println!("wrote {}/{}", md.dir.display(), export::MANIFEST_FILE);
                return Ok(());
            }
            println!(
                "wrote {}/{{{}, {}}} (onnx sha256 {})",
                md.dir.display(),
                export::ONNX_FILE,
                export::MANIFEST_FILE,
                md.manifest.onnx_sha256
            );
            Ok(())
        }
    }
}

fn export_baseline(out: PathBuf, sigma: Option<f64>) -> anyhow::Result<()> {
    if out.file_name().and_then(|n| n.to_str()) != Some(export::BASELINE_NAME) {
        tracing::warn!(
            "the manifest names the model {:?} but it is written to {}",
            export::BASELINE_NAME,
            out.display()
        );
    }
    let e = export::export_baseline(&out, sigma)
        .with_context(|| format!("exporting the Gaussian baseline to {}", out.display()))?;
    tracing::info!(
        dir = %e.dir.display(),
        sigma = e.sigma,
        radius = e.radius,
        "wrote {} {}",
        e.manifest.name,
        e.manifest.version
    );
    println!(
        "wrote {}/{{{}, {}}}",
        e.dir.display(),
        export::ONNX_FILE,
        export::MANIFEST_FILE
    );
    println!(
        "least-squares fit: sigma = {:.9} px, RMS residual {:.6}, max |residual| {:.6}",
        e.fit.sigma, e.fit.rms_residual, e.fit.max_abs_residual
    );
    println!(
        "used: sigma = {:.9} px (Gaussian-MTF RMS residual {:.6}), radius ceil(3 sigma) = {} ({} taps), \
         sampled-kernel RMS residual {:.6}",
        e.sigma,
        e.used.rms_residual,
        e.radius,
        2 * e.radius + 1,
        e.taps_rms_residual
    );
    println!("onnx sha256 {}", e.onnx_sha256);
    Ok(())
}
