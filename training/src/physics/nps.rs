//! ROI noise and the noise power spectrum.
//!
//! Each ROI is detrended by subtracting its least-squares plane `a + b·x + c·y` (ICRU Report 87
//! §4.3 recommends removing low-order trends so that slow structure does not count as noise;
//! Dolly et al. 2016 use the same first-order fit). Then:
//! - **noise std**: `sqrt(mean over ROIs of var(detrended ROI))`, in HU;
//! - **2-D NPS** (ICRU 87 eq. 4.6; Boedeker et al. 2007):
//!   `NPS(fx, fy) = Δx Δy / (Nx Ny) · ⟨|DFT₂(ROI − fit)|²⟩` over the ROIs, in HU²·mm², computed on a
//!   zero-padded `pad × pad` grid (`pad` = twice the ROI side) so that the radial curve is sampled
//!   finely; the normalisation uses the ROI's own Nx Ny, so for white noise of variance σ² the NPS is
//!   flat at σ² Δx Δy whatever the padding;
//! - **radial average**: the 2-D NPS averaged over annuli of width `1 / (pad Δx)` cycles/mm
//!   (bin `round(|f| pad Δx)`), from 0 to the Nyquist frequency `1 / (2Δx)`;
//! - **peak frequency**: the radial maximum beyond the zero bin, refined by the vertex of the
//!   parabola through it and its neighbours; **mean frequency** `∫ f NPS / ∫ NPS` (Solomon et al.,
//!   Med. Phys. 39:4115, 2012 use both to describe noise texture);
//! - **distance** between two radial curves: `sqrt(Σ (Pₒ − Pₜ)²) / sqrt(Σ Pₜ²)` over the bins
//!   (relative L2; 0 when equal, 1 when the output has no noise).

use super::roi::Roi;
use crate::volume::Volume;

/// A radially averaged NPS.
#[derive(Debug, Clone, PartialEq)]
pub struct NpsCurve {
    /// Bin centres in cycles/mm.
    pub freq: Vec<f64>,
    /// NPS in HU²·mm².
    pub power: Vec<f64>,
    /// ROIs averaged.
    pub rois: usize,
}

/// The ROI's values minus their least-squares plane.
pub fn detrend(values: &[f32], n: usize) -> Vec<f64> {
    let c = (n as f64 - 1.0) / 2.0;
    let nn = (n * n) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / nn;
    let (mut sx, mut sy, mut sxx) = (0.0, 0.0, 0.0);
    for y in 0..n {
        for x in 0..n {
            let v = f64::from(values[y * n + x]) - mean;
            let (dx, dy) = (x as f64 - c, y as f64 - c);
            sx += dx * v;
            sy += dy * v;
            sxx += dx * dx;
        }
    }
    // Σ dx² = Σ dy² on a square grid.
    let (b, cc) = if sxx > 0.0 {
        (sx / sxx, sy / sxx)
    } else {
        (0.0, 0.0)
    };
    (0..n * n)
        .map(|i| {
            let (y, x) = (i / n, i % n);
            f64::from(values[i]) - mean - b * (x as f64 - c) - cc * (y as f64 - c)
        })
        .collect()
}

/// Noise std (HU) of `v` over `rois` (module docs); `None` without ROIs.
pub fn roi_noise_std(v: &Volume, rois: &[Roi]) -> Option<f64> {
    if rois.is_empty() {
        return None;
    }
    let var: f64 = rois
        .iter()
        .map(|r| {
            let d = detrend(&r.extract(v), r.size);
            d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64
        })
        .sum::<f64>()
        / rois.len() as f64;
    Some(var.sqrt())
}

/// The noise of a volume whose noise-free content repeats on every slice (a phantom insert that
/// runs through all of them): each voxel minus the mean over the slices of its in-plane pixel,
/// scaled by `sqrt(N / (N − 1))` so that its variance is the noise variance (N slices). This is
/// the ensemble subtraction of ICRU Report 87 §4.3 (an NPS from repeated scans minus their mean
/// image), the slices being the ensemble: edges and slow structure cancel exactly, so ROIs close
/// to an insert's wall measure noise only. Only the in-plane pixels `pixels` are filled (the rest
/// is 0); `None` with fewer than two slices.
pub fn ensemble_residual(v: &Volume, pixels: &[(usize, usize)]) -> Option<Volume> {
    let [nz, _, _] = v.shape;
    if nz < 2 {
        return None;
    }
    let scale = (nz as f64 / (nz as f64 - 1.0)).sqrt();
    let mut out = Volume::new(
        format!("{} (ensemble residual)", v.name),
        v.shape,
        v.spacing,
        vec![0.0; v.len()],
    );
    for &(y, x) in pixels {
        let mean = (0..nz)
            .map(|z| f64::from(v.values[v.idx(z, y, x)]))
            .sum::<f64>()
            / nz as f64;
        for z in 0..nz {
            let i = v.idx(z, y, x);
            out.values[i] = ((f64::from(v.values[i]) - mean) * scale) as f32;
        }
    }
    Some(out)
}

/// Noise std (HU) over the in-plane `pixels` of every slice of an [`ensemble_residual`]:
/// `sqrt(mean of the squared residuals)`; `None` without pixels.
pub fn region_noise_std(residual: &Volume, pixels: &[(usize, usize)]) -> Option<f64> {
    if pixels.is_empty() || residual.shape[0] == 0 {
        return None;
    }
    let sum: f64 = (0..residual.shape[0])
        .flat_map(|z| pixels.iter().map(move |&(y, x)| (z, y, x)))
        .map(|(z, y, x)| f64::from(residual.values[residual.idx(z, y, x)]).powi(2))
        .sum();
    Some((sum / (pixels.len() * residual.shape[0]) as f64).sqrt())
}

/// In-place forward radix-2 complex FFT (no scaling; `re.len()` a power of two): the simulated
/// scanner's.
pub fn fft(re: &mut [f64], im: &mut [f64]) {
    crate::data::synth::scanner::fft(re, im, false)
}

/// |DFT₂|² of an n×n block zero-padded to pad×pad (row-major result).
fn power2d(d: &[f64], n: usize, pad: usize) -> Vec<f64> {
    let mut re = vec![0f64; pad * pad];
    let mut im = vec![0f64; pad * pad];
    for y in 0..n {
        re[y * pad..y * pad + n].copy_from_slice(&d[y * n..(y + 1) * n]);
    }
    for y in 0..pad {
        fft(
            &mut re[y * pad..(y + 1) * pad],
            &mut im[y * pad..(y + 1) * pad],
        );
    }
    let (mut cr, mut ci) = (vec![0f64; pad], vec![0f64; pad]);
    for x in 0..pad {
        for y in 0..pad {
            cr[y] = re[y * pad + x];
            ci[y] = im[y * pad + x];
        }
        fft(&mut cr, &mut ci);
        for y in 0..pad {
            re[y * pad + x] = cr[y];
            im[y * pad + x] = ci[y];
        }
    }
    re.iter().zip(&im).map(|(a, b)| a * a + b * b).collect()
}

/// The radially averaged NPS of `v` over `rois` (all of one size), pixel size `pixel_mm`
/// (in-plane, square pixels); `None` without ROIs.
pub fn nps_radial(v: &Volume, rois: &[Roi], pixel_mm: f64) -> Option<NpsCurve> {
    let n = rois.first()?.size;
    let pad = (2 * n).next_power_of_two();
    let mut acc = vec![0f64; pad * pad];
    let mut count = 0usize;
    for r in rois.iter().filter(|r| r.size == n) {
        let p = power2d(&detrend(&r.extract(v), n), n, pad);
        acc.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        count += 1;
    }
    let norm = pixel_mm * pixel_mm / (n * n) as f64 / count as f64;
    let half = pad / 2;
    let mut sum = vec![0f64; half + 1];
    let mut cnt = vec![0usize; half + 1];
    for u in 0..pad {
        for w in 0..pad {
            let fu = if u < half {
                u as f64
            } else {
                u as f64 - pad as f64
            };
            let fw = if w < half {
                w as f64
            } else {
                w as f64 - pad as f64
            };
            let bin = (fu * fu + fw * fw).sqrt().round() as usize;
            if bin <= half {
                sum[bin] += acc[u * pad + w] * norm;
                cnt[bin] += 1;
            }
        }
    }
    let df = 1.0 / (pad as f64 * pixel_mm);
    Some(NpsCurve {
        freq: (0..=half).map(|b| b as f64 * df).collect(),
        power: sum
            .iter()
            .zip(&cnt)
            .map(|(s, &c)| s / c.max(1) as f64)
            .collect(),
        rois: count,
    })
}

impl NpsCurve {
    /// Peak frequency (cycles/mm) beyond the zero bin, parabola-refined (module docs).
    pub fn peak(&self) -> Option<f64> {
        let p = &self.power;
        let (k, _) = p
            .iter()
            .enumerate()
            .skip(1)
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        let df = self.freq.get(1).copied()? - self.freq[0];
        let mut f = self.freq[k];
        if k + 1 < p.len() {
            let (a, b, c) = (p[k - 1], p[k], p[k + 1]);
            let den = a - 2.0 * b + c;
            if den < 0.0 {
                f += 0.5 * (a - c) / den * df;
            }
        }
        Some(f)
    }

    /// Mean frequency `Σ f P / Σ P` (cycles/mm).
    pub fn mean_frequency(&self) -> Option<f64> {
        let t: f64 = self.power.iter().sum();
        (t > 0.0).then(|| {
            self.freq
                .iter()
                .zip(&self.power)
                .map(|(f, p)| f * p)
                .sum::<f64>()
                / t
        })
    }

    /// Relative L2 distance of this curve to `target` over their common bins.
    pub fn distance(&self, target: &NpsCurve) -> Option<f64> {
        let (mut num, mut den) = (0.0, 0.0);
        for (a, b) in self.power.iter().zip(&target.power) {
            num += (a - b) * (a - b);
            den += b * b;
        }
        (den > 0.0).then(|| (num / den).sqrt())
    }

    /// The mean of several curves of the same binning (for plots and mean rows).
    pub fn average(curves: &[&NpsCurve]) -> Option<NpsCurve> {
        let first = curves.first()?;
        let len = first.power.len();
        let mut power = vec![0f64; len];
        let mut rois = 0;
        for c in curves.iter().filter(|c| c.power.len() == len) {
            power.iter_mut().zip(&c.power).for_each(|(a, b)| *a += b);
            rois += c.rois;
        }
        let n = curves.len() as f64;
        power.iter_mut().for_each(|p| *p /= n);
        Some(NpsCurve {
            freq: first.freq.clone(),
            power,
            rois,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::lib_bridge::Rng;

    #[test]
    fn nps_of_white_noise_is_flat_at_variance_times_pixel_area() {
        let sigma = 20.0;
        let px = 0.7;
        let mut rng = Rng::new(9);
        let mut v = Volume::from_fn("noise", [8, 64, 64], |_, _, _| 0.0);
        v.spacing = [1.0, px, px];
        v.values
            .iter_mut()
            .for_each(|x| *x = (sigma * rng.normal()) as f32 + 35.0);
        let rois: Vec<Roi> = (0..8)
            .flat_map(|z| {
                [(0, 0), (0, 32), (32, 0), (32, 32)].map(|(y, x)| Roi { z, y, x, size: 32 })
            })
            .collect();
        let c = nps_radial(&v, &rois, px).unwrap();
        let want = sigma * sigma * px * px;
        // Beyond the lowest bins (the plane fit removes the mean and the tilt).
        let hi: Vec<f64> = c
            .freq
            .iter()
            .zip(&c.power)
            .filter(|(f, _)| **f * px >= 0.1)
            .map(|(_, p)| *p)
            .collect();
        let mean = hi.iter().sum::<f64>() / hi.len() as f64;
        assert!((mean / want - 1.0).abs() < 0.05, "{mean} vs {want}");
        for p in &hi {
            assert!((p / want - 1.0).abs() < 0.35, "{p} vs {want}: not flat");
        }
        // Noise std agrees with σ; Nyquist is the last bin.
        let s = roi_noise_std(&v, &rois).unwrap();
        assert!((s / sigma - 1.0).abs() < 0.03, "{s}");
        assert!((c.freq.last().unwrap() - 0.5 / px).abs() < 1e-12);
        assert!(c.distance(&c).unwrap() == 0.0);
    }

    #[test]
    fn peak_of_band_limited_noise_is_found() {
        // Noise low-passed by a 3-tap average in x: power ∝ (1 + 2 cos 2πf)²/9, peak at f = 0 in x;
        // the radial NPS then decreases, so the peak is in the lowest bins.
        let mut rng = Rng::new(4);
        let mut v = Volume::from_fn("n", [4, 32, 32], |_, _, _| 0.0);
        let raw: Vec<f32> = (0..v.len()).map(|_| rng.normal() as f32).collect();
        for i in 0..v.len() {
            let x = i % 32;
            let l = if x > 0 { raw[i - 1] } else { raw[i] };
            let r = if x < 31 { raw[i + 1] } else { raw[i] };
            v.values[i] = (l + raw[i] + r) / 3.0;
        }
        let rois: Vec<Roi> = (0..4)
            .map(|z| Roi {
                z,
                y: 0,
                x: 0,
                size: 32,
            })
            .collect();
        let c = nps_radial(&v, &rois, 1.0).unwrap();
        let white = {
            let mut w = v.clone();
            w.values = raw;
            nps_radial(&w, &rois, 1.0).unwrap()
        };
        assert!(c.mean_frequency().unwrap() < white.mean_frequency().unwrap());
        assert!(c.peak().unwrap() < 0.25, "{:?}", c.peak());
    }

    /// In the 128² inserts, blurred (edges spread over the regions' margin) and with white noise
    /// of known σ, the ensemble residual's noise std over each insert region is σ within 5 %,
    /// where the plain spread of the water region's pixels is inflated by the rod's edge.
    #[test]
    fn insert_region_noise_matches_the_known_sigma() {
        use crate::physics::roi::{insert_rois, testing};
        let ins = testing::inserts_128(1.0);
        let sigma = 12.0;
        let v = testing::phantom([32, 128, 128], &ins, 1.2, sigma, 21);
        let r = insert_rois(v.shape, &ins, 48).unwrap();
        for c in [&r.soft, &r.lung] {
            let res = ensemble_residual(&v, &c.pixels).unwrap();
            let s = region_noise_std(&res, &c.pixels).unwrap();
            assert!(
                (s / sigma - 1.0).abs() < 0.05,
                "{}: {s} vs {sigma}",
                c.insert
            );
            let raw: Vec<f64> = (0..32)
                .flat_map(|z| c.pixels.iter().map(move |&(y, x)| (z, y, x)))
                .map(|(z, y, x)| f64::from(v.values[v.idx(z, y, x)]))
                .collect();
            let m = raw.iter().sum::<f64>() / raw.len() as f64;
            let plain =
                (raw.iter().map(|x| (x - m).powi(2)).sum::<f64>() / raw.len() as f64).sqrt();
            if c.insert == "water" {
                // The rod's 900 HU edge spreads into the plain region; the residual has none of it.
                assert!(plain > 1.2 * sigma, "{}: plain {plain}", c.insert);
            }
        }
        // Lung squares on the residual: the NPS of white noise integrates to σ².
        let res = ensemble_residual(&v, &r.lung.pixels).unwrap();
        let s = roi_noise_std(&res, &r.lung.squares).unwrap();
        assert!((s / sigma - 1.0).abs() < 0.1, "{s}");
        assert!(nps_radial(&res, &r.lung.squares, 1.0).is_some());
        assert!(ensemble_residual(&v.crop([0, 0, 0], [1, 128, 128]), &r.lung.pixels).is_none());
        assert_eq!(region_noise_std(&res, &[]), None);
    }
}
