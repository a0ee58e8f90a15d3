//! Model layer (translate): runs a model's ONNX graph over a volume, slab by slab, tile by tile.
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! This folder uses `util`, `config`, `events` and `dicom` (slabs); never the daemon.
//!
//! The model's manifest ([`manifest`]) fixes tensor names, tile size, valid margin, intensity window
//! and per-axis scale. Tiles overlap by the valid margin and only their cores are kept ([`tiling`]),
//! so the stitched output equals a whole-volume pass. The session is owned by one worker
//! (`Session::run` needs `&mut self`).
//!
//! # Multi-stage models (MEGAN)
//!
//! A multi-stage manifest ([`manifest`] module docs) names two stages. The translator runs them in
//! two passes over the series:
//! 1. [`Translator::downsampler`] + [`Translator::feed`]: the series is read slab by slab (whole
//!    blocks of the first stage's `downsample` factor) and block-averaged onto the low-resolution
//!    grid ([`stages::Downsampler`]); [`Translator::run_first_stage`] runs the low-resolution stage
//!    over that whole downsampled volume (tiled with valid cores like any stage) and keeps its
//!    output. Memory bound of this pass: two low-resolution volumes (its input and output, 4 bytes a
//!    voxel each), i.e. `8 · D·H·W / (f_z·f_y·f_x)` bytes (600 slices of 512² at f = 4: 19.7 MB),
//!    plus one slab being read and one tile's activations.
//! 2. The full-resolution stage runs exactly like a single-stage model, slab by slab and tile by
//!    tile ([`Translator::translate_slabs`]); each tile's input channels are the source, its edge
//!    map ([`stages::edge_map`], computed on the tile) and the low-resolution output up-sampled
//!    nearest-neighbour ([`stages::previous_at`]). Memory stays that of a single-stage model plus
//!    the kept low-resolution output: flat in the number of slices but for that `1/(f_z·f_y·f_x)`
//!    fraction.

pub mod manifest;
pub mod runtime;
pub mod stages;
pub mod tiling;

use ndarray::Array5;
use ort::session::Session;
use ort::value::TensorRef;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{RuntimeSettings, Settings};
use crate::dicom::slab::Slab;
use crate::util::heartbeat::Beat;
pub use manifest::{Manifest, ModelDir};
use manifest::{Stage, StageInput};
use stages::{DownsampleError, Downsampler};
pub use tiling::AxisTile;

/// Errors running a model.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("model {model}: {source}")]
    Tiling {
        model: String,
        source: tiling::TilingError,
    },
    #[error("model {model}: inference failed: {reason}")]
    Inference { model: String, reason: String },
    #[error("model {model}: output shape {actual:?} where {expected:?} was expected")]
    OutputShape {
        model: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("model {model}: stage {stage}: {source}")]
    Downsample {
        model: String,
        stage: String,
        #[source]
        source: Box<DownsampleError>,
    },
    /// `stage` names the stage and its file, e.g. `hr (hr.onnx)`.
    #[error("model {model}: stage {stage} takes {actual} input channels but the manifest lists {expected} inputs")]
    StageChannels {
        model: String,
        stage: String,
        expected: usize,
        actual: i64,
    },
    #[error("model {model}: the low-resolution stage has not run over a {d}x{h}x{w} volume before its full-resolution stage", d = dims[0], h = dims[1], w = dims[2])]
    NoPreviousStage { model: String, dims: [usize; 3] },
    /// Cancellation was asked (the daemon is stopping): not a failure of the series.
    #[error("model {model}: cancelled (the daemon is stopping)")]
    Cancelled { model: String },
}

/// The input slabs of z-tiles `tiles` cut from a volume in memory (`hu`, z-major, `dims` =
/// [depth, rows, columns], `tiles` within `depth`), for [`Translator::translate_slabs`].
pub fn volume_slabs(
    hu: &[f32],
    dims: [usize; 3],
    tiles: Vec<AxisTile>,
) -> impl Iterator<Item = (AxisTile, Slab)> + '_ {
    let [_, rows, columns] = dims;
    let plane = rows * columns;
    tiles.into_iter().map(move |zt| {
        let values = hu
            .get(zt.start * plane..(zt.start + zt.len) * plane)
            .unwrap_or_default();
        let slab = Slab {
            z0: zt.start,
            depth: zt.len,
            rows,
            columns,
            hu: values.to_vec(),
        };
        (zt, slab)
    })
}

/// What long work checks between its steps (slabs, tiles): a heartbeat to show it is making
/// progress, and a cancellation flag (set when the daemon stops) to give up at the next step.
#[derive(Clone, Default)]
pub struct Control {
    beat: Option<Beat>,
    cancel: Option<Arc<AtomicBool>>,
}

impl Control {
    /// Beats `beat` at every step and stops once `cancel` is set.
    pub fn new(beat: Beat, cancel: Arc<AtomicBool>) -> Self {
        Self {
            beat: Some(beat),
            cancel: Some(cancel),
        }
    }

    /// No heartbeat, never cancelled (the one-shot `process` command).
    pub fn none() -> Self {
        Self::default()
    }

    /// A sign of progress.
    pub fn beat(&self) {
        if let Some(b) = &self.beat {
            b.beat();
        }
    }

    /// True once cancellation was asked.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A slab of translated output in HU, on the output grid.
#[derive(Debug, Clone, PartialEq)]
pub struct OutSlab {
    /// First output slice index.
    pub z0: usize,
    pub depth: usize,
    pub rows: usize,
    pub columns: usize,
    pub hu: Vec<f32>,
}

/// The first stage of a multi-stage model, loaded.
struct FirstStage {
    stage: Stage,
    session: Session,
}

/// The first stage's output for the volume being translated.
struct Previous {
    /// The series grid it was computed for.
    dims: [usize; 3],
    low_dims: [usize; 3],
    factor: [usize; 3],
    values: Vec<f32>,
}

/// One model, loaded in ONNX Runtime, with its tiling plan.
pub struct Translator {
    session: Session,
    model: ModelDir,
    tile: [usize; 3],
    device: &'static str,
    run_seconds: f64,
    runs: u64,
    /// Input channels of `session` (`[source]` for a single-stage model).
    inputs: Vec<StageInput>,
    first: Option<FirstStage>,
    previous: Option<Previous>,
}

/// Input channels of an ONNX session's first input, when static.
fn session_channels(session: &Session) -> Option<i64> {
    let shape = session.inputs().first()?.dtype().tensor_shape()?;
    shape.get(1).copied().filter(|&c| c > 0)
}

/// Checks that `session` takes `inputs.len()` channels (when its graph says).
fn check_channels(
    model: &str,
    stage: &str,
    file: &str,
    session: &Session,
    inputs: &[StageInput],
) -> Result<(), TranslateError> {
    match session_channels(session) {
        Some(c) if c != inputs.len() as i64 => Err(TranslateError::StageChannels {
            model: model.to_owned(),
            stage: format!("{stage} ({file})"),
            expected: inputs.len(),
            actual: c,
        }),
        _ => Ok(()),
    }
}

/// Runs `session` on one tile `input` (`[1, C, d, h, w]`) and returns its output values, checked to
/// be of shape `expected`.
fn run_tile(
    session: &mut Session,
    model: &str,
    names: (&str, &str),
    input: &Array5<f32>,
    expected: Vec<usize>,
    stats: (&mut f64, &mut u64),
) -> Result<Vec<f32>, TranslateError> {
    let fail = |reason: String| TranslateError::Inference {
        model: model.to_owned(),
        reason,
    };
    let tensor = TensorRef::from_array_view(input).map_err(|e| fail(e.to_string()))?;
    let started = Instant::now();
    let outputs = session
        .run(ort::inputs![names.0 => tensor])
        .map_err(|e| fail(e.to_string()))?;
    *stats.0 += started.elapsed().as_secs_f64();
    *stats.1 += 1;
    let value = outputs
        .get(names.1)
        .ok_or_else(|| fail(format!("no output named {}", names.1)))?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| fail(e.to_string()))?;
    let actual: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if actual != expected {
        return Err(TranslateError::OutputShape {
            model: model.to_owned(),
            expected,
            actual,
        });
    }
    Ok(data.to_vec())
}

/// The input channels of a tile: `src` (its source values, model units, `dims`), then the
/// channels `inputs` lists, `previous(z, y, x)` giving the previous stage's value at tile voxel
/// (z, y, x).
fn stack_inputs(
    src: Vec<f32>,
    dims: [usize; 3],
    inputs: &[StageInput],
    previous: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    if inputs == [StageInput::Source] {
        return src;
    }
    let n = src.len();
    let mut buf = Vec::with_capacity(n * inputs.len());
    for input in inputs {
        match input {
            StageInput::Source => buf.extend_from_slice(&src),
            StageInput::Edges => buf.extend(stages::edge_map(&src, dims)),
            StageInput::Previous => {
                let [d, h, w] = dims;
                for z in 0..d {
                    for y in 0..h {
                        buf.extend((0..w).map(|x| previous(z, y, x)));
                    }
                }
            }
        }
    }
    buf
}

impl Translator {
    /// Loads the model's ONNX file (whose hash [`ModelDir::open`] checked) on the configured device,
    /// with the configured tile size (`runtime` and `translate.tile` of `settings`).
    pub fn open(model: ModelDir, settings: &Settings) -> Result<Self, TranslateError> {
        Self::with_runtime(model, &settings.runtime, settings.translate.tile)
    }

    /// As [`Translator::open`], taking only the runtime settings and the tile size (z, y, x; 0 keeps
    /// the manifest's patch size on that axis).
    pub fn with_runtime(
        model: ModelDir,
        runtime_settings: &RuntimeSettings,
        tile_setting: [usize; 3],
    ) -> Result<Self, TranslateError> {
        let (session, device) = runtime::open_session(&model.onnx_path, runtime_settings)?;
        let m = &model.manifest;
        let inputs = m
            .stages
            .last()
            .map(|st| st.inputs.clone())
            .unwrap_or_else(|| vec![StageInput::Source]);
        let last_name = m
            .stages
            .last()
            .map(|st| st.name.as_str())
            .unwrap_or("model");
        check_channels(&m.name, last_name, &m.onnx_file, &session, &inputs)?;
        let first = match m.stages.first() {
            Some(st) if m.stages.len() > 1 => {
                let (session, _) =
                    runtime::open_session(&model.dir.join(&st.onnx_file), runtime_settings)?;
                check_channels(&m.name, &st.name, &st.onnx_file, &session, &st.inputs)?;
                Some(FirstStage {
                    stage: st.clone(),
                    session,
                })
            }
            _ => None,
        };
        let mut tile = m.tensors.patch;
        for (axis, &t) in tile_setting.iter().enumerate() {
            if t != 0 {
                if !m.tensors.dynamic_spatial {
                    return Err(TranslateError::Tiling {
                        model: m.name.clone(),
                        source: tiling::TilingError::NoCore {
                            tile: t,
                            margin: m.tensors.valid_margin[axis],
                        },
                    });
                }
                tile[axis] = t;
            }
        }
        Ok(Self {
            session,
            model,
            tile,
            device,
            run_seconds: 0.0,
            runs: 0,
            inputs,
            first,
            previous: None,
        })
    }

    /// True for a multi-stage model: [`Translator::run_first_stage`] must run over each volume
    /// before its slabs are translated (module docs).
    pub fn is_multi_stage(&self) -> bool {
        self.first.is_some()
    }

    /// For a multi-stage model, an empty downsampler of a `dims` volume (z, rows, columns) onto the
    /// first stage's grid, to fill with [`Translator::feed`]; `None` for a single-stage model.
    pub fn downsampler(&self, dims: [usize; 3]) -> Option<Downsampler> {
        self.first
            .as_ref()
            .map(|f| Downsampler::new(dims, f.stage.downsample))
    }

    /// Adds an input slab (HU) of the volume to `ds`, in model units.
    pub fn feed(&self, ds: &mut Downsampler, slab: &Slab) -> Result<(), TranslateError> {
        let m = &self.model.manifest;
        let unit: Vec<f32> = slab.hu.iter().map(|&v| m.hu_to_unit(v)).collect();
        ds.push(slab.z0, slab.depth, &unit)
            .map_err(|source| self.downsample_error(source))
    }

    fn downsample_error(&self, source: DownsampleError) -> TranslateError {
        TranslateError::Downsample {
            model: self.model.manifest.name.clone(),
            stage: self
                .first
                .as_ref()
                .map(|f| f.stage.name.clone())
                .unwrap_or_default(),
            source: Box::new(source),
        }
    }

    /// Runs the first stage of a multi-stage model over the downsampled volume `ds` (every slice
    /// fed) and keeps its output for the full-resolution stage of that volume; a no-op for a
    /// single-stage model.
    pub fn run_first_stage(
        &mut self,
        dims: [usize; 3],
        ds: Downsampler,
        control: &Control,
    ) -> Result<(), TranslateError> {
        self.previous = None;
        let name = self.model.manifest.name.clone();
        let Some(first) = self.first.as_mut() else {
            return Ok(());
        };
        let (low, low_dims) = match ds.finish() {
            Ok(v) => v,
            Err(source) => {
                return Err(TranslateError::Downsample {
                    model: name,
                    stage: first.stage.name.clone(),
                    source: Box::new(source),
                })
            }
        };
        let st = &first.stage;
        let plan = |axis: usize| {
            tiling::axis_tiles(low_dims[axis], st.patch[axis], st.valid_margin[axis]).map_err(
                |source| TranslateError::Tiling {
                    model: name.clone(),
                    source,
                },
            )
        };
        let (zs, ys, xs) = (plan(0)?, plan(1)?, plan(2)?);
        let [_, lh, lw] = low_dims;
        let mut out = vec![0f32; low.len()];
        for tz in &zs {
            for ty in &ys {
                for tx in &xs {
                    if control.cancelled() {
                        return Err(TranslateError::Cancelled { model: name });
                    }
                    let dims = [tz.len, ty.len, tx.len];
                    let mut src = Vec::with_capacity(dims.iter().product());
                    for z in 0..tz.len {
                        for y in 0..ty.len {
                            let row = ((tz.start + z) * lh + ty.start + y) * lw + tx.start;
                            src.extend_from_slice(&low[row..row + tx.len]);
                        }
                    }
                    let buf = stack_inputs(src, dims, &st.inputs, |_, _, _| 0.0);
                    let c = st.inputs.len();
                    let input = Array5::from_shape_vec((1, c, tz.len, ty.len, tx.len), buf)
                        .map_err(|e| TranslateError::Inference {
                            model: name.clone(),
                            reason: e.to_string(),
                        })?;
                    let data = run_tile(
                        &mut first.session,
                        &name,
                        (
                            self.model.manifest.tensors.input.as_str(),
                            self.model.manifest.tensors.output.as_str(),
                        ),
                        &input,
                        vec![1, 1, tz.len, ty.len, tx.len],
                        (&mut self.run_seconds, &mut self.runs),
                    )?;
                    control.beat();
                    for z in (tz.core_start - tz.start)..(tz.core_end - tz.start) {
                        for y in (ty.core_start - ty.start)..(ty.core_end - ty.start) {
                            let src = (z * ty.len + y) * tx.len;
                            let dst = ((tz.start + z) * lh + ty.start + y) * lw + tx.core_start;
                            let n = tx.core_end - tx.core_start;
                            let from = src + tx.core_start - tx.start;
                            out[dst..dst + n].copy_from_slice(&data[from..from + n]);
                        }
                    }
                }
            }
        }
        self.previous = Some(Previous {
            dims,
            low_dims,
            factor: st.downsample,
            values: out,
        });
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }

    pub fn model_dir(&self) -> &ModelDir {
        &self.model
    }

    /// Device the session runs on ("cpu" or "cuda").
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// Summed wall time of `Session::run` calls and their count.
    pub fn run_stats(&self) -> (f64, u64) {
        (self.run_seconds, self.runs)
    }

    /// Tile size (z, y, x) in use.
    pub fn tile(&self) -> [usize; 3] {
        self.tile
    }

    /// Plans tiles along one axis (0 = z, 1 = y, 2 = x) of `n` input voxels.
    pub fn plan(&self, axis: usize, n: usize) -> Result<Vec<AxisTile>, TranslateError> {
        let m = &self.model.manifest;
        let (tile, margin) = (self.tile[axis], m.tensors.valid_margin[axis]);
        tiling::axis_tiles(n, tile, margin).map_err(|source| TranslateError::Tiling {
            model: m.name.clone(),
            source,
        })
    }

    /// Runs the translator over a volume's input slabs (one per z-tile of [`Translator::plan`]
    /// along z, in order), handing each output slab, with the input slab it came from, to `sink`;
    /// stops early when `sink` returns false. The one loop that drives a translator over a volume:
    /// the harmonize core feeds it slabs read from DICOM as they are decoded (memory bounded by
    /// the slabs in flight), [`Translator::translate_volume`] slabs cut from a volume in memory.
    pub fn translate_slabs(
        &mut self,
        slabs: impl IntoIterator<Item = (AxisTile, Slab)>,
        control: &Control,
        mut sink: impl FnMut(&Slab, OutSlab) -> bool,
    ) -> Result<(), TranslateError> {
        for (zt, slab) in slabs {
            let o = self.translate_with(&slab, zt, control)?;
            if !sink(&slab, o) {
                break;
            }
        }
        Ok(())
    }

    /// Translates a whole volume held in memory (`hu`, z-major, `dims` = [depth, rows, columns])
    /// through [`Translator::translate_slabs`], slab by slab as the daemon does; returns the output
    /// volume, of dimensions `dims` times the model's scale. For evaluation and tests: the daemon
    /// and `process` stream slabs from DICOM instead.
    pub fn translate_volume(
        &mut self,
        hu: &[f32],
        dims: [usize; 3],
        control: &Control,
    ) -> Result<Vec<f32>, TranslateError> {
        let [d, h, w] = dims;
        let [sz, sy, sx] = self.model.manifest.scale();
        if hu.len() != d * h * w {
            return Err(TranslateError::Inference {
                model: self.model.manifest.name.clone(),
                reason: format!("{} values for a {d}x{h}x{w} volume", hu.len()),
            });
        }
        if let Some(mut ds) = self.downsampler(dims) {
            let chunk = ds.chunk_depth(self.tile[0]);
            let tiles = (0..d)
                .step_by(chunk)
                .map(|z0| {
                    let len = chunk.min(d - z0);
                    AxisTile {
                        start: z0,
                        len,
                        core_start: z0,
                        core_end: z0 + len,
                    }
                })
                .collect();
            for (_, slab) in volume_slabs(hu, dims, tiles) {
                self.feed(&mut ds, &slab)?;
            }
            self.run_first_stage(dims, ds, control)?;
        }
        let slabs = volume_slabs(hu, dims, self.plan(0, d)?);
        let mut out = vec![0f32; d * sz * h * sy * w * sx];
        let mut misplaced = None;
        self.translate_slabs(slabs, control, |_, o| {
            let start = o.z0 * o.rows * o.columns;
            match out.get_mut(start..start + o.hu.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&o.hu);
                    true
                }
                None => {
                    misplaced = Some(o.z0);
                    false
                }
            }
        })?;
        if let Some(z0) = misplaced {
            return Err(TranslateError::Inference {
                model: self.model.manifest.name.clone(),
                reason: format!("output slab at z {z0} falls outside the output volume"),
            });
        }
        Ok(out)
    }

    /// Translates the input slab read for z-tile `zt` and returns the output for its core.
    pub fn translate(&mut self, slab: &Slab, zt: AxisTile) -> Result<OutSlab, TranslateError> {
        self.translate_with(slab, zt, &Control::none())
    }

    /// [`Translator::translate`] checking `control` before each tile (cancelled:
    /// [`TranslateError::Cancelled`]) and beating it after each.
    pub fn translate_with(
        &mut self,
        slab: &Slab,
        zt: AxisTile,
        control: &Control,
    ) -> Result<OutSlab, TranslateError> {
        let m = self.model.manifest.clone();
        if self.first.is_some() {
            let fits = self.previous.as_ref().is_some_and(|p| {
                p.dims[1] == slab.rows
                    && p.dims[2] == slab.columns
                    && zt.start + zt.len <= p.dims[0]
            });
            if !fits {
                return Err(TranslateError::NoPreviousStage {
                    model: m.name.clone(),
                    dims: [zt.start + zt.len, slab.rows, slab.columns],
                });
            }
        }
        let [sz, sy, sx] = m.scale();
        let (rows, cols) = (slab.rows, slab.columns);
        let out_rows = rows * sy;
        let out_cols = cols * sx;
        let out_depth = (zt.core_end - zt.core_start) * sz;
        let mut out = vec![0f32; out_depth * out_rows * out_cols];
        let y_tiles = self.plan(1, rows)?;
        let x_tiles = self.plan(2, cols)?;
        let lz = slab.depth;
        for ty in &y_tiles {
            for tx in &x_tiles {
                if control.cancelled() {
                    return Err(TranslateError::Cancelled {
                        model: m.name.clone(),
                    });
                }
                let mut src = Vec::with_capacity(lz * ty.len * tx.len);
                for z in 0..lz {
                    for y in 0..ty.len {
                        let row = (z * rows + ty.start + y) * cols + tx.start;
                        src.extend(slab.hu[row..row + tx.len].iter().map(|v| m.hu_to_unit(*v)));
                    }
                }
                let previous = self.previous.as_ref();
                let buf = stack_inputs(src, [lz, ty.len, tx.len], &self.inputs, |z, y, x| {
                    previous.map_or(0.0, |p| {
                        stages::previous_at(
                            &p.values,
                            p.low_dims,
                            p.factor,
                            zt.start + z,
                            ty.start + y,
                            tx.start + x,
                        )
                    })
                });
                let channels = self.inputs.len();
                let input = Array5::from_shape_vec((1, channels, lz, ty.len, tx.len), buf)
                    .map_err(|e| TranslateError::Inference {
                        model: m.name.clone(),
                        reason: e.to_string(),
                    })?;
                let expected = vec![1, 1, lz * sz, ty.len * sy, tx.len * sx];
                let data = run_tile(
                    &mut self.session,
                    &m.name,
                    (m.tensors.input.as_str(), m.tensors.output.as_str()),
                    &input,
                    expected,
                    (&mut self.run_seconds, &mut self.runs),
                )?;
                control.beat();
                let (oh, ow) = (ty.len * sy, tx.len * sx);
                let zc = ((zt.core_start - zt.start) * sz)..((zt.core_end - zt.start) * sz);
                let yc = ((ty.core_start - ty.start) * sy)..((ty.core_end - ty.start) * sy);
                let xc = ((tx.core_start - tx.start) * sx)..((tx.core_end - tx.start) * sx);
                let x_out0 = tx.core_start * sx;
                for (oz, z) in zc.enumerate() {
                    for y in yc.clone() {
                        let src = (z * oh + y) * ow;
                        let dst = (oz * out_rows + ty.start * sy + y) * out_cols + x_out0;
                        for (d, s) in out[dst..dst + xc.len()]
                            .iter_mut()
                            .zip(&data[src + xc.start..src + xc.end])
                        {
                            *d = m.unit_to_hu(*s);
                        }
                    }
                }
            }
        }
        Ok(OutSlab {
            z0: zt.core_start * sz,
            depth: out_depth,
            rows: out_rows,
            columns: out_cols,
            hu: out,
        })
    }
}
