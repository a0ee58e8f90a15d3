//! Writing models in the contract format the daemon reads (`models/<name>/model.onnx` +
//! `model.toml`, DESIGN §3): [`onnx`] (the hand-declared ONNX messages and a small graph builder,
//! shared by every exporter), [`baseline`] (the classical Gaussian baseline, `ct-train
//! export-baseline`), [`trained`] (a trained generator, `ct-train export`) and [`megan`] (a trained
//! MEGAN as a multi-stage model, `ct-train export` of an `--arch megan` run) and [`skip`] (the
//! linear skip filter of an exported residual generator alone, `ct-train export-skip`).

pub mod baseline;
pub mod megan;
pub mod onnx;
pub mod skip;
pub mod trained;

pub use baseline::{export_baseline, BaselineExport, BASELINE_NAME, BASELINE_VERSION};

use std::io::Write;
use std::path::Path;

/// File names inside a model directory.
pub const ONNX_FILE: &str = "model.onnx";
pub const MANIFEST_FILE: &str = "model.toml";
/// Graph input and output tensor names.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";

/// Writes `bytes` to `path` via a temporary file in the same directory, fsync and a rename (shared
/// by every exporter of this crate).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: do not leave a half-written temporary behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
