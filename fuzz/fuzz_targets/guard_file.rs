//! Part 10 files (watched folder, spool) through the guard, then, when it passes, through the
//! guarded readers the processor uses (`open_header`, `open_full`): no crash, no stack overflow, no
//! allocation beyond the file (a deflated data set is inflated up to the limit only).
#![no_main]
use ct_harmonizer::dicom::guard::{check_part10_file, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("f.dcm");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let limits = Limits {
        max_bytes: 64 << 20,
        ..Limits::default()
    };
    if check_part10_file(&path, &limits).is_ok() {
        let _ = ct_harmonizer::dicom::header::read_header(&path);
        let _ = ct_harmonizer::dicom::header::open_full(&path);
    }
});
