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
        let codec = Codec::of(&h.transfer_syntax);
        let raw: Vec<f32> = match frame {
            None => {
                self.open = None;
                let obj = super::header::open_full(&h.path).map_err(|e| fail(e.to_string()))?;
                check_encapsulated(&obj, codec).map_err(fail)?;
                contained(|| {
                    let decoded = obj.decode_pixel_data().map_err(|e| e.to_string())?;
                    decoded
                        .to_vec_with_options(&options())
                        .map_err(|e| e.to_string())
                })
                .map_err(fail)?
            }
            Some(index) => {
                if self.open.as_ref().is_none_or(|(p, _)| p != &h.path) {
                    self.open = None;
                    let obj = super::header::open_full(&h.path).map_err(|e| fail(e.to_string()))?;
                    // Every frame's compressed header at once, when the file is opened.
                    check_encapsulated(&obj, codec).map_err(fail)?;
                    self.open = Some((h.path.clone(), obj));
                }
                let Some((_, obj)) = &self.open else {
                    return Err(fail("file not open".into()));
                };
                let decoded = contained(|| {
                    let decoded = obj
                        .decode_pixel_data_frame(index)
                        .map_err(|e| e.to_string())?;
                    decoded
                        .to_vec_frame_with_options(0, &options())
                        .map_err(|e| e.to_string())
                });
                match decoded {
                    Ok(raw) => raw,
                    Err(e) => {
                        // A decoder that failed on this file is not asked again with it open.
                        self.open = None;
                        return Err(fail(format!("frame {}: {e}", index + 1)));
                    }
                }
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

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// The encapsulated codecs whose headers are checked before dicom-rs's decoders see them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codec {
    Rle,
    /// JPEG (baseline, extended, lossless) and JPEG-LS: marker segments up to the first scan.
    Jpeg,
    /// A JPEG 2000 codestream (PS3.5 A.4.4: the codestream, not the JP2 file format).
    Jpeg2000,
    /// Native pixel data (its length is checked against Rows x Columns by dicom-rs and here).
    Other,
}

impl Codec {
    /// By the registry's own UID, as dicom-pixeldata picks the decoder (the registry trims any
    /// white space: "1.2.840.10008.1.2.5\r" is RLE too, see the guard's padded-syntax finding).
    fn of(transfer_syntax: &str) -> Codec {
        let uid = TransferSyntaxRegistry
            .get(transfer_syntax.trim_end_matches('\0'))
            .map(|ts| ts.uid())
            .unwrap_or_default();
        match uid {
            RLE_LOSSLESS => Codec::Rle,
            "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.57"
            | "1.2.840.10008.1.2.4.70"
            | "1.2.840.10008.1.2.4.80"
            | "1.2.840.10008.1.2.4.81" => Codec::Jpeg,
            "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Codec::Jpeg2000,
            _ => Codec::Other,
        }
    }
}

/// Checks every fragment of an encapsulated frame against the data set before dicom-rs's decoders
/// see it, which size their work by the stream's own header, not by the data set's:
/// - RLE (PS3.5 Annex G): the decoder trusts the header's segment count (a u32: 16 GB from 4 bytes),
///   slices the offset table without a bound, indexes a segment that decodes short, and inflates a
///   segment whole before it takes Rows x Columns (PackBits: 128 bytes out per 2 in). Checked: a
///   64-byte header, 1..=15 segments and at least SamplesPerPixel x bytes per sample, offsets
///   non-decreasing within the fragment, each segment decoding to Rows x Columns bytes (a little
///   more, padding, is allowed).
/// - JPEG and JPEG-LS: a 1.4 KB JPEG Lossless file of an 8 x 8 slice whose frame header (SOF)
///   declared 21256 x 2116 kept the decoder busy for seconds per slice (found by `series_file`).
///   Checked: the frame header before the first scan, its size equal to Columns x Rows, one
///   component, precision at most 16.
/// - JPEG 2000: the codestream's image size (SIZ) equal to Columns x Rows, one component.
fn check_encapsulated(obj: &DefaultDicomObject, codec: Codec) -> Result<(), String> {
    use dicom_dictionary_std::tags;
    if codec == Codec::Other {
        return Ok(());
    }
    let int = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| format!("encapsulated pixel data without a valid {tag}"))
    };
    let (rows, columns) = (int(tags::ROWS)? as usize, int(tags::COLUMNS)? as usize);
    let samples = int(tags::SAMPLES_PER_PIXEL)? as usize;
    let fragments = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments())
        .ok_or("a compressed transfer syntax without encapsulated pixel data")?;
    match codec {
        Codec::Rle => {
            let bytes_per_sample = match int(tags::BITS_ALLOCATED)? {
                8 => 1,
                16 => 2,
                b => {
                    return Err(format!(
                        "RLE Lossless with BitsAllocated {b}: 8 or 16 are read"
                    ))
                }
            };
            for (i, f) in fragments.iter().enumerate() {
                check_rle_fragment(f, rows * columns, bytes_per_sample * samples)
                    .map_err(|e| format!("RLE fragment {}: {e}", i + 1))?;
            }
        }
        Codec::Jpeg | Codec::Jpeg2000 => {
            type SizeReader = fn(&[u8]) -> Result<(usize, usize, usize), String>;
            let (name, start, read): (&str, [u8; 2], SizeReader) = if codec == Codec::Jpeg {
                ("JPEG", [0xFF, 0xD8], jpeg_frame_header)
            } else {
                ("JPEG 2000", [0xFF, 0x4F], j2k_image_size)
            };
            // A frame is one or more whole fragments, decoded as their concatenation, so a stream
            // starts at a fragment's first byte, or one byte before it when a fragment ends in the
            // first byte of the start marker (a split the decoder never sees).
            let joined: Vec<u8> = fragments.iter().flatten().copied().collect();
            let mut begins = Vec::with_capacity(fragments.len());
            let mut at = 0;
            for (i, f) in fragments.iter().enumerate() {
                begins.push((i, at));
                if at > 0 {
                    begins.push((i, at - 1));
                }
                at += f.len();
            }
            for (i, b) in begins {
                let Some(stream) = joined.get(b..).filter(|s| s.starts_with(&start)) else {
                    continue;
                };
                let (y, x, components) =
                    read(stream).map_err(|e| format!("{name} fragment {}: {e}", i + 1))?;
                if (y, x, components) != (rows, columns, samples) {
                    return Err(format!(
                        "{name} fragment {}: the stream declares {x} x {y} with {components} component(s), the data set {columns} x {rows} with {samples}",
                        i + 1
                    ));
                }
            }
            if let Some(f) = fragments.iter().find(|f| !f.is_empty()) {
                if codec == Codec::Jpeg2000 && !f.starts_with(&[0xFF, 0x4F]) {
                    return Err(
                        "JPEG 2000 pixel data that is not a codestream (no SOC marker)".into(),
                    );
                }
            }
        }
        Codec::Other => {}
    }
    Ok(())
}

/// The frame header (SOF0..SOF15 but DHT/JPG/DAC, or JPEG-LS's SOF55) of a JPEG stream that starts
/// at `f`: (lines, samples per line, components). Walks the marker segments from SOI up to the first
/// scan (SOS); a stream whose header is not there is refused.
fn jpeg_frame_header(f: &[u8]) -> Result<(usize, usize, usize), String> {
    let mut at = 2; // after SOI
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while f.get(at) == Some(&0xFF) && f.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (f.get(at), f.get(at + 1)) else {
            return Err(format!("no marker at byte {at} before the frame header"));
        };
        at += 2;
        match marker {
            // Standalone markers: TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return Err("no frame header before the first scan".into()),
            _ => {}
        }
        let len = f
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("the stream ends inside a marker segment")?;
        if len < 2 {
            return Err(format!("marker 0xFF{marker:02X} with length {len}"));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC))
            || marker == 0xF7;
        if is_sof {
            let seg = f
                .get(at + 2..at + len)
                .filter(|s| s.len() >= 6)
                .ok_or("the frame header is cut short")?;
            let precision = seg[0];
            let y = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
            let x = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
            if precision == 0 || precision > 16 {
                return Err(format!("sample precision {precision}"));
            }
            return Ok((y, x, usize::from(seg[5])));
        }
        at += len;
    }
}

/// (height, width, components) of a JPEG 2000 codestream's SIZ segment, which must follow SOC.
fn j2k_image_size(f: &[u8]) -> Result<(usize, usize, usize), String> {
    let siz = f
        .get(2..42)
        .filter(|s| s[0..2] == [0xFF, 0x51])
        .ok_or("no image size (SIZ) segment after the codestream's start")?;
    let u32_at =
        |k: usize| u32::from_be_bytes([siz[k], siz[k + 1], siz[k + 2], siz[k + 3]]) as usize;
    let (xsiz, ysiz, x0, y0) = (u32_at(6), u32_at(10), u32_at(14), u32_at(18));
    if x0 > xsiz || y0 > ysiz {
        return Err(format!(
            "image offset {x0},{y0} beyond its size {xsiz} x {ysiz}"
        ));
    }
    Ok((
        ysiz - y0,
        xsiz - x0,
        usize::from(u16::from_be_bytes([siz[38], siz[39]])),
    ))
}

fn check_rle_fragment(f: &[u8], plane: usize, needed: usize) -> Result<(), String> {
    let u32_at = |k: usize| -> usize {
        f.get(k..k + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0)
    };
    if f.len() < 64 {
        return Err(format!(
            "{} bytes, shorter than the 64-byte RLE header",
            f.len()
        ));
    }
    let n = u32_at(0);
    if !(1..=15).contains(&n) || n < needed {
        return Err(format!(
            "{n} segments declared, {needed} needed (at most 15)"
        ));
    }
    let mut bounds: Vec<usize> = (0..n).map(|k| u32_at(4 + 4 * k)).collect();
    bounds.push(f.len());
    if bounds[0] < 64 || bounds.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!(
            "segment offsets {:?} do not increase within its {} bytes",
            &bounds[..n],
            f.len()
        ));
    }
    for k in 0..needed {
        let out = packbits_len(&f[bounds[k]..bounds[k + 1]]);
        if out < plane || out > plane + 256 {
            return Err(format!(
                "segment {} decodes to {out} bytes where Rows x Columns is {plane}",
                k + 1
            ));
        }
    }
    Ok(())
}

/// Bytes a PackBits segment decodes to, read as dicom-rs's decoder reads it: a run header n in
/// 0..=127 copies n + 1 literal bytes (fewer if the segment ends), -127..=-1 repeats the next byte
/// 1 - n times (none if the segment ends there), -128 is nothing.
fn packbits_len(segment: &[u8]) -> usize {
    let (mut at, mut out) = (0, 0usize);
    while at < segment.len() {
        let h = segment[at] as i8;
        at += 1;
        match h {
            0..=127 => {
                let n = (h as usize + 1).min(segment.len() - at);
                out += n;
                at += n;
            }
            -127..=-1 => {
                if at < segment.len() {
                    out += (1 - h as isize) as usize;
                }
                at += 1;
            }
            -128 => {}
        }
    }
    out
}

/// Runs a pixel decoder of dicom-rs (and the codecs under it) so that a panic in it on a hostile
/// file becomes this file's error. Fuzzing found its RLE decoder indexing past its buffer on a
/// segment that decodes short (`fuzz/corpus/series_file/rle_segment_overrun`, now refused by
/// [`check_encapsulated`] first); this is the net for the next such case. The processor would catch the
/// panic anyway, but as "a worker stopped" of the series, without the file or the reason.
fn contained<T>(decode: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|p| {
        Err(format!(
            "the pixel decoder failed on this file ({})",
            crate::util::panic_text(p.as_ref())
        ))
    })
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

    /// The RLE file fuzzing found (its segment decodes short, and dicom-rs's decoder indexed past
    /// it): refused by the check, naming the file, before the decoder runs.
    #[test]
    fn the_fuzzed_rle_file_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("rle.dcm");
        let bytes = include_bytes!("../../fuzz/corpus/series_file/rle_segment_overrun");
        std::fs::write(&path, &bytes[..]).unwrap();
        crate::dicom::guard::check_part10_file(&path, &Default::default()).unwrap();
        let h = crate::dicom::header::read_header(&path).unwrap();
        let e = read_slice_hu(&h).unwrap_err().to_string();
        assert!(
            e.contains("rle.dcm") && e.contains("RLE fragment 1: segment"),
            "{e}"
        );
    }

    /// The same file with its transfer syntax UID padded by a carriage return instead of a NUL:
    /// dicom-rs's registry trims it and decodes RLE, so the check must see RLE too (the header
    /// reader trims it today; the check does not count on that).
    #[test]
    fn a_padded_rle_syntax_is_checked_as_rle() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("rle-cr.dcm");
        let mut bytes =
            include_bytes!("../../fuzz/corpus/series_file/rle_segment_overrun").to_vec();
        let uid = b"1.2.840.10008.1.2.5\0";
        let at = bytes.windows(uid.len()).position(|w| w == uid).unwrap();
        bytes[at + uid.len() - 1] = b'\r';
        std::fs::write(&path, &bytes).unwrap();
        crate::dicom::guard::check_part10_file(&path, &Default::default()).unwrap();
        let h = crate::dicom::header::read_header(&path).unwrap();
        let e = read_slice_hu(&h).unwrap_err().to_string();
        assert!(e.contains("RLE fragment 1: segment"), "{e}");
    }

    /// A panic inside a decoder is the file's error, with the panic's message.
    #[test]
    fn a_decoder_panic_is_contained() {
        let r: Result<(), String> = contained(|| panic!("index out of bounds"));
        let e = r.unwrap_err();
        assert!(
            e.contains("the pixel decoder failed on this file (index out of bounds)"),
            "{e}"
        );
        assert_eq!(contained(|| Ok(3)), Ok(3));
    }

    /// A 64-byte RLE header of `n` segments at `offsets`, then `body`.
    fn rle_fragment(n: u32, offsets: &[u32], body: &[u8]) -> Vec<u8> {
        let mut f = n.to_le_bytes().to_vec();
        for o in offsets {
            f.extend(o.to_le_bytes());
        }
        f.resize(64, 0);
        f.extend(body);
        f
    }

    #[test]
    fn packbits_lengths_are_counted_as_the_decoder_reads_them() {
        assert_eq!(packbits_len(&[]), 0);
        assert_eq!(packbits_len(&[2, 1, 2, 3]), 3); // literal run of 3
        assert_eq!(packbits_len(&[2, 1]), 1); // a literal run cut by the end
        assert_eq!(packbits_len(&[0x81, 7]), 128); // -127: 128 copies
        assert_eq!(packbits_len(&[0x81]), 0); // a repeat without its byte
        assert_eq!(packbits_len(&[0x80, 0, 9]), 1); // -128 is nothing
    }

    /// Every RLE header or segment dicom-rs's decoder would take on trust is refused with its
    /// reason; a well-formed fragment of two segments of 4 x 4 bytes passes.
    #[test]
    fn hostile_rle_fragments_are_refused() {
        let plane = 16;
        let seg = [0xF1u8, 5]; // -15: 16 bytes of 5
        let two = |o2: u32| rle_fragment(2, &[64, o2], &[seg, seg].concat());
        assert_eq!(check_rle_fragment(&two(66), plane, 2), Ok(()));
        let bomb: Vec<u8> = std::iter::repeat_n([0x81u8, 1], 1000).flatten().collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![2, 0, 0, 0], "shorter than the 64-byte RLE header"),
            (rle_fragment(0, &[], &seg), "0 segments declared"),
            (
                rle_fragment(u32::MAX, &[64], &seg),
                "4294967295 segments declared",
            ),
            (
                rle_fragment(1, &[64], &seg),
                "1 segments declared, 2 needed",
            ),
            (rle_fragment(16, &[64], &seg), "16 segments declared"),
            (two(900), "do not increase"),
            (
                rle_fragment(2, &[66, 64], &[seg, seg].concat()),
                "do not increase",
            ),
            (
                rle_fragment(2, &[10, 66], &[seg, seg].concat()),
                "do not increase",
            ),
            (
                rle_fragment(2, &[64, 65], &[seg, seg].concat()),
                "segment 1 decodes to 0 bytes",
            ),
            (
                rle_fragment(2, &[64, 66], &[&seg[..], &[1, 5, 5]].concat()),
                "segment 2 decodes to 2 bytes",
            ),
            (
                rle_fragment(2, &[64, 2064], &[&bomb[..], &seg[..]].concat()),
                "segment 1 decodes to 128000 bytes",
            ),
        ];
        for (f, want) in cases {
            let e = check_rle_fragment(&f, plane, 2).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// The DCMTK-encoded RLE seed (dcmcrle) decodes through the check, single- and multi-frame.
    #[test]
    fn dcmtk_rle_files_pass_the_check() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["rle", "enhanced_rle"] {
            let path = tmp.path().join(name);
            let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus/series_file")
                .join(name);
            std::fs::copy(&from, &path).unwrap();
            let obj = crate::dicom::header::open_full(&path).unwrap();
            check_encapsulated(&obj, Codec::Rle).unwrap();
            let h = crate::dicom::header::read_header(&path).unwrap();
            assert_eq!(
                h.transfer_syntax.trim_end_matches('\0'),
                RLE_LOSSLESS,
                "{name}"
            );
        }
        // The single-frame one decodes to the uncompressed seed's values.
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/series_file");
        let rle = crate::dicom::header::read_header(&seeds.join("rle")).unwrap();
        let plain = crate::dicom::header::read_header(&seeds.join("phantom_slice")).unwrap();
        assert_eq!(read_slice_hu(&rle).unwrap(), read_slice_hu(&plain).unwrap());
    }

    /// A JPEG stream: SOI, an APP0 segment, then a frame header `marker` of y x x with `nf`
    /// components, then SOS.
    fn jpeg(marker: u8, y: u16, x: u16, nf: u8) -> Vec<u8> {
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2];
        f.extend([0xFF, marker, 0, 11, 16]);
        f.extend(y.to_be_bytes());
        f.extend(x.to_be_bytes());
        f.extend([nf, 1, 0x11, 0]);
        f.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0]);
        f
    }

    /// The frame header is found past other segments for every SOF kind (JPEG-LS's too), and a
    /// stream without one, cut short or with a bad length is refused.
    #[test]
    fn jpeg_frame_headers_are_read_to_the_first_scan() {
        for marker in [0xC0, 0xC1, 0xC3, 0xF7] {
            assert_eq!(
                jpeg_frame_header(&jpeg(marker, 512, 256, 1)),
                Ok((512, 256, 1))
            );
        }
        let no_sof = [0xFF, 0xD8, 0xFF, 0xC4, 0, 2, 0xFF, 0xDA, 0, 2];
        assert!(jpeg_frame_header(&no_sof)
            .unwrap_err()
            .contains("before the first scan"));
        let cut = &jpeg(0xC3, 8, 8, 1)[..14];
        assert!(jpeg_frame_header(cut).unwrap_err().contains("cut short"));
        let bad_len = [0xFF, 0xD8, 0xFF, 0xE0, 0, 1];
        assert!(jpeg_frame_header(&bad_len)
            .unwrap_err()
            .contains("length 1"));
        let garbage = [0xFF, 0xD8, 0x12, 0x34];
        assert!(jpeg_frame_header(&garbage)
            .unwrap_err()
            .contains("no marker at byte 2"));
        let mut p0 = jpeg(0xC3, 8, 8, 1);
        p0[12] = 0;
        assert!(jpeg_frame_header(&p0).unwrap_err().contains("precision 0"));
    }

    #[test]
    fn j2k_image_sizes_are_read_from_siz() {
        let mut f = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [520u32, 300, 8, 44, 520, 300, 0, 0] {
            f.extend(v.to_be_bytes());
        }
        f.extend(1u16.to_be_bytes());
        assert_eq!(j2k_image_size(&f), Ok((256, 512, 1)));
        assert!(j2k_image_size(&f[..30])
            .unwrap_err()
            .contains("no image size"));
        f[16..20].copy_from_slice(&600u32.to_be_bytes()); // x offset beyond the width
        assert!(j2k_image_size(&f).unwrap_err().contains("beyond its size"));
    }

    /// A frame header split over fragments (the start marker's two bytes in two fragments, the
    /// header in a third) is found where the decoder would read it: in their concatenation.
    #[test]
    fn a_jpeg_stream_split_over_fragments_is_checked() {
        let stream = jpeg(0xC3, 2116, 21256, 1);
        let mut obj = DefaultDicomObject::new_empty_with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.4.70")
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
                .media_storage_sop_instance_uid("1.2.3")
                .build()
                .unwrap(),
        );
        let put = |o: &mut DefaultDicomObject, tag, v: u16| {
            o.put(dicom_core::DataElement::new(
                tag,
                dicom_core::VR::US,
                dicom_core::PrimitiveValue::from(v),
            ))
        };
        use dicom_dictionary_std::tags;
        put(&mut obj, tags::ROWS, 8);
        put(&mut obj, tags::COLUMNS, 8);
        put(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
        let fragments = vec![vec![0xFF], stream[1..6].to_vec(), stream[6..].to_vec()];
        obj.put(dicom_core::DataElement::new(
            tags::PIXEL_DATA,
            dicom_core::VR::OB,
            dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
                Vec::<u32>::new(),
                fragments,
            )),
        ));
        let e = check_encapsulated(&obj, Codec::Jpeg).unwrap_err();
        assert!(e.contains("declares 21256 x 2116"), "{e}");
    }

    /// The JPEG Lossless file fuzzing found (an 8 x 8 slice whose frame header declares
    /// 21256 x 2116: seconds of decoding per slice) is refused before the decoder runs; DCMTK's
    /// JPEG Lossless and JPEG-LS seeds pass and decode to the uncompressed seed's values.
    #[test]
    fn jpeg_sizes_must_match_the_data_set() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/series_file");
        let h = crate::dicom::header::read_header(&seeds.join("jpeg_sof_21256x2116")).unwrap();
        let e = read_slice_hu(&h).unwrap_err().to_string();
        assert!(
            e.contains("JPEG fragment 1: the stream declares 21256 x 2116 with 1 component(s), the data set 8 x 8 with 1"),
            "{e}"
        );
        let plain = crate::dicom::header::read_header(&seeds.join("phantom_slice")).unwrap();
        let want = read_slice_hu(&plain).unwrap();
        for name in ["jpeg_lossless_sv1", "jpeg_ls_lossless"] {
            let h = crate::dicom::header::read_header(&seeds.join(name)).unwrap();
            assert_eq!(read_slice_hu(&h).unwrap(), want, "{name}");
        }
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
