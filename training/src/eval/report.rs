//! What `ct-train eval` reports: the table, its CSV, and the rows recorded in a model's manifest.

use super::{task_name, EvalError, GaussianTuning, LinearTuning, Physics, TvTuning};
use crate::lib_bridge::{EvaluationRow, ModelDir, Task};
use crate::metrics::Metrics;
use crate::physics::{BlandAltman, NpsCurve};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub task: &'static str,
    pub method: String,
    pub metrics: Metrics,
    /// The physics figures (all `None` with `--no-physics`).
    pub physics: Physics,
}

/// What `eval` produced.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    pub rows: Vec<Row>,
    pub tuning: Option<GaussianTuning>,
    pub tuned_on: String,
    /// The same without machine paths (data folders by name), for manifests.
    pub tuned_on_label: String,
    /// The fitted least-squares FIR baseline.
    pub linear: Option<LinearTuning>,
    /// The tuned TV + Gaussian baseline.
    pub tv: Option<TvTuning>,
    /// Scanner settings of the MTF phantom.
    pub edge_settings: Option<String>,
    /// Per case with quality-control inserts: which ROIs (sizes) and rod the figures used.
    pub roi_notes: Vec<String>,
    /// Mean NPS (soft-tissue ROIs) of the target ("target") and of each kernel method.
    pub nps: Vec<(String, NpsCurve)>,
    /// Seconds spent per stage (tuning each baseline, the MTF phantom, the cases).
    pub timings: Vec<(String, f64)>,
    /// Fréchet distance (case or "mean", method, FD) of the kernel methods with `--fd-features`.
    pub fd: Vec<(String, String, f64)>,
    /// The run whose discriminator gave the FD features.
    pub fd_features: Option<String>,
}

impl EvalReport {
    /// The Fréchet distance of `row` (kernel rows with `--fd-features` only).
    pub fn fd_of(&self, row: &Row) -> Option<f64> {
        self.fd
            .iter()
            .find(|(c, m, _)| *c == row.case && *m == row.method)
            .map(|x| x.2)
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

fn ba_text(b: Option<BlandAltman>, digits: usize) -> String {
    b.map(|b| {
        format!(
            "{:+.digits$} [{:+.digits$},{:+.digits$}]",
            b.bias, b.lower, b.upper
        )
    })
    .unwrap_or_default()
}

/// The table as text.
pub fn format_table(r: &EvalReport) -> String {
    let mut s = String::new();
    if let Some(g) = r.tuning {
        s.push_str(&format!(
            "gaussian baseline tuned on {} volume(s) from {}: sigma_xy = {:.3} px, sigma_z = {:.2} px (MSE {:.3e})\n",
            g.volumes, r.tuned_on, g.sigma_xy, g.sigma_z, g.mse
        ));
    }
    if let Some(l) = &r.linear {
        s.push_str(&format!(
            "best linear filter: least-squares {}x{}x{} FIR + bias fitted on {} volume(s) from {} ({} voxels; MAE {:.2} HU against {:.2} for the identity)\n",
            l.depth, l.size, l.size, l.volumes, r.tuned_on, l.fit.samples, l.fit.mae, l.fit.identity_mae
        ));
    }
    if let Some(t) = &r.tv {
        let tried: Vec<String> = t
            .tried
            .iter()
            .map(|(l, m)| format!("{l:.1}:{m:.3e}"))
            .collect();
        s.push_str(&format!(
            "nonlinear baseline: TV (Chambolle) lambda = {:.1} HU then gaussian sigma_xy = {:.3} px, sigma_z = {:.2} px (MSE {:.3e}; lambda:MSE tried {})\n",
            t.lambda, t.gaussian.sigma_xy, t.gaussian.sigma_z, t.gaussian.mse, tried.join(" ")
        ));
    }
    if let Some(e) = &r.edge_settings {
        s.push_str(&format!("MTF50 on the simulated rod phantom: {e}\n"));
    }
    for n in &r.roi_notes {
        s.push_str(&format!("QC inserts of {n}\n"));
    }
    let w = r
        .rows
        .iter()
        .map(|x| x.method.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let cw = r
        .rows
        .iter()
        .map(|x| x.case.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s.push_str(&format!(
        "{:<cw$}  {:<8}  {:<w$}  {:>7}  {:>7}  {:>6}  {:>7}  {:>7}  {:>7}  {:>7}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>22}  {:>22}  {:>6}  {:>4}\n",
        "case", "task", "method", "MAE", "PSNR", "SSIM", "EI out", "EI tgt", "EI err", "P15 err",
        "σsoft", "σlung", "NPSpk", "NPSd", "MTF50", "CCC85", "n", "EI BA bias [LoA]", "P15 BA bias [LoA]",
        "CCCst", "n"
    ));
    for x in &r.rows {
        let m = &x.metrics;
        let p = &x.physics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        s.push_str(&format!(
            "{:<cw$}  {:<8}  {:<w$}  {:>7.4}  {:>7.2}  {:>6.4}  {:>7}  {:>7}  {:>7}  {:>7}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>22}  {:>22}  {:>6}  {:>4}\n",
            x.case,
            x.task,
            x.method,
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 2),
            opt(m.ei_target, 2),
            opt(err, 2),
            opt(Physics::error(p.perc15), 1),
            opt(Physics::ratio(p.noise_soft), 3),
            opt(Physics::ratio(p.noise_lung), 3),
            opt(Physics::ratio(p.nps_peak), 3),
            opt(p.nps_distance, 3),
            opt(Physics::ratio(p.mtf50), 3),
            opt(p.ccc_share(), 3),
            p.ccc.map(|(_, n)| n.to_string()).unwrap_or_default(),
            ba_text(p.ei_ba, 2),
            ba_text(p.perc15_ba, 1),
            opt(p.ccc_structure_share(), 3),
            p.ccc_structure
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
        ));
    }
    s.push_str(
        "σsoft, σlung: noise std ratio output/target in uniform ROIs; NPSpk: NPS peak-frequency ratio; \
         NPSd: relative L2 distance of the NPS; MTF50: ratio on the case's rod insert, else on the rod phantom; CCC85: share of the \
         n (feature, ROI class) with CCC >= 0.85 over the uniform ROIs, CCCst: over the lung-structure ROIs (vessels, airways, nodules); \
         BA: Bland-Altman bias [limits of agreement] over cases\n",
    );
    if let Some(run) = &r.fd_features {
        s.push_str(&format!(
            "FD: Fréchet distance to the target on the features of the discriminator of {run} (not FID: no Inception network offline)\n"
        ));
        for (case, method, d) in &r.fd {
            s.push_str(&format!("{case:<cw$}  {method:<w$}  FD {d:.4e}\n"));
        }
    }
    s
}

/// Columns of the CSV, in order (the first nine are the original format's).
pub const CSV_COLUMNS: [&str; 41] = [
    "case",
    "task",
    "method",
    "mae",
    "psnr",
    "ssim",
    "ei_output",
    "ei_target",
    "ei_error",
    "perc15_output",
    "perc15_target",
    "perc15_error",
    "noise_soft_output",
    "noise_soft_target",
    "noise_soft_ratio",
    "noise_lung_output",
    "noise_lung_target",
    "noise_lung_ratio",
    "nps_peak_output",
    "nps_peak_target",
    "nps_peak_ratio",
    "nps_mean_freq_ratio",
    "nps_distance",
    "mtf50_output",
    "mtf50_target",
    "mtf50_ratio",
    "ccc_reproducible",
    "ccc_features",
    "ccc_share",
    "ei_ba_bias",
    "ei_ba_lower",
    "ei_ba_upper",
    "perc15_ba_bias",
    "perc15_ba_lower",
    "perc15_ba_upper",
    "ei_ba_n",
    "perc15_ba_n",
    "ccc_structure_reproducible",
    "ccc_structure_features",
    "ccc_structure_share",
    "fd",
];

/// Writes the rows as CSV.
pub fn write_csv(path: &Path, r: &EvalReport) -> Result<(), EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(f, "{}", CSV_COLUMNS.join(",")).map_err(io)?;
    for x in &r.rows {
        let m = &x.metrics;
        let p = &x.physics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        let pair = |v: Option<(f64, f64)>, d: usize| {
            format!("{},{}", opt(v.map(|x| x.0), d), opt(v.map(|x| x.1), d))
        };
        let ba = |b: Option<BlandAltman>| {
            format!(
                "{},{},{}",
                opt(b.map(|b| b.bias), 4),
                opt(b.map(|b| b.lower), 4),
                opt(b.map(|b| b.upper), 4)
            )
        };
        writeln!(
            f,
            "{},{},\"{}\",{:.6},{:.4},{:.6},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            x.case,
            x.task,
            x.method.replace('"', "'"),
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 4),
            opt(m.ei_target, 4),
            opt(err, 4),
            pair(p.perc15, 3),
            opt(Physics::error(p.perc15), 3),
            pair(p.noise_soft, 4),
            opt(Physics::ratio(p.noise_soft), 5),
            pair(p.noise_lung, 4),
            opt(Physics::ratio(p.noise_lung), 5),
            pair(p.nps_peak, 5),
            opt(Physics::ratio(p.nps_peak), 5),
            opt(Physics::ratio(p.nps_mean), 5),
            opt(p.nps_distance, 5),
            pair(p.mtf50, 5),
            opt(Physics::ratio(p.mtf50), 5),
            p.ccc.map(|(k, _)| k.to_string()).unwrap_or_default(),
            p.ccc.map(|(_, n)| n.to_string()).unwrap_or_default(),
            opt(p.ccc_share(), 5),
            ba(p.ei_ba),
            ba(p.perc15_ba),
            p.ei_ba.map(|b| b.n.to_string()).unwrap_or_default(),
            p.perc15_ba.map(|b| b.n.to_string()).unwrap_or_default(),
            p.ccc_structure
                .map(|(k, _)| k.to_string())
                .unwrap_or_default(),
            p.ccc_structure
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
            opt(p.ccc_structure_share(), 5),
            r.fd_of(x).map(|d| format!("{d:.6e}")).unwrap_or_default(),
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)
}

/// Draws `<csv stem>-nps.png` (mean NPS curves of the target and of each kernel method) and
/// `<csv stem>-bland-altman.png` (emphysema index, one panel per kernel method) beside the CSV;
/// returns the files written (none when there is nothing to draw).
pub fn write_plots(csv: &Path, r: &EvalReport) -> Result<Vec<PathBuf>, EvalError> {
    let stem = csv
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "eval".into());
    let dir = csv.parent().unwrap_or(Path::new(""));
    let mut written = Vec::new();
    let plot_err = |e: crate::plots::PlotError| EvalError::Plot(Box::new(e));
    if !r.nps.is_empty() {
        let p = dir.join(format!("{stem}-nps.png"));
        let curves: Vec<(&str, &[f64], &[f64])> = r
            .nps
            .iter()
            .map(|(m, c)| (m.as_str(), c.freq.as_slice(), c.power.as_slice()))
            .collect();
        crate::plots::nps_png(&p, &curves).map_err(plot_err)?;
        written.push(p);
    }
    let mut panels = Vec::new();
    for mean in r
        .rows
        .iter()
        .filter(|x| x.case == "mean" && x.task == "kernel")
    {
        let Some(ba) = mean.physics.ei_ba else {
            continue;
        };
        let pts: Vec<(f64, f64)> = r
            .rows
            .iter()
            .filter(|x| x.case != "mean" && x.task == "kernel" && x.method == mean.method)
            .filter_map(|x| x.metrics.ei_output.zip(x.metrics.ei_target))
            .map(|(a, b)| (0.5 * (a + b), a - b))
            .collect();
        panels.push((mean.method.clone(), pts, (ba.bias, ba.lower, ba.upper)));
    }
    if !panels.is_empty() {
        let p = dir.join(format!("{stem}-bland-altman.png"));
        crate::plots::bland_altman_png(&p, "emphysema index LAA-950 (%)", &panels)
            .map_err(plot_err)?;
        written.push(p);
    }
    Ok(written)
}

/// The rows of `r` that go into the manifest of a `task` model: means over cases (the only case
/// when there is one), every method of that task, with `dataset` naming the pairs.
/// Rows of other trained models evaluated in the same run (`others`, their labels) are left out:
/// a manifest lists its model against the baselines.
pub fn manifest_rows(
    r: &EvalReport,
    task: Task,
    dataset: &str,
    others: &[String],
) -> Vec<EvaluationRow> {
    let means = r.rows.iter().any(|row| row.case == "mean");
    r.rows
        .iter()
        .filter(|row| row.task == task_name(task) && (!means || row.case == "mean"))
        .filter(|row| !others.contains(&row.method))
        .map(|row| {
            let p = &row.physics;
            EvaluationRow {
                dataset: dataset.to_owned(),
                method: row.method.clone(),
                mae: row.metrics.mae,
                psnr: row.metrics.psnr,
                ssim: row.metrics.ssim,
                ei_error: row
                    .metrics
                    .ei_output
                    .zip(row.metrics.ei_target)
                    .map(|(a, b)| a - b),
                perc15_error: Physics::error(p.perc15),
                noise_ratio_soft: Physics::ratio(p.noise_soft),
                noise_ratio_lung: Physics::ratio(p.noise_lung),
                nps_peak_ratio: Physics::ratio(p.nps_peak),
                nps_distance: p.nps_distance,
                mtf50_ratio: Physics::ratio(p.mtf50),
                ccc_share: p.ccc_share(),
                ccc_share_structure: p.ccc_structure_share(),
                fd: r.fd_of(row),
            }
        })
        .collect()
}

/// Replaces the `[[evaluation]]` rows of the manifest in `model` (see [`super::EvalArgs::record`]).
pub fn record_in_manifest(model: &Path, rows: Vec<EvaluationRow>) -> Result<(), EvalError> {
    let md = ModelDir::open(model).map_err(|source| EvalError::Model {
        dir: model.to_owned(),
        source,
    })?;
    let mut m = md.manifest;
    m.evaluation = rows;
    let path = model.join(crate::export::MANIFEST_FILE);
    let text = m.to_toml().map_err(|e| EvalError::Pairs {
        path: path.clone(),
        reason: format!("cannot serialize the manifest: {e}"),
    })?;
    crate::export::write_atomic(&path, text.as_bytes()).map_err(|source| EvalError::Io {
        path: path.clone(),
        source,
    })?;
    ModelDir::open(model).map_err(|source| EvalError::Model {
        dir: model.to_owned(),
        source,
    })?;
    Ok(())
}
