//! Reads the headers of every file under the given paths (folders recursively, in name order).
//! Non-image DICOM objects and non-regular files (FIFOs, sockets, devices: never opened) are skipped
//! with a note; unreadable files are reported with the reason.

use std::path::{Path, PathBuf};

use crate::dicom::header::{read_header, read_header_keeping};
use crate::dicom::{SliceHeader, VolumeError};
use crate::events;

/// Errors about the inputs themselves.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("input {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Image headers.
    pub images: Vec<SliceHeader>,
    /// Non-image DICOM objects: (path, note).
    pub skipped: Vec<(PathBuf, String)>,
    /// Files that could not be read as DICOM.
    pub rejected: Vec<VolumeError>,
}

fn collect(
    path: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<(), IngestError> {
    let io = |source| IngestError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        // Hidden entries (".DS_Store", our own ".processed" markers and partial folders) are not input.
        entries.retain(|e| {
            !e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        });
        for e in entries {
            collect(&e, out, skipped)?;
        }
    } else if meta.is_file() {
        out.push(path.to_owned());
    } else {
        // A FIFO would block the reader forever; sockets and devices are not input either.
        let note = "not a regular file (FIFO, socket or device)".to_string();
        events::FileSkipped {
            path: &path.display().to_string(),
            reason: &note,
        }
        .emit();
        skipped.push((path.to_owned(), note));
    }
    Ok(())
}

/// Reads every file's header under `paths`.
pub fn scan(paths: &[PathBuf]) -> Result<Scan, IngestError> {
    scan_with(paths, false)
}

/// Like [`scan`], and keeps each image's header data set ([`SliceHeader::dataset`]) so that the
/// harmonize core never opens a header again: for one series at a time (the daemon's processing
/// stage), not for a whole folder of series.
pub fn scan_keeping(paths: &[PathBuf]) -> Result<Scan, IngestError> {
    scan_with(paths, true)
}

fn scan_with(paths: &[PathBuf], keep: bool) -> Result<Scan, IngestError> {
    let mut files = Vec::new();
    let mut scan = Scan::default();
    for p in paths {
        collect(p, &mut files, &mut scan.skipped)?;
    }
    for f in files {
        let read = if keep {
            read_header_keeping(&f)
        } else {
            read_header(&f)
        };
        match read {
            Ok(h) if h.is_image() => scan.images.push(h),
            Ok(h) => {
                drop(h.dataset);
                let note = format!("not an image (SOP class {})", h.sop_class_uid);
                events::FileSkipped {
                    path: &f.display().to_string(),
                    reason: &note,
                }
                .emit();
                scan.skipped.push((f, note));
            }
            Err(VolumeError::MissingTag { path, tag })
                if tag == "StudyInstanceUID" || tag == "SeriesInstanceUID" =>
            {
                // DICOMDIR and other media objects carry no study or series.
                let note = format!("no {tag}: not part of a series");
                events::FileSkipped {
                    path: &path.display().to_string(),
                    reason: &note,
                }
                .emit();
                scan.skipped.push((path, note));
            }
            Err(e) => {
                events::FileRejected {
                    path: &f.display().to_string(),
                    reason: &e.to_string(),
                }
                .emit();
                scan.rejected.push(e);
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_is_skipped_not_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe.dcm");
        crate::util::fs::test_support::make_fifo(&fifo);
        let s = scan(&[tmp.path().to_owned()]).unwrap();
        assert!(s.images.is_empty() && s.rejected.is_empty());
        assert_eq!(s.skipped.len(), 1);
        assert!(s.skipped[0].1.contains("not a regular file"));
    }
}

/// Memory the kept header data sets cost: `CT_HARMONIZER_MEASURE_DIR` names a folder of one series
/// (600 slices, say); prints the resident set after a plain scan and after a keeping one.
/// `cargo test -p ct-harmonizer --lib kept_dataset_memory -- --ignored --nocapture`
#[cfg(test)]
mod measure {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    #[ignore]
    fn kept_dataset_memory() {
        let dir = std::path::PathBuf::from(std::env::var("CT_HARMONIZER_MEASURE_DIR").unwrap());
        let plain = super::scan(std::slice::from_ref(&dir)).unwrap();
        let n = plain.images.len();
        let before = rss_kib();
        drop(plain);
        let plain = super::scan(std::slice::from_ref(&dir)).unwrap();
        let with_plain = rss_kib();
        drop(plain);
        let kept = super::scan_keeping(std::slice::from_ref(&dir)).unwrap();
        let with_kept = rss_kib();
        println!(
            "{n} files: rss {before} KiB; headers only {with_plain} KiB; headers + data sets {with_kept} KiB ({} KiB more, {} B per file)",
            with_kept as i64 - with_plain as i64,
            (with_kept as i64 - with_plain as i64) * 1024 / n.max(1) as i64
        );
        assert_eq!(kept.images.len(), n);
    }
}
