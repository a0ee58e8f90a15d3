//! The physics figures of one output against its target ([`crate::physics`]), on ROIs fixed per
//! case from the target, and their aggregation over cases (Bland–Altman, pooled CCC).

use crate::physics::{
    bland_altman, ccc, features, find_rois, nps_radial, percentile, roi_noise_std, BlandAltman,
    NpsCurve, Roi, RoiSet, FEATURE_NAMES,
};
use crate::physics::{
    ensemble_residual, mtf50, mtf_rod_insert, region_noise_std, InsertClass, InsertRois, Inserts,
};
use crate::volume::Volume;

/// CCC threshold of a reproducible feature (Choe et al., Radiology 292:365, 2019; Lin's
/// "substantial" agreement is 0.95, radiomics studies use 0.85).
pub const CCC_REPRODUCIBLE: f64 = 0.85;

/// Settings of the physics figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhysicsOptions {
    /// ROI side (pixels).
    pub roi: usize,
    /// At most this many ROIs per class (soft tissue, lung) per case.
    pub max_rois: usize,
}

impl Default for PhysicsOptions {
    fn default() -> Self {
        Self {
            roi: 32,
            max_rois: 48,
        }
    }
}

/// Physics figures of one row: pairs are (output, target).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Physics {
    /// Noise std (HU) in the soft-tissue and in the lung ROIs.
    pub noise_soft: Option<(f64, f64)>,
    pub noise_lung: Option<(f64, f64)>,
    /// NPS (soft-tissue ROIs) peak and mean frequency (cycles/mm).
    pub nps_peak: Option<(f64, f64)>,
    pub nps_mean: Option<(f64, f64)>,
    /// Relative L2 distance of the output's NPS to the target's.
    pub nps_distance: Option<f64>,
    /// 15th percentile of the lung HU (over the target's lung mask).
    pub perc15: Option<(f64, f64)>,
    /// MTF50 (cycles/mm): on the case's rod insert when it has one (every row; mean rows average
    /// the cases), else on the edge phantom (per method, in mean rows or a single case's row).
    pub mtf50: Option<(f64, f64)>,
    /// Features with CCC ≥ 0.85 and features with a defined CCC (features × ROI classes).
    pub ccc: Option<(usize, usize)>,
    /// The same over the lung-structure ROIs (features of anatomy, as the published texture
    /// reproducibility over lesions; see [`crate::physics::find_rois`]).
    pub ccc_structure: Option<(usize, usize)>,
    /// Bland–Altman over cases (mean rows): emphysema index (points) and Perc15 (HU).
    pub ei_ba: Option<BlandAltman>,
    pub perc15_ba: Option<BlandAltman>,
}

impl Physics {
    pub fn ratio(p: Option<(f64, f64)>) -> Option<f64> {
        p.and_then(|(a, b)| (b != 0.0).then(|| a / b))
    }
    pub fn error(p: Option<(f64, f64)>) -> Option<f64> {
        p.map(|(a, b)| a - b)
    }
    /// Share of the features with CCC ≥ 0.85.
    pub fn ccc_share(&self) -> Option<f64> {
        share(self.ccc)
    }
    /// Share of the features with CCC ≥ 0.85 over the lung-structure ROIs.
    pub fn ccc_structure_share(&self) -> Option<f64> {
        share(self.ccc_structure)
    }
}

/// k / n of a (k, n) count, when n > 0.
fn share(c: Option<(usize, usize)>) -> Option<f64> {
    c.and_then(|(k, n)| (n > 0).then(|| k as f64 / n as f64))
}

/// Texture features per ROI class, one vector per ROI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassFeatures {
    pub soft: Vec<Vec<f64>>,
    pub lung: Vec<Vec<f64>>,
    pub structure: Vec<Vec<f64>>,
}

/// What is measured once on the target of a case.
#[derive(Debug, Clone)]
pub struct CaseRef {
    pub rois: RoiSet,
    mask: Vec<bool>,
    lung_valid: bool,
    pixel_mm: f64,
    slices: usize,
    noise_soft: Option<f64>,
    noise_lung: Option<f64>,
    pub nps: Option<NpsCurve>,
    perc15: Option<f64>,
    pub features: ClassFeatures,
    /// The case's quality-control inserts, when its `synth.toml` records them.
    inserts: Option<InsertRef>,
}

/// A case's inserts, their ROIs and the target's MTF50 on the rod.
#[derive(Debug, Clone)]
struct InsertRef {
    ins: Inserts,
    rois: InsertRois,
    mtf50: Option<f64>,
}

impl InsertRef {
    /// The squares of the NPS: the water insert's, else the lung foam's (none: the automatic
    /// soft-tissue ROIs).
    fn nps_class(&self) -> Option<&InsertClass> {
        [&self.rois.soft, &self.rois.lung]
            .into_iter()
            .find(|c| !c.squares.is_empty())
    }
}

/// Noise std (soft tissue, lung) and NPS of `v`. With inserts, the noise std of a class is taken
/// over its insert region and the NPS over the squares of the water insert, else of the lung foam
/// (at 128² the water cylinder holds none), both on the [`ensemble_residual`] (edges and slow
/// structure removed; a class without a region keeps its automatic ROIs, and so does the NPS
/// without insert squares). Without inserts everything is on the automatic ROIs. The texture
/// features stay on the automatic ROIs in both cases: in a uniform insert the features differ
/// between ROIs by noise only, and independent noise makes their CCC about 0 for every method
/// (measured on the realistic held-out pairs: 0 of 34 for every baseline on the lung-foam squares;
/// the searched uniform soft-tissue squares of `--roi 16` give at most 1 of 34 as well).
fn noise_figures(
    v: &Volume,
    rois: &RoiSet,
    inserts: Option<&InsertRef>,
    pixel_mm: f64,
) -> (Option<f64>, Option<f64>, Option<NpsCurve>) {
    let Some(i) = inserts else {
        return (
            roi_noise_std(v, &rois.soft),
            roi_noise_std(v, &rois.lung),
            nps_radial(v, &rois.soft, pixel_mm),
        );
    };
    let mut pixels = i.rois.soft.pixels.clone();
    pixels.extend_from_slice(&i.rois.lung.pixels);
    let Some(res) = ensemble_residual(v, &pixels) else {
        return (None, None, None);
    };
    let class = |c: &InsertClass, auto: &[Roi]| {
        if c.pixels.is_empty() {
            roi_noise_std(v, auto)
        } else {
            region_noise_std(&res, &c.pixels)
        }
    };
    let nps = match i.nps_class() {
        Some(c) => nps_radial(&res, &c.squares, pixel_mm),
        None => nps_radial(v, &rois.soft, pixel_mm),
    };
    (
        class(&i.rois.soft, &rois.soft),
        class(&i.rois.lung, &rois.lung),
        nps,
    )
}

fn rod_mtf50(v: &Volume, ins: &Inserts) -> Option<f64> {
    mtf_rod_insert(v, ins.rod, ins.water)
        .as_ref()
        .and_then(mtf50)
}

fn class_features(v: &Volume, rois: &RoiSet) -> ClassFeatures {
    let f = |r: &Roi| features(&r.extract(v), r.size, r.size);
    ClassFeatures {
        soft: rois.soft.iter().map(f).collect(),
        lung: rois.lung.iter().map(f).collect(),
        structure: rois.structure.iter().map(f).collect(),
    }
}

fn perc15(v: &Volume, mask: &[bool]) -> Option<f64> {
    let mut l: Vec<f64> = v
        .values
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&h, _)| f64::from(h))
        .collect();
    percentile(&mut l, 15.0)
}

impl CaseRef {
    /// ROIs and target figures of a case; `mask` is the target's lung mask.
    pub fn new(target: &Volume, mask: Vec<bool>, o: PhysicsOptions) -> Self {
        Self::build(target, mask, o, None)
    }

    /// The same for a case with quality-control inserts ([`crate::physics::insert_rois`]): noise
    /// and NPS on the inserts' ROIs (see `noise_figures`), MTF50 on the rod, texture on the
    /// automatic ROIs.
    pub fn with_inserts(
        target: &Volume,
        mask: Vec<bool>,
        o: PhysicsOptions,
        ins: Inserts,
        rois: InsertRois,
    ) -> Self {
        let mtf50 = rod_mtf50(target, &ins);
        Self::build(target, mask, o, Some(InsertRef { ins, rois, mtf50 }))
    }

    /// What the ROIs of this case are, for the output (`None` without inserts).
    pub fn insert_note(&self) -> Option<String> {
        let i = self.inserts.as_ref()?;
        let region = |c: &InsertClass| {
            format!(
                "{} insert, {} px x {} slices",
                c.insert,
                c.pixels.len(),
                self.slices
            )
        };
        let nps = match i.nps_class() {
            Some(c) => format!(
                "{} squares of {} px in the {} insert",
                c.squares.len(),
                c.side,
                c.insert
            ),
            None => format!("{} automatic soft-tissue squares", self.rois.soft.len()),
        };
        let skipped: Vec<&str> = [&i.rois.soft, &i.rois.lung]
            .into_iter()
            .filter_map(|c| c.skipped.as_deref())
            .collect();
        Some(format!(
            "noise std: soft tissue over the {}, lung over the {}; NPS: {nps}{}; texture: automatic ROIs ({} soft, {} lung, {} lung structure); rod MTF50 of the target: {}",
            region(&i.rois.soft),
            region(&i.rois.lung),
            if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join("; ")) },
            self.rois.soft.len(),
            self.rois.lung.len(),
            self.rois.structure.len(),
            i.mtf50
                .map(|m| format!("{m:.4} cycles/mm"))
                .unwrap_or_else(|| "none (rod edge not measurable)".into())
        ))
    }

    fn build(
        target: &Volume,
        mask: Vec<bool>,
        o: PhysicsOptions,
        inserts: Option<InsertRef>,
    ) -> Self {
        let rois = find_rois(target, &mask, o.roi, o.max_rois);
        let n = mask.iter().filter(|&&m| m).count();
        // The emphysema index's rule (metrics::emphysema_index): a lung holding ≥ 1 % of the volume.
        let lung_valid = n > 0 && n * 100 >= mask.len();
        let pixel_mm = 0.5 * (target.spacing[1] + target.spacing[2]);
        let (noise_soft, noise_lung, nps) =
            noise_figures(target, &rois, inserts.as_ref(), pixel_mm);
        Self {
            noise_soft,
            noise_lung,
            nps,
            perc15: if lung_valid {
                perc15(target, &mask)
            } else {
                None
            },
            features: class_features(target, &rois),
            rois,
            mask,
            lung_valid,
            pixel_mm,
            slices: target.shape[0],
            inserts,
        }
    }

    /// The figures of `out` (same grid as the target), its features and its NPS.
    pub fn measure(&self, out: &Volume) -> (Physics, ClassFeatures, Option<NpsCurve>) {
        let (noise_soft, noise_lung, nps) =
            noise_figures(out, &self.rois, self.inserts.as_ref(), self.pixel_mm);
        let both = |a: Option<f64>, b: Option<f64>| a.zip(b);
        let feats = class_features(out, &self.rois);
        let p = Physics {
            noise_soft: both(noise_soft, self.noise_soft),
            noise_lung: both(noise_lung, self.noise_lung),
            nps_peak: both(
                nps.as_ref().and_then(NpsCurve::peak),
                self.nps.as_ref().and_then(NpsCurve::peak),
            ),
            nps_mean: both(
                nps.as_ref().and_then(NpsCurve::mean_frequency),
                self.nps.as_ref().and_then(NpsCurve::mean_frequency),
            ),
            nps_distance: nps
                .as_ref()
                .zip(self.nps.as_ref())
                .and_then(|(a, b)| a.distance(b)),
            perc15: if self.lung_valid {
                both(perc15(out, &self.mask), self.perc15)
            } else {
                None
            },
            ccc: ccc_counts(&[(&feats, &self.features)]),
            ccc_structure: ccc_structure_counts(&[(&feats, &self.features)]),
            mtf50: self
                .inserts
                .as_ref()
                .and_then(|i| both(rod_mtf50(out, &i.ins), i.mtf50)),
            ..Physics::default()
        };
        (p, feats, nps)
    }
}

/// (features with CCC ≥ 0.85, features with a defined CCC) over the ROIs of all `pairs`
/// (output, target), pooled per ROI class; every feature of every class with ROIs counts once.
/// Classes: the uniform soft-tissue and lung ROIs.
pub fn ccc_counts(pairs: &[(&ClassFeatures, &ClassFeatures)]) -> Option<(usize, usize)> {
    ccc_over(pairs, &[|c| &c.soft, |c| &c.lung])
}

/// The same over the lung-structure ROIs.
pub fn ccc_structure_counts(pairs: &[(&ClassFeatures, &ClassFeatures)]) -> Option<(usize, usize)> {
    ccc_over(pairs, &[|c| &c.structure])
}

type Class = fn(&ClassFeatures) -> &Vec<Vec<f64>>;

fn ccc_over(
    pairs: &[(&ClassFeatures, &ClassFeatures)],
    classes: &[Class],
) -> Option<(usize, usize)> {
    let (mut good, mut total) = (0, 0);
    for pick in classes {
        let (mut o, mut t): (Vec<&Vec<f64>>, Vec<&Vec<f64>>) = (Vec::new(), Vec::new());
        for (a, b) in pairs {
            o.extend(pick(a));
            t.extend(pick(b));
        }
        if o.len() < 3 {
            continue;
        }
        for f in 0..FEATURE_NAMES.len() {
            let x: Vec<f64> = o.iter().map(|v| v[f]).collect();
            let y: Vec<f64> = t.iter().map(|v| v[f]).collect();
            if let Some(c) = ccc(&x, &y) {
                total += 1;
                if c >= CCC_REPRODUCIBLE {
                    good += 1;
                }
            }
        }
    }
    (total > 0).then_some((good, total))
}

/// The mean row's figures from the per-case ones: means of each (output, target) pair over the
/// cases that have it (ratios in the table are then ratios of means), the NPS distance averaged,
/// Bland–Altman of the emphysema index (`ei`: per case (output, target)) and of Perc15.
pub fn mean_physics(cases: &[&Physics], ei: &[(f64, f64)]) -> Physics {
    let pair_mean = |f: &dyn Fn(&Physics) -> Option<(f64, f64)>| {
        let v: Vec<(f64, f64)> = cases.iter().filter_map(|p| f(p)).collect();
        (!v.is_empty()).then(|| {
            let n = v.len() as f64;
            (
                v.iter().map(|x| x.0).sum::<f64>() / n,
                v.iter().map(|x| x.1).sum::<f64>() / n,
            )
        })
    };
    let d: Vec<f64> = cases.iter().filter_map(|p| p.nps_distance).collect();
    let p15: Vec<(f64, f64)> = cases.iter().filter_map(|p| p.perc15).collect();
    let split = |v: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) { v.iter().copied().unzip() };
    let (eo, et) = split(ei);
    let (po, pt) = split(&p15);
    Physics {
        noise_soft: pair_mean(&|p| p.noise_soft),
        noise_lung: pair_mean(&|p| p.noise_lung),
        nps_peak: pair_mean(&|p| p.nps_peak),
        nps_mean: pair_mean(&|p| p.nps_mean),
        nps_distance: (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64),
        perc15: pair_mean(&|p| p.perc15),
        // The rod inserts' (cases without one have none; the phantom's is set by the caller).
        mtf50: pair_mean(&|p| p.mtf50),
        ccc: None,
        ccc_structure: None,
        ei_ba: bland_altman(&eo, &et),
        perc15_ba: bland_altman(&po, &pt),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::lib_bridge::Rng;
    use crate::metrics::lung_mask;

    /// A body with a lung, both noisy; the identity has ratio 1 and every feature concordant,
    /// a smoothed copy has less noise, a lower NPS peak and fewer concordant features.
    #[test]
    fn figures_of_identity_and_of_a_blur() {
        let mut rng = Rng::new(8);
        let mut t = Volume::from_fn("t", [4, 128, 128], |_, y, x| {
            let (dy, dx) = (y as f64 - 64.0, x as f64 - 64.0);
            if (dy * dy + dx * dx).sqrt() > 62.0 {
                -1000.0
            } else if (28..64).contains(&y) && (28..100).contains(&x) {
                -850.0
            } else {
                40.0
            }
        });
        let mask = lung_mask(&t);
        t.values
            .iter_mut()
            .for_each(|v| *v += 30.0 * rng.normal() as f32);
        let r = CaseRef::new(
            &t,
            mask,
            PhysicsOptions {
                roi: 16,
                max_rois: 24,
            },
        );
        assert!(
            r.rois.soft.len() >= 3 && r.rois.lung.len() >= 3,
            "{:?}",
            r.rois
        );
        let (p, _, _) = r.measure(&t);
        assert_eq!(Physics::ratio(p.noise_soft), Some(1.0));
        assert_eq!(p.nps_distance, Some(0.0));
        assert_eq!(Physics::error(p.perc15), Some(0.0));
        let (k, n) = p.ccc.unwrap();
        assert_eq!(k, n);
        assert_eq!(n, 2 * FEATURE_NAMES.len());
        let b = Volume::new(
            "b",
            t.shape,
            t.spacing,
            crate::resample::gaussian_blur(&t.values, t.shape, 1.5, 0.0),
        );
        let (q, _, _) = r.measure(&b);
        assert!(Physics::ratio(q.noise_soft).unwrap() < 0.5, "{q:?}");
        assert!(Physics::ratio(q.nps_mean).unwrap() < 0.8, "{q:?}");
        assert!(q.nps_distance.unwrap() > 0.3);
        assert!(q.ccc_share().unwrap() < 0.8, "{q:?}");
        // Perc15 of the lung rises when the noise is smoothed away.
        assert!(Physics::error(q.perc15).unwrap() > 10.0, "{q:?}");
        let m = mean_physics(&[&p, &q], &[(10.0, 9.0), (12.0, 9.0)]);
        let ba = m.ei_ba.unwrap();
        assert!((ba.bias - 2.0).abs() < 1e-12);
    }

    /// A second acquisition (same anatomy, independent noise) against the target: over uniform
    /// ROIs the features differ by noise only and few agree; over lung ROIs holding vessels of
    /// varied width and place, most do (the anatomy decides). The blurred copy keeps fewer.
    #[test]
    fn structure_rois_make_texture_agreement_a_matter_of_anatomy() {
        let mut rng = Rng::new(21);
        let vessels: Vec<(f64, f64, f64)> = (0..40)
            .map(|_| {
                (
                    30.0 + 68.0 * rng.uniform(),
                    30.0 + 68.0 * rng.uniform(),
                    1.0 + 3.0 * rng.uniform(),
                )
            })
            .collect();
        let clean = Volume::from_fn("t", [8, 128, 128], |z, y, x| {
            let (dy, dx) = (y as f64 - 64.0, x as f64 - 64.0);
            if (dy * dy + dx * dx).sqrt() > 62.0 {
                return -1000.0;
            }
            if !((24..104).contains(&y) && (24..104).contains(&x)) {
                return 40.0;
            }
            let (yf, xf) = (y as f64, x as f64);
            for (i, &(cy, cx, r)) in vessels.iter().enumerate() {
                // Five vessels per slice, each slice its own.
                if i / 5 == z {
                    let d = ((yf - cy).powi(2) + (xf - cx).powi(2)).sqrt();
                    if d < r {
                        return 40.0;
                    }
                }
            }
            -850.0
        });
        let noisy = |seed: u64| {
            let mut r = Rng::new(seed);
            let mut v = clean.clone();
            v.values
                .iter_mut()
                .for_each(|h| *h += 20.0 * r.normal() as f32);
            v
        };
        let (t, second) = (noisy(1), noisy(2));
        let r = CaseRef::new(
            &t,
            lung_mask(&clean),
            PhysicsOptions {
                roi: 16,
                max_rois: 48,
            },
        );
        assert!(r.rois.structure.len() >= 8, "{:?}", r.rois.structure);
        let (p, _, _) = r.measure(&second);
        let (uniform, structure) = (p.ccc_share().unwrap(), p.ccc_structure_share().unwrap());
        assert!(structure >= 0.5, "structure {structure}, uniform {uniform}");
        assert!(
            structure > uniform + 0.2,
            "structure {structure}, uniform {uniform}"
        );
        let b = Volume::new(
            "b",
            t.shape,
            t.spacing,
            crate::resample::gaussian_blur(&second.values, t.shape, 2.0, 0.0),
        );
        let (q, _, _) = r.measure(&b);
        assert!(q.ccc_structure_share().unwrap() < structure, "{q:?}");
    }
}
