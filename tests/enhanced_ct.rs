//! Enhanced CT (multi-frame) sources harmonized like classic ones, and JPEG-LS sources decoded: the
//! same phantom written as classic slices, as one Enhanced CT object (frames out of order, geometry
//! and rescale in the functional groups) and compressed by DCMTK's dcmcjpls gives the same derived
//! series. Outputs are checked with dicom3tools (dciodvfy, dcentvfy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use ct_harmonizer::dicom::header::{CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};
use ct_harmonizer::dicom::write::write_part10;
use ct_harmonizer::samples::{enhanced_dataset, phantom_slice, SeriesSpec};
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hu(spec: &SeriesSpec, z: usize) -> Vec<f32> {
    phantom_slice(z, spec.rows, spec.columns, 30.0, 17)
}

/// Writes `spec` as classic CT slices into `dir`.
fn write_classic(spec: &SeriesSpec, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for z in 0..spec.slices {
        write_part10(
            spec.dataset(z, &hu(spec, z)),
            &dir.join(format!("ct_{z:03}.dcm")),
        )
        .unwrap();
    }
}

/// Writes `spec` as classic CT slices stored unsigned (HU + 2048, RescaleIntercept -2048): DCMTK's
/// near-lossless JPEG-LS encoder takes unsigned pixels only.
fn write_classic_unsigned(spec: &SeriesSpec, dir: &Path) {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};
    std::fs::create_dir_all(dir).unwrap();
    for z in 0..spec.slices {
        let v = hu(spec, z);
        let mut o = spec.dataset(z, &v);
        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|x| ((x.round() + 2048.0) as u16).to_le_bytes())
            .collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(bytes.into()),
        ));
        o.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        o.put(DataElement::new(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            PrimitiveValue::from("-2048"),
        ));
        write_part10(o, &dir.join(format!("ct_{z:03}.dcm"))).unwrap();
    }
}

/// Writes `spec` as one Enhanced CT file into `dir`, frames in the order of `frames` (slice indices).
fn write_enhanced(spec: &SeriesSpec, dir: &Path, frames: &[usize]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let pixels: Vec<Vec<f32>> = frames.iter().map(|&z| hu(spec, z)).collect();
    let p = dir.join("enhanced.dcm");
    write_part10(enhanced_dataset(spec, frames, &pixels), &p).unwrap();
    p
}

/// Slices in reverse, then the first half swapped with the second: not the order of positions.
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).rev().collect();
    v.rotate_left(n / 2);
    v
}

fn processed(input: &Path, out: &Path) -> PathBuf {
    let o = process(&[input], out, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dirs = series_dirs(out);
    assert_eq!(dirs.len(), 1, "{}", text(&o));
    dirs[0].clone()
}

/// Asserts two derived series have the same grid and the same voxel values (HU, within rounding).
fn assert_same_volume(a: &[Slice], b: &[Slice], tolerance: f32) {
    assert_eq!(a.len(), b.len());
    let worst: Vec<f32> = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            x.hu.iter()
                .zip(&y.hu)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
        })
        .collect();
    assert!(
        worst.iter().all(|&w| w <= tolerance),
        "largest difference per slice (HU): {worst:?}"
    );
    for (x, y) in a.iter().zip(b) {
        assert!((x.z - y.z).abs() < 1e-6, "{} vs {}", x.z, y.z);
        assert_eq!(x.hu.len(), y.hu.len());
        let worst =
            x.hu.iter()
                .zip(&y.hu)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
        assert!(
            worst <= tolerance,
            "slice at z {}: differs by {worst} HU",
            x.z
        );
        for t in [
            tags::IMAGE_POSITION_PATIENT,
            tags::IMAGE_ORIENTATION_PATIENT,
            tags::PIXEL_SPACING,
            tags::SLICE_THICKNESS,
            tags::ROWS,
            tags::COLUMNS,
            tags::KVP,
            tags::WINDOW_CENTER,
            tags::WINDOW_WIDTH,
        ] {
            assert_eq!(tag_str(&x.obj, t), tag_str(&y.obj, t), "{t:?}");
        }
    }
}

/// One Enhanced CT file (frames shuffled, geometry and rescale only in the functional groups)
/// becomes a classic derived CT series: one instance per frame, valid for dciodvfy and dcentvfy,
/// each referencing the enhanced instance and its frame, with the voxel values of the same phantom
/// processed as classic slices. Failed before: "Enhanced CT multi-frame is not supported yet".
#[test]
fn enhanced_series_harmonized_like_classic() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::axial("enhanced-ct-a", 32, 32, 10, [2.0, 0.7, 0.7]);
    let classic_in = tmp.path().join("classic");
    write_classic(&spec, &classic_in);
    let enhanced_in = tmp.path().join("enhanced");
    let frames = shuffled(spec.slices);
    let file = write_enhanced(&spec, &enhanced_in, &frames);
    let enhanced_obj = dicom_object::open_file(&file).unwrap();
    let enhanced_uid = tag_str(&enhanced_obj, tags::SOP_INSTANCE_UID);

    let from_classic = read_series(&processed(&classic_in, &tmp.path().join("out-c")));
    let out_dir = processed(&enhanced_in, &tmp.path().join("out-e"));
    verify_dicom(&out_dir);
    let from_enhanced = read_series(&out_dir);
    assert_eq!(from_enhanced.len(), spec.slices);
    assert_same_volume(&from_classic, &from_enhanced, 1.0);

    for d in &from_enhanced {
        let o = &d.obj;
        assert_eq!(tag_str(o, tags::SOP_CLASS_UID), CT_IMAGE_STORAGE);
        assert!(o.element_opt(tags::NUMBER_OF_FRAMES).unwrap().is_none());
        assert!(o
            .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .unwrap()
            .is_none());
        assert_eq!(tag_str(o, tags::KVP), "120");
        assert_eq!(tag_str(o, tags::WINDOW_WIDTH), "400");
        assert_eq!(tag_str(o, tags::SLICE_THICKNESS), "2");
        let item = &o
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let s = |t| {
            item.element(t)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        assert_eq!(s(tags::REFERENCED_SOP_CLASS_UID), ENHANCED_CT_IMAGE_STORAGE);
        assert_eq!(s(tags::REFERENCED_SOP_INSTANCE_UID), enhanced_uid);
        // The referenced frame is the one at this output slice's position.
        let frame: usize = s(tags::REFERENCED_FRAME_NUMBER).parse().unwrap();
        let z = frames[frame - 1];
        let expected_z = spec.origin[2] + spec.step[2] * z as f64;
        assert!((d.z - expected_z).abs() < 1e-3, "{} vs {expected_z}", d.z);
    }
    // Derived UIDs do not depend on the form of the source (different source instances).
    assert_ne!(
        tag_str(&from_classic[0].obj, tags::SOP_INSTANCE_UID),
        tag_str(&from_enhanced[0].obj, tags::SOP_INSTANCE_UID)
    );
}

/// An Enhanced CT object whose PerFrameFunctionalGroupsSequence does not have one item per frame is
/// refused with a reason naming the file; frames at one position are a geometry error naming the
/// frames.
#[test]
fn enhanced_inconsistent_frames_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::axial("enhanced-ct-bad", 16, 16, 4, [2.0, 0.7, 0.7]);
    let dir = tmp.path().join("short");
    std::fs::create_dir_all(&dir).unwrap();
    let pixels: Vec<Vec<f32>> = (0..4).map(|z| hu(&spec, z)).collect();
    let mut o = enhanced_dataset(&spec, &[0, 1, 2, 3], &pixels);
    o.put(dicom_core::DataElement::new(
        tags::NUMBER_OF_FRAMES,
        dicom_core::VR::IS,
        dicom_core::value::PrimitiveValue::from("5"),
    ));
    write_part10(o, &dir.join("enhanced.dcm")).unwrap();
    let o = process(&[&dir], &tmp.path().join("out1"), &[], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("enhanced.dcm") && t.contains("4 item(s) for 5 frame(s)"),
        "{t}"
    );

    let dir = tmp.path().join("same");
    let spec = SeriesSpec::axial("enhanced-ct-same", 16, 16, 4, [2.0, 0.7, 0.7]);
    let pixels: Vec<Vec<f32>> = (0..4).map(|z| hu(&spec, z)).collect();
    std::fs::create_dir_all(&dir).unwrap();
    write_part10(
        enhanced_dataset(&spec, &[0, 1, 1, 2], &pixels),
        &dir.join("enhanced.dcm"),
    )
    .unwrap();
    let o = process(&[&dir], &tmp.path().join("out2"), &[], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("(frame 2)") && t.contains("(frame 3)") && t.contains("same position"),
        "{t}"
    );
}

/// An Enhanced CT series sent over C-STORE to `serve` is routed by the kernel and slice thickness of
/// its functional groups (a rule on ConvolutionKernel matches it), harmonized, and its classic
/// derived series delivered to DCMTK's storescp; the delivered instances pass dciodvfy and dcentvfy.
#[test]
fn enhanced_series_over_cstore_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::axial("enhanced-ct-daemon", 24, 24, 8, [2.0, 0.8, 0.8]);
    let input = tmp.path().join("in");
    write_enhanced(&spec, &input, &shuffled(spec.slices));
    let port = free_port();
    let received_dir = tmp.path().join("received");
    let _scp = start_storescp(
        "PACS",
        port,
        &received_dir,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("pacs", "PACS", port)
            + &entry(
                "rules",
                &[
                    ("name", "sharp".into()),
                    ("convolution_kernel", strings(&["B50f"])),
                    ("slice_thickness_mm", toml::Value::from(vec![1.5, 2.5])),
                    ("plan", "harmonize".into()),
                    ("models", strings(&["gaussian-soft-baseline"])),
                    ("destinations", strings(&["pacs"])),
                ],
            )
            + &rule("rest", "drop", false, &[])),
    );
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));
    let done = wait_until(secs(90), POLL, || {
        count_files(&received_dir) >= spec.slices && d.idle()
    });
    assert!(done, "not delivered:\n{}", d.context());
    let got = received(&received_dir);
    assert_eq!(got.len(), spec.slices, "{got:#?}");
    assert!(got
        .iter()
        .all(|(series, _, desc)| series != &spec.series_uid() && desc.contains("HARMONIZED")));
    verify_dicom(&received_dir);
    assert_eq!(d.metric("series_translated"), 1.0);
    let logs = d.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"series_routed\"") && l.contains("\"sharp\"")),
        "{}",
        d.context()
    );
    assert_eq!(d.metric("forward_failures"), 0.0);
}

/// A JPEG-LS (lossless; near-lossless with NEAR=1, from unsigned pixels) compressed series, made by DCMTK's dcmcjpls,
/// gives the same derived series as its uncompressed input (CharLS built by dicom-rs's `charls`
/// feature).
#[test]
fn jpeg_ls_series_equals_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::axial("jpeg-ls", 32, 32, 6, [2.0, 0.7, 0.7]);
    let plain = tmp.path().join("plain");
    write_classic(&spec, &plain);
    let reference = read_series(&processed(&plain, &tmp.path().join("out-plain")));
    let unsigned = tmp.path().join("unsigned");
    write_classic_unsigned(&spec, &unsigned);
    for (name, args, source) in [
        ("lossless", &["+el"][..], &plain),
        ("near", &["+en", "+md", "1"][..], &unsigned),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files(source) {
            let to = dir.join(f.file_name().unwrap());
            let o = Command::new("/usr/bin/dcmcjpls")
                .args(args)
                .arg(&f)
                .arg(&to)
                .output()
                .unwrap();
            assert!(o.status.success(), "dcmcjpls: {}", text(&o));
        }
        let ts = dicom_object::open_file(files(&dir)[0].as_path())
            .unwrap()
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let want = if name == "lossless" {
            "1.2.840.10008.1.2.4.80"
        } else {
            "1.2.840.10008.1.2.4.81"
        };
        assert_eq!(ts, want);
        let out = processed(&dir, &tmp.path().join(format!("out-{name}")));
        verify_dicom(&out);
        // Near-lossless: each stored value within NEAR = 1 of the original, plus rounding.
        let tolerance = if name == "lossless" { 1.0 } else { 2.0 };
        assert_same_volume(&reference, &read_series(&out), tolerance);
    }
}

/// A JPEG-LS lossless series sent by DCMTK's storescu as it is stored (the SCP accepts JPEG-LS
/// contexts) is harmonized and delivered: before, storescu found no accepted presentation context.
#[test]
fn jpeg_ls_series_over_cstore_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::axial("jpeg-ls-daemon", 24, 24, 5, [2.0, 0.8, 0.8]);
    let plain = tmp.path().join("plain");
    write_classic(&spec, &plain);
    let input = tmp.path().join("jpeg-ls");
    std::fs::create_dir_all(&input).unwrap();
    for f in files(&plain) {
        let o = Command::new("/usr/bin/dcmcjpls")
            .arg("+el")
            .arg(&f)
            .arg(input.join(f.file_name().unwrap()))
            .output()
            .unwrap();
        assert!(o.status.success(), "dcmcjpls: {}", text(&o));
    }
    let port = free_port();
    let received_dir = tmp.path().join("received");
    let _scp = start_storescp(
        "PACS",
        port,
        &received_dir,
        &tmp.path().join("storescp.log"),
    );
    let mut d = Daemon::new(
        tmp.path(),
        &[],
        &(scp_dest("pacs", "PACS", port) + &rule("default", "harmonize", false, &["pacs"])),
    );
    d.start();
    // Propose JPEG-LS lossless (and the uncompressed fallbacks): the file goes as it is stored.
    let o = Command::new("/usr/bin/storescu")
        .env("TCP_NODELAY", "1")
        .args([
            "-aet",
            "MODALITY",
            "-aec",
            AE,
            "+sd",
            "-R",
            "--propose-jls-lossless",
        ])
        .arg("127.0.0.1")
        .arg(d.port.to_string())
        .arg(&input)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let done = wait_until(secs(90), POLL, || {
        count_files(&received_dir) >= spec.slices && d.idle()
    });
    assert!(done, "not delivered:\n{}", d.context());
    verify_dicom(&received_dir);
    assert_eq!(d.metric("series_translated"), 1.0);
    assert_eq!(d.metric("instances_received"), spec.slices as f64);
}
