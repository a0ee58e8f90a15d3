//! NIfTI-1 volumes (`.nii`, and `.nii.gz` through `flate2`): the format research CT data sets ship in.
//!
//! Reading supports single-file NIfTI-1 (`n+1` magic) in either byte order, 3-D images (or 4-D and
//! higher with every extra dimension 1), data types uint8, int8, int16, uint16, int32, float32 and
//! float64, and the `scl_slope` / `scl_inter` value scaling (a slope of 0 or a non-finite slope means
//! "no scaling", as the standard says). NIfTI stores `i` (x) fastest, then `j` (y), then `k` (z), so the
//! data are `[z][y][x]` in memory order; `pixdim[1..=3]` give the voxel size, returned here as
//! (z, y, x) in the file's units (millimetres when `xyzt_units` says so or says nothing). The
//! qform/sform orientation is not applied: training needs voxels and spacing, not patient axes.
//!
//! Writing produces little-endian `n+1` files with int16 or float32 data (gzip-compressed when the
//! name ends in `.gz`), used by `ct-train synth --format nifti` and by the tests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Size of the NIfTI-1 header in bytes.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in the files this module writes (header + 4-byte extension flag).
pub const WRITE_VOX_OFFSET: usize = 352;

/// NIfTI-1 data type codes.
pub mod datatype {
    pub const UINT8: i16 = 2;
    pub const INT16: i16 = 4;
    pub const INT32: i16 = 8;
    pub const FLOAT32: i16 = 16;
    pub const FLOAT64: i16 = 64;
    pub const INT8: i16 = 256;
    pub const UINT16: i16 = 512;
}

/// Errors reading or writing NIfTI files. Each names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("cannot read NIfTI file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write NIfTI file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI-1 file: {reason}")]
    NotNifti { path: PathBuf, reason: String },
    #[error("{path}: unsupported NIfTI data type {code} ({name}); supported: uint8, int8, int16, uint16, int32, float32, float64")]
    UnsupportedDatatype {
        path: PathBuf,
        code: i16,
        name: &'static str,
    },
    #[error("{path}: unsupported image: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: truncated: the header promises {expected} bytes of voxel data from offset {offset}, the file holds {actual}")]
    Truncated {
        path: PathBuf,
        offset: usize,
        expected: usize,
        actual: usize,
    },
}

/// A NIfTI volume as `[z][y][x]` f32 values (after `scl_slope` / `scl_inter`).
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiVolume {
    /// (z, y, x) = (dim\[3\], dim\[2\], dim\[1\]).
    pub shape: [usize; 3],
    /// (z, y, x) voxel size = (pixdim\[3\], pixdim\[2\], pixdim\[1\]), in millimetres.
    pub spacing: [f64; 3],
    /// The data type code found in the file.
    pub datatype: i16,
    pub data: Vec<f32>,
}

fn datatype_name(code: i16) -> &'static str {
    match code {
        0 => "unknown",
        1 => "binary",
        2 => "uint8",
        4 => "int16",
        8 => "int32",
        16 => "float32",
        32 => "complex64",
        64 => "float64",
        128 => "rgb24",
        256 => "int8",
        512 => "uint16",
        768 => "uint32",
        1024 => "int64",
        1280 => "uint64",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "not a NIfTI-1 code",
    }
}

fn bytes_per_voxel(code: i16) -> Option<usize> {
    match code {
        datatype::UINT8 | datatype::INT8 => Some(1),
        datatype::INT16 | datatype::UINT16 => Some(2),
        datatype::INT32 | datatype::FLOAT32 => Some(4),
        datatype::FLOAT64 => Some(8),
        _ => None,
    }
}

/// Byte-order-aware field access on the raw header.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[at..at + N]);
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.bytes(at))
    }
    fn f32(&self, at: usize) -> f32 {
        f32::from_le_bytes(self.bytes(at))
    }
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Reads a `.nii` or `.nii.gz` file (gzip is detected from the content, not the name).
pub fn read(path: &Path) -> Result<NiftiVolume, NiftiError> {
    let read_err = |source| NiftiError::Read {
        path: path.to_owned(),
        source,
    };
    let raw = std::fs::read(path).map_err(read_err)?;
    let bytes = if is_gzip(&raw) {
        let mut out = Vec::with_capacity(raw.len() * 3);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(read_err)?;
        out
    } else {
        raw
    };
    parse(path, &bytes)
}

/// Parses NIfTI-1 bytes (already decompressed); `path` is only used in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<NiftiVolume, NiftiError> {
    let not = |reason: String| NiftiError::NotNifti {
        path: path.to_owned(),
        reason,
    };
    let unsupported = |reason: String| NiftiError::Unsupported {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < HEADER_SIZE {
        return Err(not(format!(
            "{} bytes, shorter than the {HEADER_SIZE}-byte header",
            bytes.len()
        )));
    }
    let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let big = if le == HEADER_SIZE as i32 {
        false
    } else if be == HEADER_SIZE as i32 {
        true
    } else if le == 540 || be == 540 {
        return Err(unsupported(
            "NIfTI-2 headers are not supported (NIfTI-1 only)".into(),
        ));
    } else {
        return Err(not(format!("sizeof_hdr is {le}, not {HEADER_SIZE}")));
    };
    let magic = &bytes[344..348];
    if magic == b"ni1\0" {
        return Err(unsupported(
            "a two-file (.hdr/.img) NIfTI pair; only single-file .nii is supported".into(),
        ));
    }
    if magic != b"n+1\0" {
        return Err(not(format!("magic is {magic:?}, not \"n+1\"")));
    }
    let f = Fields { b: bytes, big };
    let ndim = f.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(not(format!("dim[0] = {ndim}, outside 1..7")));
    }
    let dims: Vec<i16> = (1..=7).map(|i| f.i16(40 + 2 * i)).collect();
    let mut shape_xyz = [1usize; 3];
    for (i, &d) in dims.iter().enumerate().take(ndim as usize) {
        if d < 1 {
            return Err(not(format!("dim[{}] = {d}", i + 1)));
        }
        if i < 3 {
            shape_xyz[i] = d as usize;
        } else if d != 1 {
            return Err(unsupported(format!(
                "a {ndim}-D image with dim[{}] = {d}; only 3-D volumes are supported",
                i + 1
            )));
        }
    }
    let code = f.i16(70);
    let Some(bpv) = bytes_per_voxel(code) else {
        return Err(NiftiError::UnsupportedDatatype {
            path: path.to_owned(),
            code,
            name: datatype_name(code),
        });
    };
    let bitpix = f.i16(72);
    if bitpix as usize != bpv * 8 {
        return Err(not(format!(
            "bitpix {bitpix} does not match data type {} ({} bits)",
            datatype_name(code),
            bpv * 8
        )));
    }
    let pix: Vec<f64> = (1..=3).map(|i| f64::from(f.f32(76 + 4 * i))).collect();
    for (i, p) in pix.iter().enumerate() {
        if !p.is_finite() {
            return Err(not(format!("pixdim[{}] = {p}", i + 1)));
        }
    }
    // xyzt_units: bits 0-2 space unit (1 metre, 2 millimetre, 3 micrometre; 0 unknown = mm).
    let to_mm = match bytes[123] & 0x07 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let spacing_xyz: Vec<f64> = pix.iter().map(|p| p.abs() * to_mm).collect();
    let vox_offset = f.f32(108);
    if !vox_offset.is_finite() || vox_offset < HEADER_SIZE as f32 {
        return Err(not(format!(
            "vox_offset {vox_offset} is before the end of the header"
        )));
    }
    let offset = vox_offset as usize;
    let n = shape_xyz.iter().product::<usize>();
    let expected = n * bpv;
    let actual = bytes.len().saturating_sub(offset);
    if actual < expected {
        return Err(NiftiError::Truncated {
            path: path.to_owned(),
            offset,
            expected,
            actual,
        });
    }
    let body = &bytes[offset..offset + expected];
    let slope = f.f32(112);
    let inter = f.f32(116);
    let (slope, inter) = if slope == 0.0 || !slope.is_finite() {
        (1.0f64, 0.0f64)
    } else {
        (
            f64::from(slope),
            if inter.is_finite() {
                f64::from(inter)
            } else {
                0.0
            },
        )
    };
    let mut data = Vec::with_capacity(n);
    let conv = |v: f64| (v * slope + inter) as f32;
    macro_rules! decode {
        ($t:ty, $w:expr) => {
            for c in body.chunks_exact($w) {
                let mut a = [0u8; $w];
                a.copy_from_slice(c);
                let v = if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                };
                data.push(conv(v as f64));
            }
        };
    }
    match code {
        datatype::UINT8 => body.iter().for_each(|&v| data.push(conv(f64::from(v)))),
        datatype::INT8 => body
            .iter()
            .for_each(|&v| data.push(conv(f64::from(v as i8)))),
        datatype::INT16 => decode!(i16, 2),
        datatype::UINT16 => decode!(u16, 2),
        datatype::INT32 => decode!(i32, 4),
        datatype::FLOAT32 => decode!(f32, 4),
        _ => decode!(f64, 8),
    }
    Ok(NiftiVolume {
        shape: [shape_xyz[2], shape_xyz[1], shape_xyz[0]],
        spacing: [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]],
        datatype: code,
        data,
    })
}

/// How [`write()`] stores voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteType {
    /// Values rounded and clamped to int16 (HU).
    Int16,
    Float32,
}

/// Encodes a `[z][y][x]` volume as little-endian NIfTI-1 bytes (uncompressed).
pub fn encode(shape: [usize; 3], spacing: [f64; 3], data: &[f32], ty: WriteType) -> Vec<u8> {
    let (code, bpv): (i16, usize) = match ty {
        WriteType::Int16 => (datatype::INT16, 2),
        WriteType::Float32 => (datatype::FLOAT32, 4),
    };
    let mut h = vec![0u8; WRITE_VOX_OFFSET];
    let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
    put(&mut h, 0, &(HEADER_SIZE as i32).to_le_bytes());
    put(&mut h, 38, b"r"); // regular
    let dims: [i16; 8] = [
        3,
        shape[2].min(i16::MAX as usize) as i16,
        shape[1].min(i16::MAX as usize) as i16,
        shape[0].min(i16::MAX as usize) as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dims.iter().enumerate() {
        put(&mut h, 40 + 2 * i, &d.to_le_bytes());
    }
    put(&mut h, 70, &code.to_le_bytes());
    put(&mut h, 72, &((bpv * 8) as i16).to_le_bytes());
    let pixdim: [f32; 8] = [
        1.0,
        spacing[2] as f32,
        spacing[1] as f32,
        spacing[0] as f32,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut h, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut h, 108, &(WRITE_VOX_OFFSET as f32).to_le_bytes());
    put(&mut h, 112, &1f32.to_le_bytes()); // scl_slope
    put(&mut h, 116, &0f32.to_le_bytes()); // scl_inter
    h[123] = 2; // xyzt_units: millimetres
    put(&mut h, 148, b"ct-train");
    put(&mut h, 344, b"n+1\0");
    h.reserve(data.len() * bpv);
    for &v in data {
        match ty {
            WriteType::Int16 => {
                let s = v.round().clamp(-32768.0, 32767.0) as i16;
                h.extend_from_slice(&s.to_le_bytes());
            }
            WriteType::Float32 => h.extend_from_slice(&v.to_le_bytes()),
        }
    }
    h
}

/// Writes a `[z][y][x]` volume to `path` (gzip-compressed when the name ends in `.gz`).
pub fn write(
    path: &Path,
    shape: [usize; 3],
    spacing: [f64; 3],
    data: &[f32],
    ty: WriteType,
) -> Result<(), NiftiError> {
    let werr = |source| NiftiError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = encode(shape, spacing, data, ty);
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".gz"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(werr)?);
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(&bytes).map_err(werr)?;
        e.finish().map_err(werr)?.flush().map_err(werr)?;
    } else {
        f.write_all(&bytes).map_err(werr)?;
        f.flush().map_err(werr)?;
    }
    Ok(())
}

/// True when `path`'s name ends in `.nii` or `.nii.gz` (case-insensitive).
pub fn is_nifti_name(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|n| n.ends_with(".nii") || n.ends_with(".nii.gz"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> ([usize; 3], [f64; 3], Vec<f32>) {
        let shape = [3, 4, 5];
        let data = (0..60).map(|i| (i as f32 - 30.0) * 17.0).collect();
        (shape, [2.5, 0.75, 0.5], data)
    }

    /// Builds a header by hand with a chosen data type and body (little or big endian).
    fn handmade(code: i16, bitpix: i16, body: &[u8], big: bool, slope: f32, inter: f32) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let w16 = |v: i16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w32 = |v: i32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let wf = |v: f32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        h[0..4].copy_from_slice(&w32(348));
        for (i, d) in [3i16, 2, 2, 1, 1, 1, 1, 1].iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&w16(*d));
        }
        h[70..72].copy_from_slice(&w16(code));
        h[72..74].copy_from_slice(&w16(bitpix));
        for (i, p) in [1f32, 0.8, 0.9, 3.0].iter().enumerate() {
            h[76 + 4 * i..80 + 4 * i].copy_from_slice(&wf(*p));
        }
        h[108..112].copy_from_slice(&wf(352.0));
        h[112..116].copy_from_slice(&wf(slope));
        h[116..120].copy_from_slice(&wf(inter));
        h[344..348].copy_from_slice(b"n+1\0");
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn round_trip_int16_float32_plain_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let (shape, spacing, data) = sample();
        for (name, ty) in [
            ("a.nii", WriteType::Int16),
            ("b.nii.gz", WriteType::Int16),
            ("c.nii", WriteType::Float32),
            ("d.nii.gz", WriteType::Float32),
        ] {
            let p = dir.path().join(name);
            write(&p, shape, spacing, &data, ty).unwrap();
            assert!(is_nifti_name(&p));
            let v = read(&p).unwrap();
            assert_eq!(v.shape, shape);
            for (a, b) in v.spacing.iter().zip(spacing) {
                assert!((a - b).abs() < 1e-6);
            }
            assert_eq!(v.data, data, "{name}");
        }
    }

    #[test]
    fn all_datatypes_both_byte_orders_and_scaling() {
        let p = Path::new("x.nii");
        for big in [false, true] {
            // uint8 with slope 2, intercept -10.
            let v = parse(p, &handmade(2, 8, &[0, 1, 2, 255], big, 2.0, -10.0)).unwrap();
            assert_eq!(v.data, [-10.0, -8.0, -6.0, 500.0]);
            assert_eq!(v.shape, [1, 2, 2]);
            assert!((v.spacing[0] - 3.0).abs() < 1e-6 && (v.spacing[2] - 0.8).abs() < 1e-6);
            let enc16 = |vals: &[i16]| -> Vec<u8> {
                vals.iter()
                    .flat_map(|v| {
                        if big {
                            v.to_be_bytes()
                        } else {
                            v.to_le_bytes()
                        }
                    })
                    .collect()
            };
            // int16, slope 0 means unscaled.
            let v = parse(
                p,
                &handmade(4, 16, &enc16(&[-1024, 0, 40, 3000]), big, 0.0, 5.0),
            )
            .unwrap();
            assert_eq!(v.data, [-1024.0, 0.0, 40.0, 3000.0]);
            let b32: Vec<u8> = [-70000i32, 1, 2, 70000]
                .iter()
                .flat_map(|v| {
                    if big {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    }
                })
                .collect();
            let v = parse(p, &handmade(8, 32, &b32, big, 1.0, 0.0)).unwrap();
            assert_eq!(v.data, [-70000.0, 1.0, 2.0, 70000.0]);
            let bf: Vec<u8> = [-1.5f32, 0.25, 2.0, 1e3]
                .iter()
                .flat_map(|v| {
                    if big {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    }
                })
                .collect();
            let v = parse(p, &handmade(16, 32, &bf, big, 1.0, 0.0)).unwrap();
            assert_eq!(v.data, [-1.5, 0.25, 2.0, 1000.0]);
            let bd: Vec<u8> = [-1.5f64, 0.25, 2.0, -1e3]
                .iter()
                .flat_map(|v| {
                    if big {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    }
                })
                .collect();
            let v = parse(p, &handmade(64, 64, &bd, big, 0.5, 1.0)).unwrap();
            assert_eq!(v.data, [0.25, 1.125, 2.0, -499.0]);
        }
    }

    #[test]
    fn bad_inputs_name_the_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.nii");
        // Unsupported data type: complex64.
        std::fs::write(&p, handmade(32, 64, &[0; 32], false, 1.0, 0.0)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(
            e,
            NiftiError::UnsupportedDatatype { code: 32, .. }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("bad.nii") && msg.contains("complex64"),
            "{msg}"
        );
        // Truncated data.
        let (shape, spacing, data) = sample();
        let mut bytes = encode(shape, spacing, &data, WriteType::Int16);
        bytes.truncate(bytes.len() - 7);
        std::fs::write(&p, &bytes).unwrap();
        let msg = read(&p).unwrap_err().to_string();
        assert!(
            msg.contains("bad.nii") && msg.contains("truncated"),
            "{msg}"
        );
        // Truncated gzip stream.
        let gz = dir.path().join("cut.nii.gz");
        write(&gz, shape, spacing, &data, WriteType::Float32).unwrap();
        let mut z = std::fs::read(&gz).unwrap();
        z.truncate(z.len() / 2);
        std::fs::write(&gz, &z).unwrap();
        assert!(read(&gz).unwrap_err().to_string().contains("cut.nii.gz"));
        // Not NIfTI at all, and too short.
        std::fs::write(&p, vec![7u8; 400]).unwrap();
        assert!(matches!(read(&p), Err(NiftiError::NotNifti { .. })));
        std::fs::write(&p, b"short").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("shorter"));
        // A 4-D series with several volumes.
        let mut b = handmade(2, 8, &[0; 8], false, 1.0, 0.0);
        b[40..42].copy_from_slice(&4i16.to_le_bytes());
        b[48..50].copy_from_slice(&2i16.to_le_bytes());
        assert!(matches!(parse(&p, &b), Err(NiftiError::Unsupported { .. })));
        // Missing file.
        assert!(read(&dir.path().join("none.nii"))
            .unwrap_err()
            .to_string()
            .contains("none.nii"));
    }
}
