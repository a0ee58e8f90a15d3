//! Settings: the documented defaults in `config/ct-harmonizer.toml` (compiled in), overridden by a site
//! file and by `CT_HARMONIZER__SECTION__KEY` environment variables. Unknown keys are errors.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The documented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/ct-harmonizer.toml");

/// Errors loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration{}: {source}", .path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Load {
        path: Option<PathBuf>,
        source: config::ConfigError,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub runtime: RuntimeSettings,
    pub models: ModelSettings,
    pub volume: VolumeSettings,
    pub translate: TranslateSettings,
    pub derive: DeriveSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    pub onnxruntime_library: String,
    pub device: Device,
    pub intra_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub dir: PathBuf,
    pub default: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    pub spacing_tolerance: f64,
    pub max_tilt_degrees: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateSettings {
    pub tile: [usize; 3],
    pub slabs_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveSettings {
    pub series_number_offset: i32,
    pub series_description_suffix: String,
    pub manufacturer: String,
    pub institution: String,
}

impl Settings {
    /// Loads defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            b = b.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CT_HARMONIZER__"))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("CT_HARMONIZER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let load_err = |source| ConfigError::Load {
            path: file.map(Path::to_owned),
            source,
        };
        let settings: Settings = b
            .build()
            .map_err(load_err)?
            .try_deserialize()
            .map_err(load_err)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.volume;
        if !(v.spacing_tolerance > 0.0 && v.spacing_tolerance < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "volume.spacing_tolerance = {} must be in (0, 1)",
                v.spacing_tolerance
            )));
        }
        if !(0.0..90.0).contains(&v.max_tilt_degrees) {
            return Err(ConfigError::Invalid(format!(
                "volume.max_tilt_degrees = {} must be in [0, 90)",
                v.max_tilt_degrees
            )));
        }
        if self.translate.slabs_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "translate.slabs_in_flight must be at least 1".into(),
            ));
        }
        if self.models.default.trim().is_empty() {
            return Err(ConfigError::Invalid("models.default is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.models.default, "gaussian-soft-baseline");
        assert_eq!(s.runtime.device, Device::Auto);
        assert_eq!(s.translate.tile, [0, 0, 0]);
    }

    #[test]
    fn env_overrides() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CT_HARMONIZER__RUNTIME__INTRA_THREADS", "3"),
                ("CT_HARMONIZER__DERIVE__SERIES_NUMBER_OFFSET", "77"),
            ]),
        )
        .unwrap();
        assert_eq!(s.runtime.intra_threads, 3);
        assert_eq!(s.derive.series_number_offset, 77);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[volume]\nspacing_tolerence = 0.2\n").unwrap();
        let e = Settings::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(e.to_string().contains("spacing_tolerence"), "{e}");
        let e = Settings::load_with_env(None, env(&[("CT_HARMONIZER__NOPE__X", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn invalid_values_are_errors() {
        let e = Settings::load_with_env(
            None,
            env(&[("CT_HARMONIZER__VOLUME__SPACING_TOLERANCE", "2")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spacing_tolerance"), "{e}");
    }
}
