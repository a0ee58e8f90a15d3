//! The site configuration file: loaded over the compiled-in defaults and validated, as `serve`,
//! `check-config` and SIGHUP do. Errors are fine; panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("ct-harmonizer.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = ct_harmonizer::config::Settings::load_with_env(Some(&path), Vec::new());
});
