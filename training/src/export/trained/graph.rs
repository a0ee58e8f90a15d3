//! The ONNX graph of a trained generator (module docs of [`super`]): a small writer that names
//! values `v0, v1, ...`, and the A→B generator laid down node by node from the Burn modules'
//! weights.

use super::ExportModelError;
use crate::export::onnx::{self, DataType, Dim, GraphBuilder};
use crate::export::{INPUT, OUTPUT};
use crate::model::{
    Coupling, Decoder, Encoder, RevBlock, RevGan, RevGanConfig, IN_EPSILON, OUTER_KERNEL, OUTER_PAD,
};
use burn::module::Param;
use burn::nn::conv::{Conv3d, ConvTranspose3d};
use burn::nn::PaddingConfig3d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

fn values<B: Backend, const D: usize>(
    t: &Param<Tensor<B, D>>,
    what: &str,
) -> Result<(Vec<i64>, Vec<f32>), ExportModelError> {
    let dims = t.dims().iter().map(|&d| d as i64).collect();
    let data = t
        .val()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|_| ExportModelError::Weights(what.to_owned()))?;
    Ok((dims, data))
}

/// Builds the generator graph node by node, naming values `v0, v1, ...` (also used by the MEGAN
/// exporter, [`crate::export::megan`]).
pub(crate) struct Writer {
    pub(crate) g: GraphBuilder,
    next: usize,
    /// Cached `InstanceNormalization` scale/bias initializers per channel count.
    norms: std::collections::BTreeMap<usize, (String, String)>,
    pads: std::collections::BTreeMap<usize, String>,
}

impl Writer {
    /// An empty graph named `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            g: GraphBuilder::new(name),
            next: 0,
            norms: Default::default(),
            pads: Default::default(),
        }
    }

    /// `InstanceNormalization` with the given per-channel scale and bias (an affine
    /// InstanceNorm3d); `prefix` names the initializers.
    pub(crate) fn instance_norm_affine<B: Backend>(
        &mut self,
        x: &str,
        gamma: &Param<Tensor<B, 1>>,
        beta: &Param<Tensor<B, 1>>,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let (gd, gv) = values(gamma, prefix)?;
        let (bd, bv) = values(beta, prefix)?;
        let s = self
            .g
            .initializer_f32(&format!("{prefix}.gamma"), &gd, &gv)?;
        let b = self
            .g
            .initializer_f32(&format!("{prefix}.beta"), &bd, &bv)?;
        self.node(
            "InstanceNormalization",
            &[x, &s, &b],
            vec![onnx::attr_float("epsilon", IN_EPSILON as f32)],
        )
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    pub(crate) fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<onnx::AttributeProto>,
    ) -> Result<String, ExportModelError> {
        let out = self.fresh(&op.to_lowercase());
        let name = format!("n_{out}");
        self.g.node(&name, op, inputs, &[&out], attrs)?;
        Ok(out)
    }

    /// `Pad` (edge) by `p` on both sides of D, H, W.
    pub(crate) fn pad_edge(&mut self, x: &str, p: usize) -> Result<String, ExportModelError> {
        let pads = match self.pads.get(&p) {
            Some(n) => n.clone(),
            None => {
                let p = p as i64;
                let n = self.g.initializer_i64(
                    &format!("pads_edge_{p}"),
                    &[10],
                    &[0, 0, p, p, p, 0, 0, p, p, p],
                )?;
                self.pads.insert(p as usize, n.clone());
                n
            }
        };
        self.node("Pad", &[x, &pads], vec![onnx::attr_string("mode", "edge")])
    }

    pub(crate) fn conv<B: Backend>(
        &mut self,
        x: &str,
        c: &Conv3d<B>,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let (wd, w) = values(&c.weight, prefix)?;
        let wn = self
            .g
            .initializer_f32(&format!("{prefix}.weight"), &wd, &w)?;
        let mut inputs = vec![x.to_owned(), wn];
        if let Some(b) = &c.bias {
            let (bd, bv) = values(b, prefix)?;
            inputs.push(
                self.g
                    .initializer_f32(&format!("{prefix}.bias"), &bd, &bv)?,
            );
        }
        let (pd, ph, pw) = match c.padding {
            PaddingConfig3d::Explicit(d, h, w) => (d as i64, h as i64, w as i64),
            PaddingConfig3d::Valid => (0, 0, 0),
            PaddingConfig3d::Same => {
                return Err(ExportModelError::Weights(format!(
                    "{prefix} (\"same\" padding is not used by this model)"
                )))
            }
        };
        let k: Vec<i64> = c.kernel_size.iter().map(|&k| k as i64).collect();
        let s: Vec<i64> = c.stride.iter().map(|&s| s as i64).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "Conv",
            &refs,
            vec![
                onnx::attr_ints("kernel_shape", &k),
                onnx::attr_ints("strides", &s),
                onnx::attr_ints("pads", &[pd, ph, pw, pd, ph, pw]),
                onnx::attr_ints("dilations", &[1, 1, 1]),
                onnx::attr_int("group", 1),
            ],
        )
    }

    pub(crate) fn conv_transpose<B: Backend>(
        &mut self,
        x: &str,
        c: &ConvTranspose3d<B>,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let (wd, w) = values(&c.weight, prefix)?;
        let wn = self
            .g
            .initializer_f32(&format!("{prefix}.weight"), &wd, &w)?;
        let mut inputs = vec![x.to_owned(), wn];
        if let Some(b) = &c.bias {
            let (bd, bv) = values(b, prefix)?;
            inputs.push(
                self.g
                    .initializer_f32(&format!("{prefix}.bias"), &bd, &bv)?,
            );
        }
        let i64s = |a: [usize; 3]| a.iter().map(|&v| v as i64).collect::<Vec<i64>>();
        let p = i64s(c.padding);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "ConvTranspose",
            &refs,
            vec![
                onnx::attr_ints("kernel_shape", &i64s(c.kernel_size)),
                onnx::attr_ints("strides", &i64s(c.stride)),
                onnx::attr_ints("pads", &[p[0], p[1], p[2], p[0], p[1], p[2]]),
                onnx::attr_ints("output_padding", &i64s(c.padding_out)),
                onnx::attr_ints("dilations", &i64s(c.dilation)),
                onnx::attr_int("group", c.groups as i64),
            ],
        )
    }

    /// `InstanceNormalization` with scale 1 and bias 0 (affine-free InstanceNorm3d).
    fn instance_norm(&mut self, x: &str, channels: usize) -> Result<String, ExportModelError> {
        let (s, b) = match self.norms.get(&channels) {
            Some(v) => v.clone(),
            None => {
                let c = channels as i64;
                let s = self.g.initializer_f32(
                    &format!("in_scale_{channels}"),
                    &[c],
                    &vec![1.0; channels],
                )?;
                let b = self.g.initializer_f32(
                    &format!("in_bias_{channels}"),
                    &[c],
                    &vec![0.0; channels],
                )?;
                self.norms.insert(channels, (s.clone(), b.clone()));
                (s, b)
            }
        };
        self.node(
            "InstanceNormalization",
            &[x, &s, &b],
            vec![onnx::attr_float("epsilon", IN_EPSILON as f32)],
        )
    }

    pub(crate) fn relu(&mut self, x: &str) -> Result<String, ExportModelError> {
        self.node("Relu", &[x], vec![])
    }

    /// Edge-pads each odd spatial axis of `x` by one voxel at its end (pads = [0 x 7, D%2, H%2,
    /// W%2]) so the stride-2 layers see even sizes; returns the padded tensor and `x`'s D, H, W
    /// (for [`Writer::crop_to_output`]).
    pub(crate) fn pad_odd_axes(&mut self, x: &str) -> Result<(String, String), ExportModelError> {
        let spatial = self.node("Shape", &[x], vec![onnx::attr_int("start", 2)])?;
        let two = self.g.initializer_i64("const_two", &[1], &[2])?;
        let odd = self.node("Mod", &[&spatial, &two], vec![])?;
        let zeros = self.g.initializer_i64("const_zero_pads", &[7], &[0; 7])?;
        let pads = self.node("Concat", &[&zeros, &odd], vec![onnx::attr_int("axis", 0)])?;
        let padded = self.node("Pad", &[x, &pads], vec![onnx::attr_string("mode", "edge")])?;
        Ok((padded, spatial))
    }

    /// Cuts `y` back to the input's D, H, W (`spatial`, from [`Writer::pad_odd_axes`]) as the
    /// graph's output `OUTPUT` with the shape `dims`.
    pub(crate) fn crop_to_output(
        &mut self,
        y: &str,
        spatial: &str,
        dims: &[Dim],
    ) -> Result<(), ExportModelError> {
        let starts = self
            .g
            .initializer_i64("const_slice_starts", &[3], &[0, 0, 0])?;
        let axes = self
            .g
            .initializer_i64("const_slice_axes", &[3], &[2, 3, 4])?;
        self.g.node(
            "n_crop",
            "Slice",
            &[y, &starts, spatial, &axes],
            &[OUTPUT],
            vec![],
        )?;
        self.g.output(OUTPUT, DataType::Float, dims);
        Ok(())
    }

    fn encoder<B: Backend>(
        &mut self,
        x: &str,
        e: &Encoder<B>,
        ngf: usize,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let x = self.pad_edge(x, OUTER_PAD)?;
        let x = self.conv(&x, &e.conv_in, &format!("{prefix}.conv_in"))?;
        let x = self.instance_norm(&x, ngf)?;
        let x = self.relu(&x)?;
        let x = self.conv(&x, &e.conv_down, &format!("{prefix}.conv_down"))?;
        let x = self.instance_norm(&x, 2 * ngf)?;
        self.relu(&x)
    }

    fn coupling<B: Backend>(
        &mut self,
        x: &str,
        f: &Coupling<B>,
        ngf: usize,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let x = self.instance_norm(x, ngf)?;
        let x = self.pad_edge(&x, 1)?;
        let x = self.conv(&x, &f.conv1, &format!("{prefix}.conv1"))?;
        let x = self.instance_norm(&x, ngf)?;
        let x = self.relu(&x)?;
        let x = self.pad_edge(&x, 1)?;
        self.conv(&x, &f.conv2, &format!("{prefix}.conv2"))
    }

    fn block<B: Backend>(
        &mut self,
        x: &str,
        b: &RevBlock<B>,
        ngf: usize,
        split: &str,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let (x1, x2) = (self.fresh("x1"), self.fresh("x2"));
        let name = format!("n_split_{}", self.next);
        self.g.node(
            &name,
            "Split",
            &[x, split],
            &[&x1, &x2],
            vec![onnx::attr_int("axis", 1)],
        )?;
        let fx2 = self.coupling(&x2, &b.f, ngf, &format!("{prefix}.f"))?;
        let y1 = self.node("Add", &[&x1, &fx2], vec![])?;
        let gy1 = self.coupling(&y1, &b.g, ngf, &format!("{prefix}.g"))?;
        let y2 = self.node("Add", &[&x2, &gy1], vec![])?;
        self.node("Concat", &[&y1, &y2], vec![onnx::attr_int("axis", 1)])
    }

    fn decoder<B: Backend>(
        &mut self,
        x: &str,
        d: &Decoder<B>,
        ngf: usize,
        prefix: &str,
    ) -> Result<String, ExportModelError> {
        let x = self.conv_transpose(x, &d.conv_up, &format!("{prefix}.conv_up"))?;
        let x = self.instance_norm(&x, ngf)?;
        let x = self.relu(&x)?;
        let x = self.pad_edge(&x, OUTER_PAD)?;
        let x = self.conv(&x, &d.conv_out, &format!("{prefix}.conv_out"))?;
        self.node("Tanh", &[&x], vec![])
    }
}

/// The A→B generator of `gen` as an ONNX model (input [`INPUT`], output [`OUTPUT`]). With a
/// `scale` other than 1 (super-resolution) the input is the low-resolution volume and the graph
/// first resamples it onto the high-resolution grid with `Resize` (linear, `half_pixel`, edges
/// clamped): the same trilinear interpolation the training data went through
/// ([`crate::resample::upsample`]).
pub fn generator_onnx<B: Backend>(
    gen: &RevGan<B>,
    cfg: &RevGanConfig,
    scale: [usize; 3],
) -> Result<onnx::ModelProto, ExportModelError> {
    debug_assert_eq!(OUTER_KERNEL, 2 * OUTER_PAD + 1);
    let dims = Dim::ncdhw_dynamic();
    let mut w = Writer {
        g: GraphBuilder::new("revgan3d_a_to_b"),
        next: 0,
        norms: Default::default(),
        pads: Default::default(),
    };
    w.g.doc(&format!(
        "3D RevGAN generator A->B (seed 000): ngf {}, {} reversible blocks{}, input resampled x{:?}.",
        cfg.ngf,
        cfg.blocks,
        if cfg.residual { ", global residual" } else { "" },
        scale
    ));
    w.g.input(INPUT, DataType::Float, &dims)?;
    let source = if scale == [1, 1, 1] {
        INPUT.to_owned()
    } else {
        let f = [1.0, 1.0, scale[0] as f32, scale[1] as f32, scale[2] as f32];
        let scales = w.g.initializer_f32("const_resize_scales", &[5], &f)?;
        w.node(
            "Resize",
            &[INPUT, "", &scales],
            vec![
                onnx::attr_string("mode", "linear"),
                onnx::attr_string("coordinate_transformation_mode", "half_pixel"),
            ],
        )?
    };

    let (x, spatial) = w.pad_odd_axes(&source)?;

    let ngf = cfg.ngf;
    let mut h = w.encoder(&x, &gen.enc_a, ngf, "enc_a")?;
    if !gen.core.is_empty() {
        let split =
            w.g.initializer_i64("split_halves", &[2], &[ngf as i64, ngf as i64])?;
        for (i, b) in gen.core.iter().enumerate() {
            h = w.block(&h, b, ngf, &split, &format!("core.{i}"))?;
        }
    }
    let mut y = w.decoder(&h, &gen.dec_b, ngf, "dec_b")?;
    if gen.residual {
        let skip = match &gen.dec_b.skip {
            Some(c) => {
                // Edge padding by the filter's radii, then the d×k×k convolution.
                let (rz, r) = ((c.kernel_size[0] / 2) as i64, (c.kernel_size[2] / 2) as i64);
                let pads =
                    w.g.initializer_i64("pads_skip", &[10], &[0, 0, rz, r, r, 0, 0, rz, r, r])?;
                let p = w.node("Pad", &[&x, &pads], vec![onnx::attr_string("mode", "edge")])?;
                w.conv(&p, c, "dec_b.skip")?
            }
            None => x.clone(),
        };
        if gen.branch_scale != 1.0 {
            let k =
                w.g.initializer_f32("const_branch_scale", &[1], &[gen.branch_scale as f32])?;
            y = w.node("Mul", &[&y, &k], vec![])?;
        }
        y = w.node("Add", &[&y, &skip], vec![])?;
    }

    w.crop_to_output(&y, &spatial, &dims)?;
    Ok(onnx::model(
        w.g.build()?,
        "ct-train",
        env!("CARGO_PKG_VERSION"),
        "ct-harmonizer 3D RevGAN translator A->B (see model.toml).",
    ))
}
