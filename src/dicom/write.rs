//! The DICOM writer toolkit: deterministic UIDs, element setters, decimal strings, HU pixel data and
//! Part 10 files written atomically (temporary name, fsync, rename). Used by the deriver
//! (`harmonize::derive`), the spool (its file meta) and the test fixtures (`samples`).

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::fs;
use std::path::{Path, PathBuf};

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
        source: Box<super::VolumeError>,
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

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DeriveError + '_ {
    move |source| DeriveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Sets a string-valued element.
pub fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::from(value.into()),
    ));
}

/// Sets a multi-valued string element.
pub fn put_strs(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[String]) {
    let v: SmallVec<[String; 2]> = values.iter().cloned().collect();
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Strs(v)));
}

/// Sets a US element.
pub fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// Sets a sequence element.
pub fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
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

/// Formats a decimal string (DS, 16 characters at most): fixed point when it fits, else with an
/// exponent ("1.5e20"; DS allows E and e). Values are finite here (the series check refuses
/// non-finite ones); a non-finite one is written as 0 rather than as the invalid "NaN".
pub fn ds(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
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
    for prec in (0..=9).rev() {
        let s = format!("{v:.prec$e}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0e}")
}

/// [`ds`] of each value.
pub fn ds_multi(values: &[f64]) -> Vec<String> {
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
pub fn write_file(obj: InMemDicomObject, path: &Path, sync: bool) -> Result<(), DeriveError> {
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
        // Beyond fixed point: an exponent, still 16 characters and within 1e-9 relative.
        for v in [2.5e299, -1.2345678901234e20, 1e-300, -7.0e17] {
            let s = ds(v);
            assert!(s.len() <= 16, "{s}");
            assert!(
                s.chars().all(|c| c.is_ascii_digit() || "+-.e".contains(c)),
                "{s}"
            );
            let back = s.parse::<f64>().unwrap();
            assert!(
                ((back - v) / v).abs() < 1e-6 || v.abs() < 1e-10,
                "{v} -> {s}"
            );
        }
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(ds(v), "0");
        }
    }
}
