//! Whole volumes through the simulated scanner: a volume's (sharp, soft) pair, the thick-slice
//! super-resolution source, crops and in-plane shrinking, and the measured noise of one slice.

use super::scanner::{mix, Filter, Scanner};
use super::{SynthError, DEFAULT_PHOTONS};
use crate::volume::Volume;
use serde::Serialize;

/// The simulated pair for one volume.
#[derive(Debug, Clone)]
pub struct Pair {
    pub sharp: Volume,
    pub soft: Volume,
}

/// Simulation settings.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    pub photons: f64,
    pub sharp: Filter,
    pub soft: Filter,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            photons: DEFAULT_PHOTONS,
            sharp: Filter::Ramp,
            soft: Filter::Hann,
            seed: 0,
        }
    }
}

/// Simulates every slice of `vol` (each slice its own acquisition and noise seed).
pub fn simulate_volume(vol: &Volume, cfg: &SimConfig, case_seed: u64) -> Pair {
    let [nz, ny, nx] = vol.shape;
    let sc = Scanner::new(ny, nx, cfg.sharp, cfg.soft);
    let pixel = 0.5 * (vol.spacing[1] + vol.spacing[2]);
    let mut sharp = Vec::with_capacity(vol.len());
    let mut soft = Vec::with_capacity(vol.len());
    for z in 0..nz {
        let (a, b) = sc.simulate(
            vol.slice(z),
            pixel,
            Some(cfg.photons),
            mix(case_seed, z as u64),
        );
        sharp.extend(a);
        soft.extend(b);
    }
    Pair {
        sharp: Volume::new(format!("{} sharp", vol.name), vol.shape, vol.spacing, sharp),
        soft: Volume::new(format!("{} soft", vol.name), vol.shape, vol.spacing, soft),
    }
}

/// Crops a volume (centred) so that each axis is a multiple of `f`.
pub fn crop_to_multiple(vol: &Volume, f: [usize; 3]) -> Result<Volume, SynthError> {
    let size: Vec<usize> = (0..3).map(|a| vol.shape[a] / f[a] * f[a]).collect();
    if size.contains(&0) {
        return Err(SynthError::Invalid(format!(
            "{}: shape {:?} is smaller than the thick-slice factors {f:?}",
            vol.name, vol.shape
        )));
    }
    let size = [size[0], size[1], size[2]];
    let origin = [0, 1, 2].map(|a| (vol.shape[a] - size[a]) / 2);
    Ok(vol.crop(origin, size))
}

/// The thick-slice, low-resolution source: box averages over `f` = (z, y, x) voxels (the shape
/// must be a multiple of `f`), spacing multiplied by `f`.
pub fn thick(vol: &Volume, f: [usize; 3]) -> Volume {
    let [nz, ny, nx] = vol.shape;
    let out = [nz / f[0], ny / f[1], nx / f[2]];
    let mut hu = vec![0f32; out.iter().product()];
    let w = 1.0 / (f[0] * f[1] * f[2]) as f64;
    for (i, o) in hu.iter_mut().enumerate() {
        let (z, y, x) = (i / (out[1] * out[2]), (i / out[2]) % out[1], i % out[2]);
        let mut acc = 0.0f64;
        for dz in 0..f[0] {
            for dy in 0..f[1] {
                let row = vol.idx(z * f[0] + dz, y * f[1] + dy, x * f[2]);
                acc += vol.values[row..row + f[2]]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum::<f64>();
            }
        }
        *o = (acc * w) as f32;
    }
    Volume::new(
        format!("{} thick", vol.name),
        out,
        [
            vol.spacing[0] * f[0] as f64,
            vol.spacing[1] * f[1] as f64,
            vol.spacing[2] * f[2] as f64,
        ],
        hu,
    )
}

/// Resamples in-plane to `size × size'` (keeping the aspect ratio: the longer side becomes `size`)
/// by area averaging; only shrinks.
pub fn shrink_inplane(vol: &Volume, size: usize) -> Volume {
    let [nz, ny, nx] = vol.shape;
    let long = ny.max(nx);
    if size == 0 || size >= long {
        return vol.clone();
    }
    let r = long as f64 / size as f64;
    let (oy, ox) = (
        ((ny as f64 / r).round() as usize).max(1),
        ((nx as f64 / r).round() as usize).max(1),
    );
    let (ry, rx) = (ny as f64 / oy as f64, nx as f64 / ox as f64);
    // Separable area weights: output cell k covers input [k r, (k+1) r).
    let weights = |n_in: usize, n_out: usize, r: f64| -> Vec<Vec<(usize, f64)>> {
        (0..n_out)
            .map(|k| {
                let (a, b) = (k as f64 * r, (k as f64 + 1.0) * r);
                let mut w = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f64) < b && i < n_in {
                    let ov = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                    if ov > 0.0 {
                        w.push((i, ov / r));
                    }
                    i += 1;
                }
                w
            })
            .collect()
    };
    let (wy, wx) = (weights(ny, oy, ry), weights(nx, ox, rx));
    let mut hu = Vec::with_capacity(nz * oy * ox);
    for z in 0..nz {
        for wyk in &wy {
            for wxk in &wx {
                let mut acc = 0.0f64;
                for &(y, a) in wyk {
                    for &(x, b) in wxk {
                        acc += a * b * f64::from(vol.values[vol.idx(z, y, x)]);
                    }
                }
                hu.push(acc as f32);
            }
        }
    }
    Volume::new(
        vol.name.clone(),
        [nz, oy, ox],
        [vol.spacing[0], vol.spacing[1] * ry, vol.spacing[2] * rx],
        hu,
    )
}

/// Central `n` slices (all when `n` is 0 or larger than the volume).
pub fn central_slices(vol: &Volume, n: usize) -> Volume {
    if n == 0 || n >= vol.shape[0] {
        return vol.clone();
    }
    vol.crop(
        [(vol.shape[0] - n) / 2, 0, 0],
        [n, vol.shape[1], vol.shape[2]],
    )
}

/// Noise figures of one simulated slice.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NoiseReport {
    /// Slice index measured.
    pub slice: usize,
    /// Pixels in the uniform soft-tissue region.
    pub roi_pixels: usize,
    /// Standard deviation (HU) of the noisy minus the noise-free reconstruction in the region.
    pub sharp_noise_hu: f64,
    pub soft_noise_hu: f64,
    /// Mean HU of the noisy reconstructions in the region, and of the truth there.
    pub sharp_mean_hu: f64,
    pub soft_mean_hu: f64,
    pub truth_mean_hu: f64,
    /// Seconds for one slice (projection, noise, two filtered back-projections).
    pub seconds_per_slice: f64,
}

/// Measures the noise of the (sharp, soft) pair on slice `z`: the region is every pixel whose 7 × 7
/// neighbourhood in the truth lies within ±15 HU of its centre and in soft tissue (-150 .. 150 HU),
/// i.e. a uniform soft-tissue ROI; noise = std of (noisy − noise-free reconstruction) there.
pub fn measure_noise(vol: &Volume, z: usize, cfg: &SimConfig, seed: u64) -> Option<NoiseReport> {
    let [_, ny, nx] = vol.shape;
    let truth = vol.slice(z);
    let sc = Scanner::new(ny, nx, cfg.sharp, cfg.soft);
    let pixel = 0.5 * (vol.spacing[1] + vol.spacing[2]);
    let started = std::time::Instant::now();
    let (a, b) = sc.simulate(truth, pixel, Some(cfg.photons), seed);
    let seconds = started.elapsed().as_secs_f64();
    let (a0, b0) = sc.simulate(truth, pixel, None, seed);
    let r = 3isize;
    let mut roi = Vec::new();
    for y in r..ny as isize - r {
        for x in r..nx as isize - r {
            let c = truth[y as usize * nx + x as usize];
            if !(-150.0..=150.0).contains(&c) {
                continue;
            }
            let uniform = (-r..=r).all(|dy| {
                (-r..=r).all(|dx| {
                    let v = truth[(y + dy) as usize * nx + (x + dx) as usize];
                    (v - c).abs() <= 15.0
                })
            });
            if uniform {
                roi.push(y as usize * nx + x as usize);
            }
        }
    }
    if roi.len() < 20 {
        return None;
    }
    let n = roi.len() as f64;
    let stats = |img: &[f32], base: &[f32]| {
        let d: Vec<f64> = roi.iter().map(|&i| f64::from(img[i] - base[i])).collect();
        let m = d.iter().sum::<f64>() / n;
        (d.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
    };
    let mean = |img: &[f32]| roi.iter().map(|&i| f64::from(img[i])).sum::<f64>() / n;
    Some(NoiseReport {
        slice: z,
        roi_pixels: roi.len(),
        sharp_noise_hu: stats(&a, &a0),
        soft_noise_hu: stats(&b, &b0),
        sharp_mean_hu: mean(&a),
        soft_mean_hu: mean(&b),
        truth_mean_hu: mean(truth),
        seconds_per_slice: seconds,
    })
}
