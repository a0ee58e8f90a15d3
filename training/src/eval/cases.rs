//! The held-out cases of `ct-train eval` and running a model over one of them as the daemon does.

use super::EvalError;
use crate::data::{load_volume, Volume};
use crate::lib_bridge::{Control, Translator};
use crate::physics::{Cylinder, Inserts};
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

/// The quality-control inserts of each case (in `cases` order) from `dir/synth.toml`'s
/// `[case.inserts]` (realistic `ct-train synth` phantoms: `water_centre`, `water_radius`,
/// `rod_centre`, `rod_radius`, `lung_centre`, `lung_radius`; centres `[y, x]` and radii in pixels
/// of the written thin volumes, through every slice). `None` for a case without that table, and
/// for every case when there is no readable `synth.toml` (other sources, older formats: eval then
/// searches its ROIs as before). A table with a missing or malformed key is an error naming the
/// file, the case and the key.
pub fn load_inserts(dir: &Path, cases: &[Case]) -> Result<Vec<Option<Inserts>>, EvalError> {
    let path = dir.join("synth.toml");
    let none = vec![None; cases.len()];
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(none);
    };
    let table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(
                "{}: not readable as TOML ({e}); no insert ROIs, the ROIs are searched",
                path.display()
            );
            return Ok(none);
        }
    };
    let entries = table
        .get("case")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out = none;
    for (slot, c) in out.iter_mut().zip(cases) {
        let entry = entries
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(c.name.as_str()));
        let Some(t) = entry.and_then(|e| e.get("inserts")) else {
            continue;
        };
        let bad = |key: &str, what: &str| EvalError::Inserts {
            path: path.clone(),
            case: c.name.clone(),
            reason: format!("[case.inserts] {key}: {what}"),
        };
        let num = |key: &str| -> Result<f64, EvalError> {
            let v = t.get(key).ok_or_else(|| bad(key, "missing"))?;
            v.as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(key, &format!("expected a number, found {v}")))
        };
        let pair = |key: &str| -> Result<[f64; 2], EvalError> {
            let v = t.get(key).ok_or_else(|| bad(key, "missing"))?;
            let xs: Vec<f64> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
                        .filter(|x| x.is_finite())
                        .collect()
                })
                .unwrap_or_default();
            match xs.as_slice() {
                [y, x] if v.as_array().is_some_and(|a| a.len() == 2) => Ok([*y, *x]),
                _ => Err(bad(key, &format!("expected [y, x] in pixels, found {v}"))),
            }
        };
        let cyl = |name: &str| -> Result<Cylinder, EvalError> {
            Ok(Cylinder {
                centre: pair(&format!("{name}_centre"))?,
                radius: num(&format!("{name}_radius"))?,
            })
        };
        *slot = Some(Inserts {
            water: cyl("water")?,
            rod: cyl("rod")?,
            lung: cyl("lung")?,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::{evaluate, Baselines, EvalOptions, PhysicsOptions};
    use super::*;
    use crate::eval::Physics;
    use crate::physics::roi::testing;

    const INSERTS: &str = "[case.inserts]\nwater_centre = [10.38, 41.74]\nwater_radius = 8.96\n\
        water_hu = 0.0\nrod_centre = [10.38, 45.324]\nrod_radius = 2.816\nrod_hu = 900.0\n\
        lung_centre = [10.38, 85.26]\nlung_radius = 8.96\nlung_hu = -850.0\n";

    /// A case of the 128² insert phantom: a noisy sharp volume (edges blurred by 0.6 px) and its
    /// copy blurred by 1 px as target.
    fn write_case(dir: &Path, name: &str, seed: u64) {
        let ins = testing::inserts_128(1.0);
        let sharp = testing::phantom([8, 128, 128], &ins, 0.6, 30.0, seed);
        let soft = crate::resample::gaussian_blur(&sharp.values, sharp.shape, 1.0, 0.0);
        let sp = [2.7, 2.7, 2.7];
        crate::eval::tests::write_pair(&dir.join(name), sharp.shape, sp, &sharp.values, &soft);
    }

    fn synth_toml(dir: &Path, cases: &[(&str, &str)]) {
        let mut s = String::from("synth_format = 2\nmode = \"independent\"\n");
        for (name, inserts) in cases {
            s.push_str(&format!(
                "\n[[case]]\nname = \"{name}\"\nshape = [8, 128, 128]\n\n{inserts}"
            ));
        }
        std::fs::write(dir.join("synth.toml"), s).unwrap();
    }

    /// Without a synth.toml, or with one whose cases have no `[case.inserts]`, no case has inserts
    /// (the ROIs are searched as before); a table with a missing or malformed key is an error
    /// naming the file, the case and the key.
    #[test]
    fn inserts_are_read_from_synth_toml_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write_case(p, "case-a", 1);
        write_case(p, "case-b", 2);
        let cases = load_cases(p).unwrap();
        assert_eq!(load_inserts(p, &cases).unwrap(), vec![None, None]);
        synth_toml(p, &[("case-a", ""), ("case-b", "")]);
        assert_eq!(load_inserts(p, &cases).unwrap(), vec![None, None]);
        synth_toml(p, &[("case-a", ""), ("case-b", INSERTS)]);
        let got = load_inserts(p, &cases).unwrap();
        assert_eq!(got[0], None);
        assert_eq!(got[1], Some(testing::inserts_128(1.0)));
        synth_toml(
            p,
            &[("case-b", &INSERTS.replace("rod_radius = 2.816\n", ""))],
        );
        let e = load_inserts(p, &cases).unwrap_err().to_string();
        assert!(
            e.contains("synth.toml") && e.contains("case-b") && e.contains("rod_radius"),
            "{e}"
        );
        synth_toml(
            p,
            &[("case-a", &INSERTS.replace("[10.38, 85.26]", "[10.38]"))],
        );
        let e = load_inserts(p, &cases).unwrap_err().to_string();
        assert!(e.contains("case-a") && e.contains("lung_centre"), "{e}");
    }

    /// With inserts every row gets its noise in soft tissue and lung, an NPS (lung-foam squares:
    /// the 128² water insert holds none) and its MTF50 on the case's own rod; the blurred target has a lower MTF50 and less noise than the sharp input. An
    /// insert outside the image is an error naming the case and the insert.
    #[test]
    fn eval_measures_noise_and_mtf_in_the_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let (held, tune) = (dir.path().join("heldout"), dir.path().join("tune"));
        write_case(&held, "case-a", 1);
        write_case(&held, "case-b", 2);
        write_case(&tune, "tune-c", 3);
        synth_toml(&held, &[("case-a", INSERTS), ("case-b", INSERTS)]);
        let o = EvalOptions {
            pairs: held.clone(),
            csv: dir.path().join("eval.csv"),
            tune: Some(tune),
            baselines: Baselines::parse("identity,gaussian").unwrap(),
            physics: Some(PhysicsOptions {
                roi: 16,
                max_rois: 48,
            }),
            ..EvalOptions::default()
        };
        let r = evaluate(&o).unwrap();
        for row in &r.rows {
            let p = &row.physics;
            assert!(
                p.noise_soft.is_some()
                    && p.noise_lung.is_some()
                    && p.mtf50.is_some()
                    && p.nps_distance.is_some(),
                "{} {}: {p:?}",
                row.case,
                row.method
            );
        }
        let id = r
            .rows
            .iter()
            .find(|x| x.case == "mean" && x.method.starts_with("identity"))
            .unwrap();
        assert!(
            Physics::ratio(id.physics.noise_soft).unwrap() > 2.0,
            "{:?}",
            id.physics
        );
        assert!(
            Physics::ratio(id.physics.noise_lung).unwrap() > 2.0,
            "{:?}",
            id.physics
        );
        assert!(
            Physics::ratio(id.physics.mtf50).unwrap() > 1.2,
            "{:?}",
            id.physics
        );
        // The target's noise: σ = 30 blurred by a Gaussian of 1 px is 30 / (2 √π) = 8.5 HU.
        let (_, t) = id.physics.noise_lung.unwrap();
        assert!((t / 8.46 - 1.0).abs() < 0.1, "{t}");
        assert_eq!(r.roi_notes.len(), 2);
        assert!(
            r.roi_notes[0].contains("8 squares of 8 px in the lung foam insert")
                && r.roi_notes[0].contains("holds no"),
            "{:?}",
            r.roi_notes
        );

        synth_toml(
            &held,
            &[
                ("case-a", INSERTS),
                (
                    "case-b",
                    &INSERTS.replace("[10.38, 85.26]", "[10.38, 124.0]"),
                ),
            ],
        );
        let e = evaluate(&o).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, super::super::EvalError::InsertRoi { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("case-b")
                && msg.contains("lung foam insert")
                && msg.contains("synth.toml"),
            "{msg}"
        );
    }
}
