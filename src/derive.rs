//! Derive stage: writes the new series (DESIGN §4). New SeriesInstanceUID and SOPInstanceUIDs derived
//! deterministically from the source UIDs and the model's identity; StudyInstanceUID and
//! FrameOfReferenceUID kept; ImageType DERIVED\SECONDARY\AXIAL; DerivationDescription and
//! DerivationCodeSequence; SourceImageSequence per image (121322, DCM); ContributingEquipmentSequence
//! naming this software and the model (a new device identity per model file); ConvolutionKernel = the
//! target kernel; new SeriesNumber and SeriesDescription; the geometry of the output grid.
//!
//! Enhanced CT (multi-frame) sources give classic CT Image Storage instances, one per output slice:
//! the template is the enhanced header without its multi-frame-only attributes (functional groups,
//! dimensions, concatenation: [`classic_from_enhanced`]), with the Image Plane attributes of the
//! source frame (ImagePositionPatient, ImageOrientationPatient, SliceThickness from its functional
//! groups), KVP and window (CTXRayDetailsSequence, FrameVOILUTSequence), and SourceImageSequence
//! items that name the enhanced instance with the ReferencedFrameNumber of each source frame. Classic output is what every
//! archive, viewer and analysis tool reads; the instances validate with dciodvfy and dcentvfy.
//!
//! Files go into a hidden `.<uid>.partial` folder, made durable together (syncfs), and the folder is renamed to
//! `<uid>` only when the whole series is written: a crash never leaves a half-written series that
//! looks complete.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::DeriveSettings;
use crate::translate::manifest::{Manifest, Task};
use crate::translate::OutSlab;
use crate::volume::{header, Geometry, SliceHeader, VolumeError};

/// This software's version, written into derived series.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Implementation Class UID of ct-harmonizer's DICOM writer (a fixed 2.25 UUID-derived UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.223927284795914838497346734128349553771";
/// Implementation Version Name (16 characters at most).
pub const IMPLEMENTATION_VERSION_NAME: &str = "CT_HARMONIZER_01";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Errors writing a derived series.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build DICOM object for {uid}: {reason}")]
    Build { uid: String, reason: String },
    #[error("cannot build DICOM object for {uid}: {source}")]
    Meta {
        uid: String,
        #[source]
        source: Box<dicom_object::meta::Error>,
    },
    #[error("cannot build DICOM object for {uid}: {source}")]
    Encode {
        uid: String,
        #[source]
        source: Box<dicom_object::WriteError>,
    },
    #[error("source {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: Box<VolumeError>,
    },
    #[error("source {path}: multi-frame source not read")]
    SourceNotRead { path: PathBuf },
}

/// A UID under the 2.25 root (PS3.5 B.2) derived from `parts`: the decimal value of the first 128 bits of
/// their SHA-256. The same parts always give the same UID.
pub fn derived_uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // Keep it a valid UUID-shaped integer (version 8 "custom", RFC 9562) as 2.25 expects.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DeriveError + '_ {
    move |source| DeriveError::Io {
        path: path.to_owned(),
        source,
    }
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::from(value.into()),
    ));
}

fn put_strs(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[String]) {
    let v: SmallVec<[String; 2]> = values.iter().cloned().collect();
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Strs(v)));
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
pub fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::CODE_VALUE, VR::SH, value);
    put(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put(&mut o, tags::CODE_MEANING, VR::LO, meaning);
    o
}

/// Formats a decimal string (DS, 16 characters at most).
pub fn ds(v: f64) -> String {
    for prec in (0..=10).rev() {
        let s = format!("{v:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.0}")
}

fn ds_multi(values: &[f64]) -> Vec<String> {
    values.iter().map(|&v| ds(v)).collect()
}

/// Sets the Image Pixel and rescale attributes for signed 16-bit HU and stores `hu` (rounded, clamped).
pub fn put_pixels_hu(obj: &mut InMemDicomObject, rows: usize, columns: usize, hu: &[f32]) {
    put_u16(obj, tags::SAMPLES_PER_PIXEL, 1);
    put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(obj, tags::ROWS, rows as u16);
    put_u16(obj, tags::COLUMNS, columns as u16);
    put_u16(obj, tags::BITS_ALLOCATED, 16);
    put_u16(obj, tags::BITS_STORED, 16);
    put_u16(obj, tags::HIGH_BIT, 15);
    put_u16(obj, tags::PIXEL_REPRESENTATION, 1);
    put(obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
    put(obj, tags::RESCALE_SLOPE, VR::DS, "1");
    let mut bytes = Vec::with_capacity(hu.len() * 2);
    for v in hu {
        let s = v.round().clamp(-32768.0, 32767.0) as i16;
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U8(bytes.into()),
    ));
}

/// Writes `obj` as a Part 10 file (Explicit VR Little Endian) to `path` via a temporary name, fsynced.
pub fn write_part10(obj: InMemDicomObject, path: &Path) -> Result<(), DeriveError> {
    write_file(obj, path, true)
}

/// As [`write_part10`]; with `sync` false the caller makes the files durable in one go (syncfs).
fn write_file(obj: InMemDicomObject, path: &Path, sync: bool) -> Result<(), DeriveError> {
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches('\0').to_string())
            .unwrap_or_default()
    };
    let sop_class = text(tags::SOP_CLASS_UID);
    let sop_instance = text(tags::SOP_INSTANCE_UID);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance.clone())
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|source| DeriveError::Meta {
            uid: sop_instance.clone(),
            source: Box::new(source),
        })?;
    let file = obj.with_exact_meta(meta);
    let tmp = path.with_extension("tmp");
    // Encoded in memory first (one instance), so that a file system error (ENOSPC...) keeps its
    // errno instead of becoming an encoding error: the daemon retries those.
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|source| DeriveError::Encode {
            uid: sop_instance.clone(),
            source: Box::new(source),
        })?;
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    std::io::Write::write_all(&mut f, &bytes).map_err(io_err(&tmp))?;
    if sync {
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// One output slice of the derived grid.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSlice {
    pub sop_instance_uid: String,
    pub position: [f64; 3],
    /// Index (in sorted order) of the source slice whose header is the template.
    pub template: usize,
    /// Source slices this one was computed from (for SourceImageSequence).
    pub sources: Vec<usize>,
}

/// The derived series' identity and grid, computed before any pixel is written.
#[derive(Debug, Clone)]
pub struct DerivedPlan {
    pub series_uid: String,
    pub rows: usize,
    pub columns: usize,
    pub pixel_spacing: [f64; 2],
    pub spacing: f64,
    pub slices: Vec<OutputSlice>,
    pub derivation_description: String,
}

/// The model's identity in UIDs: name, version and the ONNX file's hash.
fn model_identity(m: &Manifest) -> [&str; 3] {
    [&m.name, &m.version, &m.onnx_sha256]
}

impl DerivedPlan {
    /// Plans the output grid for `sources` (sorted) through model `m`. `salt` is empty for the first
    /// version of a derived series and distinguishes later versions (late instances).
    pub fn new(sources: &[SliceHeader], geometry: &Geometry, m: &Manifest, salt: &str) -> Self {
        let [name, version, sha] = model_identity(m);
        let src_series = sources
            .first()
            .map(|s| s.series_uid.as_str())
            .unwrap_or_default();
        let series_uid = derived_uid(&["series", src_series, name, version, sha, salt]);
        let [sz, sy, sx] = m.scale();
        let n_out = geometry.slices() * sz;
        let p0 = geometry.positions[0];
        let last = geometry.positions[geometry.slices() - 1];
        let steps = (geometry.slices() - 1).max(1) as f64;
        // Mean step between source slices (follows a tilt's shear).
        let step = [
            (last[0] - p0[0]) / steps,
            (last[1] - p0[1]) / steps,
            (last[2] - p0[2]) / steps,
        ];
        let (ps_r, ps_c) = (geometry.pixel_spacing[0], geometry.pixel_spacing[1]);
        let (ps_r_out, ps_c_out) = (ps_r / sy as f64, ps_c / sx as f64);
        let o = geometry.orientation;
        // Output voxel centres: an upsampled pixel's centre moves by half an input pixel minus half an
        // output pixel along each in-plane axis, and likewise along z.
        let shift_r = (ps_c - ps_c_out) / 2.0; // along the row direction (columns)
        let shift_c = (ps_r - ps_r_out) / 2.0; // along the column direction (rows)
        let slices = (0..n_out)
            .map(|k| {
                let src = k / sz;
                let frac = (k % sz) as f64 / sz as f64 - (sz as f64 - 1.0) / (2.0 * sz as f64);
                let base = geometry.positions[src];
                let mut position = [0.0; 3];
                for i in 0..3 {
                    position[i] = base[i] + frac * step[i] - shift_r * o[i] - shift_c * o[3 + i];
                }
                let src_uid = sources
                    .get(src)
                    .map(|s| s.sop_instance_uid.as_str())
                    .unwrap_or_default();
                let k_text = k.to_string();
                let mut srcs = vec![src];
                if sz > 1 {
                    let other = if frac < 0.0 {
                        src.checked_sub(1)
                    } else {
                        Some(src + 1)
                    };
                    if let Some(o) = other.filter(|&o| o < geometry.slices()) {
                        srcs.push(o);
                    }
                }
                OutputSlice {
                    // The source series is part of the identity: two source series that share SOP
                    // Instance UIDs (a broken archive, a re-import) still get distinct instances.
                    sop_instance_uid: derived_uid(&[
                        "instance", src_series, src_uid, &k_text, name, version, sha, salt,
                    ]),
                    position,
                    template: src,
                    sources: srcs,
                }
            })
            .collect();
        let kernels: Vec<&str> = sources
            .first()
            .and_then(|s| s.convolution_kernel.as_deref())
            .into_iter()
            .collect();
        let from = kernels.first().copied().unwrap_or("unknown kernel");
        let derivation_description = format!(
            "ct-harmonizer {SOFTWARE_VERSION}; model {name} {version} ({kind:?}, sha256 {short}); kernel {from} -> {to}; scale z{sz} y{sy} x{sx}",
            kind = m.kind,
            short = &sha[..sha.len().min(12)],
            to = m.kernels.produces,
        );
        Self {
            series_uid,
            rows: geometry.rows * sy,
            columns: geometry.columns * sx,
            pixel_spacing: [ps_r_out, ps_c_out],
            spacing: geometry.spacing / sz as f64,
            slices,
            derivation_description,
        }
    }
}

/// Writes one derived series slab by slab into a hidden partial folder, then publishes it.
pub struct SeriesWriter {
    plan: DerivedPlan,
    sources: Vec<SliceHeader>,
    manifest: Manifest,
    settings: DeriveSettings,
    out_dir: PathBuf,
    partial: PathBuf,
    written: usize,
    /// Source repairs already logged (one line per attribute and series).
    repaired: std::collections::HashSet<String>,
    /// The classic base of the last multi-frame source read (its file, the base, KVP per frame).
    enhanced: Option<EnhancedBase>,
}

/// A multi-frame source turned into the base of classic CT instances (see [`classic_from_enhanced`]):
/// its file, the base, each frame's top-level attributes.
struct EnhancedBase {
    path: PathBuf,
    base: InMemDicomObject,
    frames: Vec<FrameAttributes>,
}

impl SeriesWriter {
    /// Prepares `out_dir/.<uid>.partial` (removing a stale one from an earlier crash).
    pub fn create(
        out_dir: &Path,
        plan: DerivedPlan,
        sources: Vec<SliceHeader>,
        manifest: Manifest,
        settings: DeriveSettings,
    ) -> Result<Self, DeriveError> {
        fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
        let partial = out_dir.join(format!(".{}.partial", plan.series_uid));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
        }
        fs::create_dir(&partial).map_err(io_err(&partial))?;
        Ok(Self {
            plan,
            sources,
            manifest,
            settings,
            out_dir: out_dir.to_owned(),
            partial,
            written: 0,
            repaired: Default::default(),
            enhanced: None,
        })
    }

    pub fn plan(&self) -> &DerivedPlan {
        &self.plan
    }

    /// Writes every slice of `slab` (slabs must arrive in order).
    pub fn write_slab(&mut self, slab: &OutSlab) -> Result<(), DeriveError> {
        let plane = slab.rows * slab.columns;
        let mut template_cache: Option<(usize, InMemDicomObject)> = None;
        for dz in 0..slab.depth {
            let k = slab.z0 + dz;
            let Some(out) = self.plan.slices.get(k).cloned() else {
                return Err(DeriveError::Build {
                    uid: self.plan.series_uid.clone(),
                    reason: format!(
                        "output slice {k} is beyond the planned {}",
                        self.plan.slices.len()
                    ),
                });
            };
            let template = match &template_cache {
                Some((i, obj)) if *i == out.template => obj.clone(),
                _ => {
                    let obj = self.template(out.template)?;
                    template_cache = Some((out.template, obj.clone()));
                    obj
                }
            };
            let obj =
                self.derive_instance(template, &out, k, &slab.hu[dz * plane..(dz + 1) * plane]);
            let path = self.partial.join(format!("IM{:05}.dcm", k + 1));
            // Made durable all at once in `finish` (one syncfs instead of one fsync per file).
            write_file(obj, &path, false)?;
            self.written += 1;
        }
        Ok(())
    }

    fn template(&mut self, index: usize) -> Result<InMemDicomObject, DeriveError> {
        let h = self.sources.get(index).ok_or_else(|| DeriveError::Build {
            uid: self.plan.series_uid.clone(),
            reason: format!("no source slice {index}"),
        })?;
        if let Some(frame) = h.frame {
            let h = h.clone();
            return self.frame_template(&h, frame);
        }
        let obj = header::open_header(&h.path).map_err(|source| DeriveError::Source {
            path: h.path.clone(),
            source: Box::new(source),
        })?;
        let mut obj = obj.into_inner();
        let notes = sanitize(&mut obj);
        let series_uid = h.series_uid.clone();
        self.log_repairs(&series_uid, notes);
        Ok(obj)
    }

    fn log_repairs(&mut self, source_series_uid: &str, notes: Vec<String>) {
        for note in notes {
            if self.repaired.insert(note.clone()) {
                crate::events::SourceAttributeRepaired {
                    source_series_uid,
                    derived_series_uid: &self.plan.series_uid,
                    repair: &note,
                }
                .emit();
            }
        }
    }

    /// The classic CT template of frame `frame` (1-based) of a multi-frame source: the file's base
    /// (read once per file, see [`classic_from_enhanced`]) with the frame's Image Plane attributes.
    fn frame_template(
        &mut self,
        h: &SliceHeader,
        frame: u32,
    ) -> Result<InMemDicomObject, DeriveError> {
        if self.enhanced.as_ref().is_none_or(|e| e.path != h.path) {
            self.enhanced = None;
            let obj = header::open_header(&h.path).map_err(|source| DeriveError::Source {
                path: h.path.clone(),
                source: Box::new(source),
            })?;
            let mut base = obj.into_inner();
            let frames = classic_from_enhanced(&mut base);
            let notes = sanitize(&mut base);
            self.log_repairs(&h.series_uid, notes);
            self.enhanced = Some(EnhancedBase {
                path: h.path.clone(),
                base,
                frames,
            });
        }
        let Some(e) = &self.enhanced else {
            return Err(DeriveError::SourceNotRead {
                path: h.path.clone(),
            });
        };
        let mut obj = e.base.clone();
        // KVP is Type 2 in the CT Image module: present, empty when the source does not say.
        put(&mut obj, tags::KVP, VR::DS, "");
        for (tag, vr, value) in e
            .frames
            .get(frame.saturating_sub(1) as usize)
            .into_iter()
            .flatten()
        {
            put(&mut obj, *tag, *vr, value.as_str());
        }
        if let Some(p) = h.image_position {
            put_strs(
                &mut obj,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                &ds_multi(&p),
            );
        }
        if let Some(o) = h.image_orientation {
            put_strs(
                &mut obj,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                &ds_multi(&o),
            );
        }
        put(
            &mut obj,
            tags::SLICE_THICKNESS,
            VR::DS,
            h.slice_thickness.map(ds).unwrap_or_default(),
        );
        if obj
            .element_opt(tags::ACQUISITION_NUMBER)
            .ok()
            .flatten()
            .is_none()
        {
            put(&mut obj, tags::ACQUISITION_NUMBER, VR::IS, "");
        }
        Ok(obj)
    }

    fn derive_instance(
        &self,
        mut obj: InMemDicomObject,
        out: &OutputSlice,
        k: usize,
        hu: &[f32],
    ) -> InMemDicomObject {
        let m = &self.manifest;
        let s = &self.settings;
        // Drop what would be stale or inconsistent in the new object.
        let drop: Vec<Tag> = obj
            .iter()
            .map(|e| e.header().tag)
            // Private, file meta, overlays (60xx) and curves (50xx, retired): overlays describe the
            // source's pixel grid, which a resampled output no longer has.
            .filter(|t| {
                t.group() % 2 == 1
                    || t.group() == 0x0002
                    || (0x5000..=0x50FF).contains(&t.group())
                    || (0x6000..=0x60FF).contains(&t.group())
            })
            .collect();
        for t in drop {
            obj.remove_element(t);
        }
        for t in [
            tags::SMALLEST_IMAGE_PIXEL_VALUE,
            tags::LARGEST_IMAGE_PIXEL_VALUE,
            tags::PIXEL_PADDING_VALUE,
            tags::PIXEL_PADDING_RANGE_LIMIT,
            tags::RESCALE_TYPE,
            tags::ICON_IMAGE_SEQUENCE,
            tags::MODALITY_LUT_SEQUENCE,
            tags::INSTANCE_CREATION_DATE,
            tags::INSTANCE_CREATION_TIME,
            tags::NUMBER_OF_FRAMES,
            tags::PLANAR_CONFIGURATION,
            tags::DATA_SET_TRAILING_PADDING,
        ] {
            obj.remove_element(t);
        }
        let src0 = self.sources.first();
        put(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            header::CT_IMAGE_STORAGE,
        );
        put(
            &mut obj,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            &out.sop_instance_uid,
        );
        put(
            &mut obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &self.plan.series_uid,
        );
        put_strs(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            &["DERIVED".into(), "SECONDARY".into(), "AXIAL".into()],
        );
        let src_number: i64 = obj
            .element_opt(tags::SERIES_NUMBER)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
            .unwrap_or(0);
        put(
            &mut obj,
            tags::SERIES_NUMBER,
            VR::IS,
            (src_number + i64::from(s.series_number_offset)).to_string(),
        );
        let src_desc = obj
            .element_opt(tags::SERIES_DESCRIPTION)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        put(
            &mut obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            series_description(&src_desc, &s.series_description_suffix),
        );
        put(&mut obj, tags::INSTANCE_NUMBER, VR::IS, (k + 1).to_string());
        put(
            &mut obj,
            tags::CONVOLUTION_KERNEL,
            VR::SH,
            &m.kernels.produces,
        );
        put(
            &mut obj,
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            &self.plan.derivation_description,
        );
        let derivation = match m.task {
            Task::Kernel => code_item("113087", "DCM", "Smoothing"),
            Task::Superres => code_item("113085", "DCM", "Spatial resampling"),
        };
        put_seq(&mut obj, tags::DERIVATION_CODE_SEQUENCE, vec![derivation]);
        let source_items = out
            .sources
            .iter()
            .filter_map(|&i| self.sources.get(i))
            .map(|h| {
                let mut item = InMemDicomObject::new_empty();
                put(
                    &mut item,
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    &h.sop_class_uid,
                );
                put(
                    &mut item,
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &h.sop_instance_uid,
                );
                if let Some(f) = h.frame {
                    put(
                        &mut item,
                        tags::REFERENCED_FRAME_NUMBER,
                        VR::IS,
                        f.to_string(),
                    );
                }
                put_seq(
                    &mut item,
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![code_item(
                        "121322",
                        "DCM",
                        "Source image for image processing operation",
                    )],
                );
                item
            })
            .collect();
        put_seq(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, source_items);
        put_seq(
            &mut obj,
            tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
            vec![self.equipment_item()],
        );
        // Geometry of the output grid.
        put_strs(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &ds_multi(&out.position),
        );
        let normal_pos: f64 = {
            let o = self.plan_orientation(src0);
            let n = [
                o[1] * o[5] - o[2] * o[4],
                o[2] * o[3] - o[0] * o[5],
                o[0] * o[4] - o[1] * o[3],
            ];
            out.position.iter().zip(n).map(|(p, n)| p * n).sum()
        };
        put(&mut obj, tags::SLICE_LOCATION, VR::DS, ds(normal_pos));
        put_strs(
            &mut obj,
            tags::PIXEL_SPACING,
            VR::DS,
            &ds_multi(&self.plan.pixel_spacing),
        );
        if m.task == Task::Superres {
            put(
                &mut obj,
                tags::SLICE_THICKNESS,
                VR::DS,
                ds(self.plan.spacing),
            );
            put(
                &mut obj,
                tags::SPACING_BETWEEN_SLICES,
                VR::DS,
                ds(self.plan.spacing),
            );
        }
        put_pixels_hu(&mut obj, self.plan.rows, self.plan.columns, hu);
        obj
    }

    fn plan_orientation(&self, src0: Option<&SliceHeader>) -> [f64; 6] {
        src0.and_then(|s| s.image_orientation)
            .unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    }

    fn equipment_item(&self) -> InMemDicomObject {
        let m = &self.manifest;
        let s = &self.settings;
        let mut e = InMemDicomObject::new_empty();
        put_seq(
            &mut e,
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code_item("109102", "DCM", "Processing Equipment")],
        );
        put(&mut e, tags::MANUFACTURER, VR::LO, &s.manufacturer);
        if !s.institution.trim().is_empty() {
            put(&mut e, tags::INSTITUTION_NAME, VR::LO, s.institution.trim());
        }
        put(
            &mut e,
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            "ct-harmonizer",
        );
        put(
            &mut e,
            tags::DEVICE_SERIAL_NUMBER,
            VR::LO,
            truncate(&format!("{}-{}", m.name, m.version), 64),
        );
        put_strs(
            &mut e,
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            &[
                format!("ct-harmonizer {SOFTWARE_VERSION}"),
                truncate(&format!("{} {}", m.name, m.version), 64),
            ],
        );
        put(
            &mut e,
            tags::CONTRIBUTION_DESCRIPTION,
            VR::ST,
            &self.plan.derivation_description,
        );
        e
    }

    /// Publishes the series: syncs the partial folder and renames it to `<uid>` (replacing an earlier
    /// identical run's folder). Returns the published folder.
    pub fn finish(self) -> Result<PathBuf, DeriveError> {
        if self.written != self.plan.slices.len() {
            let reason = format!(
                "{} of {} slices written",
                self.written,
                self.plan.slices.len()
            );
            let uid = self.plan.series_uid.clone();
            self.abandon();
            return Err(DeriveError::Build { uid, reason });
        }
        // Every file of the series (and the folder) on disk before the series becomes visible.
        fs::File::open(&self.partial)
            .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
            .map_err(io_err(&self.partial))?;
        let target = self.out_dir.join(&self.plan.series_uid);
        if target.exists() {
            let old = self.out_dir.join(format!(".{}.old", self.plan.series_uid));
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            fs::rename(&target, &old).map_err(io_err(&target))?;
            fs::rename(&self.partial, &target).map_err(io_err(&target))?;
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            fs::rename(&self.partial, &target).map_err(io_err(&target))?;
        }
        fs::File::open(&self.out_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.out_dir))?;
        Ok(target)
    }

    /// Removes the partial folder (after a failure).
    pub fn abandon(self) {
        let _ = fs::remove_dir_all(&self.partial);
    }
}

/// Attributes of the multi-frame (Enhanced CT) IOD that a classic CT Image has no place for: the
/// functional groups (their per-frame content moves to the top level, frame by frame), the
/// dimension, concatenation and multi-frame presentation attributes.
const ENHANCED_ONLY: [Tag; 17] = [
    tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
    tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
    tags::DIMENSION_ORGANIZATION_SEQUENCE,
    tags::DIMENSION_INDEX_SEQUENCE,
    tags::DIMENSION_ORGANIZATION_TYPE,
    tags::CONTENT_QUALIFICATION,
    tags::PIXEL_PRESENTATION,
    tags::VOLUMETRIC_PROPERTIES,
    tags::VOLUME_BASED_CALCULATION_TECHNIQUE,
    tags::ACQUISITION_CONTEXT_SEQUENCE,
    tags::PRESENTATION_LUT_SHAPE,
    tags::REFERENCED_IMAGE_EVIDENCE_SEQUENCE,
    tags::SOURCE_IMAGE_EVIDENCE_SEQUENCE,
    tags::CONCATENATION_UID,
    tags::CONCATENATION_FRAME_OFFSET_NUMBER,
    tags::IN_CONCATENATION_NUMBER,
    tags::REPRESENTATIVE_FRAME_NUMBER,
];

/// Per-frame attributes a classic CT Image keeps at the top level: (functional group, attribute, VR).
const FRAME_ATTRIBUTES: [(Tag, Tag, VR); 3] = [
    (tags::CTX_RAY_DETAILS_SEQUENCE, tags::KVP, VR::DS),
    (tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER, VR::DS),
    (tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH, VR::DS),
];

/// One frame's top-level attributes for its classic instance (see [`classic_from_enhanced`]).
pub type FrameAttributes = Vec<(Tag, VR, String)>;

/// Turns a multi-frame (Enhanced CT) header into the base of classic CT Image instances: removes
/// what only the multi-frame IOD has ([`ENHANCED_ONLY`], NumberOfFrames...). Returns, per frame, the
/// attributes of its functional groups (its own, else the shared ones) that the classic CT Image
/// keeps at the top level: KVP (CTXRayDetailsSequence), WindowCenter/WindowWidth
/// (FrameVOILUTSequence). The per-frame Image Plane attributes are the frame's slice header's.
pub fn classic_from_enhanced(obj: &mut InMemDicomObject) -> Vec<FrameAttributes> {
    let items = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .map(|i| i.to_vec())
            .unwrap_or_default()
    };
    let per_frame = items(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let shared = items(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let value_in = |groups: Option<&InMemDicomObject>, group: Tag, tag: Tag| {
        groups?
            .element_opt(group)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .and_then(|i| i.first())
            .map(|i| item_text(i, tag))
            .filter(|v| !v.is_empty())
    };
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<usize>().ok())
        .unwrap_or(per_frame.len())
        .min(header::MAX_FRAMES as usize);
    let attributes = (0..frames)
        .map(|f| {
            FRAME_ATTRIBUTES
                .iter()
                .filter_map(|&(group, tag, vr)| {
                    value_in(per_frame.get(f), group, tag)
                        .or_else(|| value_in(shared.first(), group, tag))
                        .map(|v| (tag, vr, v))
                })
                .collect()
        })
        .collect();
    for t in ENHANCED_ONLY {
        obj.remove_element(t);
    }
    attributes
}

// ---------------------------------------------------------------------------------------------
// Source attributes carried into a derived instance: only what is valid. Real archives are full of
// small defects (a ReferencedStudySequence item without ReferencedSOPClassUID, a DS of 17
// characters, a lower-case CS); copied as they are, every derived instance would fail validation.

/// Type 1 attributes a derived instance cannot do without: kept even when their value looks wrong.
const KEEP_AS_IS: [Tag; 5] = [
    tags::STUDY_INSTANCE_UID,
    tags::FRAME_OF_REFERENCE_UID,
    tags::MODALITY,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::IMAGE_POSITION_PATIENT,
];

/// Type 2 attributes of the CT Image IOD's modules: an invalid value is emptied, not dropped.
const TYPE_2: [Tag; 17] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::SERIES_NUMBER,
    tags::LATERALITY,
    tags::MANUFACTURER,
    tags::INSTANCE_NUMBER,
    tags::PATIENT_ORIENTATION,
    tags::KVP,
    tags::ACQUISITION_NUMBER,
    tags::POSITION_REFERENCE_INDICATOR,
];

/// Sequences whose items are SOP Instance references (ReferencedSOPClassUID and
/// ReferencedSOPInstanceUID both Type 1).
const SOP_REFERENCES: [Tag; 6] = [
    tags::REFERENCED_STUDY_SEQUENCE,
    tags::REFERENCED_PATIENT_SEQUENCE,
    tags::REFERENCED_IMAGE_SEQUENCE,
    tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
    tags::REFERENCED_INSTANCE_SEQUENCE,
    tags::SOURCE_IMAGE_SEQUENCE,
];

fn tag_name(t: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(t)
        .map(|e| e.alias().to_string())
        .unwrap_or_else(|| format!("({:04X},{:04X})", t.group(), t.element()))
}

fn is_known(t: Tag) -> bool {
    use dicom_core::dictionary::DataDictionary;
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(t)
        .is_some()
}

fn is_uid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

fn item_text(item: &InMemDicomObject, tag: Tag) -> String {
    item.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// Why an item of sequence `seq` is invalid, if it is.
fn item_problem(seq: Tag, item: &InMemDicomObject) -> Option<String> {
    let name = tag_name(seq);
    if SOP_REFERENCES.contains(&seq)
        || item
            .element_opt(tags::REFERENCED_SOP_INSTANCE_UID)
            .ok()
            .flatten()
            .is_some()
    {
        for t in [
            tags::REFERENCED_SOP_CLASS_UID,
            tags::REFERENCED_SOP_INSTANCE_UID,
        ] {
            let v = item_text(item, t);
            if v.is_empty() {
                return Some(format!("no {}", tag_name(t)));
            }
            if !is_uid(&v) {
                return Some(format!("invalid {} {v:?}", tag_name(t)));
            }
        }
    }
    let code_attribute = [
        tags::CODE_VALUE,
        tags::LONG_CODE_VALUE,
        tags::URN_CODE_VALUE,
        tags::CODING_SCHEME_DESIGNATOR,
        tags::CODE_MEANING,
    ]
    .iter()
    .any(|&t| item.element_opt(t).ok().flatten().is_some());
    if name.ends_with("CodeSequence") || code_attribute {
        let urn = !item_text(item, tags::URN_CODE_VALUE).is_empty();
        let value = !item_text(item, tags::CODE_VALUE).is_empty()
            || !item_text(item, tags::LONG_CODE_VALUE).is_empty()
            || urn;
        if !value {
            return Some("no CodeValue".into());
        }
        if !urn && item_text(item, tags::CODING_SCHEME_DESIGNATOR).is_empty() {
            return Some("no CodingSchemeDesignator".into());
        }
        if item_text(item, tags::CODE_MEANING).is_empty() {
            return Some("no CodeMeaning".into());
        }
    }
    None
}

/// Why a primitive value of representation `vr` is invalid, if it is.
fn value_problem(vr: VR, value: &PrimitiveValue) -> Option<String> {
    let max = match vr {
        VR::AE | VR::CS | VR::SH => 16,
        VR::AS => 4,
        VR::DA => 8,
        VR::DS => 16,
        VR::IS => 12,
        VR::LO => 64,
        VR::UI => 64,
        VR::TM => 14,
        VR::ST => 1024,
        VR::LT => 10240,
        _ => return None,
    };
    let values = value.to_multi_str();
    for raw in values.iter() {
        let v = raw.trim_end_matches(['\0', ' ']);
        let t = v.trim();
        if v.len() > max {
            return Some(format!(
                "value {:?} longer than {max} characters",
                truncate(v, 80)
            ));
        }
        if t.is_empty() {
            continue;
        }
        let ok = match vr {
            VR::UI => is_uid(t),
            VR::DS => {
                t.parse::<f64>().is_ok_and(f64::is_finite) && !t.contains(['i', 'n', 'I', 'N'])
            }
            VR::IS => t
                .parse::<i64>()
                .is_ok_and(|n| (-(1i64 << 31)..(1i64 << 31)).contains(&n)),
            VR::DA => t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()),
            VR::TM => {
                let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
                matches!(hms.len(), 2 | 4 | 6)
                    && hms.bytes().all(|b| b.is_ascii_digit())
                    && frac.len() <= 6
                    && frac.bytes().all(|b| b.is_ascii_digit())
                    && (frac.is_empty() || hms.len() == 6)
            }
            VR::CS => v
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'),
            VR::AS => {
                t.len() == 4
                    && t[..3].bytes().all(|b| b.is_ascii_digit())
                    && matches!(t.as_bytes()[3], b'D' | b'W' | b'M' | b'Y')
            }
            _ => true,
        };
        if !ok {
            return Some(format!("invalid {vr:?} value {:?}", truncate(v, 80)));
        }
    }
    None
}

/// Drops (or, for Type 2 attributes, empties) what is not valid in a source header before it becomes
/// a derived instance's template: unknown public attributes, invalid values, sequence items missing
/// their Type 1 attributes (a sequence left without items is dropped). Returns one note per repair,
/// naming the attribute.
pub fn sanitize(obj: &mut InMemDicomObject) -> Vec<String> {
    let mut notes = Vec::new();
    sanitize_level(obj, "", true, &mut notes);
    notes
}

fn sanitize_level(obj: &mut InMemDicomObject, path: &str, top: bool, notes: &mut Vec<String>) {
    use dicom_core::DicomValue;
    let all: Vec<Tag> = obj.iter().map(|e| e.header().tag).collect();
    for t in all {
        // Private attributes are dropped elsewhere (top level) or kept inside items untouched.
        if t.group() % 2 == 1 || t.group() == 0x0002 || t == tags::PIXEL_DATA {
            continue;
        }
        let name = format!("{path}{}", tag_name(t));
        if !is_known(t) {
            obj.remove_element(t);
            notes.push(format!("{name}: not a standard attribute; dropped"));
            continue;
        }
        let Ok(elem) = obj.take_element(t) else {
            continue;
        };
        let vr = elem.header().vr;
        match elem.value() {
            DicomValue::Sequence(seq) => {
                let items = seq.items();
                let had = items.len();
                let mut kept = Vec::with_capacity(had);
                let mut bad = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(reason) = item_problem(t, item) {
                        bad.push(format!("item {}: {reason}", i + 1));
                        continue;
                    }
                    let mut item = item.clone();
                    sanitize_level(&mut item, &format!("{name}[{}].", i + 1), false, notes);
                    kept.push(item);
                }
                let gone = had > 0 && kept.is_empty() && !(top && TYPE_2.contains(&t));
                if !bad.is_empty() {
                    notes.push(format!(
                        "{name}: {}; {}",
                        bad.join(", "),
                        if gone {
                            "sequence dropped".to_string()
                        } else {
                            format!("{} of {had} item(s) dropped", bad.len())
                        }
                    ));
                }
                if gone {
                    continue;
                }
                put_seq(obj, t, kept);
            }
            DicomValue::Primitive(v) => match value_problem(vr, v) {
                Some(reason) if !(top && KEEP_AS_IS.contains(&t)) => {
                    if top && TYPE_2.contains(&t) {
                        notes.push(format!("{name}: {reason}; emptied"));
                        obj.put(DataElement::new(t, vr, PrimitiveValue::Empty));
                    } else {
                        notes.push(format!("{name}: {reason}; dropped"));
                    }
                }
                _ => {
                    obj.put(elem);
                }
            },
            DicomValue::PixelSequence(_) => {
                obj.put(elem);
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Source description plus the configured suffix, within the 64-character LO limit (the suffix wins).
pub fn series_description(source: &str, suffix: &str) -> String {
    let suffix = truncate(suffix, 64);
    let room = 64 - suffix.len();
    format!("{}{}", truncate(source, room), suffix)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_deterministic_and_valid() {
        let a = derived_uid(&["series", "1.2.3", "m", "1.0.0", "ab"]);
        let b = derived_uid(&["series", "1.2.3", "m", "1.0.0", "ab"]);
        let c = derived_uid(&["series", "1.2.3", "m", "1.0.1", "ab"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()));
        assert!(!a[5..].starts_with('0'));
    }

    #[test]
    fn decimal_strings_fit() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        for v in [0.957031199999, -250.123456789, 12345.678901234] {
            assert!(ds(v).len() <= 16, "{}", ds(v));
            assert!((ds(v).parse::<f64>().unwrap() - v).abs() < 1e-6);
        }
    }

    #[test]
    fn description_keeps_suffix_within_64() {
        let d = series_description(&"X".repeat(80), " HARMONIZED NOT FOR DIAGNOSTIC USE");
        assert_eq!(d.len(), 64);
        assert!(d.ends_with("NOT FOR DIAGNOSTIC USE"));
        assert_eq!(series_description("", " SUFFIX"), "SUFFIX");
    }

    #[test]
    fn sanitize_drops_invalid_and_keeps_valid() {
        let mut o = InMemDicomObject::new_empty();
        let mut bad_ref = InMemDicomObject::new_empty();
        put(
            &mut bad_ref,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            "1.2.3",
        );
        let mut good_ref = bad_ref.clone();
        put(
            &mut good_ref,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.3.1.2.3.1",
        );
        put_seq(
            &mut o,
            tags::REFERENCED_STUDY_SEQUENCE,
            vec![bad_ref.clone()],
        );
        put_seq(
            &mut o,
            tags::REFERENCED_IMAGE_SEQUENCE,
            vec![bad_ref, good_ref],
        );
        put_seq(
            &mut o,
            tags::ANATOMIC_REGION_SEQUENCE,
            vec![code_item("T-D1100", "SRT", "")],
        );
        put(&mut o, tags::PATIENT_SEX, VR::CS, "male");
        put(&mut o, tags::SLICE_THICKNESS, VR::DS, "1.25");
        put(&mut o, tags::DATA_COLLECTION_DIAMETER, VR::DS, "abc");
        put(&mut o, tags::STUDY_DATE, VR::DA, "2012-09-14");
        put(&mut o, tags::STUDY_TIME, VR::TM, "101010.123456");
        put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "1.02.3");
        let notes = sanitize(&mut o);
        assert_eq!(notes.len(), 6, "{notes:#?}");
        let has = |t| o.element_opt(t).ok().flatten().is_some();
        assert!(!has(tags::REFERENCED_STUDY_SEQUENCE));
        assert!(!has(tags::ANATOMIC_REGION_SEQUENCE));
        assert!(!has(tags::DATA_COLLECTION_DIAMETER));
        assert_eq!(
            o.element(tags::REFERENCED_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .len(),
            1
        );
        assert!(o
            .element(tags::PATIENT_SEX)
            .unwrap()
            .to_str()
            .unwrap()
            .is_empty());
        assert!(o
            .element(tags::STUDY_DATE)
            .unwrap()
            .to_str()
            .unwrap()
            .is_empty());
        assert_eq!(
            o.element(tags::STUDY_TIME).unwrap().to_str().unwrap(),
            "101010.123456"
        );
        assert_eq!(
            o.element(tags::SLICE_THICKNESS).unwrap().to_str().unwrap(),
            "1.25"
        );
        // Type 1 and needed: kept even when it looks wrong.
        assert!(has(tags::STUDY_INSTANCE_UID));
    }

    #[test]
    fn enhanced_header_becomes_a_classic_base() {
        let kvp_item = |v: &str| {
            let mut details = InMemDicomObject::new_empty();
            put(&mut details, tags::KVP, VR::DS, v);
            let mut group = InMemDicomObject::new_empty();
            put_seq(&mut group, tags::CTX_RAY_DETAILS_SEQUENCE, vec![details]);
            group
        };
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::PATIENT_ID, VR::LO, "P1");
        put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, "3");
        put(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
        put(&mut o, tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT");
        put_seq(
            &mut o,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![kvp_item("120")],
        );
        // Frame 2 has its own KVP; frames 1 and 3 have none of their own.
        put_seq(
            &mut o,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![
                InMemDicomObject::new_empty(),
                kvp_item("100"),
                InMemDicomObject::new_empty(),
            ],
        );
        let frames = classic_from_enhanced(&mut o);
        let kvp = |v: &str| vec![(tags::KVP, VR::DS, v.to_string())];
        assert_eq!(frames, vec![kvp("120"), kvp("100"), kvp("120")]);
        for t in ENHANCED_ONLY {
            assert!(o.element_opt(t).unwrap().is_none(), "{t:?}");
        }
        assert!(o.element_opt(tags::PATIENT_ID).unwrap().is_some());
    }
}
