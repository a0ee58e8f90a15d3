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
}

/// Finds the soft-tissue and lung ROIs of `target` (HU) with its lung mask (module docs).
pub fn find_rois(target: &Volume, lung: &[bool], size: usize, max_per_class: usize) -> RoiSet {
    let [nz, ny, nx] = target.shape;
    if size < 4 || ny < size || nx < size {
        return RoiSet::default();
    }
    let smooth = gaussian_blur(&target.values, target.shape, SMOOTH_SIGMA, 0.0);
    let step = (size / 2).max(1);
    let mut soft = Vec::new();
    let mut lungs = Vec::new();
    for z in 0..nz {
        let mut taken_soft: Vec<Roi> = Vec::new();
        let mut taken_lung: Vec<Roi> = Vec::new();
        for y in (0..=ny - size).step_by(step) {
            for x in (0..=nx - size).step_by(step) {
                let roi = Roi { z, y, x, size };
                let (mut lo, mut hi, mut all_lung) = (f32::INFINITY, f32::NEG_INFINITY, true);
                for yy in y..y + size {
                    let i = (z * ny + yy) * nx + x;
                    for (&v, &m) in smooth[i..i + size].iter().zip(&lung[i..i + size]) {
                        lo = lo.min(v);
                        hi = hi.max(v);
                        all_lung &= m;
                    }
                }
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
                }
            }
        }
        soft.extend(taken_soft);
        lungs.extend(taken_lung);
    }
    RoiSet {
        soft: spread(soft, max_per_class),
        lung: spread(lungs, max_per_class),
    }
}

/// At most `n` items, evenly spaced over `v`.
fn spread(v: Vec<Roi>, n: usize) -> Vec<Roi> {
    if v.len() <= n {
        return v;
    }
    (0..n).map(|i| v[i * v.len() / n]).collect()
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
}
