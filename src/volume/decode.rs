//! Pixel data to Hounsfield units: decode one slice (any uncompressed syntax, plus the encapsulated
//! ones this build of `dicom-pixeldata` decodes: RLE, JPEG baseline/extended/lossless, JPEG 2000),
//! then apply RescaleSlope/RescaleIntercept.

use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::{SliceHeader, VolumeError};

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

/// Decodes one single-frame, single-sample slice into HU (row-major, rows × columns).
pub fn read_slice_hu(h: &SliceHeader) -> Result<Vec<f32>, VolumeError> {
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
    if h.number_of_frames != 1 {
        return Err(fail(format!(
            "{} frames; multi-frame images are not supported yet",
            h.number_of_frames
        )));
    }
    check_transfer_syntax(h)?;
    let obj = super::header::open_full(&h.path).map_err(|e| fail(e.to_string()))?;
    let decoded = obj.decode_pixel_data().map_err(|e| fail(e.to_string()))?;
    let raw: Vec<f32> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| fail(e.to_string()))?;
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
