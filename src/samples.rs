//! Sample CT series for the demo, the tests and the benchmarks, written with the project's own DICOM
//! writer: the real head CT shipped in Debian's `invesalius-examples` (an InVesalius project, a tar.gz
//! with `main.plist` and a raw int16 `matrix.dat`), and deterministic synthetic chest-like phantoms.
//!
//! Feature `testkit` (not in the daemon's production surface unless the binary's `sample` command
//! is built). One file because it is one cohesive thing: the fixtures all tests share.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dicom::header::{CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};
use crate::dicom::write::{derived_uid, ds, put_pixels_hu, write_part10, DeriveError};

/// Where Debian's `invesalius-examples` puts the head CT.
pub const CRANIUM_INV3: &str = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3";

/// Errors reading sample sources.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] DeriveError),
}

/// A volume in HU, `[z][y][x]`, with its voxel size (z, y, x) in mm.
#[derive(Debug, Clone)]
pub struct HuVolume {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub hu: Vec<i16>,
}

/// Reads an InVesalius `.inv3` project (tar.gz) into a volume.
pub fn read_inv3(path: &Path) -> Result<HuVolume, SampleError> {
    let read_err = |reason: String| SampleError::Read {
        path: path.to_owned(),
        reason,
    };
    let fmt_err = |reason: &str| SampleError::Format {
        path: path.to_owned(),
        reason: reason.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let (mut plist, mut matrix) = (None, None);
    for entry in archive.entries().map_err(|e| read_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| read_err(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| read_err(e.to_string()))?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut buf = Vec::new();
        if name == "main.plist" || name == "matrix.dat" {
            entry
                .read_to_end(&mut buf)
                .map_err(|e| read_err(e.to_string()))?;
        }
        match name.as_str() {
            "main.plist" => plist = Some(String::from_utf8_lossy(&buf).to_string()),
            "matrix.dat" => matrix = Some(buf),
            _ => {}
        }
    }
    let plist = plist.ok_or_else(|| fmt_err("no main.plist in the archive"))?;
    let matrix = matrix.ok_or_else(|| fmt_err("no matrix.dat in the archive"))?;
    let matrix_dict = after_key(&plist, "matrix").ok_or_else(|| fmt_err("no matrix entry"))?;
    let dtype = after_key(matrix_dict, "dtype")
        .and_then(|s| first_between(s, "<string>", "</string>"))
        .ok_or_else(|| fmt_err("no matrix dtype"))?;
    if dtype != "int16" {
        return Err(fmt_err("matrix dtype is not int16"));
    }
    let shape: Vec<usize> = array_values(after_key(matrix_dict, "shape"), "integer")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let spacing: Vec<f64> = array_values(after_key(&plist, "spacing"), "real")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let (Ok(shape), Ok(spacing_xyz)) = (
        <[usize; 3]>::try_from(shape.as_slice()),
        <[f64; 3]>::try_from(spacing.as_slice()),
    ) else {
        return Err(fmt_err("shape or spacing is not three numbers"));
    };
    let n = shape.iter().product::<usize>();
    if matrix.len() != n * 2 {
        return Err(fmt_err("matrix.dat size does not match its shape"));
    }
    let hu = matrix
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(HuVolume {
        shape,
        // InVesalius stores spacing as (x, y, z).
        spacing: [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]],
        hu,
    })
}

fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("<key>{key}</key>");
    text.find(&k).map(|i| &text[i + k.len()..])
}

fn first_between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let s = text.find(open)? + open.len();
    let e = text[s..].find(close)? + s;
    Some(text[s..e].trim())
}

fn array_values(text: Option<&str>, ty: &str) -> Vec<String> {
    let Some(text) = text else { return Vec::new() };
    let Some(body) = first_between(text, "<array>", "</array>") else {
        return Vec::new();
    };
    let (open, close) = (format!("<{ty}>"), format!("</{ty}>"));
    body.split(&open)
        .skip(1)
        .filter_map(|p| p.split(&close).next())
        .map(|s| s.trim().to_string())
        .collect()
}

/// How to write a synthetic or imported series.
#[derive(Debug, Clone)]
pub struct SeriesSpec {
    /// Seed for all UIDs (the same seed gives the same UIDs).
    pub uid_seed: String,
    pub patient_name: String,
    pub patient_id: String,
    pub series_description: String,
    pub series_number: i32,
    pub convolution_kernel: String,
    pub body_part: String,
    pub rows: usize,
    pub columns: usize,
    /// (row spacing, column spacing) mm.
    pub pixel_spacing: [f64; 2],
    pub orientation: [f64; 6],
    pub origin: [f64; 3],
    /// Step between consecutive slice origins (mm, patient coordinates).
    pub step: [f64; 3],
    pub slice_thickness: f64,
    pub slices: usize,
    /// InstanceNumber runs against the slice order when true (as many scanners do).
    pub reverse_instance_numbers: bool,
}

impl SeriesSpec {
    /// An axial series with the given grid; z runs from head (+) to feet (-) like a real scan.
    pub fn axial(
        uid_seed: &str,
        rows: usize,
        columns: usize,
        slices: usize,
        spacing: [f64; 3],
    ) -> Self {
        Self {
            uid_seed: uid_seed.to_string(),
            patient_name: "PHANTOM^SYNTHETIC".into(),
            patient_id: format!("SYN-{}", &derived_uid(&[uid_seed])[5..15]),
            series_description: "SYNTHETIC SHARP".into(),
            series_number: 2,
            convolution_kernel: "B50f".into(),
            body_part: "CHEST".into(),
            rows,
            columns,
            pixel_spacing: [spacing[1], spacing[2]],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            origin: [
                -(columns as f64) * spacing[2] / 2.0,
                -(rows as f64) * spacing[1] / 2.0,
                0.0,
            ],
            step: [0.0, 0.0, -spacing[0]],
            slice_thickness: spacing[0],
            slices,
            reverse_instance_numbers: true,
        }
    }

    pub fn study_uid(&self) -> String {
        derived_uid(&["study", &self.uid_seed])
    }

    pub fn series_uid(&self) -> String {
        derived_uid(&["series", &self.uid_seed])
    }

    pub fn sop_instance_uid(&self, z: usize) -> String {
        derived_uid(&["instance", &self.uid_seed, &z.to_string()])
    }

    /// Builds the complete CT Image dataset of slice `z` with pixel values `hu` (rows × columns).
    pub fn dataset(&self, z: usize, hu: &[f32]) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: String| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100".into());
        put(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL".into());
        put(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE.into());
        put(tags::SOP_INSTANCE_UID, VR::UI, self.sop_instance_uid(z));
        put(tags::STUDY_DATE, VR::DA, "20120914".into());
        put(tags::SERIES_DATE, VR::DA, "20120914".into());
        put(tags::CONTENT_DATE, VR::DA, "20120914".into());
        put(tags::STUDY_TIME, VR::TM, "151208".into());
        put(tags::SERIES_TIME, VR::TM, "151208".into());
        put(tags::CONTENT_TIME, VR::TM, "151208".into());
        put(tags::ACCESSION_NUMBER, VR::SH, String::new());
        put(tags::MODALITY, VR::CS, "CT".into());
        put(
            tags::MANUFACTURER,
            VR::LO,
            "ct-harmonizer sample writer".into(),
        );
        put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, String::new());
        put(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            self.series_description.clone(),
        );
        put(tags::PATIENT_NAME, VR::PN, self.patient_name.clone());
        put(tags::PATIENT_ID, VR::LO, self.patient_id.clone());
        put(tags::PATIENT_BIRTH_DATE, VR::DA, String::new());
        put(tags::PATIENT_SEX, VR::CS, String::new());
        put(tags::BODY_PART_EXAMINED, VR::CS, self.body_part.clone());
        put(tags::SLICE_THICKNESS, VR::DS, ds(self.slice_thickness));
        put(tags::KVP, VR::DS, "120".into());
        put(
            tags::CONVOLUTION_KERNEL,
            VR::SH,
            self.convolution_kernel.clone(),
        );
        put(tags::PATIENT_POSITION, VR::CS, "HFS".into());
        put(tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid());
        put(tags::SERIES_INSTANCE_UID, VR::UI, self.series_uid());
        put(tags::STUDY_ID, VR::SH, "1".into());
        put(tags::SERIES_NUMBER, VR::IS, self.series_number.to_string());
        put(tags::ACQUISITION_NUMBER, VR::IS, "1".into());
        let number = if self.reverse_instance_numbers {
            self.slices - z
        } else {
            z + 1
        };
        put(tags::INSTANCE_NUMBER, VR::IS, number.to_string());
        let p: Vec<String> = (0..3)
            .map(|i| ds(self.origin[i] + self.step[i] * z as f64))
            .collect();
        put(tags::IMAGE_POSITION_PATIENT, VR::DS, p.join("\\"));
        let iop: Vec<String> = self.orientation.iter().map(|&v| ds(v)).collect();
        put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, iop.join("\\"));
        put(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            derived_uid(&["frame", &self.uid_seed]),
        );
        put(tags::POSITION_REFERENCE_INDICATOR, VR::LO, String::new());
        let o6 = self.orientation;
        let n = [
            o6[1] * o6[5] - o6[2] * o6[4],
            o6[2] * o6[3] - o6[0] * o6[5],
            o6[0] * o6[4] - o6[1] * o6[3],
        ];
        let loc: f64 = (0..3)
            .map(|i| (self.origin[i] + self.step[i] * z as f64) * n[i])
            .sum();
        put(tags::SLICE_LOCATION, VR::DS, ds(loc));
        put(
            tags::PIXEL_SPACING,
            VR::DS,
            format!(
                "{}\\{}",
                ds(self.pixel_spacing[0]),
                ds(self.pixel_spacing[1])
            ),
        );
        put(tags::WINDOW_CENTER, VR::DS, "40".into());
        put(tags::WINDOW_WIDTH, VR::DS, "400".into());
        put_pixels_hu(&mut o, self.rows, self.columns, hu);
        o
    }

    /// Writes every slice into `dir` as `slice_NNNN.dcm` (in a shuffled-looking order of names: the
    /// file name says nothing about position). `slice` gives the HU of slice z.
    pub fn write(
        &self,
        dir: &Path,
        mut slice: impl FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<PathBuf>, SampleError> {
        std::fs::create_dir_all(dir).map_err(|e| SampleError::Read {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(self.slices);
        for z in 0..self.slices {
            let hu = slice(z);
            // A fixed permutation of names: (z * 7919) mod a prime larger than any series here.
            let name = format!("slice_{:06}.dcm", (z * 7919 + 13) % 100_003);
            let path = dir.join(name);
            write_part10(self.dataset(z, &hu), &path)?;
            out.push(path);
        }
        Ok(out)
    }
}

/// Writes the InVesalius head CT as an axial DICOM series into `dir`.
pub fn write_inv3_series(inv3: &Path, dir: &Path) -> Result<Vec<PathBuf>, SampleError> {
    let v = read_inv3(inv3)?;
    let [d, h, w] = v.shape;
    let mut spec = SeriesSpec::axial("invesalius-cranium", h, w, d, v.spacing);
    spec.patient_name = "CRANIUM^INVESALIUS".into();
    spec.patient_id = "INV3-CRANIUM".into();
    spec.series_description = "HEAD CT (INVESALIUS EXAMPLE)".into();
    spec.convolution_kernel = "H60s".into();
    spec.body_part = "HEAD".into();
    // The .inv3 matrix runs foot to head and its rows back to front (as the picture shows: the
    // face at the bottom of a slice stored "axial as usual"): say so in the headers, so that
    // viewers and the preview show it anterior up and head up.
    spec.orientation = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0];
    spec.origin[1] = -spec.origin[1];
    spec.step = [0.0, 0.0, v.spacing[0]];
    let plane = h * w;
    spec.write(dir, |z| {
        v.hu[z * plane..(z + 1) * plane]
            .iter()
            .map(|&x| f32::from(x))
            .collect()
    })
}

/// A small deterministic generator (SplitMix64) for phantom noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// One slice of a chest-like phantom: air, a body ellipse of soft tissue, two lungs near -850 HU with
/// vessels, a spine, and Gaussian noise of `noise_hu` (a sharp kernel's grain).
pub fn phantom_slice(z: usize, rows: usize, columns: usize, noise_hu: f64, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ (z as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (cy, cx) = (rows as f64 / 2.0, columns as f64 / 2.0);
    let (ry, rx) = (rows as f64 * 0.36, columns as f64 * 0.45);
    let zf = z as f64;
    let mut out = Vec::with_capacity(rows * columns);
    for y in 0..rows {
        for x in 0..columns {
            let (dy, dx) = ((y as f64 - cy) / ry, (x as f64 - cx) / rx);
            let mut v = -1000.0;
            if dy * dy + dx * dx <= 1.0 {
                v = 40.0;
                for side in [-1.0, 1.0] {
                    let (ly, lx) = (
                        (y as f64 - cy * 0.95) / (ry * 0.7),
                        (x as f64 - cx - side * rx * 0.45) / (rx * 0.35),
                    );
                    if ly * ly + lx * lx <= 1.0 {
                        v = -850.0;
                        // Vessels: thin bright tubes whose position drifts with z.
                        let vy = cy + 0.25 * ry * (zf * 0.05 + side).sin();
                        let vx = cx + side * rx * 0.45 + 0.2 * rx * (zf * 0.03).cos();
                        let d2 = (y as f64 - vy).powi(2) + (x as f64 - vx).powi(2);
                        if d2 < (rows as f64 * 0.012).powi(2) {
                            v = 50.0;
                        }
                    }
                }
                let (sy, sx) = (
                    (y as f64 - cy - ry * 0.75) / (ry * 0.12),
                    (x as f64 - cx) / (rx * 0.09),
                );
                if sy * sy + sx * sx <= 1.0 {
                    v = 700.0;
                }
            }
            out.push((v + noise_hu * rng.normal()) as f32);
        }
    }
    out
}

/// Writes a synthetic phantom series (see [`phantom_slice`]).
pub fn write_phantom_series(
    spec: &SeriesSpec,
    dir: &Path,
    noise_hu: f64,
) -> Result<Vec<PathBuf>, SampleError> {
    let seed = u64::from_le_bytes(
        derived_uid(&[&spec.uid_seed]).as_bytes()[5..13]
            .try_into()
            .unwrap_or([0; 8]),
    );
    spec.write(dir, |z| {
        phantom_slice(z, spec.rows, spec.columns, noise_hu, seed)
    })
}

/// Builds `spec` as one Enhanced CT Image (multi-frame) object: frame `f` is slice `frames[f]` of the
/// classic series (`hu[f]` its HU), with its position in PerFrameFunctionalGroupsSequence and the
/// rest (pixel measures, orientation, rescale, reconstruction kernel, KVP) shared. Pixels are stored
/// unsigned with RescaleIntercept -2048, so that reading them exercises the functional groups'
/// rescale rather than the top-level one. A test fixture: readable, not a complete IOD.
pub fn enhanced_dataset(spec: &SeriesSpec, frames: &[usize], hu: &[Vec<f32>]) -> InMemDicomObject {
    use dicom_core::value::DataSetSequence;
    let item = |elems: Vec<(dicom_core::Tag, VR, String)>| {
        InMemDicomObject::from_element_iter(
            elems
                .into_iter()
                .map(|(t, vr, v)| DataElement::new(t, vr, PrimitiveValue::from(v))),
        )
    };
    let seq = |tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    };
    // The classic dataset of the first frame gives the patient, study, series and equipment.
    let first = frames.first().copied().unwrap_or(0);
    let plane = spec.rows * spec.columns;
    let mut o = spec.dataset(first, &vec![0.0; plane]);
    for t in [
        tags::IMAGE_POSITION_PATIENT,
        tags::IMAGE_ORIENTATION_PATIENT,
        tags::PIXEL_SPACING,
        tags::SLICE_THICKNESS,
        tags::SLICE_LOCATION,
        tags::RESCALE_INTERCEPT,
        tags::RESCALE_SLOPE,
        tags::KVP,
        tags::CONVOLUTION_KERNEL,
        tags::WINDOW_CENTER,
        tags::WINDOW_WIDTH,
        tags::PIXEL_DATA,
    ] {
        o.remove_element(t);
    }
    let mut put = |tag, vr, v: String| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        ENHANCED_CT_IMAGE_STORAGE.into(),
    );
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        derived_uid(&["enhanced", &spec.uid_seed]),
    );
    put(
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\AXIAL\\NONE".into(),
    );
    put(tags::INSTANCE_NUMBER, VR::IS, "1".into());
    put(tags::NUMBER_OF_FRAMES, VR::IS, frames.len().to_string());
    put(tags::ACQUISITION_DATE_TIME, VR::DT, "20120914151208".into());
    put(tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT".into());
    put(tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME".into());
    put(tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME".into());
    put(
        tags::VOLUME_BASED_CALCULATION_TECHNIQUE,
        VR::CS,
        "NONE".into(),
    );
    put(tags::BURNED_IN_ANNOTATION, VR::CS, "NO".into());
    put(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00".into());
    put(tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY".into());
    put(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D".into());
    let dim_org = derived_uid(&["dimension", &spec.uid_seed]);
    o.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(vec![(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            dim_org.clone(),
        )])],
    ));
    let mut dim_index = item(vec![(tags::DIMENSION_ORGANIZATION_UID, VR::UI, dim_org)]);
    dim_index.put(DataElement::new(
        tags::DIMENSION_INDEX_POINTER,
        VR::AT,
        PrimitiveValue::Tags([tags::IMAGE_POSITION_PATIENT].into_iter().collect()),
    ));
    dim_index.put(DataElement::new(
        tags::FUNCTIONAL_GROUP_POINTER,
        VR::AT,
        PrimitiveValue::Tags([tags::PLANE_POSITION_SEQUENCE].into_iter().collect()),
    ));
    o.put(seq(tags::DIMENSION_INDEX_SEQUENCE, vec![dim_index]));
    o.put(seq(tags::ACQUISITION_CONTEXT_SEQUENCE, Vec::new()));
    let iop: Vec<String> = spec.orientation.iter().map(|&v| ds(v)).collect();
    let shared = InMemDicomObject::from_element_iter([
        seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                (
                    tags::PIXEL_SPACING,
                    VR::DS,
                    format!(
                        "{}\\{}",
                        ds(spec.pixel_spacing[0]),
                        ds(spec.pixel_spacing[1])
                    ),
                ),
                (tags::SLICE_THICKNESS, VR::DS, ds(spec.slice_thickness)),
            ])],
        ),
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                iop.join("\\"),
            )])],
        ),
        seq(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            vec![item(vec![
                (tags::RESCALE_INTERCEPT, VR::DS, "-2048".into()),
                (tags::RESCALE_SLOPE, VR::DS, "1".into()),
                (tags::RESCALE_TYPE, VR::LO, "HU".into()),
            ])],
        ),
        seq(
            tags::CT_RECONSTRUCTION_SEQUENCE,
            vec![item(vec![
                (
                    tags::CONVOLUTION_KERNEL,
                    VR::SH,
                    spec.convolution_kernel.clone(),
                ),
                (
                    tags::RECONSTRUCTION_ALGORITHM,
                    VR::CS,
                    "FILTER_BACK_PROJ".into(),
                ),
            ])],
        ),
        seq(
            tags::CTX_RAY_DETAILS_SEQUENCE,
            vec![item(vec![(tags::KVP, VR::DS, "120".into())])],
        ),
        seq(
            tags::FRAME_VOILUT_SEQUENCE,
            vec![item(vec![
                (tags::WINDOW_CENTER, VR::DS, "40".into()),
                (tags::WINDOW_WIDTH, VR::DS, "400".into()),
            ])],
        ),
    ]);
    o.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
    let per_frame = frames
        .iter()
        .enumerate()
        .map(|(f, &z)| {
            let p: Vec<String> = (0..3)
                .map(|i| ds(spec.origin[i] + spec.step[i] * z as f64))
                .collect();
            let mut content = item(vec![(tags::STACK_ID, VR::SH, "1".into())]);
            content.put(DataElement::new(
                tags::IN_STACK_POSITION_NUMBER,
                VR::UL,
                PrimitiveValue::from((z + 1) as u32),
            ));
            content.put(DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::from((f + 1) as u32),
            ));
            InMemDicomObject::from_element_iter([
                seq(tags::FRAME_CONTENT_SEQUENCE, vec![content]),
                seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(vec![(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        p.join("\\"),
                    )])],
                ),
            ])
        })
        .collect();
    o.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    // Image Pixel: unsigned 16 bits, stored value = HU + 2048.
    let mut u16s = |tag, v: u16| {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    };
    u16s(tags::SAMPLES_PER_PIXEL, 1);
    u16s(tags::ROWS, spec.rows as u16);
    u16s(tags::COLUMNS, spec.columns as u16);
    u16s(tags::BITS_ALLOCATED, 16);
    u16s(tags::BITS_STORED, 16);
    u16s(tags::HIGH_BIT, 15);
    u16s(tags::PIXEL_REPRESENTATION, 0);
    o.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    ));
    let mut bytes = Vec::with_capacity(plane * 2 * frames.len());
    for slice in hu {
        for v in slice {
            let s = (v.round() + 2048.0).clamp(0.0, 65535.0) as u16;
            bytes.extend_from_slice(&s.to_le_bytes());
        }
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U8(bytes.into()),
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plist_helpers_parse_invesalius_layout() {
        let t = "<key>matrix</key><dict><key>dtype</key><string>int16</string><key>shape</key><array>\n<integer>2</integer><integer>3</integer><integer>4</integer></array></dict><key>spacing</key><array><real>0.5</real><real>0.5</real><real>1.5</real></array>";
        let m = after_key(t, "matrix").unwrap();
        assert_eq!(
            array_values(after_key(m, "shape"), "integer"),
            ["2", "3", "4"]
        );
        assert_eq!(
            array_values(after_key(t, "spacing"), "real"),
            ["0.5", "0.5", "1.5"]
        );
        assert_eq!(
            first_between(after_key(m, "dtype").unwrap(), "<string>", "</string>"),
            Some("int16")
        );
    }

    #[test]
    fn phantom_is_deterministic_and_has_lungs() {
        let a = phantom_slice(3, 64, 64, 20.0, 7);
        let b = phantom_slice(3, 64, 64, 20.0, 7);
        assert_eq!(a, b);
        let lung = a.iter().filter(|&&v| (-950.0..-750.0).contains(&v)).count();
        assert!(lung > 200, "{lung}");
    }
}
