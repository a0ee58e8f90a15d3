//! Reads the headers of every file under the given paths (folders recursively, in name order).
//! Non-image DICOM objects and non-regular files (FIFOs, sockets, devices: never opened) are skipped
//! with a note; unreadable files are reported with the reason.

use std::path::{Path, PathBuf};

use crate::dicom::header::read_header;
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
    let mut files = Vec::new();
    let mut scan = Scan::default();
    for p in paths {
        collect(p, &mut files, &mut scan.skipped)?;
    }
    for f in files {
        match read_header(&f) {
            Ok(h) if h.is_image() => scan.images.push(h),
            Ok(h) => {
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
        let o = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .output()
            .unwrap();
        assert!(o.status.success());
        let s = scan(&[tmp.path().to_owned()]).unwrap();
        assert!(s.images.is_empty() && s.rejected.is_empty());
        assert_eq!(s.skipped.len(), 1);
        assert!(s.skipped[0].1.contains("not a regular file"));
    }
}
