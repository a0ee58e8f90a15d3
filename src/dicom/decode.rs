//! Pixel data to Hounsfield units: decode one slice (any uncompressed syntax, plus the encapsulated
//! ones this build of `dicom-pixeldata` decodes: RLE, JPEG baseline/extended/lossless, JPEG 2000),
//! then apply RescaleSlope/RescaleIntercept. A multi-frame (Enhanced CT) slice is one frame of its
//! file, decoded alone, with the rescale of its functional groups.

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::{SliceHeader, VolumeError};

/// Transfer syntaxes the C-STORE SCP accepts (stored as received; decoded here when a series is
/// processed).
pub const ACCEPTED_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.5",    // RLE Lossless
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57", // JPEG Lossless
    "1.2.840.10008.1.2.4.50", // JPEG Baseline
    "1.2.840.10008.1.2.4.51", // JPEG Extended
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
];

/// Fails with a clear error when this build cannot decode the slice's transfer syntax.
pub fn check_transfer_syntax(h: &SliceHeader) -> Result<(), VolumeError> {
    let uid = h.transfer_syntax.trim_end_matches('\0');
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() => Ok(()),
        Some(ts) => Err(VolumeError::UnsupportedTransferSyntax {
            path: h.path.clone(),
            uid: uid.to_string(),
            name: ts.name().to_string(),
        }),
        None => Err(VolumeError::UnsupportedTransferSyntax {
            path: h.path.clone(),
            uid: uid.to_string(),
            name: "unknown".to_string(),
        }),
    }
}

/// Decodes one slice into HU (row-major, rows × columns): a single-frame file, or one frame of a
/// multi-frame file (opened for this call only; [`FrameReader`] keeps it open across frames).
pub fn read_slice_hu(h: &SliceHeader) -> Result<Vec<f32>, VolumeError> {
    FrameReader::default().read(h)
}

/// Decodes slices, keeping the last multi-frame file open: the frames of an Enhanced CT file are
/// read one by one (`decode_pixel_data_frame`) from one parse of the file instead of one parse per
/// frame. At most one file is held (its size in memory while its frames are read).
#[derive(Default)]
pub struct FrameReader {
    open: Option<(std::path::PathBuf, DefaultDicomObject)>,
}

impl FrameReader {
    /// Decodes slice `h` into HU.
    pub fn read(&mut self, h: &SliceHeader) -> Result<Vec<f32>, VolumeError> {
        let fail = |reason: String| VolumeError::Decode {
            path: h.path.clone(),
            reason,
        };
        if h.samples_per_pixel != 1 {
            return Err(fail(format!(
                "{} samples per pixel; CT slices have 1",
                h.samples_per_pixel
            )));
        }
        let frame = match h.frame {
            None if h.number_of_frames != 1 => {
                return Err(fail(format!(
                    "{} frames in SOP class {}: only Enhanced CT multi-frame images are read frame by frame",
                    h.number_of_frames, h.sop_class_uid
                )))
            }
            None => None,
            Some(f) if f == 0 || f > h.number_of_frames => {
                return Err(fail(format!(
                    "frame {f} is outside the file's {} frame(s)",
                    h.number_of_frames
                )))
            }
            Some(f) => Some(f - 1),
        };
        check_transfer_syntax(h)?;
        let raw: Vec<f32> = match frame {
            None => {
                self.open = None;
                let obj = super::header::open_full(&h.path).map_err(|e| fail(e.to_string()))?;
                let decoded = obj.decode_pixel_data().map_err(|e| fail(e.to_string()))?;
                decoded
                    .to_vec_with_options(&options())
                    .map_err(|e| fail(e.to_string()))?
            }
            Some(index) => {
                if self.open.as_ref().is_none_or(|(p, _)| p != &h.path) {
                    self.open = None;
                    let obj = super::header::open_full(&h.path).map_err(|e| fail(e.to_string()))?;
                    self.open = Some((h.path.clone(), obj));
                }
                let Some((_, obj)) = &self.open else {
                    return Err(fail("file not open".into()));
                };
                let decoded = obj
                    .decode_pixel_data_frame(index)
                    .map_err(|e| fail(format!("frame {}: {e}", index + 1)))?;
                decoded
                    .to_vec_frame_with_options(0, &options())
                    .map_err(|e| fail(format!("frame {}: {e}", index + 1)))?
            }
        };
        let expected = usize::from(h.rows.unwrap_or(0)) * usize::from(h.columns.unwrap_or(0));
        if raw.len() != expected {
            return Err(fail(format!(
                "pixel data holds {} samples where Rows x Columns is {expected}",
                raw.len()
            )));
        }
        let (slope, intercept) = (h.rescale_slope as f32, h.rescale_intercept as f32);
        Ok(raw.into_iter().map(|v| v * slope + intercept).collect())
    }
}

/// Stored values as they are: the rescale is ours (per frame for a multi-frame image).
fn options() -> ConvertOptions {
    ConvertOptions::new().with_modality_lut(ModalityLutOption::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(frames: u32, frame: Option<u32>) -> SliceHeader {
        SliceHeader {
            number_of_frames: frames,
            frame,
            ..SliceHeader::test_slice(
                "/nonexistent/enhanced.dcm",
                crate::dicom::header::ENHANCED_CT_IMAGE_STORAGE,
            )
        }
    }

    #[test]
    fn frame_numbers_are_checked_before_the_file_is_opened() {
        let e = read_slice_hu(&header(3, None)).unwrap_err().to_string();
        assert!(e.contains("3 frames") && e.contains("enhanced.dcm"), "{e}");
        let e = read_slice_hu(&header(3, Some(4))).unwrap_err().to_string();
        assert!(
            e.contains("frame 4 is outside the file's 3 frame(s)"),
            "{e}"
        );
        let e = read_slice_hu(&header(3, Some(0))).unwrap_err().to_string();
        assert!(e.contains("frame 0"), "{e}");
    }

    #[test]
    fn jpeg_ls_is_decodable_in_this_build() {
        for uid in ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"] {
            let mut h = header(1, None);
            h.transfer_syntax = uid.into();
            assert!(check_transfer_syntax(&h).is_ok(), "{uid}");
        }
    }
}
