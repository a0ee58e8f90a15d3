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
    /// Move a dead-lettered job back into the outbox (same as `jobs retry`).
    Retry {
        /// Job id (the file name in <state>/dead-letter without .toml).
        job: String,
    },
    /// One look at the running daemon: health, stages, queues, dead letters, last activity.
    ///
    /// Exit status (Nagios/Icinga plugin convention): 0 OK; 1 WARNING (dead-lettered jobs, a
    /// destination retrying, free space under twice the watermark); 2 CRITICAL (not ready: a stage
    /// stalled; free space under the watermark); 3 UNKNOWN (daemon not running, /metrics
    /// unparseable, state folder or configuration unreadable).
    Status {
        /// Print the report as JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// host:port of the daemon's HTTP endpoint (default: http.listen of the configuration).
        #[arg(long)]
        address: Option<String>,
    },
    /// The outbox and dead-letter jobs: list, show, retry, drop.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
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

#[derive(Subcommand)]
enum JobsAction {
    /// Every queued, retrying and dead-lettered job.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One job with all its fields (and its dead-letter reason).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a dead-lettered job back into the outbox, attempts reset (a running daemon sends it
    /// within a second).
    Retry { id: String },
    /// Delete a job (queued or dead-lettered); its series' spool files go too once no other job
    /// needs them.
    Drop { id: String },
}

/// Logs go to journald when systemd started us (JOURNAL_STREAM set), to stderr otherwise: as text,
/// or as one JSON object per line (fields at the top level) with `CT_HARMONIZER_LOG_FORMAT=json`.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let json = std::env::var("CT_HARMONIZER_LOG_FORMAT").is_ok_and(|f| f == "json");
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(j) => registry.with(j).init(),
        None if json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        None => {
            // One record, one line: a value a peer sent (AE title, UID, file name) cannot forge a
            // line; without a terminal there are no colours and every control character is escaped.
            use std::io::IsTerminal;
            let terminal = std::io::stderr().is_terminal();
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
                        .with_writer(move || {
                            ct_harmonizer::util::log::OneLine::new(std::io::stderr(), !terminal)
                        }),
                )
                .init()
        }
    }
}

fn config_path(path: Option<&PathBuf>) -> Option<PathBuf> {
    let system = PathBuf::from("/etc/ct-harmonizer/ct-harmonizer.toml");
    path.cloned().or_else(|| system.is_file().then_some(system))
}

fn settings(path: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Ok(Settings::load(config_path(path).as_deref())?)
}

/// `status`: never fails with an error; every failure to tell is UNKNOWN (exit code 3).
fn status_command(config: Option<&PathBuf>, json: bool, address: Option<String>) -> ExitCode {
    use ct_harmonizer::status::{self, StatusError, StatusOptions};
    let result = settings(config)
        .map_err(|e| StatusError::Config(format!("{e:#}")))
        .and_then(|s| status::collect(&s, &StatusOptions { address }));
    match result {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(t) => println!("{t}"),
                    Err(e) => {
                        println!("UNKNOWN: cannot write the report as JSON: {e}");
                        return ExitCode::from(status::UNKNOWN);
                    }
                }
            } else {
                print!("{}", status::render_human(&report));
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            if json {
                let v = serde_json::json!({
                    "status": "UNKNOWN",
                    "exit_code": status::UNKNOWN,
                    "error": e.to_string(),
                });
                println!("{v}");
            } else {
                println!("UNKNOWN: {e}");
            }
            ExitCode::from(status::UNKNOWN)
        }
    }
}

fn jobs_command(settings: &Settings, action: JobsAction) -> anyhow::Result<ExitCode> {
    use ct_harmonizer::jobs;
    let state = &settings.state.dir;
    match action {
        JobsAction::List { json } => {
            let all = jobs::list(state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no jobs in {}", state.display());
            } else {
                println!(
                    "{:<48} {:<8} {:<16} {:>8}  {:<64}  reason",
                    "id", "state", "destination", "attempts", "series"
                );
                for e in &all {
                    println!(
                        "{:<48} {:<8} {:<16} {:>8}  {:<64}  {}",
                        e.job.id,
                        e.state.to_string(),
                        e.job.destination,
                        e.job.attempts,
                        e.job.source_series_uid,
                        e.reason
                    );
                }
            }
        }
        JobsAction::Show { id, json } => {
            let e = jobs::show(state, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                let j = &e.job;
                println!("id           {}", j.id);
                println!("state        {}", e.state);
                println!("file         {}", e.file.display());
                println!("destination  {}", j.destination);
                println!("kind         {}", j.kind);
                println!("study        {}", j.study_uid);
                println!("series       {}", j.source_series_uid);
                println!("payload      {}", j.payload.display());
                println!("spool        {}", j.spool_dir.display());
                println!("attempts     {}", j.attempts);
                if e.state != jobs::JobState::Dead {
                    println!("next in      {} s", jobs::seconds_until(j.next_attempt_ms));
                }
                println!("acknowledged {} instance(s)", j.acknowledged.len());
                println!("reason       {}", e.reason);
            }
        }
        JobsAction::Retry { id } => {
            let j = jobs::retry(state, &id)?;
            println!(
                "requeued {} (series {} to {})",
                j.id, j.source_series_uid, j.destination
            );
        }
        JobsAction::Drop { id } => {
            let d = jobs::drop_job(state, &id)?;
            let j = &d.entry.job;
            println!(
                "dropped {} job {} (series {} to {})",
                d.entry.state, j.id, j.source_series_uid, j.destination
            );
            match (&d.spool_removed, &d.spool_kept) {
                (Some(p), _) => println!("removed spool version {}", p.display()),
                (None, Some(why)) => {
                    println!("kept spool version {}: {why}", j.spool_dir.display())
                }
                (None, None) => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
            jobs_command(&settings, JobsAction::Retry { id: job })
        }
        Command::Status { json, address } => Ok(status_command(cli.config.as_ref(), json, address)),
        Command::Jobs { action } => {
            let settings = settings(cli.config.as_ref())?;
            jobs_command(&settings, action)
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
                // Errors that name their series themselves are not prefixed twice.
                let text = e.to_string();
                let head = format!("series {uid}: ");
                println!("FAILED {head}{}", text.strip_prefix(&head).unwrap_or(&text));
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
