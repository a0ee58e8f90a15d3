//! Fixed regions of interest of a case, taken from its target so that every method is measured on
//! the same voxels.
//!
//! The target is smoothed in-plane (Gaussian σ = [`SMOOTH_SIGMA`] px) so that its own noise does not
//! decide; candidates are `size × size` squares of one axial slice on a grid of half their size,
//! accepted greedily in scan order when they overlap no accepted square of that slice:
//! - **soft tissue**: every smoothed value within [`SOFT_HU`] and a smoothed range (max − min) of at
//!   most [`SOFT_RANGE_HU`] (no edge, no vessel: a uniform region, as ICRU 87 asks for NPS);
//! - **lung**: every voxel inside the target's lung mask ([`crate::metrics::lung_mask`]), every
//!   smoothed value within [`LUNG_HU`] and a smoothed range of at most [`LUNG_RANGE_HU`] (parenchyma
//!   without large vessels).
//! - **lung structure** (issue 11's texture CCC): three quarters of the voxels and the four corners
//!   inside the lung mask (inside the lung, not across its wall) and a smoothed range of at least
//!   [`STRUCTURE_RANGE_HU`]: parenchyma holding vessels, airway walls or nodules. Uniform ROIs
//!   differ from one another only by their noise, which a target of a separate acquisition shares
//!   with nothing, so the CCC over them stays low even for a second scan with the target's own
//!   protocol (`scripts/ceiling.sh`: 26.5 % of the features).
//!   Published texture reproducibility is over lesions of many patients (Choe et al., Radiology
//!   292:365, 2019), whose features differ by anatomy; structured ROIs are our phantoms' analogue.
//!
//! At most `max_per_class` of each are kept, spread evenly over the accepted list (so over the
//! slices). Phantom geometry is not needed; a head CT simply yields no lung ROI.

use crate::resample::gaussian_blur;
use crate::volume::Volume;

/// In-plane σ (px) of the smoothing before the uniformity test.
pub const SMOOTH_SIGMA: f64 = 2.0;
/// Soft-tissue HU range of a soft-tissue ROI (smoothed).
pub const SOFT_HU: (f32, f32) = (-100.0, 150.0);
/// Largest smoothed range (HU) inside a soft-tissue ROI.
pub const SOFT_RANGE_HU: f32 = 40.0;
/// Lung HU range of a lung ROI (smoothed).
pub const LUNG_HU: (f32, f32) = (-1000.0, -600.0);
/// Largest smoothed range (HU) inside a lung ROI.
pub const LUNG_RANGE_HU: f32 = 80.0;
/// Smallest smoothed range (HU) inside a lung-structure ROI (a vessel at 40 HU in parenchyma at
/// -850 HU keeps more than this after the smoothing; the parenchyma's own texture stays under it).
pub const STRUCTURE_RANGE_HU: f32 = 300.0;

/// One square region: axial slice `z`, top-left corner (`y`, `x`), `size × size` voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roi {
    pub z: usize,
    pub y: usize,
    pub x: usize,
    pub size: usize,
}

impl Roi {
    /// The ROI's values (row-major) from a volume of the target's shape.
    pub fn extract(&self, v: &Volume) -> Vec<f32> {
        let nx = v.shape[2];
        let mut out = Vec::with_capacity(self.size * self.size);
        for y in self.y..self.y + self.size {
            let i = v.idx(self.z, y, self.x);
            out.extend_from_slice(&v.values[i..i + self.size]);
        }
        debug_assert!(self.x + self.size <= nx);
        out
    }
}

/// The ROIs of one case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoiSet {
    pub soft: Vec<Roi>,
    pub lung: Vec<Roi>,
    /// Lung ROIs holding structure (texture CCC only).
    pub structure: Vec<Roi>,
}

/// Finds the soft-tissue, lung and lung-structure ROIs of `target` (HU) with its lung mask (module
/// docs).
pub fn find_rois(target: &Volume, lung: &[bool], size: usize, max_per_class: usize) -> RoiSet {
    let [nz, ny, nx] = target.shape;
    if size < 4 || ny < size || nx < size {
        return RoiSet::default();
    }
    let smooth = gaussian_blur(&target.values, target.shape, SMOOTH_SIGMA, 0.0);
    let step = (size / 2).max(1);
    let mut soft = Vec::new();
    let mut lungs = Vec::new();
    let mut structure = Vec::new();
    for z in 0..nz {
        let mut taken_soft: Vec<Roi> = Vec::new();
        let mut taken_lung: Vec<Roi> = Vec::new();
        let mut taken_structure: Vec<Roi> = Vec::new();
        for y in (0..=ny - size).step_by(step) {
            for x in (0..=nx - size).step_by(step) {
                let roi = Roi { z, y, x, size };
                let (mut lo, mut hi, mut in_lung) = (f32::INFINITY, f32::NEG_INFINITY, 0);
                for yy in y..y + size {
                    let i = (z * ny + yy) * nx + x;
                    for (&v, &m) in smooth[i..i + size].iter().zip(&lung[i..i + size]) {
                        lo = lo.min(v);
                        hi = hi.max(v);
                        in_lung += usize::from(m);
                    }
                }
                let all_lung = in_lung == size * size;
                let free = |taken: &[Roi]| {
                    taken.iter().all(|r| {
                        r.y + size <= y || y + size <= r.y || r.x + size <= x || x + size <= r.x
                    })
                };
                if lo >= SOFT_HU.0
                    && hi <= SOFT_HU.1
                    && hi - lo <= SOFT_RANGE_HU
                    && free(&taken_soft)
                {
                    taken_soft.push(roi);
                } else if all_lung
                    && lo >= LUNG_HU.0
                    && hi <= LUNG_HU.1
                    && hi - lo <= LUNG_RANGE_HU
                    && free(&taken_lung)
                {
                    taken_lung.push(roi);
                } else if 4 * in_lung >= 3 * size * size
                    && hi - lo >= STRUCTURE_RANGE_HU
                    && [
                        (y, x),
                        (y, x + size - 1),
                        (y + size - 1, x),
                        (y + size - 1, x + size - 1),
                    ]
                    .iter()
                    .all(|&(cy, cx)| lung[(z * ny + cy) * nx + cx])
                    && free(&taken_structure)
                {
                    taken_structure.push(roi);
                }
            }
        }
        soft.extend(taken_soft);
        lungs.extend(taken_lung);
        structure.extend(taken_structure);
    }
    RoiSet {
        soft: spread(soft, max_per_class),
        lung: spread(lungs, max_per_class),
        structure: spread(structure, max_per_class),
    }
}

/// At most `n` items, evenly spaced over `v`.
fn spread(v: Vec<Roi>, n: usize) -> Vec<Roi> {
    if v.len() <= n {
        return v;
    }
    (0..n).map(|i| v[i * v.len() / n]).collect()
}

/// A cylinder of a phantom's quality-control inserts, through every axial slice: centre `[y, x]`
/// in pixels of the axial grid (pixel centres at integers), radius in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cylinder {
    pub centre: [f64; 2],
    pub radius: f64,
}

impl Cylinder {
    fn distance(&self, y: usize, x: usize) -> f64 {
        (y as f64 - self.centre[0]).hypot(x as f64 - self.centre[1])
    }
}

/// The quality-control inserts of a realistic `ct-train synth` phantom (`[case.inserts]` of
/// `synth.toml`): a water cylinder holding a rod, and a lung-equivalent foam cylinder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inserts {
    pub water: Cylinder,
    pub rod: Cylinder,
    pub lung: Cylinder,
}

/// Margin (px) between an insert ROI and the wall of its cylinder, and between a soft-tissue ROI
/// and the rod: two pixels keep the ROIs off the one-voxel partial-volume blend of the phantom's
/// edges and off the first lobe of the reconstruction's edge response, where noise is not
/// stationary.
pub const INSERT_MARGIN_PX: f64 = 2.0;
/// Smallest side (px) of a square insert ROI (NPS and texture need at least 8 × 8 pixels).
pub const MIN_INSERT_ROI: usize = 8;

/// Errors placing ROIs in a case's inserts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoiError {
    #[error("the {insert} insert (centre [y, x] = [{cy:.2}, {cx:.2}] px, radius {radius:.2} px) does not lie inside the {ny}x{nx} image")]
    Outside {
        insert: &'static str,
        cy: f64,
        cx: f64,
        radius: f64,
        ny: usize,
        nx: usize,
    },
}

/// The fixed ROIs of one class (soft tissue or lung) inside an insert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertClass {
    /// Which insert (`water`, `lung foam`).
    pub insert: &'static str,
    /// In-plane pixels `(y, x)` of the uniform region: centres at least [`INSERT_MARGIN_PX`]
    /// inside the cylinder's wall (and, in the water, that far outside the rod), on every slice.
    pub pixels: Vec<(usize, usize)>,
    /// Square ROIs of side `side`, one per slice (at most `max_per_class`, spread over the slices);
    /// empty when no square of [`MIN_INSERT_ROI`] px fits (`skipped` says why).
    pub squares: Vec<Roi>,
    pub side: usize,
    /// Why the class has no square ROI (the case's insert is too small), for the output.
    pub skipped: Option<String>,
}

/// The ROIs of a case's inserts: soft tissue in the water cylinder (clear of the rod), lung in the
/// foam cylinder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertRois {
    pub soft: InsertClass,
    pub lung: InsertClass,
}

/// Places the ROIs of `ins` on a volume of `shape` (z, y, x).
///
/// Rule: the uniform region of a cylinder is every pixel whose centre lies at least
/// [`INSERT_MARGIN_PX`] inside its wall (in the water, also that far outside the rod). The square
/// ROI's side is the largest multiple of 4, at least [`MIN_INSERT_ROI`], for which a pixel-aligned
/// square has every pixel in the region; of the positions that fit, the one whose centre is
/// nearest the region's centroid is taken, on every slice (the inserts run through all of them),
/// and `max_per_class` of those are kept, spread over the slices. A region that holds no such
/// square is a skip with its reason (the class keeps its region for the noise std), not an error;
/// an insert that does not lie inside the image is an error ([`RoiError::Outside`]).
pub fn insert_rois(
    shape: [usize; 3],
    ins: &Inserts,
    max_per_class: usize,
) -> Result<InsertRois, RoiError> {
    let [nz, ny, nx] = shape;
    for (insert, c) in [
        ("water", ins.water),
        ("rod", ins.rod),
        ("lung foam", ins.lung),
    ] {
        let [cy, cx] = c.centre;
        let inside = |v: f64, n: usize| v - c.radius >= -0.5 && v + c.radius <= n as f64 - 0.5;
        if !(c.radius > 0.0 && c.radius.is_finite() && inside(cy, ny) && inside(cx, nx)) {
            return Err(RoiError::Outside {
                insert,
                cy,
                cx,
                radius: c.radius,
                ny,
                nx,
            });
        }
    }
    let m = INSERT_MARGIN_PX;
    let region = |c: &Cylinder, hole: Option<&Cylinder>| -> Vec<(usize, usize)> {
        let mut px = Vec::new();
        for y in 0..ny {
            for x in 0..nx {
                if c.distance(y, x) <= c.radius - m
                    && hole.is_none_or(|h| h.distance(y, x) >= h.radius + m)
                {
                    px.push((y, x));
                }
            }
        }
        px
    };
    let class = |insert: &'static str, c: &Cylinder, hole: Option<&Cylinder>| {
        let pixels = region(c, hole);
        let (side, pos) = largest_square(&pixels, ny, nx);
        let squares: Vec<Roi> = match pos {
            Some((y, x)) => (0..nz)
                .map(|z| Roi {
                    z,
                    y,
                    x,
                    size: side,
                })
                .collect(),
            None => Vec::new(),
        };
        let skipped = pos.is_none().then(|| {
            format!(
                "the {insert} insert (radius {:.2} px{}) holds no {MIN_INSERT_ROI}-px square ROI with a {m}-px margin",
                c.radius,
                if hole.is_some() { ", holding the rod" } else { "" },
            )
        });
        InsertClass {
            insert,
            pixels,
            squares: spread(squares, max_per_class),
            side: if pos.is_some() { side } else { 0 },
            skipped,
        }
    };
    Ok(InsertRois {
        soft: class("water", &ins.water, Some(&ins.rod)),
        lung: class("lung foam", &ins.lung, None),
    })
}

/// The largest multiple-of-4 side (≥ [`MIN_INSERT_ROI`]) of a square held by `pixels` and its
/// top-left corner nearest the centroid; `(0, None)` when none fits.
fn largest_square(
    pixels: &[(usize, usize)],
    ny: usize,
    nx: usize,
) -> (usize, Option<(usize, usize)>) {
    if pixels.is_empty() {
        return (0, None);
    }
    let mut inside = vec![false; ny * nx];
    for &(y, x) in pixels {
        inside[y * nx + x] = true;
    }
    let n = pixels.len() as f64;
    let cy = pixels.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let cx = pixels.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (y0, y1) = (
        pixels.iter().map(|p| p.0).min(),
        pixels.iter().map(|p| p.0).max(),
    );
    let (x0, x1) = (
        pixels.iter().map(|p| p.1).min(),
        pixels.iter().map(|p| p.1).max(),
    );
    let (Some(y0), Some(y1), Some(x0), Some(x1)) = (y0, y1, x0, x1) else {
        return (0, None);
    };
    let most = (y1 - y0 + 1).min(x1 - x0 + 1) / 4 * 4;
    let mut side = most;
    while side >= MIN_INSERT_ROI {
        let mut best: Option<(f64, (usize, usize))> = None;
        for y in y0..=y1 + 1 - side {
            for x in x0..=x1 + 1 - side {
                let fits = (y..y + side)
                    .all(|yy| inside[yy * nx + x..yy * nx + x + side].iter().all(|&b| b));
                if fits {
                    let h = (side as f64 - 1.0) / 2.0;
                    let d = (y as f64 + h - cy).hypot(x as f64 + h - cx);
                    if best.is_none_or(|(bd, _)| d < bd) {
                        best = Some((d, (y, x)));
                    }
                }
            }
        }
        if let Some((_, pos)) = best {
            return (side, Some(pos));
        }
        side -= 4;
    }
    (0, None)
}

/// Test phantoms with quality-control inserts (shared by the physics and eval tests).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod testing {
    use super::{Cylinder, Inserts};
    use crate::lib_bridge::Rng;
    use crate::volume::Volume;

    /// The inserts `ct-train synth` records for a 128² realistic phantom (`[case.inserts]` of
    /// `/work/data-real/heldout/synth.toml`), every length times `scale`.
    pub fn inserts_128(scale: f64) -> Inserts {
        let c = |y: f64, x: f64, r: f64| Cylinder {
            centre: [
                y * scale + (0.5 * scale - 0.5),
                x * scale + (0.5 * scale - 0.5),
            ],
            radius: r * scale,
        };
        Inserts {
            water: c(10.38, 41.74, 8.96),
            rod: c(10.38, 45.324, 2.816),
            lung: c(10.38, 85.26, 8.96),
        }
    }

    /// Air (-1000 HU) holding the inserts (water 0, rod 900, lung foam -850 HU), point-sampled,
    /// blurred in-plane by a Gaussian of `blur` px (0: none), plus white noise of std `sigma`.
    pub fn phantom(shape: [usize; 3], ins: &Inserts, blur: f64, sigma: f64, seed: u64) -> Volume {
        let inside = |c: &Cylinder, y: usize, x: usize| {
            (y as f64 - c.centre[0]).hypot(x as f64 - c.centre[1]) <= c.radius
        };
        let mut v = Volume::from_fn("inserts", shape, |_, y, x| {
            if inside(&ins.rod, y, x) {
                900.0
            } else if inside(&ins.water, y, x) {
                0.0
            } else if inside(&ins.lung, y, x) {
                -850.0
            } else {
                -1000.0
            }
        });
        if blur > 0.0 {
            v.values = crate::resample::gaussian_blur(&v.values, v.shape, blur, 0.0);
        }
        let mut rng = Rng::new(seed);
        v.values
            .iter_mut()
            .for_each(|x| *x += (sigma * rng.normal()) as f32);
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::metrics::lung_mask;

    #[test]
    fn rois_are_uniform_and_of_the_right_class() {
        // A body of 40 HU with a lung square of -850 HU and a bright insert that no soft ROI may
        // touch.
        let v = Volume::from_fn("t", [2, 96, 96], |_, y, x| {
            let (dy, dx) = (y as f64 - 48.0, x as f64 - 48.0);
            if (dy * dy + dx * dx).sqrt() > 46.0 {
                -1000.0
            } else if (20..52).contains(&y) && (14..46).contains(&x) {
                -850.0
            } else if (60..70).contains(&y) && (60..70).contains(&x) {
                700.0
            } else {
                40.0
            }
        });
        let mask = lung_mask(&v);
        let r = find_rois(&v, &mask, 16, 100);
        assert!(!r.soft.is_empty() && !r.lung.is_empty(), "{r:?}");
        for roi in &r.soft {
            assert!(roi.extract(&v).iter().all(|&h| h == 40.0), "{roi:?}");
        }
        for roi in &r.lung {
            assert!(roi.extract(&v).iter().all(|&h| h == -850.0), "{roi:?}");
        }
        assert_eq!(find_rois(&v, &mask, 16, 3).soft.len(), 3);
    }

    /// Structure ROIs lie inside the lung and hold a vessel; a lung without one holds none (its
    /// wall is not structure).
    #[test]
    fn structure_rois_hold_a_vessel_in_the_lung() {
        let chest = |vessel: bool| {
            Volume::from_fn("t", [2, 96, 96], move |_, y, x| {
                let (dy, dx) = (y as f64 - 48.0, x as f64 - 48.0);
                if (dy * dy + dx * dx).sqrt() > 46.0 {
                    -1000.0
                } else if vessel && (34..38).contains(&x) && (26..66).contains(&y) {
                    40.0
                } else if (22..70).contains(&y) && (20..60).contains(&x) {
                    -850.0
                } else {
                    40.0
                }
            })
        };
        let v = chest(true);
        let mask = lung_mask(&v);
        let r = find_rois(&v, &mask, 16, 100);
        assert!(!r.structure.is_empty(), "{r:?}");
        for roi in &r.structure {
            let hu = roi.extract(&v);
            assert!(
                hu.iter().filter(|&&h| h == -850.0).count() * 4 >= 3 * hu.len(),
                "{roi:?}"
            );
            assert!(hu.contains(&40.0), "{roi:?}");
        }
        let u = chest(false);
        let none = find_rois(&u, &lung_mask(&u), 16, 100);
        assert!(none.structure.is_empty(), "{none:?}");
        assert!(!none.lung.is_empty());
    }

    use super::testing::inserts_128;

    /// Every pixel of the ROIs lies at least the margin inside its cylinder (and clear of the
    /// rod); the side is a multiple of 4 of at least 8, one square per slice; the 128² water
    /// cylinder (radius 9 px, holding the rod) is too small for a square: a skip naming it.
    #[test]
    fn insert_rois_lie_inside_their_cylinders() {
        let shape = [6, 256, 256];
        let ins = inserts_128(2.0);
        let r = insert_rois(shape, &ins, 100).unwrap();
        for (c, cyl, hole) in [
            (&r.soft, ins.water, Some(ins.rod)),
            (&r.lung, ins.lung, None),
        ] {
            assert!(c.side >= MIN_INSERT_ROI && c.side % 4 == 0, "{c:?}");
            assert_eq!(c.squares.len(), 6);
            assert!(c.skipped.is_none());
            for roi in &c.squares {
                for y in roi.y..roi.y + roi.size {
                    for x in roi.x..roi.x + roi.size {
                        assert!(
                            cyl.distance(y, x) <= cyl.radius - INSERT_MARGIN_PX,
                            "{roi:?}"
                        );
                        if let Some(h) = hole {
                            assert!(h.distance(y, x) >= h.radius + INSERT_MARGIN_PX, "{roi:?}");
                        }
                    }
                }
            }
            assert!(c.pixels.len() > c.side * c.side);
        }
        // The lung foam (radius 17.9 px) holds 20-px squares: (17.9 - 2) * sqrt 2 = 22.5.
        assert_eq!(r.lung.side, 20);
        assert_eq!(insert_rois(shape, &ins, 4).unwrap().lung.squares.len(), 4);

        let r = insert_rois([32, 128, 128], &inserts_128(1.0), 48).unwrap();
        assert_eq!(r.lung.side, 8);
        assert_eq!(r.lung.squares.len(), 32);
        assert!(r.soft.squares.is_empty() && r.soft.side == 0);
        let why = r.soft.skipped.unwrap();
        assert!(
            why.contains("water insert") && why.contains("8-px"),
            "{why}"
        );
        // Its region still holds the pixels for the noise std.
        assert!(r.soft.pixels.len() > 50, "{}", r.soft.pixels.len());
    }

    /// An insert outside the image is an error naming the insert.
    #[test]
    fn insert_outside_the_image_is_an_error_naming_it() {
        let mut ins = inserts_128(1.0);
        ins.lung.centre[1] = 124.0;
        let e = insert_rois([4, 128, 128], &ins, 8).unwrap_err();
        assert!(matches!(
            e,
            RoiError::Outside {
                insert: "lung foam",
                ..
            }
        ));
        assert!(e.to_string().contains("lung foam insert"), "{e}");
        let mut ins = inserts_128(1.0);
        ins.rod.radius = f64::NAN;
        let e = insert_rois([4, 128, 128], &ins, 8).unwrap_err();
        assert!(e.to_string().contains("rod insert"), "{e}");
        // The same inserts on a smaller grid (another resolution than synth wrote).
        let e = insert_rois([4, 64, 64], &inserts_128(1.0), 8).unwrap_err();
        assert!(e.to_string().contains("64x64"), "{e}");
    }
}
