//! Shared by the training crate's integration tests that run exported models through the daemon's
//! ONNX Runtime path.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ct_harmonizer::config::Settings;
use std::path::Path;

/// The daemon's default settings, pointed at the ONNX Runtime library `scripts/setup.sh`
/// provisions in the workspace root when neither `ORT_DYLIB_PATH` nor the settings name one.
pub fn settings() -> Settings {
    let mut s = Settings::load_with_env(None, Vec::new()).unwrap();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() && s.runtime.onnxruntime_library.is_empty() {
        // Tests run in training/; the provisioned library sits in the workspace root.
        let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(ct_harmonizer::model::runtime::PROVISIONED_RELATIVE);
        if lib.is_file() {
            s.runtime.onnxruntime_library = lib.display().to_string();
        }
    }
    s
}
