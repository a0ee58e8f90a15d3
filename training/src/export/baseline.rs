//! `ct-train export-baseline`: the classical sharp-to-soft baseline, written in the model contract
//! format (`model.onnx` + `model.toml`, DESIGN §3) so the daemon runs it exactly like a trained
//! translator.
//!
//! The baseline is an in-plane Gaussian low-pass. Its σ is derived, not picked: the paired
//! sharp/soft data are simulated by filtered back-projection with a ramp filter and with a
//! Hann-windowed ramp (DESIGN §5), so the soft image is the sharp one with its in-plane spectrum
//! multiplied by the ratio of the two filters, `0.5·(1 + cos 2πf)` for `f ∈ [0, 0.5]`
//! cycles/pixel. [`fit_gaussian_to_hann`] finds the σ whose Gaussian MTF `exp(-2π²σ²f²)` is the
//! continuous least-squares fit to that ratio (about 0.785 px). The kernel is the sampled Gaussian
//! truncated at radius `ceil(3σ)` (at least 99.7 % of the continuous mass), normalised to sum 1,
//! applied separably in y and x after edge (replicate) padding, so the output has the input's
//! shape and a constant image is unchanged. Nothing is done along z: reconstruction-kernel
//! differences are in-plane, and a z blur measured worse than no processing.

use super::onnx::{self, DataType, Dim, GraphBuilder, OnnxError};
use super::{write_atomic, INPUT, MANIFEST_FILE, ONNX_FILE, OUTPUT};
use crate::lib_bridge::{
    hex, Intensity, Kernels, Manifest, ManifestError, ModelDir, ModelKind, Provenance, Task,
    Tensors,
};
use crate::resample::{gaussian_taps, kernel_radius};
use sha2::{Digest, Sha256};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

/// Name of the shipped baseline (also its directory under `models/`).
pub const BASELINE_NAME: &str = "gaussian-soft-baseline";
/// Version of the baseline model.
pub const BASELINE_VERSION: &str = "1.0.0";
/// Intervals of the composite Simpson rule used for the least-squares integral.
pub const FIT_INTERVALS: usize = 2000;
/// Largest σ accepted by `--sigma` (its margin must still leave a valid core in a 512 tile).
pub const MAX_SIGMA: f64 = 64.0;

/// Errors exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("sigma {0} is not a finite value in (0, {MAX_SIGMA}] pixels")]
    InvalidSigma(f64),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("cannot serialize the model manifest: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("the written model does not pass the daemon's own checks: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the manifest does not round-trip through TOML")]
    RoundTrip,
}

/// Result of fitting a Gaussian MTF to the Hann/ramp filter ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianFit {
    /// Least-squares σ in pixels.
    pub sigma: f64,
    /// RMS of `gaussian_mtf(σ, f) - hann_ratio(f)` over `f ∈ [0, 0.5]`.
    pub rms_residual: f64,
    /// Largest `|gaussian_mtf(σ, f) - hann_ratio(f)|` on the integration grid.
    pub max_abs_residual: f64,
}

/// The ratio of the Hann-windowed ramp filter to the plain ramp filter at `f` cycles/pixel.
pub fn hann_ratio(f: f64) -> f64 {
    0.5 * (1.0 + (2.0 * PI * f).cos())
}

/// MTF of a Gaussian of standard deviation `sigma` pixels at `f` cycles/pixel.
pub fn gaussian_mtf(sigma: f64, f: f64) -> f64 {
    (-2.0 * PI * PI * sigma * sigma * f * f).exp()
}

/// `∫₀^½ g(f) df` by the composite Simpson rule with [`FIT_INTERVALS`] intervals.
fn simpson_half(g: impl Fn(f64) -> f64) -> f64 {
    let n = FIT_INTERVALS;
    let h = 0.5 / n as f64;
    let inner: f64 = (1..n)
        .map(|i| g(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    (g(0.0) + inner + g(0.5)) * h / 3.0
}

/// Mean squared error `2·∫₀^½ (T(f) - hann_ratio(f))² df` of a transfer function `t`.
fn mean_sq_error(t: impl Fn(f64) -> f64) -> f64 {
    2.0 * simpson_half(|f| (t(f) - hann_ratio(f)).powi(2))
}

/// Residual figures of the Gaussian MTF of `sigma` against the Hann ratio.
pub fn gaussian_residual(sigma: f64) -> GaussianFit {
    let max_abs_residual = (0..=FIT_INTERVALS)
        .map(|i| {
            let f = 0.5 * i as f64 / FIT_INTERVALS as f64;
            (gaussian_mtf(sigma, f) - hann_ratio(f)).abs()
        })
        .fold(0.0, f64::max);
    GaussianFit {
        sigma,
        rms_residual: mean_sq_error(|f| gaussian_mtf(sigma, f)).sqrt(),
        max_abs_residual,
    }
}

/// The continuous least-squares σ: minimises `∫₀^½ (exp(-2π²σ²f²) - 0.5(1 + cos 2πf))² df` by
/// golden-section search on σ ∈ [0.05, 4] px (the objective is unimodal there).
pub fn fit_gaussian_to_hann() -> GaussianFit {
    let cost = |s: f64| mean_sq_error(|f| gaussian_mtf(s, f));
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (0.05_f64, 4.0_f64);
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut fc, mut fd) = (cost(c), cost(d));
    while b - a > 1e-11 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - inv_phi * (b - a);
            fc = cost(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + inv_phi * (b - a);
            fd = cost(d);
        }
    }
    gaussian_residual(0.5 * (a + b))
}

/// Frequency response of a symmetric odd-length kernel at `f` cycles/pixel.
pub fn taps_response(taps: &[f64], f: f64) -> f64 {
    let r = (taps.len() / 2) as f64;
    taps.iter()
        .enumerate()
        .map(|(k, w)| w * (2.0 * PI * f * (k as f64 - r)).cos())
        .sum()
}

/// RMS deviation of the discrete kernel's own response from the Hann ratio over `[0, 0.5]`.
pub fn taps_rms_residual(taps: &[f64]) -> f64 {
    mean_sq_error(|f| taps_response(taps, f)).sqrt()
}

fn check_sigma(sigma: f64) -> Result<f64, ExportError> {
    if sigma.is_finite() && sigma > 0.0 && sigma <= MAX_SIGMA {
        Ok(sigma)
    } else {
        Err(ExportError::InvalidSigma(sigma))
    }
}

/// The baseline graph: edge `Pad` in y and x by `radius`, then a `Conv` along x with weights
/// `[1,1,1,1,k]` and one along y with weights `[1,1,1,k,1]` (no bias); input and output are
/// float32 `[N, 1, D, H, W]` with symbolic N, D, H, W.
pub fn baseline_model(sigma: f64, radius: usize) -> Result<onnx::ModelProto, ExportError> {
    let taps: Vec<f32> = gaussian_taps(sigma, radius)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let k = taps.len() as i64;
    let r = radius as i64;
    let dims = Dim::ncdhw_dynamic();
    let mut g = GraphBuilder::new("gaussian_inplane_lowpass");
    g.doc(&format!(
        "In-plane Gaussian low-pass, sigma {sigma:.6} px, radius {radius}, edge padding; no z blur."
    ));
    g.input(INPUT, DataType::Float, &dims)?;
    // Pad (opset 11+): pads = [begin of each axis..., end of each axis...] over N, C, D, H, W.
    let pads = g.initializer_i64("pads_yx", &[10], &[0, 0, 0, r, r, 0, 0, 0, r, r])?;
    let wx = g.initializer_f32("gauss_x", &[1, 1, 1, 1, k], &taps)?;
    let wy = g.initializer_f32("gauss_y", &[1, 1, 1, k, 1], &taps)?;
    g.node(
        "pad_edge_yx",
        "Pad",
        &[INPUT, &pads],
        &["padded"],
        vec![onnx::attr_string("mode", "edge")],
    )?;
    g.node(
        "blur_x",
        "Conv",
        &["padded", &wx],
        &["blurred_x"],
        vec![
            onnx::attr_ints("kernel_shape", &[1, 1, k]),
            onnx::attr_ints("strides", &[1, 1, 1]),
            onnx::attr_ints("pads", &[0, 0, 0, 0, 0, 0]),
            onnx::attr_ints("dilations", &[1, 1, 1]),
            onnx::attr_int("group", 1),
        ],
    )?;
    g.node(
        "blur_y",
        "Conv",
        &["blurred_x", &wy],
        &[OUTPUT],
        vec![
            onnx::attr_ints("kernel_shape", &[1, k, 1]),
            onnx::attr_ints("strides", &[1, 1, 1]),
            onnx::attr_ints("pads", &[0, 0, 0, 0, 0, 0]),
            onnx::attr_ints("dilations", &[1, 1, 1]),
            onnx::attr_int("group", 1),
        ],
    )?;
    g.output(OUTPUT, DataType::Float, &dims);
    Ok(onnx::model(
        g.build()?,
        "ct-train",
        env!("CARGO_PKG_VERSION"),
        "ct-harmonizer classical sharp-to-soft baseline (see model.toml).",
    ))
}

/// What [`export_baseline`] wrote.
#[derive(Debug, Clone)]
pub struct BaselineExport {
    pub dir: PathBuf,
    pub sigma: f64,
    pub radius: usize,
    /// The least-squares fit (whether or not `--sigma` overrode its σ).
    pub fit: GaussianFit,
    /// Residual of the Gaussian MTF at the σ actually used.
    pub used: GaussianFit,
    /// RMS deviation of the truncated sampled kernel's own response from the Hann ratio.
    pub taps_rms_residual: f64,
    pub onnx_sha256: String,
    pub manifest: Manifest,
}

fn provenance_data(
    sigma: f64,
    radius: usize,
    fit: &GaussianFit,
    used: &GaussianFit,
    taps_rms: f64,
    overridden: bool,
) -> String {
    let origin = if overridden {
        format!(
            "sigma = {sigma:.6} px was set by --sigma (Gaussian-MTF RMS residual {:.4} at that sigma); \
             the derived value would be {:.6} px: ",
            used.rms_residual, fit.sigma
        )
    } else {
        format!("sigma = {sigma:.6} px is ")
    };
    format!(
        "No training data (closed-form baseline). {origin}the continuous least-squares fit of the \
         Gaussian MTF exp(-2 pi^2 sigma^2 f^2) to the Hann-windowed-ramp / ramp filter ratio \
         0.5*(1+cos(2 pi f)) over f in [0, 0.5] cycles/pixel (composite Simpson rule, {FIT_INTERVALS} \
         intervals, golden-section search), i.e. the in-plane transfer-function change from \
         ramp-filtered to Hann-filtered back-projection with which the paired sharp/soft data are \
         simulated (DESIGN section 5); fit RMS residual {:.4}, max |residual| {:.4}. Kernel: the \
         sampled Gaussian truncated at radius ceil(3 sigma) = {radius} px ({} taps, at least 99.7% of \
         the continuous mass), normalised to sum 1 and applied separably in y and x after edge \
         (replicate) padding, so valid_margin is {radius} px in-plane; the truncated sampled kernel's \
         own response differs from the Hann ratio by RMS {taps_rms:.4}. No filtering along z: \
         reconstruction-kernel differences are in-plane, and a z blur measured worse than no \
         processing. The operator is linear with unit DC gain, so the HU window only fixes the \
         model units and the input is not clipped.",
        fit.rms_residual,
        fit.max_abs_residual,
        2 * radius + 1,
    )
}

/// Builds the baseline manifest (with `onnx_sha256` of the ONNX bytes).
fn baseline_manifest(
    sigma: f64,
    radius: usize,
    onnx_sha256: String,
    provenance: String,
) -> Manifest {
    Manifest {
        name: BASELINE_NAME.to_owned(),
        version: BASELINE_VERSION.to_owned(),
        kind: ModelKind::Baseline,
        task: Task::Kernel,
        description: format!(
            "Classical baseline, not trained: in-plane separable Gaussian low-pass (sigma {sigma:.4} px, \
             {} taps, no z blur) approximating a sharp-to-soft (ramp to Hann) reconstruction-kernel change.",
            2 * radius + 1
        ),
        notes: None,
        onnx_file: ONNX_FILE.to_owned(),
        onnx_sha256,
        provenance: Provenance {
            program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
            data: provenance,
            steps: 0,
            seed: 0,
        },
        tensors: Tensors {
            input: INPUT.to_owned(),
            output: OUTPUT.to_owned(),
            layout: "NCDHW".to_owned(),
            dtype: "float32".to_owned(),
            patch: [32, 512, 512],
            dynamic_spatial: true,
            scale: [1.0, 1.0, 1.0],
            valid_margin: [0, radius, radius],
        },
        intensity: Intensity {
            hu_window: crate::config::HU_WINDOW,
            clip_input: false,
        },
        kernels: Kernels {
            accepts: Vec::new(),
            produces: "SOFT".to_owned(),
        },
        evaluation: Vec::new(),
        stages: Vec::new(),
    }
}

/// Writes `out/model.onnx` and `out/model.toml` for the Gaussian baseline, then re-opens the
/// directory with the daemon's own reader (manifest checks and SHA-256) before returning.
pub fn export_baseline(out: &Path, sigma: Option<f64>) -> Result<BaselineExport, ExportError> {
    let fit = fit_gaussian_to_hann();
    let overridden = sigma.is_some();
    let sigma = check_sigma(sigma.unwrap_or(fit.sigma))?;
    let used = gaussian_residual(sigma);
    let radius = kernel_radius(sigma);
    let taps_rms = taps_rms_residual(&gaussian_taps(sigma, radius));

    let bytes = onnx::encode_model(&baseline_model(sigma, radius)?);
    let onnx_sha256 = hex(&Sha256::digest(&bytes));
    let manifest = baseline_manifest(
        sigma,
        radius,
        onnx_sha256.clone(),
        provenance_data(sigma, radius, &fit, &used, taps_rms, overridden),
    );
    let toml_text = manifest.to_toml()?;
    let manifest_path = out.join(MANIFEST_FILE);
    if Manifest::from_toml(&toml_text, &manifest_path)? != manifest {
        return Err(ExportError::RoundTrip);
    }

    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_owned(),
        source,
    })?;
    let onnx_path = out.join(ONNX_FILE);
    write_atomic(&onnx_path, &bytes).map_err(|source| ExportError::Io {
        path: onnx_path.clone(),
        source,
    })?;
    write_atomic(&manifest_path, toml_text.as_bytes()).map_err(|source| ExportError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    ModelDir::open(out)?;

    Ok(BaselineExport {
        dir: out.to_owned(),
        sigma,
        radius,
        fit,
        used,
        taps_rms_residual: taps_rms,
        onnx_sha256,
        manifest,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::onnx::{tensor_f32_values, tensor_i64_values, type_proto, AttributeType};
    use super::*;
    use onnx::tensor_shape_proto::dimension::Value as DimValue;

    #[test]
    fn fit_is_the_least_squares_minimum() {
        let fit = fit_gaussian_to_hann();
        // Cross-checked independently with scipy (quad + minimize_scalar): 0.7849232907.
        assert!((fit.sigma - 0.784_923_29).abs() < 1e-6, "{fit:?}");
        assert!((fit.rms_residual - 0.034_539).abs() < 1e-5, "{fit:?}");
        // A minimum: neighbours are worse, and a coarse scan finds nothing better.
        let at = |s: f64| gaussian_residual(s).rms_residual;
        assert!(at(fit.sigma - 1e-3) > fit.rms_residual);
        assert!(at(fit.sigma + 1e-3) > fit.rms_residual);
        for i in 1..400 {
            assert!(at(i as f64 * 0.01) >= fit.rms_residual - 1e-12);
        }
        // Between the low-frequency (Taylor) match 1/sqrt(2) and 1.
        assert!(fit.sigma > std::f64::consts::FRAC_1_SQRT_2 && fit.sigma < 1.0);
    }

    #[test]
    fn transfer_functions() {
        assert_eq!(hann_ratio(0.0), 1.0);
        assert!(hann_ratio(0.5).abs() < 1e-15);
        assert_eq!(gaussian_mtf(0.8, 0.0), 1.0);
        // The continuous Gaussian of std 1 has MTF exp(-2 pi^2 f^2).
        assert!((gaussian_mtf(1.0, 0.25) - (-PI * PI / 8.0).exp()).abs() < 1e-15);
    }

    #[test]
    fn taps_are_normalised_symmetric_and_truncated_at_3_sigma() {
        assert_eq!(kernel_radius(0.784_923), 3);
        assert_eq!(kernel_radius(1.0), 3);
        assert_eq!(kernel_radius(1.01), 4);
        let t = gaussian_taps(0.784_923, 3);
        assert_eq!(t.len(), 7);
        assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        for i in 0..3 {
            assert_eq!(t[i], t[6 - i]);
            assert!(t[i] < t[i + 1]);
        }
        assert!((taps_response(&t, 0.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn rejects_bad_sigma() {
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_SIGMA * 2.0] {
            assert!(matches!(check_sigma(s), Err(ExportError::InvalidSigma(_))));
        }
    }

    fn dims_of(v: &onnx::ValueInfoProto) -> Vec<DimValue> {
        let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().unwrap().value.as_ref()
        else {
            panic!("not a tensor type");
        };
        assert_eq!(t.elem_type, DataType::Float as i32);
        t.shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| d.value.clone().unwrap())
            .collect()
    }

    #[test]
    fn written_graph_structure() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(BASELINE_NAME);
        let e = export_baseline(&out, None).unwrap();
        assert_eq!(e.radius, 3);
        let bytes = std::fs::read(out.join(ONNX_FILE)).unwrap();
        let m = onnx::decode_model(&bytes).unwrap();
        assert_eq!(m.ir_version, 8);
        assert_eq!(m.opset_import.len(), 1);
        assert_eq!(m.opset_import[0].domain, "");
        assert_eq!(m.opset_import[0].version, 17);
        let g = m.graph.unwrap();

        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Pad", "Conv", "Conv"]);
        assert_eq!(g.node[0].input[0], INPUT);
        assert_eq!(g.node[1].input[0], g.node[0].output[0]);
        assert_eq!(g.node[2].input[0], g.node[1].output[0]);
        assert_eq!(g.node[2].output, [OUTPUT]);
        assert!(g.node.iter().all(|n| n.domain.is_empty()));
        // Conv nodes have no bias input.
        assert_eq!(g.node[1].input.len(), 2);
        assert_eq!(g.node[2].input.len(), 2);

        let mode = &g.node[0].attribute[0];
        assert_eq!(mode.name, "mode");
        assert_eq!(mode.r#type, AttributeType::String as i32);
        assert_eq!(mode.s.as_deref(), Some(&b"edge"[..]));

        let init = |name: &str| g.initializer.iter().find(|t| t.name == name).unwrap();
        let pads = init(&g.node[0].input[1]);
        assert_eq!(pads.dims, [10]);
        assert_eq!(
            tensor_i64_values(pads).unwrap(),
            [0, 0, 0, 3, 3, 0, 0, 0, 3, 3]
        );

        let wx = init(&g.node[1].input[1]);
        let wy = init(&g.node[2].input[1]);
        assert_eq!(wx.dims, [1, 1, 1, 1, 7]);
        assert_eq!(wy.dims, [1, 1, 1, 7, 1]);
        for (w, node, kshape) in [(wx, &g.node[1], [1, 1, 7]), (wy, &g.node[2], [1, 7, 1])] {
            let v = tensor_f32_values(w).unwrap();
            assert_eq!(v.len(), 7);
            let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
            assert!((sum - 1.0).abs() < 1e-6, "weights sum to {sum}");
            let ks = node
                .attribute
                .iter()
                .find(|a| a.name == "kernel_shape")
                .unwrap();
            assert_eq!(ks.r#type, AttributeType::Ints as i32);
            assert_eq!(ks.ints, kshape);
        }

        assert_eq!(g.input.len(), 1);
        assert_eq!(g.output.len(), 1);
        assert_eq!(g.input[0].name, INPUT);
        assert_eq!(g.output[0].name, OUTPUT);
        let d_in = dims_of(&g.input[0]);
        assert_eq!(d_in, dims_of(&g.output[0]));
        assert_eq!(d_in.len(), 5);
        assert_eq!(d_in[1], DimValue::DimValue(1));
        for i in [0, 2, 3, 4] {
            assert!(matches!(d_in[i], DimValue::DimParam(_)));
        }
    }

    #[test]
    fn manifest_round_trips_and_matches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(BASELINE_NAME);
        let e = export_baseline(&out, None).unwrap();
        let md = ModelDir::open(&out).unwrap();
        assert_eq!(md.manifest, e.manifest);
        let m = &md.manifest;
        assert_eq!(m.name, BASELINE_NAME);
        assert_eq!(m.version, "1.0.0");
        assert_eq!(m.kind, ModelKind::Baseline);
        assert_eq!(m.task, Task::Kernel);
        assert_eq!(m.tensors.valid_margin, [0, 3, 3]);
        assert_eq!(m.tensors.patch, [32, 512, 512]);
        assert!(m.tensors.dynamic_spatial);
        assert_eq!(m.scale(), [1, 1, 1]);
        assert!(!m.intensity.clip_input);
        assert!(m.accepts_kernel(Some("B70f")) && m.accepts_kernel(None));
        assert_eq!(m.kernels.produces, "SOFT");
        assert!(m.provenance.program.starts_with("ct-train "));
        assert_eq!((m.provenance.steps, m.provenance.seed), (0, 0));
        assert!(m.provenance.data.contains("0.784923"));
        assert!(m.description.is_ascii());
        assert!(m.evaluation.is_empty());
        // No temporary files left behind.
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [ONNX_FILE, MANIFEST_FILE]);
    }

    #[test]
    fn export_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        export_baseline(&a, None).unwrap();
        export_baseline(&b, None).unwrap();
        for f in [ONNX_FILE, MANIFEST_FILE] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap()
            );
        }
        // Re-running over an existing export rewrites identical bytes.
        let before = std::fs::read(a.join(ONNX_FILE)).unwrap();
        export_baseline(&a, None).unwrap();
        assert_eq!(std::fs::read(a.join(ONNX_FILE)).unwrap(), before);
    }

    #[test]
    fn sigma_override_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let e = export_baseline(dir.path(), Some(1.5)).unwrap();
        assert_eq!(e.sigma, 1.5);
        assert_eq!(e.radius, 5);
        assert_eq!(e.manifest.tensors.valid_margin, [0, 5, 5]);
        assert!(e.manifest.provenance.data.contains("--sigma"));
        assert!(e.used.rms_residual > e.fit.rms_residual);
        assert!(export_baseline(dir.path(), Some(-1.0)).is_err());
    }
}
