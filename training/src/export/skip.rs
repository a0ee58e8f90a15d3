//! `ct-train export-skip`: the learnable skip filter of an exported residual RevGAN, alone, as a model
//! of its own (issue 13 §3).
//!
//! A residual generator trained with `--skip-kernel K` outputs `skip(x) + branch_scale · net(x)`,
//! where `skip` is a d×K×K convolution (started as the least-squares filter, then trained). When the
//! network branch adds nothing measurable (the shipped `revgan-kernel` at branch scale 0.01: 56.99 dB
//! with it, 57.00 dB for the skip alone), the skip filter is the model, at a small fraction of the
//! inference cost. This command reads the filter's weights from the exported ONNX file (the
//! initializers `dec_b.skip.weight` and, when present, `dec_b.skip.bias` that
//! [`super::trained::graph::generator_onnx`] writes) and writes a model whose graph is exactly that
//! branch of the source graph: `Pad` (edge, by the filter's radii) then `Conv`. Being linear and
//! local, it tiles exactly with a valid margin of the filter's radii, so its tile can span whole
//! slices.
//!
//! The manifest copies the source's intensity window (and input clipping), kernels and training
//! provenance, names the source model and its ONNX hash, and carries no evaluation rows: `ct-train
//! eval --model <out> --record` measures them.

use super::onnx::{self, DataType, Dim, GraphBuilder};
use super::{INPUT, MANIFEST_FILE, ONNX_FILE, OUTPUT};
use crate::lib_bridge::{hex, Manifest, ManifestError, ModelDir, ModelKind, Provenance, Tensors};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Name of the skip filter's weight initializer in an exported generator.
pub const SKIP_WEIGHT: &str = "dec_b.skip.weight";
/// Name of its bias initializer (absent when the filter has none).
pub const SKIP_BIAS: &str = "dec_b.skip.bias";
/// Input slices per tile written into the manifest: whole slices in-plane (see [`skip_manifest`]).
pub const TILE_DEPTH: usize = 32;
/// In-plane tile edge written into the manifest: a whole 512×512 slice in one tile.
pub const TILE_EDGE: usize = 512;

/// Errors exporting a skip filter.
#[derive(Debug, thiserror::Error)]
pub enum ExportSkipError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Onnx {
        path: PathBuf,
        #[source]
        source: onnx::OnnxError,
    },
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("cannot serialize the model manifest: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// A d×k×k skip filter: weights `[1, 1, d, k, k]` (ONNX Conv layout) and its bias.
#[derive(Debug, Clone, PartialEq)]
pub struct SkipFilter {
    /// Kernel extent (z, y, x), each odd.
    pub kernel: [usize; 3],
    /// Row-major weights, `kernel[0] * kernel[1] * kernel[2]` values.
    pub weight: Vec<f32>,
    pub bias: f32,
}

impl SkipFilter {
    /// Filter radii (z, y, x): the edge padding before the convolution and the valid margin.
    pub fn radii(&self) -> [usize; 3] {
        self.kernel.map(|k| k / 2)
    }
}

fn refuse(path: &Path, reason: impl Into<String>) -> ExportSkipError {
    ExportSkipError::Refused {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The skip filter of an exported generator's ONNX model (`path` names it in errors).
pub fn skip_filter(model: &onnx::ModelProto, path: &Path) -> Result<SkipFilter, ExportSkipError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| refuse(path, "the ONNX file has no graph"))?;
    let find = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let w = find(SKIP_WEIGHT).ok_or_else(|| {
        refuse(
            path,
            format!(
                "no initializer {SKIP_WEIGHT}: not a residual generator with a learnable skip \
                 filter (trained with --skip-kernel)"
            ),
        )
    })?;
    let dims: Vec<usize> = w
        .dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let kernel = match dims.as_slice() {
        [1, 1, d, h, k] if *d % 2 == 1 && *h % 2 == 1 && *k % 2 == 1 => [*d, *h, *k],
        _ => {
            return Err(refuse(
                path,
                format!(
                    "{SKIP_WEIGHT} has dims {:?}; expected [1, 1, d, k, k] with odd d and k",
                    w.dims
                ),
            ))
        }
    };
    let weight = onnx::tensor_f32_values(w)
        .filter(|v| v.len() == kernel.iter().product::<usize>())
        .ok_or_else(|| {
            refuse(
                path,
                format!("{SKIP_WEIGHT} is not a float32 tensor of its dims"),
            )
        })?;
    let bias = match find(SKIP_BIAS) {
        None => 0.0,
        Some(b) => match onnx::tensor_f32_values(b).as_deref() {
            Some([v]) => *v,
            _ => {
                return Err(refuse(
                    path,
                    format!("{SKIP_BIAS} is not one float32 value"),
                ))
            }
        },
    };
    Ok(SkipFilter {
        kernel,
        weight,
        bias,
    })
}

/// The ONNX graph of the filter alone: `Pad` (edge, by the radii) then `Conv` (no padding).
pub fn skip_onnx(f: &SkipFilter, doc: &str) -> Result<onnx::ModelProto, onnx::OnnxError> {
    let dims = Dim::ncdhw_dynamic();
    let mut g = GraphBuilder::new("skip_filter");
    g.doc(doc);
    g.input(INPUT, DataType::Float, &dims)?;
    let [rz, ry, rx] = f.radii().map(|r| r as i64);
    let pads = g.initializer_i64("pads_skip", &[10], &[0, 0, rz, ry, rx, 0, 0, rz, ry, rx])?;
    let k = f.kernel.map(|k| k as i64);
    let w = g.initializer_f32(SKIP_WEIGHT, &[1, 1, k[0], k[1], k[2]], &f.weight)?;
    let b = g.initializer_f32(SKIP_BIAS, &[1], &[f.bias])?;
    g.node(
        "n_pad",
        "Pad",
        &[INPUT, &pads],
        &["padded"],
        vec![onnx::attr_string("mode", "edge")],
    )?;
    g.node(
        "n_conv",
        "Conv",
        &["padded", &w, &b],
        &[OUTPUT],
        vec![
            onnx::attr_ints("kernel_shape", &k),
            onnx::attr_ints("strides", &[1, 1, 1]),
            onnx::attr_ints("pads", &[0; 6]),
            onnx::attr_ints("dilations", &[1, 1, 1]),
            onnx::attr_int("group", 1),
        ],
    )?;
    g.output(OUTPUT, DataType::Float, &dims);
    Ok(onnx::model(
        g.build()?,
        "ct-train",
        env!("CARGO_PKG_VERSION"),
        "ct-harmonizer linear skip filter (see model.toml).",
    ))
}

/// The manifest of the filter exported from `source` as model `name` `version`.
pub fn skip_manifest(
    source: &Manifest,
    f: &SkipFilter,
    name: &str,
    version: &str,
    onnx_sha256: String,
) -> Manifest {
    let [kz, ky, kx] = f.kernel;
    let margin = f.radii();
    Manifest {
        name: name.to_owned(),
        version: version.to_owned(),
        kind: ModelKind::Trained,
        task: source.task,
        description: format!(
            "Linear {kz}x{ky}x{kx} skip filter of {} {} alone (its trained weights, without the \
             network branch): reconstruction-kernel translation (sharp to soft).",
            source.name, source.version
        ),
        onnx_file: ONNX_FILE.to_owned(),
        onnx_sha256,
        provenance: Provenance {
            program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
            data: format!(
                "ct-train export-skip of {} {} (onnx sha256 {}): its initializers {SKIP_WEIGHT} and \
                 {SKIP_BIAS}, graph Pad (edge) + Conv. The source model's training: {}",
                source.name, source.version, source.onnx_sha256, source.provenance.data
            ),
            steps: source.provenance.steps,
            seed: source.provenance.seed,
        },
        tensors: Tensors {
            input: INPUT.to_owned(),
            output: OUTPUT.to_owned(),
            layout: "NCDHW".to_owned(),
            dtype: "float32".to_owned(),
            // Linear and local: tiles are exact with a margin of the radii, so a tile holds whole
            // slices (no in-plane recomputation) and a few of them in z.
            patch: [TILE_DEPTH.max(2 * margin[0] + 1), TILE_EDGE, TILE_EDGE],
            dynamic_spatial: true,
            scale: [1.0, 1.0, 1.0],
            valid_margin: margin,
        },
        intensity: source.intensity.clone(),
        kernels: source.kernels.clone(),
        evaluation: Vec::new(),
        stages: Vec::new(),
        notes: Some(format!(
            "The network branch of {} was dropped: measured, it adds nothing (README model table). \
             Evaluation rows: ct-train eval --record.",
            source.name
        )),
    }
}

/// `ct-train export-skip` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportSkipArgs {
    /// Exported residual generator (model.onnx + model.toml), e.g. models/revgan-kernel.
    #[arg(long)]
    pub from: PathBuf,
    /// Model directory to write, e.g. models/revgan-kernel-linear; its name is the model's name.
    #[arg(long)]
    pub out: PathBuf,
    /// Model version written into the manifest (semver).
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// Replace an existing model in --out.
    #[arg(long)]
    pub force: bool,
}

/// Runs `ct-train export-skip`: writes `out/model.onnx` and `out/model.toml` and re-opens them with
/// the daemon's reader.
pub fn run(args: &ExportSkipArgs) -> Result<ModelDir, ExportSkipError> {
    let src = ModelDir::open(&args.from)?;
    if src.manifest.is_multi_stage() || src.manifest.scale() != [1, 1, 1] {
        return Err(refuse(
            &args.from,
            "only a single-stage model of scale 1 (a kernel model) has a skip filter to export",
        ));
    }
    let bytes = std::fs::read(&src.onnx_path).map_err(|source| ExportSkipError::Io {
        path: src.onnx_path.clone(),
        source,
    })?;
    let model = onnx::decode_model(&bytes).map_err(|source| ExportSkipError::Onnx {
        path: src.onnx_path.clone(),
        source,
    })?;
    let filter = skip_filter(&model, &src.onnx_path)?;
    let name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| refuse(&args.out, "the output directory needs a name"))?;
    for f in [ONNX_FILE, MANIFEST_FILE] {
        let p = args.out.join(f);
        if p.exists() && !args.force {
            return Err(refuse(
                &p,
                "a model is already there; pass --force to replace it",
            ));
        }
    }
    let doc = format!(
        "Skip filter of {} {} alone (ct-train export-skip).",
        src.manifest.name, src.manifest.version
    );
    let out_bytes =
        onnx::encode_model(
            &skip_onnx(&filter, &doc).map_err(|source| ExportSkipError::Onnx {
                path: args.out.join(ONNX_FILE),
                source,
            })?,
        );
    let sha = hex(&Sha256::digest(&out_bytes));
    let manifest = skip_manifest(&src.manifest, &filter, &name, &args.version, sha);
    let text = manifest.to_toml()?;
    let mp = args.out.join(MANIFEST_FILE);
    Manifest::from_toml(&text, &mp)?;
    std::fs::create_dir_all(&args.out).map_err(|source| ExportSkipError::Io {
        path: args.out.clone(),
        source,
    })?;
    for (path, b) in [
        (args.out.join(ONNX_FILE), &out_bytes[..]),
        (mp, text.as_bytes()),
    ] {
        super::write_atomic(&path, b).map_err(|source| ExportSkipError::Io { path, source })?;
    }
    Ok(ModelDir::open(&args.out)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn source_graph(weight_dims: &[i64], weight: &[f32], bias: Option<f32>) -> onnx::ModelProto {
        let mut g = GraphBuilder::new("g");
        g.input(INPUT, DataType::Float, &Dim::ncdhw_dynamic())
            .unwrap();
        let w = g.initializer_f32(SKIP_WEIGHT, weight_dims, weight).unwrap();
        let mut inputs = vec![INPUT.to_owned(), w];
        if let Some(b) = bias {
            inputs.push(g.initializer_f32(SKIP_BIAS, &[1], &[b]).unwrap());
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        g.node("c", "Conv", &refs, &[OUTPUT], vec![]).unwrap();
        g.output(OUTPUT, DataType::Float, &Dim::ncdhw_dynamic());
        onnx::model(g.build().unwrap(), "t", "0", "")
    }

    #[test]
    fn reads_weights_and_bias_of_the_skip_initializers() {
        let w: Vec<f32> = (0..9).map(|i| i as f32 * 0.1).collect();
        let f = skip_filter(
            &source_graph(&[1, 1, 1, 3, 3], &w, Some(0.5)),
            Path::new("m"),
        )
        .unwrap();
        assert_eq!(f.kernel, [1, 3, 3]);
        assert_eq!(f.weight, w);
        assert_eq!(f.bias, 0.5);
        assert_eq!(f.radii(), [0, 1, 1]);
        // No bias initializer: zero bias.
        let f = skip_filter(&source_graph(&[1, 1, 1, 3, 3], &w, None), Path::new("m")).unwrap();
        assert_eq!(f.bias, 0.0);
    }

    #[test]
    fn refuses_graphs_without_a_usable_skip_filter() {
        let mut g = GraphBuilder::new("g");
        g.input(INPUT, DataType::Float, &[Dim::Fixed(1)]).unwrap();
        g.node("i", "Identity", &[INPUT], &[OUTPUT], vec![])
            .unwrap();
        g.output(OUTPUT, DataType::Float, &[Dim::Fixed(1)]);
        let m = onnx::model(g.build().unwrap(), "t", "0", "");
        let e = skip_filter(&m, Path::new("models/x/model.onnx")).unwrap_err();
        assert!(
            e.to_string().contains("no initializer dec_b.skip.weight"),
            "{e}"
        );
        // Even extents cannot be centred.
        let e = skip_filter(
            &source_graph(&[1, 1, 1, 2, 2], &[0.25; 4], None),
            Path::new("m"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("odd"), "{e}");
    }

    #[test]
    fn written_graph_pads_by_the_radii_then_convolves() {
        let f = SkipFilter {
            kernel: [1, 9, 9],
            weight: vec![1.0 / 81.0; 81],
            bias: 0.0,
        };
        let g = skip_onnx(&f, "d").unwrap().graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Pad", "Conv"]);
        let pads = g
            .initializer
            .iter()
            .find(|t| t.name == "pads_skip")
            .unwrap();
        assert_eq!(
            onnx::tensor_i64_values(pads).unwrap(),
            [0, 0, 0, 4, 4, 0, 0, 0, 4, 4]
        );
        // Round trip of the weights through the written model.
        let back = skip_filter(&skip_onnx(&f, "d").unwrap(), Path::new("m")).unwrap();
        assert_eq!(back, f);
    }
}
