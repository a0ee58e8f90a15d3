//! The held-out cases of `ct-train eval` and running a model over one of them as the daemon does.

use super::EvalError;
use crate::data::{load_volume, Volume};
use crate::lib_bridge::{Control, Translator};
use std::path::{Path, PathBuf};

/// One held-out case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub sharp: Option<Volume>,
    pub soft: Volume,
    pub thick: Option<Volume>,
}

fn find_member(dir: &Path, what: &str) -> Option<PathBuf> {
    crate::data::find_member(dir, &[what])
}

/// Loads every case folder under `dir` (sorted by name); a folder without `soft` is skipped.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, EvalError> {
    let io = |source| EvalError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    subdirs.retain(|p| p.is_dir());
    subdirs.sort();
    let mut cases = Vec::new();
    for d in subdirs {
        let Some(soft) = find_member(&d, "soft") else {
            continue;
        };
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let soft = load_volume(&soft)?;
        let sharp = find_member(&d, "sharp")
            .map(|p| load_volume(&p))
            .transpose()?;
        let thick = find_member(&d, "thick")
            .map(|p| load_volume(&p))
            .transpose()?;
        if let Some(s) = &sharp {
            if s.shape != soft.shape {
                return Err(EvalError::Shape(format!(
                    "case {name}: sharp {:?} and soft {:?} differ in shape",
                    s.shape, soft.shape
                )));
            }
        }
        cases.push(Case {
            name,
            sharp,
            soft,
            thick,
        });
    }
    if cases.is_empty() {
        return Err(EvalError::Pairs {
            path: dir.to_owned(),
            reason: "no case folders with a `soft` member (see `ct-train synth`)".into(),
        });
    }
    Ok(cases)
}

/// Runs a translator over a whole volume, slab by slab, as the daemon does.
pub fn run_model(t: &mut Translator, input: &Volume) -> Result<Volume, EvalError> {
    let dir = t.model_dir().dir.clone();
    let terr = |source| EvalError::Translate {
        dir: dir.clone(),
        source,
    };
    let [nz, ny, nx] = input.shape;
    let [sz, sy, sx] = t.manifest().scale();
    let (oy, ox) = (ny * sy, nx * sx);
    let out = t
        .translate_volume(&input.values, input.shape, &Control::none())
        .map_err(terr)?;
    Ok(Volume::new(
        format!("{} -> {}", input.name, t.manifest().name),
        [nz * sz, oy, ox],
        [
            input.spacing[0] / sz as f64,
            input.spacing[1] / sy as f64,
            input.spacing[2] / sx as f64,
        ],
        out,
    ))
}
