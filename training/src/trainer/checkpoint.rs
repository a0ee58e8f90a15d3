//! Run files and checkpoints: `model.json` and `train.json` (read with neutral defaults for fields
//! an older `ct-train` did not write), `checkpoint/` (weights, optimizer states, image pools,
//! `state.json`, and `synth_format.json` when the data came from `ct-train synth`), replaced
//! atomically. Resuming refuses a checkpoint trained on another `synth_format` than the data's.

use super::{
    io_err, TrainError, Trainer, CHECKPOINT_DIR, DISC_FILE, GEN_FILE, MODEL_CONFIG, OPT_D_FILE,
    OPT_G_FILE, POOL_A_FILE, POOL_B_FILE, STATE_FILE, TRAIN_CONFIG,
};
use crate::config::{ModeArg, TaskArg, TrainConfig};
use crate::model::{param_shapes, RevGan, RevGanConfig};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::path::{Path, PathBuf};

/// Progress saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Wall-clock seconds spent training, summed over resumes.
    pub seconds: f64,
    /// Backend the last steps ran on.
    pub device: String,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Writes `dir/{generators,discriminators,optim_g,optim_d}.mpk` and `dir/state.json`.
    pub fn save(&self, dir: &Path, state: &TrainState) -> Result<(), TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        self.gen
            .clone()
            .save_file(dir.join(GEN_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        self.disc
            .clone()
            .save_file(dir.join(DISC_FILE), &rec)
            .map_err(|e| ck(e.to_string()))?;
        rec.record(self.opt_g.to_record(), dir.join(OPT_G_FILE))
            .map_err(|e| ck(e.to_string()))?;
        rec.record(self.opt_d.to_record(), dir.join(OPT_D_FILE))
            .map_err(|e| ck(e.to_string()))?;
        self.pool_a.save(&dir.join(POOL_A_FILE))?;
        self.pool_b.save(&dir.join(POOL_B_FILE))?;
        write_synth_stamp(dir, Path::new(&self.cfg.data))?;
        let json = serde_json::to_string_pretty(state).map_err(|e| ck(e.to_string()))?;
        let p = dir.join(STATE_FILE);
        std::fs::write(&p, json).map_err(io_err(&p))?;
        Ok(())
    }

    /// Loads a checkpoint written by [`Self::save`] into this (freshly built) trainer.
    pub fn load(&mut self, dir: &Path) -> Result<TrainState, TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason: format!("{reason} (was it written by a different architecture?)"),
        };
        let state = read_state(dir)?;
        check_synth_stamp(dir, Path::new(&self.cfg.data))?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let (gs, ds) = (param_shapes(&self.gen), param_shapes(&self.disc));
        self.gen = self
            .gen
            .clone()
            .load_file(dir.join(GEN_FILE), &rec, &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.disc = self
            .disc
            .clone()
            .load_file(dir.join(DISC_FILE), &rec, &self.device)
            .map_err(|e| ck(e.to_string()))?;
        if param_shapes(&self.gen) != gs || param_shapes(&self.disc) != ds {
            return Err(ck(
                "parameter shapes differ from this run's architecture".into()
            ));
        }
        self.load_optimizers_and_pools(dir, &rec, &ck)?;
        self.step = state.step;
        Ok(state)
    }

    /// The optimizers' records and the image pools of checkpoint `dir` (shared by [`Self::load`]
    /// and [`Self::grow_from`]); a pool file missing (an older checkpoint) leaves that pool empty,
    /// logged.
    fn load_optimizers_and_pools(
        &mut self,
        dir: &Path,
        rec: &NamedMpkFileRecorder<FullPrecisionSettings>,
        ck: &dyn Fn(String) -> TrainError,
    ) -> Result<(), TrainError> {
        let og = rec
            .load(dir.join(OPT_G_FILE), &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.opt_g = self.opt_g.clone().load_record(og);
        let od = rec
            .load(dir.join(OPT_D_FILE), &self.device)
            .map_err(|e| ck(e.to_string()))?;
        self.opt_d = self.opt_d.clone().load_record(od);
        let inner = self.device.clone();
        for (pool, file) in [
            (&mut self.pool_a, POOL_A_FILE),
            (&mut self.pool_b, POOL_B_FILE),
        ] {
            let p = dir.join(file);
            if p.exists() {
                pool.load(&p, &inner)?;
            } else {
                tracing::warn!(checkpoint = %dir.display(), "no {file} in the checkpoint: the image pool starts empty");
            }
        }
        Ok(())
    }
}

/// File of a run directory started with `ct-train train --init-from` (a grown core): where the
/// starting weights came from ([`GrownFrom`]). Kept across `--resume`; `ct-train export` names it
/// in the model's provenance.
pub const GROWN_FILE: &str = "grown_from.json";

/// Provenance of a run started from another run's checkpoint (`--init-from`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrownFrom {
    /// The checkpoint directory the weights were read from.
    pub checkpoint: String,
    /// Its step: the grown run continues the step counter (and the learning-rate schedule) there.
    pub step: u64,
    /// Reversible blocks of the checkpoint, and of the grown core.
    pub blocks_from: usize,
    pub blocks_to: usize,
}

impl GrownFrom {
    /// One line for the provenance: "core grown from 2 to 4 reversible blocks ...".
    pub fn describe(&self) -> String {
        format!(
            "core grown from {} to {} reversible blocks (new blocks identity-initialised) from \
             checkpoint {} at step {}",
            self.blocks_from, self.blocks_to, self.checkpoint, self.step
        )
    }

    /// Reads `run/grown_from.json`; `None` when the run was not grown.
    pub fn read(run: &Path) -> Result<Option<Self>, TrainError> {
        let p = run.join(GROWN_FILE);
        match std::fs::read_to_string(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| TrainError::Checkpoint {
                    path: p,
                    reason: e.to_string(),
                }),
        }
    }

    /// Writes `run/grown_from.json`.
    pub fn write(&self, run: &Path) -> Result<(), TrainError> {
        let p = run.join(GROWN_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&p, json + "\n").map_err(io_err(&p))
    }
}

/// The checkpoint directory of `path`, a run directory (holding `checkpoint/`) or a checkpoint
/// directory itself (holding `state.json`), and the run directory holding its configs.
pub fn locate_checkpoint(path: &Path) -> Result<(PathBuf, PathBuf), TrainError> {
    if path.join(CHECKPOINT_DIR).join(STATE_FILE).is_file() {
        return Ok((path.to_owned(), path.join(CHECKPOINT_DIR)));
    }
    if path.join(STATE_FILE).is_file() {
        if let Some(run) = path.parent().filter(|r| r.join(MODEL_CONFIG).is_file()) {
            return Ok((run.to_owned(), path.to_owned()));
        }
    }
    Err(TrainError::Checkpoint {
        path: path.to_owned(),
        reason: format!(
            "not a training run: no {CHECKPOINT_DIR}/{STATE_FILE} in it (nor a checkpoint \
             directory with {STATE_FILE} beside a run's {MODEL_CONFIG})"
        ),
    })
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Starts this (freshly built) trainer from the checkpoint `dir` of a run with the
    /// architecture `old` (the same but for fewer reversible blocks; checked by the caller): the
    /// generators grown by [`RevGan::grown_from`] (every trained parameter copied, the new blocks
    /// exactly the identity), the discriminators and image pools as saved, the optimizers'
    /// records loaded, so that the copied parameters continue with their Adam moments while the
    /// new blocks' parameters (absent from the record) start with fresh ones. Returns the
    /// checkpoint's state: the step counter continues from there.
    pub fn grow_from(&mut self, dir: &Path, old: &RevGanConfig) -> Result<TrainState, TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: dir.to_owned(),
            reason,
        };
        let state = read_state(dir)?;
        check_synth_stamp(dir, Path::new(&self.cfg.data))?;
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let fresh = RevGan::<B>::new(old, &self.device);
        let shapes = param_shapes(&fresh);
        let trained = fresh
            .load_file(dir.join(GEN_FILE), &rec, &self.device)
            .map_err(|e| ck(format!("{e} (does {GEN_FILE} match {old:?}?)")))?;
        if param_shapes(&trained) != shapes {
            return Err(ck(format!(
                "the generators' parameter shapes differ from the architecture {old:?}"
            )));
        }
        self.gen = self.gen.clone().grown_from(trained)?;
        let ds = param_shapes(&self.disc);
        self.disc = self
            .disc
            .clone()
            .load_file(dir.join(DISC_FILE), &rec, &self.device)
            .map_err(|e| ck(e.to_string()))?;
        if param_shapes(&self.disc) != ds {
            return Err(ck(
                "the discriminators' parameter shapes differ from this run's".into(),
            ));
        }
        self.load_optimizers_and_pools(dir, &rec, &ck)?;
        self.step = state.step;
        Ok(state)
    }
}

/// File of a checkpoint recording the `synth_format` of its training data.
pub const SYNTH_STAMP_FILE: &str = "synth_format.json";

/// Records in checkpoint `dir` the `synth_format` of `data` (nothing when `data` is not `synth`'s).
pub fn write_synth_stamp(dir: &Path, data: &Path) -> Result<(), TrainError> {
    if data.as_os_str().is_empty() {
        return Ok(());
    }
    if let Some((_, f)) = crate::data::synth::data_format(data)? {
        let p = dir.join(SYNTH_STAMP_FILE);
        let json = serde_json::json!({ "synth_format": f, "data": data.display().to_string() });
        std::fs::write(&p, format!("{json:#}\n")).map_err(io_err(&p))?;
    }
    Ok(())
}

/// Refuses checkpoint `dir` when `data` is `synth`'s and the checkpoint was trained on another
/// `synth_format` (a checkpoint without [`SYNTH_STAMP_FILE`] predates the formats: format 1).
pub fn check_synth_stamp(dir: &Path, data: &Path) -> Result<(), TrainError> {
    if data.as_os_str().is_empty() {
        return Ok(());
    }
    let Some((toml_path, want)) = crate::data::synth::data_format(data)? else {
        return Ok(());
    };
    let p = dir.join(SYNTH_STAMP_FILE);
    let found = match std::fs::read_to_string(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => return Err(io_err(&p)(e)),
        Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("synth_format").and_then(|f| f.as_u64()))
            .and_then(|f| u32::try_from(f).ok())
            .ok_or_else(|| TrainError::Checkpoint {
                path: p.clone(),
                reason: "no whole-number synth_format".into(),
            })?,
    };
    if found != want {
        return Err(TrainError::Checkpoint {
            path: p,
            reason: format!(
                "checkpoint trained on `ct-train synth` data of synth_format {found}, but {} is \
                 synth_format {want}: a checkpoint of an older synth format cannot be resumed on \
                 this data; start a new run (--force)",
                toml_path.display()
            ),
        });
    }
    Ok(())
}

/// Reads `dir/state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: p,
        reason: e.to_string(),
    })
}

/// Loads only the generators of a run directory (for export and evaluation).
pub fn load_generators<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(RevGanConfig, TrainConfig, TrainState, RevGan<B>), TrainError> {
    let (model_cfg, cfg) = read_configs(run)?;
    let ck = run.join(CHECKPOINT_DIR);
    let state = read_state(&ck)?;
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let fresh = RevGan::<B>::new(&model_cfg, device);
    let expected = param_shapes(&fresh);
    let mismatch = |reason: String| TrainError::Checkpoint {
        path: ck.clone(),
        reason: format!(
            "{reason}: the weights do not match the architecture in {} ({model_cfg:?})",
            run.join(MODEL_CONFIG).display()
        ),
    };
    let gen = fresh
        .load_file(ck.join(GEN_FILE), &rec, device)
        .map_err(|e| mismatch(e.to_string()))?;
    if param_shapes(&gen) != expected {
        return Err(mismatch("parameter shapes differ".into()));
    }
    Ok((model_cfg, cfg, state, gen))
}

/// Reads `run/model.json` and `run/train.json`.
pub fn read_configs(run: &Path) -> Result<(RevGanConfig, TrainConfig), TrainError> {
    let load_err = |p: PathBuf, e: String| TrainError::Checkpoint { path: p, reason: e };
    let mp = run.join(MODEL_CONFIG);
    let tp = run.join(TRAIN_CONFIG);
    let m: RevGanConfig =
        load_with_defaults(&mp, &RevGanConfig::new()).map_err(|e| load_err(mp.clone(), e))?;
    // `task` and `mode` have no defaults: the saved file's own values fill them first.
    let t: TrainConfig =
        load_with_defaults(&tp, &TrainConfig::new(TaskArg::Kernel, ModeArg::Paired))
            .map_err(|e| load_err(tp.clone(), e))?;
    Ok((m, t))
}

/// Reads a saved config, taking fields the file lacks (written by an older `ct-train`, before the
/// option existed) from `defaults`, which are that option's neutral values.
fn load_with_defaults<C: serde::Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    defaults: &C,
) -> Result<C, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut merged = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
    match (&mut merged, saved) {
        (serde_json::Value::Object(m), serde_json::Value::Object(s)) => m.extend(s),
        _ => return Err("not a JSON object".into()),
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

/// Replaces `run/checkpoint` atomically (write beside, then rename).
pub fn checkpoint<B: AutodiffBackend>(
    t: &Trainer<B>,
    run: &Path,
    state: &TrainState,
) -> Result<(), TrainError> {
    let tmp = run.join(".checkpoint.tmp");
    let old = run.join(".checkpoint.old");
    let dst = run.join(CHECKPOINT_DIR);
    let _ = std::fs::remove_dir_all(&tmp);
    t.save(&tmp, state)?;
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod synth_format_tests {
    use super::*;

    /// Bad input: a checkpoint from an older `synth` format (no stamp, or stamp 1) is refused on
    /// current data, naming the file and the value; a matching stamp and non-synth data pass.
    #[test]
    fn checkpoint_of_an_older_synth_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (data, ck) = (dir.path().join("data"), dir.path().join("checkpoint"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&ck).unwrap();
        // Not synth's data: nothing to check, nothing written.
        write_synth_stamp(&ck, &data).unwrap();
        assert!(!ck.join(SYNTH_STAMP_FILE).exists());
        check_synth_stamp(&ck, &data).unwrap();
        let fmt = crate::data::synth::SYNTH_FORMAT;
        std::fs::write(data.join("synth.toml"), format!("synth_format = {fmt}\n")).unwrap();
        // A checkpoint from before the formats (no stamp) is format 1.
        let e = check_synth_stamp(&ck, &data).unwrap_err().to_string();
        assert!(
            e.contains("synth_format 1")
                && e.contains(SYNTH_STAMP_FILE)
                && e.contains("synth.toml"),
            "{e}"
        );
        write_synth_stamp(&ck, &data).unwrap();
        check_synth_stamp(&ck, &data).unwrap();
        std::fs::write(ck.join(SYNTH_STAMP_FILE), "{\"synth_format\": 1}").unwrap();
        let e = check_synth_stamp(&ck, &data).unwrap_err().to_string();
        assert!(
            e.contains("synth_format 1") && e.contains(&format!("synth_format {fmt}")),
            "{e}"
        );
    }
}
