//! ONNX Runtime: finding and loading the shared library (once per process), and opening sessions on
//! the configured device. A CUDA session that cannot be created falls back to the CPU with one log line.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::{Device, RuntimeSettings};

/// Errors loading ONNX Runtime or a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (tried: {tried}). Run `bash scripts/setup.sh` in the ct-harmonizer checkout, or point [runtime] onnxruntime_library or ORT_DYLIB_PATH at libonnxruntime.so")]
    NotFound { tried: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}. Run `bash scripts/setup.sh` in the ct-harmonizer checkout to install version 1.31.1")]
    Load { path: PathBuf, reason: String },
    #[error("cannot open model {path} in ONNX Runtime: {reason}")]
    Session { path: PathBuf, reason: String },
}

/// Where `scripts/setup.sh` puts the library, relative to a checkout.
pub const PROVISIONED_RELATIVE: &str = ".deps/ort/onnxruntime/capi/libonnxruntime.so.1.31.1";
/// Where a packaged install keeps it.
pub const PROVISIONED_SYSTEM: &str = "/usr/lib/ct-harmonizer/libonnxruntime.so";

/// Candidate library paths in order: config key, `ORT_DYLIB_PATH`, then the provisioned locations
/// (working directory and the executable's ancestors, then the system location).
pub fn candidates(configured: &str, env_path: Option<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !configured.trim().is_empty() {
        out.push(PathBuf::from(configured.trim()));
    }
    if let Some(p) = env_path.filter(|p| !p.trim().is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(PROVISIONED_RELATIVE));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let p = dir.join(PROVISIONED_RELATIVE);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.push(PathBuf::from(PROVISIONED_SYSTEM));
    out
}

/// ONNX Runtime, loaded: the library's path and the process-wide environment.
pub struct Loaded {
    pub library: PathBuf,
    env: ort::environment::Environment,
}

static LOADED: OnceLock<Result<Loaded, RuntimeError>> = OnceLock::new();

/// Loads ONNX Runtime once per process; later calls return the first outcome.
pub fn init(settings: &RuntimeSettings) -> Result<&'static Loaded, RuntimeError> {
    LOADED
        .get_or_init(|| load(settings))
        .as_ref()
        .map_err(Clone::clone)
}

fn load(settings: &RuntimeSettings) -> Result<Loaded, RuntimeError> {
    let env_path = std::env::var("ORT_DYLIB_PATH").ok();
    // An explicitly configured path must work: it is never skipped for a later candidate.
    let explicit = !settings.onnxruntime_library.trim().is_empty()
        || env_path.as_ref().is_some_and(|p| !p.trim().is_empty());
    let list = candidates(&settings.onnxruntime_library, env_path);
    let found = if explicit {
        list.first()
    } else {
        list.iter().find(|p| p.is_file())
    };
    let Some(path) = found.cloned() else {
        let tried = list
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RuntimeError::NotFound { tried });
    };
    let load_err = |reason: String| RuntimeError::Load {
        path: path.clone(),
        reason,
    };
    if !path.is_file() {
        return Err(load_err("no such file".into()));
    }
    let env = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("ct-harmonizer")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    crate::events::RuntimeLoaded {
        library: &path.display().to_string(),
    }
    .emit();
    Ok(Loaded { library: path, env })
}

fn wants_cuda(device: Device) -> bool {
    match device {
        Device::Cpu => false,
        Device::Cuda => true,
        Device::Auto => cfg!(feature = "cuda"),
    }
}

/// Opens a session for `onnx` on the configured device (CUDA falls back to the CPU with one log line).
/// Returns the session and the name of the device it runs on.
pub fn open_session(
    onnx: &Path,
    settings: &RuntimeSettings,
) -> Result<(Session, &'static str), RuntimeError> {
    let loaded = init(settings)?;
    let err = |reason: String| RuntimeError::Session {
        path: onnx.to_owned(),
        reason,
    };
    if wants_cuda(settings.device) {
        match build_session(&loaded.env, onnx, settings, true) {
            Ok(s) => return Ok((s, "cuda")),
            Err(reason) => crate::events::CudaFallback {
                model: &onnx.display().to_string(),
                reason: &reason,
            }
            .emit(),
        }
    }
    build_session(&loaded.env, onnx, settings, false)
        .map(|s| (s, "cpu"))
        .map_err(err)
}

fn build_session(
    env: &ort::environment::Environment,
    onnx: &Path,
    settings: &RuntimeSettings,
    cuda: bool,
) -> Result<Session, String> {
    let threads = if settings.intra_threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        settings.intra_threads
    };
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?;
    if cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| e.to_string())?;
    }
    builder.commit_from_file(onnx).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_in_order() {
        let c = candidates("/a/lib.so", Some("/b/lib.so".into()));
        assert_eq!(c[0], PathBuf::from("/a/lib.so"));
        assert_eq!(c[1], PathBuf::from("/b/lib.so"));
        assert!(c[2].ends_with(PROVISIONED_RELATIVE));
        assert_eq!(
            c.last().map(PathBuf::as_path),
            Some(Path::new(PROVISIONED_SYSTEM))
        );
        let c = candidates("", None);
        assert!(c[0].ends_with(PROVISIONED_RELATIVE));
    }
}
