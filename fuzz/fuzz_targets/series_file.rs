//! What the processor does with a series, after the guard, on a Part 10 file it passed: the kept
//! header (`scan_keeping`), frame expansion (Enhanced CT functional groups), the geometry check, the
//! slab reader (every pixel decoder of this build: native, RLE, JPEG, JPEG-LS by CharLS, JPEG 2000
//! by OpenJPEG), then the derived series' writer (template, sanitizer, Part 10 writer) with the
//! identity as the model. No crash, no allocation beyond the limit; and the promise to a PACS:
//! whatever the writer publishes passes our own guard, holds only valid decimal strings and reads
//! back as a series of as many slices, slice k holding slice k's HU (as the writer stores them).
//! A single-frame input is the first slice of a two-slice series whose second slice is
//! the same data set moved one slice along its normal (written by dicom-rs); a multi-frame input
//! is a series on its own. Files live on /dev/shm when it exists (the writer syncs its folder).
#![no_main]
use std::path::Path;

use ct_harmonizer::config::Settings;
use ct_harmonizer::dicom::decode::read_slice_hu;
use ct_harmonizer::dicom::guard::{check_part10_file, Limits};
use ct_harmonizer::dicom::header::{is_multi_frame, open_full, read_header, read_header_keeping};
use ct_harmonizer::dicom::series::group;
use ct_harmonizer::dicom::SlabReader;
use ct_harmonizer::harmonize::check_series;
use ct_harmonizer::harmonize::derive::{DerivedPlan, SeriesWriter};
use ct_harmonizer::model::manifest::Manifest;
use ct_harmonizer::model::OutSlab;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use libfuzzer_sys::fuzz_target;

const MANIFEST: &str = include_str!("../../models/gaussian-soft-baseline/model.toml");

fn limits() -> Limits {
    Limits {
        max_bytes: 64 << 20,
        ..Limits::default()
    }
}

/// The single-frame input moved one slice along its normal, under a new SOP Instance UID.
fn second_slice(first: &Path, to: &Path) -> Option<()> {
    let mut obj = open_full(first).ok()?;
    let h = read_header_keeping(first).ok()?;
    let (p, o) = (h.image_position?, h.image_orientation?);
    let n = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    let step = h
        .slice_thickness
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(1.0);
    let moved: Vec<String> = (0..3)
        .map(|i| format!("{:.6}", p[i] + n[i] * step))
        .collect();
    obj.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(moved.into()),
    ));
    let mut uid: String = h.sop_instance_uid.chars().take(60).collect();
    uid.push_str(".2");
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(uid.as_str()),
    ));
    obj.meta_mut().media_storage_sop_instance_uid = uid;
    obj.write_to_file(to).ok()?;
    check_part10_file(to, &limits()).ok().map(|_| ())
}

/// Where a panic is the codec's, which `decode` contains as the file's error: libfuzzer-sys's hook
/// aborts on every panic, so that one is kept for panics anywhere else. A codec panic that is not
/// contained still aborts the run (libfuzzer-sys aborts when a panic reaches the target's edge).
const CODECS: &[&str] = &[
    "dicom-transfer-syntax-registry",
    "dicom-pixeldata",
    "dicom-encoding",
    "jpeg-decoder",
    "jpeg2k",
    "openjp2",
    "charls",
];

fn contain_codec_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_codec = info
                .location()
                .is_some_and(|l| CODECS.iter().any(|c| l.file().contains(c)));
            if !in_codec {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    contain_codec_panics();
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = dir else {
        return;
    };
    let first = dir.path().join("in1.dcm");
    if std::fs::write(&first, data).is_err() || check_part10_file(&first, &limits()).is_err() {
        return;
    }
    let Ok(h) = read_header_keeping(&first) else {
        return;
    };
    let mut headers = vec![h.clone()];
    if !is_multi_frame(&h) {
        let second = dir.path().join("in2.dcm");
        if second_slice(&first, &second).is_none() {
            return;
        }
        let Ok(h2) = read_header_keeping(&second) else {
            return;
        };
        headers.push(h2);
    }
    let Some(mut series) = group(headers).into_iter().next() else {
        return;
    };
    let Ok(settings) = Settings::load_with_env(None, Vec::new()) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(MANIFEST, Path::new("model.toml")) else {
        return;
    };
    // The processor's own check (CT, SOP class, frames, transfer syntax, kernel, geometry).
    let Ok(geometry) = check_series(&settings, &manifest, &mut series) else {
        return;
    };
    let plan = DerivedPlan::new(&series.slices, &geometry, &manifest, "fuzz");
    let out = dir.path().join("out");
    let Ok(mut writer) = SeriesWriter::create(
        &out,
        plan,
        series.slices.clone(),
        manifest,
        settings.derive.clone(),
    ) else {
        return;
    };
    let n = series.slices.len();
    let mut reader = SlabReader::new(series.slices, geometry.rows, geometry.columns);
    // What each derived slice must hold: the HU read, as the writer stores them (rounded, clamped
    // to int16, rescale 1/0).
    let mut expected: Vec<Vec<f32>> = Vec::with_capacity(n);
    for z in 0..n {
        let Ok(slab) = reader.read(z, 1) else {
            writer.abandon();
            return;
        };
        expected.push(
            slab.hu
                .iter()
                .map(|v| f32::from(v.round().clamp(-32768.0, 32767.0) as i16))
                .collect(),
        );
        let out_slab = OutSlab {
            z0: z,
            depth: 1,
            rows: slab.rows,
            columns: slab.columns,
            hu: slab.hu,
        };
        if writer.write_slab(&out_slab).is_err() {
            writer.abandon();
            return;
        }
    }
    let Ok(published) = writer.finish() else {
        return;
    };
    // Our output, read as a PACS (and our own watched folder) would: every file passes the guard
    // and gives a CT slice header of the derived series.
    let Ok(files) = std::fs::read_dir(&published) else {
        panic!("published folder {} unreadable", published.display());
    };
    let mut count = 0;
    for f in files.flatten() {
        let p = f.path();
        if let Err(e) = check_part10_file(&p, &Limits::default()) {
            panic!("derived file {} refused by the guard: {e}", p.display());
        }
        // Every decimal string valid (PS3.5 6.2: at most 16 characters, a finite number): the
        // writer once let "NaN" and a 600-character position through.
        if let Ok(obj) = open_full(&p) {
            for e in obj.iter().filter(|e| e.header().vr == VR::DS) {
                let text = e.to_str().unwrap_or_default();
                for v in text.split('\\') {
                    let v = v.trim();
                    let ok = v.is_empty()
                        || (v.len() <= 16
                            && v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
                            && v.parse::<f64>().is_ok_and(f64::is_finite));
                    assert!(
                        ok,
                        "derived file {} has DS {:?} = {v:?}",
                        p.display(),
                        e.header().tag
                    );
                }
            }
        }
        match read_header_keeping(&p) {
            Ok(d) if d.is_image() && d.modality.as_deref() == Some("CT") => count += 1,
            Ok(d) => panic!("derived file {} is not a CT image: {d:?}", p.display()),
            Err(e) => panic!("derived file {} unreadable: {e}", p.display()),
        }
    }
    assert_eq!(count, n, "derived series has {count} files for {n} slices");
    // Not mangled: slice k of the derived series (IM0000k+1, in the sorted order) holds slice k's HU.
    for (k, want) in expected.iter().enumerate() {
        let p = published.join(format!("IM{:05}.dcm", k + 1));
        let got = read_header(&p).and_then(|h| read_slice_hu(&h));
        match got {
            Ok(got) => assert!(
                got.len() == want.len()
                    && got
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a == b || (a.is_nan() && b.is_nan())),
                "derived slice {} differs from its source slice",
                p.display()
            ),
            Err(e) => panic!("derived file {} does not decode: {e}", p.display()),
        }
    }
});
