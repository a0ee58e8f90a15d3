//! Model layer (translate): runs a model's ONNX graph over a volume, slab by slab, tile by tile.
//!
//! Layering rule (checked by `scripts/layers.sh`): a module imports only from layers below it.
//! This folder uses `util`, `config`, `events` and `dicom` (slabs); never the daemon.
//!
//! The model's manifest ([`manifest`]) fixes tensor names, tile size, valid margin, intensity window
//! and per-axis scale. Tiles overlap by the valid margin and only their cores are kept ([`tiling`]),
//! so the stitched output equals a whole-volume pass. The session is owned by one worker
//! (`Session::run` needs `&mut self`).

pub mod manifest;
pub mod runtime;
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

/// One model, loaded in ONNX Runtime, with its tiling plan.
pub struct Translator {
    session: Session,
    model: ModelDir,
    tile: [usize; 3],
    device: &'static str,
    run_seconds: f64,
    runs: u64,
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
        })
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
                let mut buf = Vec::with_capacity(lz * ty.len * tx.len);
                for z in 0..lz {
                    for y in 0..ty.len {
                        let row = (z * rows + ty.start + y) * cols + tx.start;
                        buf.extend(slab.hu[row..row + tx.len].iter().map(|v| m.hu_to_unit(*v)));
                    }
                }
                let input =
                    Array5::from_shape_vec((1, 1, lz, ty.len, tx.len), buf).map_err(|e| {
                        TranslateError::Inference {
                            model: m.name.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let expected = vec![1, 1, lz * sz, ty.len * sy, tx.len * sx];
                let fail = |reason: String| TranslateError::Inference {
                    model: m.name.clone(),
                    reason,
                };
                let tensor = TensorRef::from_array_view(&input).map_err(|e| fail(e.to_string()))?;
                let started = Instant::now();
                let outputs = self
                    .session
                    .run(ort::inputs![m.tensors.input.as_str() => tensor])
                    .map_err(|e| fail(e.to_string()))?;
                self.run_seconds += started.elapsed().as_secs_f64();
                self.runs += 1;
                control.beat();
                let value = outputs
                    .get(m.tensors.output.as_str())
                    .ok_or_else(|| fail(format!("no output named {}", m.tensors.output)))?;
                let (shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| fail(e.to_string()))?;
                let actual: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                if actual != expected {
                    return Err(TranslateError::OutputShape {
                        model: m.name.clone(),
                        expected,
                        actual,
                    });
                }
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
