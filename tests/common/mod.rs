//! Shared helpers for the integration tests: run the real binary, build fixtures with the project's
//! own writer, read outputs back, and check them with dicom3tools.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ct-harmonizer"))
}

/// `ct-harmonizer process` with the repository's models; extra env pairs override settings.
pub fn process(inputs: &[&Path], out: &Path, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("process");
    for i in inputs {
        c.arg(i);
    }
    c.arg("--out").arg(out).args(extra);
    c.env("CT_HARMONIZER__MODELS__DIR", repo().join("models"));
    c.env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, recursively, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Published series folders under `out` (hidden partial folders excluded).
pub fn series_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_dir());
    v.sort();
    v
}

/// Entries of `out` whose name starts with a dot (partial or old folders): must be none after a run.
pub fn hidden_entries(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A derived slice read back: its position along z and its HU plane.
pub struct Slice {
    pub path: PathBuf,
    pub z: f64,
    pub hu: Vec<f32>,
    pub obj: dicom_object::DefaultDicomObject,
}

pub fn read_slice(path: &Path) -> Slice {
    use dicom_pixeldata::PixelDecoder;
    let obj = dicom_object::open_file(path).unwrap();
    let ipp = obj
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap();
    let hu: Vec<f32> = obj.decode_pixel_data().unwrap().to_vec().unwrap();
    Slice {
        path: path.to_owned(),
        z: ipp[2],
        hu,
        obj,
    }
}

/// Reads a series folder sorted by z.
pub fn read_series(dir: &Path) -> Vec<Slice> {
    let mut v: Vec<Slice> = files(dir).iter().map(|p| read_slice(p)).collect();
    v.sort_by(|a, b| a.z.total_cmp(&b.z));
    v
}

pub fn tag_str(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .map(|e| e.to_str().unwrap().trim().to_string())
        .unwrap_or_default()
}

/// dciodvfy on each file (zero errors) and dcentvfy across the series.
pub fn verify_dicom(dir: &Path) {
    let all = files(dir);
    assert!(!all.is_empty());
    for f in &all {
        let o = Command::new("dciodvfy")
            .arg(f)
            .output()
            .expect("dciodvfy (dicom3tools) is installed by scripts/setup.sh");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !err.contains("Error"),
            "dciodvfy {}:\n{err}",
            f.display()
        );
    }
    let o = Command::new("dcentvfy").args(&all).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("Error"),
        "dcentvfy:\n{err}"
    );
}

/// SHA-256 of every file under `dir`, to prove inputs are never modified.
pub fn digest_tree(dir: &Path) -> Vec<(PathBuf, String)> {
    files(dir)
        .into_iter()
        .map(|p| {
            let h = ct_harmonizer::translate::manifest::sha256_file(&p).unwrap();
            (p, h)
        })
        .collect()
}
