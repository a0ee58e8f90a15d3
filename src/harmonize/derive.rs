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
//!
//! Source-header templating (enhanced to classic, sanitizing) is in [`super::template`]; the writer
//! toolkit (UIDs, Part 10 files) in [`crate::dicom::write`].

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::fs;
use std::path::{Path, PathBuf};

use super::template::{
    classic_from_enhanced, sanitize, series_description, truncate, FrameAttributes,
};
use crate::config::DeriveSettings;
pub use crate::dicom::write::DeriveError;
use crate::dicom::write::{
    code_item, derived_uid, ds, ds_multi, io_err, put, put_pixels_hu, put_seq, put_strs,
    write_file, SOFTWARE_VERSION,
};
use crate::dicom::{header, Geometry, SliceHeader};
use crate::model::manifest::{Manifest, Task};
use crate::model::OutSlab;
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

/// The header data set of a source slice: the one the scan kept, else the file's header, opened
/// again (the one-shot `process` command does not keep data sets, see
/// [`crate::dicom::files::scan_keeping`]).
fn source_dataset(h: &SliceHeader) -> Result<InMemDicomObject, DeriveError> {
    if let Some(obj) = &h.dataset {
        return Ok(InMemDicomObject::clone(obj));
    }
    let obj = header::open_header(&h.path).map_err(|source| DeriveError::Source {
        path: h.path.clone(),
        source: Box::new(source),
    })?;
    Ok(obj.into_inner())
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
        let mut obj = source_dataset(h)?;
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
            let mut base = source_dataset(h)?;
            let (frames, mut notes) = classic_from_enhanced(&mut base);
            notes.extend(sanitize(&mut base));
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
        // Written from the plan, as the position is: the source's own text is kept by the
        // template as it came (Type 1), and a value that parses (dicom-rs reads "\0" padding as a
        // number) may still be invalid DS text (found by fuzz target series_file).
        let o = self.plan_orientation(src0);
        put_strs(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &ds_multi(&o),
        );
        let normal_pos: f64 = {
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
