//! What `ct-train eval` reports: the table, its CSV, and the rows recorded in a model's manifest.

use super::{task_name, EvalError, GaussianTuning};
use crate::lib_bridge::{EvaluationRow, ModelDir, Task};
use crate::metrics::Metrics;
use std::io::Write;
use std::path::Path;

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub task: &'static str,
    pub method: String,
    pub metrics: Metrics,
}

/// What `eval` produced.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub rows: Vec<Row>,
    pub tuning: Option<GaussianTuning>,
    pub tuned_on: String,
    /// The same without machine paths (data folders by name), for manifests.
    pub tuned_on_label: String,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
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
        "{:<cw$}  {:<8}  {:<w$}  {:>7}  {:>7}  {:>6}  {:>7}  {:>7}  {:>7}\n",
        "case", "task", "method", "MAE", "PSNR", "SSIM", "EI out", "EI tgt", "EI err"
    ));
    for x in &r.rows {
        let m = &x.metrics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        s.push_str(&format!(
            "{:<cw$}  {:<8}  {:<w$}  {:>7.4}  {:>7.2}  {:>6.4}  {:>7}  {:>7}  {:>7}\n",
            x.case,
            x.task,
            x.method,
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 2),
            opt(m.ei_target, 2),
            opt(err, 2)
        ));
    }
    s
}

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
    writeln!(
        f,
        "case,task,method,mae,psnr,ssim,ei_output,ei_target,ei_error"
    )
    .map_err(io)?;
    for x in &r.rows {
        let m = &x.metrics;
        let err = m.ei_output.zip(m.ei_target).map(|(a, b)| a - b);
        writeln!(
            f,
            "{},{},\"{}\",{:.6},{:.4},{:.6},{},{},{}",
            x.case,
            x.task,
            x.method.replace('"', "'"),
            m.mae,
            m.psnr,
            m.ssim,
            opt(m.ei_output, 4),
            opt(m.ei_target, 4),
            opt(err, 4)
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)
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
        .map(|row| EvaluationRow {
            dataset: dataset.to_owned(),
            method: row.method.clone(),
            mae: row.metrics.mae,
            psnr: row.metrics.psnr,
            ssim: row.metrics.ssim,
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
