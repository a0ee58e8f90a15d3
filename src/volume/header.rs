//! One DICOM file's header, read without its pixel data: what grouping, sorting and geometry need.

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use std::path::{Path, PathBuf};

use super::VolumeError;

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage (multi-frame; not yet decoded here).
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
}

impl SliceHeader {
    /// True when the object carries an image (it has Rows and Columns).
    pub fn is_image(&self) -> bool {
        self.rows.is_some() && self.columns.is_some()
    }
}

/// Checks a file with the bounded pre-parser (nesting depth, declared lengths, size) before
/// dicom-rs, which recurses per sequence level and allocates declared lengths, reads it.
pub fn guard_file(path: &Path) -> Result<(), VolumeError> {
    crate::ingest::guard::check_part10_file(path, &crate::ingest::guard::current())
        .map(|_| ())
        .map_err(|e| VolumeError::NotDicom {
            path: path.to_owned(),
            reason: match e {
                crate::ingest::guard::GuardError::File { reason, .. } => reason.to_string(),
                other => other.to_string(),
            },
        })
}

/// Opens a whole DICOM file (pixel data included), guarded like [`open_header`].
pub fn open_full(path: &Path) -> Result<DefaultDicomObject, VolumeError> {
    guard_file(path)?;
    dicom_object::open_file(path).map_err(|e| VolumeError::NotDicom {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Opens a DICOM file's header (stops before PixelData), after the guard.
pub fn open_header(path: &Path) -> Result<DefaultDicomObject, VolumeError> {
    guard_file(path)?;
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| VolumeError::NotDicom {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Reads the header fields of one file.
pub fn read_header(path: &Path) -> Result<SliceHeader, VolumeError> {
    let obj = open_header(path)?;
    header_from_object(&obj, path)
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
