//! One DICOM file's header, read without its pixel data: what grouping, sorting and geometry need.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::VolumeError;

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage (multi-frame: each frame becomes one slice, see [`expand_frames`]).
pub const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";

/// Header of one image file.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceHeader {
    pub path: PathBuf,
    pub transfer_syntax: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub modality: Option<String>,
    pub instance_number: Option<i64>,
    pub image_position: Option<[f64; 3]>,
    pub image_orientation: Option<[f64; 6]>,
    /// (row spacing, column spacing) in mm, as PixelSpacing stores it.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    pub samples_per_pixel: u16,
    pub number_of_frames: u32,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    pub convolution_kernel: Option<String>,
    pub gantry_tilt: Option<f64>,
    /// Frame number (1-based, as ReferencedFrameNumber counts) of this slice in a multi-frame file;
    /// None for a single-frame file. The geometry fields then are that frame's (functional groups).
    pub frame: Option<u32>,
    /// What routing rules match on, read with the rest of the header (see [`RouteTags`]).
    pub route: RouteTags,
    /// The header data set itself (no pixel data), when the scan was asked to keep it
    /// ([`crate::dicom::files::scan_keeping`]): the harmonize core expands frames and templates the
    /// derived instances from it instead of opening the file again. Shared by the frames of a
    /// multi-frame file.
    pub dataset: Option<Arc<InMemDicomObject>>,
}

/// The attributes routing rules match on, as the routing stage has always read them: text trimmed
/// of padding, empty when absent; for Enhanced CT, ConvolutionKernel and SliceThickness from the
/// first frame's functional groups when the top level has none (the first frame stands for the
/// series).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTags {
    pub modality: String,
    pub convolution_kernel: String,
    pub manufacturer: String,
    pub station_name: String,
    pub series_description: String,
    pub slice_thickness: Option<f64>,
}

impl RouteTags {
    /// Reads the routing attributes of an opened header.
    pub fn read(obj: &InMemDicomObject) -> Self {
        let text = |tag| {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches('\0').trim().to_string())
                .unwrap_or_default()
        };
        // Enhanced CT keeps these in its functional groups (the first frame's stand for the series).
        let or_frame = |v: String, group, tag| {
            if v.is_empty() {
                first_frame_text(obj, group, tag).unwrap_or_default()
            } else {
                v
            }
        };
        let slice_thickness = or_frame(
            text(tags::SLICE_THICKNESS),
            tags::PIXEL_MEASURES_SEQUENCE,
            tags::SLICE_THICKNESS,
        );
        Self {
            modality: text(tags::MODALITY),
            convolution_kernel: or_frame(
                text(tags::CONVOLUTION_KERNEL),
                tags::CT_RECONSTRUCTION_SEQUENCE,
                tags::CONVOLUTION_KERNEL,
            ),
            manufacturer: text(tags::MANUFACTURER),
            station_name: text(tags::STATION_NAME),
            series_description: text(tags::SERIES_DESCRIPTION),
            slice_thickness: slice_thickness.parse().ok(),
        }
    }
}

impl SliceHeader {
    /// True when the object carries an image (it has Rows and Columns).
    pub fn is_image(&self) -> bool {
        self.rows.is_some() && self.columns.is_some()
    }

    /// The file, and the frame for a slice of a multi-frame file (for messages).
    pub fn label(&self) -> String {
        match self.frame {
            Some(f) => format!("{} (frame {f})", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// Checks a file with the bounded pre-parser (nesting depth, declared lengths, size) before
/// dicom-rs, which recurses per sequence level and allocates declared lengths, reads it.
pub fn guard_file(path: &Path) -> Result<(), VolumeError> {
    crate::dicom::guard::check_part10_file(path, &crate::dicom::guard::current())
        .map(|_| ())
        .map_err(|source| VolumeError::Guard {
            path: path.to_owned(),
            source,
        })
}

/// Opens a whole DICOM file (pixel data included), guarded like [`open_header`].
pub fn open_full(path: &Path) -> Result<DefaultDicomObject, VolumeError> {
    guard_file(path)?;
    dicom_object::open_file(path).map_err(|source| VolumeError::NotDicom {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Opens a DICOM file's header (stops before PixelData), after the guard.
pub fn open_header(path: &Path) -> Result<DefaultDicomObject, VolumeError> {
    #[cfg(test)]
    opens::count(path);
    guard_file(path)?;
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|source| VolumeError::NotDicom {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// Reads the header fields of one file.
pub fn read_header(path: &Path) -> Result<SliceHeader, VolumeError> {
    let obj = open_header(path)?;
    header_from_object(&obj, path)
}

/// Reads the header fields of one file and keeps its header data set in
/// [`SliceHeader::dataset`], so that nothing after the scan opens the file's header again.
pub fn read_header_keeping(path: &Path) -> Result<SliceHeader, VolumeError> {
    let obj = open_header(path)?;
    let mut h = header_from_object(&obj, path)?;
    let mut dataset = obj.into_inner();
    // Private attributes are most of a scanner's header (CSA and the like) and no reader of the
    // kept data set uses them: the derived instance drops them at the top level, the template's
    // sanitizer skips them. Dropping them here keeps a long series' data sets small.
    let private: Vec<Tag> = dataset
        .iter()
        .map(|e| e.header().tag)
        .filter(|t| t.group() % 2 == 1)
        .collect();
    for t in private {
        dataset.remove_element(t);
    }
    h.dataset = Some(Arc::new(dataset));
    Ok(h)
}

/// Extracts a [`SliceHeader`] from an opened object.
pub fn header_from_object(
    obj: &DefaultDicomObject,
    path: &Path,
) -> Result<SliceHeader, VolumeError> {
    let text = |tag| -> Option<String> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let floats = |tag| -> Option<Vec<f64>> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_float64().ok())
    };
    let float = |tag| floats(tag).and_then(|v| v.first().copied());
    let uint = |tag| -> Option<u32> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
    };
    let required = |tag, name: &str| {
        text(tag).ok_or_else(|| VolumeError::MissingTag {
            path: path.to_owned(),
            tag: name.to_string(),
        })
    };
    let meta = obj.meta();
    let sop_class_uid = text(tags::SOP_CLASS_UID).unwrap_or_else(|| {
        meta.media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    Ok(SliceHeader {
        path: path.to_owned(),
        transfer_syntax: meta.transfer_syntax().trim_end_matches('\0').to_string(),
        sop_class_uid,
        sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        study_uid: required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_uid: required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        modality: text(tags::MODALITY),
        instance_number: text(tags::INSTANCE_NUMBER).and_then(|s| s.parse().ok()),
        image_position: floats(tags::IMAGE_POSITION_PATIENT)
            .and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok()),
        image_orientation: floats(tags::IMAGE_ORIENTATION_PATIENT)
            .and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok()),
        pixel_spacing: floats(tags::PIXEL_SPACING)
            .and_then(|v| <[f64; 2]>::try_from(v.as_slice()).ok()),
        slice_thickness: float(tags::SLICE_THICKNESS),
        rows: uint(tags::ROWS).and_then(|v| u16::try_from(v).ok()),
        columns: uint(tags::COLUMNS).and_then(|v| u16::try_from(v).ok()),
        samples_per_pixel: uint(tags::SAMPLES_PER_PIXEL)
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(1),
        number_of_frames: uint(tags::NUMBER_OF_FRAMES).unwrap_or(1),
        rescale_slope: float(tags::RESCALE_SLOPE).unwrap_or(1.0),
        rescale_intercept: float(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        convolution_kernel: text(tags::CONVOLUTION_KERNEL),
        gantry_tilt: float(tags::GANTRY_DETECTOR_TILT),
        frame: None,
        route: RouteTags::read(obj),
        dataset: None,
    })
}

/// Largest number of frames a multi-frame file may expand into (PerFrameFunctionalGroupsSequence
/// holds one item per frame; NumberOfFrames is IS, up to 2^31).
pub const MAX_FRAMES: u32 = 65_536;

/// The item of functional group macro `group` (PlanePositionSequence...) that applies to a frame:
/// the frame's own (PerFrameFunctionalGroupsSequence item) first, else the shared one.
fn group_item<'a>(
    per_frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    group: Tag,
) -> Option<&'a InMemDicomObject> {
    let first_item = |o: &'a InMemDicomObject| {
        o.element_opt(group)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .and_then(|items| items.first())
    };
    per_frame
        .and_then(first_item)
        .or_else(|| shared.and_then(first_item))
}

fn item_floats(item: Option<&InMemDicomObject>, tag: Tag) -> Option<Vec<f64>> {
    item?
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
}

fn item_text(item: Option<&InMemDicomObject>, tag: Tag) -> Option<String> {
    item?
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Attribute `tag` of functional group `group` for the first frame of a multi-frame object (its
/// PerFrameFunctionalGroupsSequence item, else the shared one), as text; None for a classic image.
/// What routing reads where a classic image has the attribute at the top level (ConvolutionKernel,
/// SliceThickness).
pub fn first_frame_text(obj: &InMemDicomObject, group: Tag, tag: Tag) -> Option<String> {
    let first = |seq| {
        obj.element_opt(seq)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .and_then(|i| i.first())
    };
    item_text(
        group_item(
            first(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE),
            first(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE),
            group,
        ),
        tag,
    )
}

/// True when the header is that of a multi-frame image whose frames are slices (Enhanced CT).
pub fn is_multi_frame(h: &SliceHeader) -> bool {
    h.frame.is_none() && h.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE
}

/// One slice header per frame of a multi-frame (Enhanced CT) object, `base` being the file's own
/// header. Each frame's geometry and rescale come from its PerFrameFunctionalGroupsSequence item,
/// falling back to SharedFunctionalGroupsSequence, then to the top-level attributes:
/// PlanePositionSequence > ImagePositionPatient, PlaneOrientationSequence >
/// ImageOrientationPatient, PixelMeasuresSequence > PixelSpacing and SliceThickness,
/// PixelValueTransformationSequence > RescaleSlope/RescaleIntercept, CTReconstructionSequence >
/// ConvolutionKernel.
pub fn expand_frames(
    obj: &InMemDicomObject,
    base: &SliceHeader,
) -> Result<Vec<SliceHeader>, VolumeError> {
    let n = base.number_of_frames;
    if n == 0 || n > MAX_FRAMES {
        return Err(VolumeError::Decode {
            path: base.path.clone(),
            reason: format!("NumberOfFrames {n} is outside 1..={MAX_FRAMES}"),
        });
    }
    let items = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .unwrap_or(&[])
    };
    let per_frame = items(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let shared = items(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    if !per_frame.is_empty() && per_frame.len() != n as usize {
        return Err(VolumeError::Decode {
            path: base.path.clone(),
            reason: format!(
                "PerFrameFunctionalGroupsSequence has {} item(s) for {n} frame(s)",
                per_frame.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    for f in 0..n {
        let pf = per_frame.get(f as usize);
        let g = |group| group_item(pf, shared, group);
        let position = g(tags::PLANE_POSITION_SEQUENCE);
        let orientation = g(tags::PLANE_ORIENTATION_SEQUENCE);
        let measures = g(tags::PIXEL_MEASURES_SEQUENCE);
        let transform = g(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);
        let recon = g(tags::CT_RECONSTRUCTION_SEQUENCE);
        let mut h = base.clone();
        h.frame = Some(f + 1);
        if let Some(v) = item_floats(position, tags::IMAGE_POSITION_PATIENT) {
            h.image_position = <[f64; 3]>::try_from(v.as_slice()).ok();
        }
        if let Some(v) = item_floats(orientation, tags::IMAGE_ORIENTATION_PATIENT) {
            h.image_orientation = <[f64; 6]>::try_from(v.as_slice()).ok();
        }
        if let Some(v) = item_floats(measures, tags::PIXEL_SPACING) {
            h.pixel_spacing = <[f64; 2]>::try_from(v.as_slice()).ok();
        }
        if let Some(v) = item_floats(measures, tags::SLICE_THICKNESS) {
            h.slice_thickness = v.first().copied();
        }
        if let Some(v) =
            item_floats(transform, tags::RESCALE_SLOPE).and_then(|v| v.first().copied())
        {
            h.rescale_slope = v;
        }
        if let Some(v) =
            item_floats(transform, tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied())
        {
            h.rescale_intercept = v;
        }
        if let Some(k) = item_text(recon, tags::CONVOLUTION_KERNEL) {
            h.convolution_kernel = Some(k);
        }
        out.push(h);
    }
    Ok(out)
}

/// Expands a multi-frame file into one header per frame ([`expand_frames`]), from the header data
/// set the scan kept, else by opening the file again.
pub fn read_frames(h: &SliceHeader) -> Result<Vec<SliceHeader>, VolumeError> {
    match &h.dataset {
        Some(obj) => expand_frames(obj, h),
        None => {
            let obj = open_header(&h.path)?;
            expand_frames(&obj, h)
        }
    }
}

/// Test hook: how many times each file's header was opened (tests in other modules check that a
/// stage reads a file once).
#[cfg(test)]
pub mod opens {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static OPENS: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

    pub(super) fn count(path: &Path) {
        let mut m = OPENS.lock().unwrap_or_else(|p| p.into_inner());
        *m.get_or_insert_with(HashMap::new)
            .entry(path.to_owned())
            .or_default() += 1;
    }

    /// Header opens of `path` so far (paths are per test: each test has its own folder).
    pub fn of(path: &Path) -> usize {
        let m = OPENS.lock().unwrap_or_else(|p| p.into_inner());
        m.as_ref().and_then(|m| m.get(path).copied()).unwrap_or(0)
    }
}

/// A 4x4 CT slice header with no geometry, for the unit tests of this layer (one place that lists
/// every field, so a new field is one edit).
#[cfg(test)]
impl SliceHeader {
    pub(crate) fn test_slice(path: &str, sop_class_uid: &str) -> Self {
        SliceHeader {
            path: std::path::PathBuf::from(path),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            sop_class_uid: sop_class_uid.into(),
            sop_instance_uid: "1.2.3.4".into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            modality: Some("CT".into()),
            instance_number: None,
            image_position: None,
            image_orientation: None,
            pixel_spacing: None,
            slice_thickness: None,
            rows: Some(4),
            columns: Some(4),
            samples_per_pixel: 1,
            number_of_frames: 1,
            rescale_slope: 1.0,
            rescale_intercept: 0.0,
            convolution_kernel: None,
            gantry_tilt: None,
            frame: None,
            route: Default::default(),
            dataset: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::{DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, VR};

    /// An item; backslashes separate the values of a multi-valued attribute.
    fn item(elems: &[(Tag, VR, &str)]) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(elems.iter().map(|(t, vr, v)| {
            let values = v.split('\\').map(str::to_string).collect();
            DataElement::new(*t, *vr, PrimitiveValue::Strs(values))
        }))
    }

    fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn base(frames: u32) -> SliceHeader {
        SliceHeader {
            instance_number: Some(1),
            number_of_frames: frames,
            ..SliceHeader::test_slice("enhanced.dcm", ENHANCED_CT_IMAGE_STORAGE)
        }
    }

    /// Shared groups give what frames have in common; a frame's own item overrides them.
    fn enhanced(frames: usize) -> InMemDicomObject {
        let shared = InMemDicomObject::from_element_iter([
            seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(&[
                    (tags::PIXEL_SPACING, VR::DS, "0.5\\0.6"),
                    (tags::SLICE_THICKNESS, VR::DS, "1.25"),
                ])],
            ),
            seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(&[(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    "1\\0\\0\\0\\1\\0",
                )])],
            ),
            seq(
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                vec![item(&[
                    (tags::RESCALE_SLOPE, VR::DS, "1"),
                    (tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
                ])],
            ),
            seq(
                tags::CT_RECONSTRUCTION_SEQUENCE,
                vec![item(&[(tags::CONVOLUTION_KERNEL, VR::SH, "B70f")])],
            ),
        ]);
        let per_frame = (0..frames)
            .map(|f| {
                let mut o = InMemDicomObject::from_element_iter([seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(&[(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        &format!("-10\\-20\\{}", -(f as f64) * 1.25),
                    )])],
                )]);
                if f == 1 {
                    o.put(seq(
                        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                        vec![item(&[
                            (tags::RESCALE_SLOPE, VR::DS, "2"),
                            (tags::RESCALE_INTERCEPT, VR::DS, "-2048"),
                        ])],
                    ));
                }
                o
            })
            .collect();
        InMemDicomObject::from_element_iter([
            seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
            seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        ])
    }

    #[test]
    fn frames_take_their_own_groups_then_the_shared_ones() {
        let b = base(3);
        assert!(is_multi_frame(&b));
        let hs = expand_frames(&enhanced(3), &b).unwrap();
        assert_eq!(hs.len(), 3);
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(h.frame, Some(i as u32 + 1));
            assert!(!is_multi_frame(h));
            assert_eq!(h.image_position, Some([-10.0, -20.0, -(i as f64) * 1.25]));
            assert_eq!(h.image_orientation, Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]));
            assert_eq!(h.pixel_spacing, Some([0.5, 0.6]));
            assert_eq!(h.slice_thickness, Some(1.25));
            assert_eq!(h.convolution_kernel.as_deref(), Some("B70f"));
            assert_eq!(h.sop_instance_uid, "1.2.3.4");
        }
        assert_eq!(
            (hs[0].rescale_slope, hs[0].rescale_intercept),
            (1.0, -1024.0)
        );
        assert_eq!(
            (hs[1].rescale_slope, hs[1].rescale_intercept),
            (2.0, -2048.0)
        );
        assert_eq!(hs[2].label(), "enhanced.dcm (frame 3)");
        assert_eq!(
            first_frame_text(
                &enhanced(1),
                tags::CT_RECONSTRUCTION_SEQUENCE,
                tags::CONVOLUTION_KERNEL
            )
            .as_deref(),
            Some("B70f")
        );
    }

    #[test]
    fn frame_count_must_match_the_per_frame_items() {
        let e = expand_frames(&enhanced(3), &base(4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enhanced.dcm") && e.contains("3 item(s) for 4 frame(s)"),
            "{e}"
        );
        let e = expand_frames(&enhanced(3), &base(MAX_FRAMES + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside 1..=65536"), "{e}");
        let e = expand_frames(&enhanced(3), &base(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NumberOfFrames 0"), "{e}");
    }

    #[test]
    fn top_level_values_are_the_fallback() {
        // No functional groups at all: every frame keeps the file's own attributes.
        let mut b = base(2);
        b.pixel_spacing = Some([0.7, 0.7]);
        b.convolution_kernel = Some("STANDARD".into());
        let hs = expand_frames(&InMemDicomObject::new_empty(), &b).unwrap();
        assert_eq!(hs.len(), 2);
        assert!(hs.iter().all(|h| h.pixel_spacing == Some([0.7, 0.7])
            && h.convolution_kernel.as_deref() == Some("STANDARD")));
    }

    /// A part 10 file whose data set nests 2000 undefined-length sequences: refused by the guard
    /// instead of overflowing the reading thread's stack in dicom-rs.
    #[test]
    fn deeply_nested_file_is_refused_not_a_stack_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deep.dcm");
        let ts = b"1.2.840.10008.1.2.1\0";
        let mut meta = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
        meta.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        meta.extend_from_slice(ts);
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        f.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        f.extend_from_slice(&meta);
        for _ in 0..2000 {
            f.extend_from_slice(&[
                0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            f.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..2000 {
            f.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            f.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        std::fs::write(&p, &f).unwrap();
        let e = read_header(&p).unwrap_err();
        assert!(e.to_string().contains("nesting"), "{e}");
        assert!(open_full(&p).is_err());
    }
}
