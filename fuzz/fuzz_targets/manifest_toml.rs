//! A model manifest (`models/<name>/model.toml`), parsed and validated as the daemon does at start-up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ct_harmonizer::model::manifest::Manifest::from_toml(
        text,
        std::path::Path::new("fuzz/model.toml"),
    );
});
