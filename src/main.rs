//! ct-harmonizer command line: parses arguments, sets up logging, calls the library. No logic here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use ct_harmonizer::config::Settings;
use ct_harmonizer::process::{self, ProcessOptions};

#[derive(Parser)]
#[command(
    name = "ct-harmonizer",
    version,
    about = "Harmonizes CT series (reconstruction kernel, resolution) into derived DICOM series"
)]
struct Cli {
    /// Configuration file (defaults: built-in, then /etc/ct-harmonizer/ct-harmonizer.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: C-STORE SCP, watched folder, harmonization and forwarding (systemd-aware).
    Serve,
    /// Run the real start-up checks (configuration, models, ONNX Runtime, state folders) and exit.
    CheckConfig,
    /// Move a dead-lettered job back into the outbox (a running daemon sends it within a second).
    Retry {
        /// Job id (the file name in <state>/dead-letter without .toml).
        job: String,
    },
    /// Harmonize the CT series found in files or folders (recursively) into derived series under --out.
    Process {
        /// DICOM files or folders.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder; each derived series goes into <out>/<derived SeriesInstanceUID>/.
        #[arg(long)]
        out: PathBuf,
        /// Model name under the models folder (default: models.default from the configuration).
        #[arg(long)]
        model: Option<String>,
        /// Write an input | output | difference PNG of a few slices of the first derived series.
        #[arg(long)]
        preview: Option<PathBuf>,
        /// Print timing figures (wall time, summed Session::run time) on stdout.
        #[arg(long)]
        stats: bool,
    },
    /// Write a sample CT series (the invesalius head CT, or a synthetic phantom) as DICOM.
    Sample {
        /// Output folder for the series.
        #[arg(long)]
        out: PathBuf,
        /// "cranium" (Debian's invesalius-examples head CT) or "phantom".
        #[arg(long, default_value = "cranium")]
        kind: String,
        /// Phantom only: number of slices.
        #[arg(long, default_value_t = 100)]
        slices: usize,
        /// Phantom only: rows and columns.
        #[arg(long, default_value_t = 512)]
        size: usize,
    },
}

/// Logs go to journald when systemd started us (JOURNAL_STREAM set), to stderr otherwise.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(j) => registry.with(j).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn config_path(path: Option<&PathBuf>) -> Option<PathBuf> {
    let system = PathBuf::from("/etc/ct-harmonizer/ct-harmonizer.toml");
    path.cloned().or_else(|| system.is_file().then_some(system))
}

fn settings(path: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Ok(Settings::load(config_path(path).as_deref())?)
}

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            let settings = settings(cli.config.as_ref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let config = config_path(cli.config.as_ref());
            rt.block_on(ct_harmonizer::daemon::serve(config, settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let settings = settings(cli.config.as_ref())?;
            for note in ct_harmonizer::daemon::check_config(&settings)? {
                println!("ok: {note}");
            }
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { job } => {
            let settings = settings(cli.config.as_ref())?;
            let outbox = ct_harmonizer::forward::Outbox::open(&settings.state.dir)?;
            let j = outbox.retry(&job)?;
            println!(
                "requeued {} (series {} to {})",
                j.id, j.source_series_uid, j.destination
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Process {
            inputs,
            out,
            model,
            preview,
            stats,
        } => {
            let settings = settings(cli.config.as_ref())?;
            let started = std::time::Instant::now();
            let opts = ProcessOptions {
                inputs,
                out,
                model,
                preview,
            };
            let report = process::run(&settings, &opts)?;
            for p in &report.published {
                println!(
                    "series {} -> {} ({} slices, {:.2} s)",
                    p.source_series_uid,
                    p.dir.display(),
                    p.slices,
                    p.seconds
                );
            }
            for (uid, e) in &report.failed {
                println!("FAILED series {uid}: {e}");
            }
            for e in &report.rejected_files {
                println!("REJECTED {e}");
            }
            for (path, note) in &report.skipped_files {
                println!("skipped {}: {note}", path.display());
            }
            if let Some(p) = &report.preview {
                println!("preview (input | output | difference) -> {}", p.display());
            }
            if stats {
                println!(
                    "stats: wall_s={:.4} run_s={:.4} runs={} device={}",
                    started.elapsed().as_secs_f64(),
                    report.inference_seconds,
                    report.inference_runs,
                    report.device
                );
            }
            Ok(if report.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Sample {
            out,
            kind,
            slices,
            size,
        } => {
            let files = match kind.as_str() {
                "cranium" => ct_harmonizer::samples::write_inv3_series(
                    std::path::Path::new(ct_harmonizer::samples::CRANIUM_INV3),
                    &out,
                )
                .context("writing the invesalius head CT (install Debian's invesalius-examples: bash scripts/setup.sh)")?,
                "phantom" => {
                    let spec = ct_harmonizer::samples::SeriesSpec::axial(
                        &format!("phantom-{size}-{slices}"),
                        size,
                        size,
                        slices,
                        [1.0, 0.7, 0.7],
                    );
                    ct_harmonizer::samples::write_phantom_series(&spec, &out, 40.0)?
                }
                other => anyhow::bail!("unknown sample kind {other:?} (cranium or phantom)"),
            };
            println!("{} slices -> {}", files.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
