//! The one harmonize core: a complete series and a model give a derived series. Both the one-shot
//! `process` command ([`crate::process`]) and the daemon's processing stage (`pipeline`) call
//! [`process_series`]; nothing else runs volume → translate → derive.
//!
//! Per series, three workers pass owned slabs one way over bounded channels (`std::sync::mpsc`), so
//! reading, inference and writing overlap and memory stays bounded by `translate.slabs_in_flight`
//! whatever the length of the series: the reader decodes z-slabs ([`crate::dicom::slab`]), the
//! inference worker (which owns the ONNX session, [`crate::model`]) turns them into output slabs,
//! the writer derives and writes the DICOM instances ([`derive`], [`template`]).
//!
//! Layering rule (see `scripts/layers.sh`): a module imports only from layers below it. This folder
//! uses `config`, `events`, `preview`, `dicom` and `model`; it knows nothing of the daemon.

pub mod derive;
pub mod template;

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use crate::config::Settings;
use crate::dicom::files::IngestError;
use crate::dicom::geometry::{sort_and_check, GeometryLimits};
use crate::dicom::header::{self, CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};
use crate::dicom::series::Series;
use crate::dicom::slab::Slab;
use crate::dicom::{decode, SlabReader, VolumeError};
use crate::events;
use crate::harmonize::derive::{DeriveError, DerivedPlan, SeriesWriter};
use crate::model::manifest::{ManifestError, ModelDir};
use crate::model::{AxisTile, Control, TranslateError, Translator};
use crate::preview::{self, PreviewSlice};

/// Errors of one series.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("series {series_uid}: modality {modality} is not CT")]
    NotCt {
        series_uid: String,
        modality: String,
    },
    #[error("series {series_uid}: SOP class {sop_class} is neither CT Image Storage nor Enhanced CT Image Storage")]
    SopClass {
        series_uid: String,
        sop_class: String,
    },
    #[error("series {series_uid}: model {model} does not accept convolution kernel {kernel}")]
    Kernel {
        series_uid: String,
        model: String,
        kernel: String,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Derive(#[from] DeriveError),
    #[error("series {series_uid}: a pipeline worker stopped unexpectedly")]
    Worker { series_uid: String },
    /// The daemon is stopping: the series was left as it was (not a failure; recovery resumes it).
    #[error("series {series_uid}: processing cancelled (the daemon is stopping)")]
    Cancelled { series_uid: String },
}

/// Errors that stop the whole run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("model {name} not found in {dir}: {source}")]
    Model {
        name: String,
        dir: PathBuf,
        source: ManifestError,
    },
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// One published series.
#[derive(Debug, Clone)]
pub struct Published {
    pub source_series_uid: String,
    pub derived_series_uid: String,
    pub dir: PathBuf,
    pub slices: usize,
    pub seconds: f64,
}

/// Opens the named model (default from config) and loads it in ONNX Runtime.
pub fn open_translator(
    settings: &Settings,
    model: Option<&str>,
) -> Result<Translator, ProcessError> {
    let name = model.unwrap_or(&settings.models.default).to_string();
    let dir = settings.models.dir.join(&name);
    let model = ModelDir::open(&dir).map_err(|source| ProcessError::Model {
        name,
        dir: settings.models.dir.clone(),
        source,
    })?;
    let t = Translator::open(model, settings)?;
    let m = t.manifest();
    events::ModelLoaded {
        model: &m.name,
        version: &m.version,
        kind: &format!("{:?}", m.kind),
        device: t.device(),
    }
    .emit();
    Ok(t)
}

/// Series expansion: every Enhanced CT (multi-frame) instance of the series becomes one slice header
/// per frame, with that frame's geometry from its functional groups; single-frame slices stay as
/// they are. From here on a frame is a slice like any other (sorted, geometry-checked, read, and the
/// template of classic derived instances, see [`crate::harmonize::derive`]). Idempotent.
pub fn expand_frames(s: &mut Series) -> Result<(), SeriesError> {
    if !s.slices.iter().any(header::is_multi_frame) {
        return Ok(());
    }
    let mut out = Vec::with_capacity(s.slices.len());
    for h in std::mem::take(&mut s.slices) {
        if header::is_multi_frame(&h) {
            let frames = header::read_frames(&h)?;
            events::FramesExpanded {
                series_uid: &s.series_uid,
                sop_instance_uid: &h.sop_instance_uid,
                frames: frames.len(),
            }
            .emit();
            out.extend(frames);
        } else {
            out.push(h);
        }
    }
    s.slices = out;
    Ok(())
}

/// Checks a series before any pixel is read: CT, decodable, accepted by model `m`'s kernels, valid
/// geometry (frames expanded, slices sorted).
pub fn check_series(
    settings: &Settings,
    m: &crate::model::Manifest,
    s: &mut Series,
) -> Result<crate::dicom::Geometry, SeriesError> {
    let uid = s.series_uid.clone();
    if let Some(h) = s
        .slices
        .iter()
        .find(|h| h.modality.as_deref() != Some("CT"))
    {
        return Err(SeriesError::NotCt {
            series_uid: uid,
            modality: h.modality.clone().unwrap_or_else(|| "(none)".into()),
        });
    }
    if let Some(h) = s.slices.iter().find(|h| {
        h.sop_class_uid != CT_IMAGE_STORAGE && h.sop_class_uid != ENHANCED_CT_IMAGE_STORAGE
    }) {
        return Err(SeriesError::SopClass {
            series_uid: uid,
            sop_class: h.sop_class_uid.clone(),
        });
    }
    expand_frames(s)?;
    for h in &s.slices {
        decode::check_transfer_syntax(h)?;
    }
    let kernel = s.slices.first().and_then(|h| h.convolution_kernel.clone());
    if !m.accepts_kernel(kernel.as_deref()) {
        return Err(SeriesError::Kernel {
            series_uid: uid,
            model: m.name.clone(),
            kernel: kernel.unwrap_or_else(|| "(none)".into()),
        });
    }
    let limits = GeometryLimits {
        spacing_tolerance: settings.volume.spacing_tolerance,
        max_tilt_degrees: settings.volume.max_tilt_degrees,
        max_matrix: settings.volume.max_matrix,
    };
    let g = sort_and_check(&uid, &mut s.slices, limits)?;
    if g.tilt_degrees > 0.05 {
        events::GantryTilt {
            series_uid: &uid,
            degrees: g.tilt_degrees,
        }
        .emit();
    }
    Ok(g)
}

/// Harmonizes one series and publishes it into `out`. Returns the preview captures when asked.
///
/// `control` is beaten per slab read, per tile of inference and per slab written, and checked for
/// cancellation between slabs and tiles: once cancelled, the partial output is removed and
/// [`SeriesError::Cancelled`] returned (nothing is published).
pub fn process_series(
    settings: &Settings,
    translator: &mut Translator,
    mut s: Series,
    out: &Path,
    want_preview: bool,
    salt: &str,
    control: &Control,
) -> Result<(Published, Vec<PreviewSlice>), SeriesError> {
    let started = Instant::now();
    let uid = s.series_uid.clone();
    let cancelled = || SeriesError::Cancelled {
        series_uid: uid.clone(),
    };
    if control.cancelled() {
        return Err(cancelled());
    }
    let geometry = check_series(settings, translator.manifest(), &mut s)?;
    let manifest = translator.manifest().clone();
    events::SeriesStarted {
        series_uid: &uid,
        slices: s.slices.len(),
        model: &manifest.name,
    }
    .emit();
    let plan = DerivedPlan::new(&s.slices, &geometry, &manifest, salt);
    let derived_uid = plan.series_uid.clone();
    let n_out = plan.slices.len();
    let positions: Vec<[f64; 3]> = plan.slices.iter().map(|s| s.position).collect();
    let z_tiles = translator.plan(0, geometry.slices())?;
    first_stage(translator, &s.slices, &geometry, control).map_err(|e| match e {
        SeriesError::Translate(TranslateError::Cancelled { .. }) => cancelled(),
        e => e,
    })?;
    let writer = SeriesWriter::create(
        out,
        plan,
        s.slices.clone(),
        manifest.clone(),
        settings.derive.clone(),
    )?;
    let mut reader = SlabReader::new(s.slices, geometry.rows, geometry.columns);
    let depth = settings.translate.slabs_in_flight;
    let picks = if want_preview {
        preview::pick(n_out)
    } else {
        Vec::new()
    };
    let [sz, sy, sx] = manifest.scale();

    let (slab_tx, slab_rx) = sync_channel::<(AxisTile, Slab)>(depth);
    let (out_tx, out_rx) = sync_channel::<crate::model::OutSlab>(depth);
    let result = std::thread::scope(|scope| {
        let read_control = control.clone();
        let read_cancelled = cancelled();
        let read = scope.spawn(move || -> Result<(), SeriesError> {
            for zt in z_tiles {
                if read_control.cancelled() {
                    return Err(read_cancelled);
                }
                let slab = reader.read(zt.start, zt.len)?;
                read_control.beat();
                if slab_tx.send((zt, slab)).is_err() {
                    break; // the inference worker stopped; its error is reported
                }
            }
            Ok(())
        });
        let write_control = control.clone();
        let write = scope.spawn(
            move || -> Result<SeriesWriter, Box<(SeriesWriter, SeriesError)>> {
                let mut writer = writer;
                for slab in out_rx {
                    if let Err(e) = writer.write_slab(&slab) {
                        return Err(Box::new((writer, e.into())));
                    }
                    write_control.beat();
                }
                Ok(writer)
            },
        );
        let mut shots = Vec::new();
        let infer_result = translator
            .translate_slabs(slab_rx, control, |slab, o| {
                for &k in picks.iter().filter(|&&k| k >= o.z0 && k < o.z0 + o.depth) {
                    shots.push(
                        capture(slab, &o, k, [sz, sy, sx])
                            .placed(geometry.orientation, positions.get(k).copied()),
                    );
                }
                out_tx.send(o).is_ok()
            })
            .map_err(|e| match e {
                TranslateError::Cancelled { .. } => cancelled(),
                e => e.into(),
            });
        drop(out_tx);
        let worker = || SeriesError::Worker {
            series_uid: uid.clone(),
        };
        let read_result = read.join().unwrap_or_else(|_| Err(worker()));
        let write_result = write.join().map_err(|_| worker());
        (read_result, infer_result, write_result, shots)
    });
    let (read_result, infer_result, write_result, shots) = result;
    let writer = match write_result {
        Ok(Ok(w)) => w,
        Ok(Err(failed)) => {
            let (w, e) = *failed;
            w.abandon();
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // A cancellation wins over the other worker's view of it (e.g. the reader seeing it first).
    if let Err(e) = infer_result.and(read_result) {
        writer.abandon();
        return Err(e);
    }
    let dir = writer.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    events::SeriesDone {
        series_uid: &uid,
        derived_series_uid: &derived_uid,
        slices: n_out,
        seconds,
    }
    .emit();
    Ok((
        Published {
            source_series_uid: uid,
            derived_series_uid: derived_uid,
            dir,
            slices: n_out,
            seconds,
        },
        shots,
    ))
}

/// The first pass of a multi-stage model (module docs of [`crate::model`]): reads the series slab
/// by slab (whole blocks of the first stage's factor, at least `translate.tile` z slices), averages
/// it onto the low-resolution grid and runs the first stage over it. A no-op for a single-stage
/// model. The series is read twice in all (this pass and the streaming one).
fn first_stage(
    translator: &mut Translator,
    slices: &[crate::dicom::header::SliceHeader],
    geometry: &crate::dicom::Geometry,
    control: &Control,
) -> Result<(), SeriesError> {
    let dims = [geometry.slices(), geometry.rows, geometry.columns];
    let Some(mut ds) = translator.downsampler(dims) else {
        return Ok(());
    };
    let chunk = ds.chunk_depth(translator.tile()[0]);
    let mut reader = SlabReader::new(slices.to_vec(), geometry.rows, geometry.columns);
    let mut z0 = 0;
    while z0 < dims[0] {
        if control.cancelled() {
            return Err(TranslateError::Cancelled {
                model: translator.manifest().name.clone(),
            }
            .into());
        }
        let depth = chunk.min(dims[0] - z0);
        let slab = reader.read(z0, depth)?;
        translator.feed(&mut ds, &slab)?;
        control.beat();
        z0 += depth;
    }
    translator.run_first_stage(dims, ds, control)?;
    Ok(())
}

/// Captures output slice `k` and the input under it (nearest-neighbour on the output grid).
fn capture(slab: &Slab, o: &crate::model::OutSlab, k: usize, scale: [usize; 3]) -> PreviewSlice {
    let [sz, sy, sx] = scale;
    let plane = o.rows * o.columns;
    let output = o.hu[(k - o.z0) * plane..(k - o.z0 + 1) * plane].to_vec();
    let zin = (k / sz)
        .saturating_sub(slab.z0)
        .min(slab.depth.saturating_sub(1));
    let in_plane = slab.rows * slab.columns;
    let src = &slab.hu[zin * in_plane..(zin + 1) * in_plane];
    let mut input = Vec::with_capacity(plane);
    for y in 0..o.rows {
        for x in 0..o.columns {
            input.push(src[(y / sy) * slab.columns + x / sx]);
        }
    }
    PreviewSlice {
        index: k,
        rows: o.rows,
        columns: o.columns,
        input,
        output,
        placement: None,
    }
}
