//! Whole volumes through the simulated scanner: a volume's (sharp, soft) pair in the shared or the
//! independent mode, the thick-slice super-resolution source (box or realistic slice-sensitivity
//! profile), scanner storage, crops and in-plane shrinking, and the measured noise of one slice.

use super::ir::Ir;
use super::scanner::{mix, Filter, Scanner};
use super::{SynthError, DEFAULT_PHOTONS};
use crate::volume::Volume;
use rayon::prelude::*;
use serde::Serialize;

/// Lowest value a scanner stores (int16 with the usual -1024 rescale intercept).
pub const STORAGE_FLOOR_HU: f32 = -1024.0;
/// Highest value of the 12-bit range stored above the floor.
pub const STORAGE_CEILING_HU: f32 = 3071.0;

/// How the two members of a pair are acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairMode {
    /// One noisy sinogram reconstructed twice (the first `synth`: a kernel change is exactly a
    /// linear filter).
    Shared,
    /// Two acquisitions with independent Poisson noise, each with its own dose, filter and
    /// post-filter.
    Independent,
}

/// Slice-sensitivity profile of the thick-slice source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ssp {
    /// Mean of the thin slices inside the thick one (the first `synth`).
    Box,
    /// Gaussian of FWHM = the thick slice thickness (a spiral scanner's profile, close to its
    /// measured SSP: Polacin, Kalender & Marchal, *Radiology* 185:29, 1992).
    Gaussian,
    /// Triangle of FWHM = the thick slice thickness (a 180° linear-interpolation spiral profile).
    Triangle,
}

impl Ssp {
    pub fn parse(s: &str) -> Result<Self, SynthError> {
        match s.to_ascii_lowercase().as_str() {
            "box" => Ok(Self::Box),
            "gaussian" => Ok(Self::Gaussian),
            "triangle" => Ok(Self::Triangle),
            _ => Err(SynthError::Invalid(format!(
                "unknown slice profile {s:?}; use box, gaussian or triangle"
            ))),
        }
    }
}

/// The simulated pair for one volume.
#[derive(Debug, Clone)]
pub struct Pair {
    pub sharp: Volume,
    pub soft: Volume,
}

/// Simulation settings. The source is `sharp` (dose `photons`, post-filter `sharp_ir`), the target
/// `soft` (dose `photons` in the shared mode, `target_photons` in the independent one; post-filter
/// `soft_ir`). The default is the first `synth`'s shared mode, ramp against Hann, floats.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    pub photons: f64,
    pub sharp: Filter,
    pub soft: Filter,
    pub seed: u64,
    pub mode: PairMode,
    /// Target dose (photons per ray) of the independent mode.
    pub target_photons: f64,
    /// Post-filter of the source (independent mode).
    pub sharp_ir: Ir,
    /// Post-filter of the target (independent mode).
    pub soft_ir: Ir,
    /// Round to whole HU and clip to [`STORAGE_FLOOR_HU`] .. [`STORAGE_CEILING_HU`], as a scanner
    /// stores int16 images.
    pub int16_storage: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            photons: DEFAULT_PHOTONS,
            sharp: Filter::Ramp,
            soft: Filter::Hann,
            seed: 0,
            mode: PairMode::Shared,
            target_photons: DEFAULT_PHOTONS,
            sharp_ir: Ir::NONE,
            soft_ir: Ir::NONE,
            int16_storage: false,
        }
    }
}

/// Rounds to whole HU and clips to the int16 storage range of a scanner.
pub fn store_int16(values: &mut [f32]) {
    for v in values {
        *v = v.round().clamp(STORAGE_FLOOR_HU, STORAGE_CEILING_HU);
    }
}

/// One slice through `cfg`'s pipeline: (source, target) in HU, floats. `noisy = false` gives the
/// noise-free reconstructions (for the noise figures).
pub fn simulate_slice(
    sc: &Scanner,
    hu: &[f32],
    pixel: f64,
    cfg: &SimConfig,
    noisy: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    match cfg.mode {
        PairMode::Shared => sc.simulate(hu, pixel, noisy.then_some(cfg.photons), seed),
        PairMode::Independent => {
            let sa = sc.acquire(hu, pixel, noisy.then_some(cfg.photons), mix(seed, 0xA));
            let sb = sc.acquire(
                hu,
                pixel,
                noisy.then_some(cfg.target_photons),
                mix(seed, 0xB),
            );
            let (a, b) = sc.reconstruct_pair(&sa, cfg.sharp, &sb, cfg.soft, pixel);
            (
                cfg.sharp_ir.apply(&a, sc.rows, sc.cols),
                cfg.soft_ir.apply(&b, sc.rows, sc.cols),
            )
        }
    }
}

/// Simulates every slice of `vol` (each slice its own acquisition and noise seed), floats.
pub fn simulate_volume_raw(vol: &Volume, cfg: &SimConfig, case_seed: u64) -> Pair {
    let [nz, ny, nx] = vol.shape;
    let sc = Scanner::new(ny, nx, cfg.sharp, cfg.soft);
    let pixel = 0.5 * (vol.spacing[1] + vol.spacing[2]);
    let mut sharp = Vec::with_capacity(vol.len());
    let mut soft = Vec::with_capacity(vol.len());
    for z in 0..nz {
        let (a, b) = simulate_slice(
            &sc,
            vol.slice(z),
            pixel,
            cfg,
            true,
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

/// Simulates every slice of `vol` (each slice its own acquisition and noise seed), stored as
/// `cfg.int16_storage` says.
pub fn simulate_volume(vol: &Volume, cfg: &SimConfig, case_seed: u64) -> Pair {
    let mut p = simulate_volume_raw(vol, cfg, case_seed);
    if cfg.int16_storage {
        store_int16(&mut p.sharp.values);
        store_int16(&mut p.soft.values);
    }
    p
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

/// The thick-slice source with a slice-sensitivity profile: in z, thick slice `k` (centred on thin
/// slices `f₀k .. f₀k + f₀ − 1`) is the `ssp`-weighted mean of the thin slices, the profile's FWHM
/// equal to the thick slice thickness `f₀ · dz` (the Gaussian reaches ±1.5 FWHM, the triangle ±1
/// FWHM; weights renormalised at the volume's ends); in-plane, box averages over `f₁ × f₂`.
/// [`Ssp::Box`] gives exactly [`thick`].
pub fn thick_ssp(vol: &Volume, f: [usize; 3], ssp: Ssp) -> Volume {
    if ssp == Ssp::Box {
        return thick(vol, f);
    }
    let [nz, ny, nx] = vol.shape;
    let fwhm = f[0] as f64;
    let reach = match ssp {
        Ssp::Gaussian => 1.5 * fwhm,
        _ => fwhm,
    };
    let plane = ny * nx;
    // z-filtered thin volume sampled at the thick centres, then the in-plane box.
    let centres: Vec<f64> = (0..nz / f[0])
        .map(|k| (k * f[0]) as f64 + (f[0] as f64 - 1.0) / 2.0)
        .collect();
    let zs: Vec<Vec<f32>> = centres
        .par_iter()
        .map(|&c| {
            let mut w = Vec::new();
            let lo = (c - reach).ceil().max(0.0) as usize;
            let hi = ((c + reach).floor() as usize).min(nz - 1);
            for z in lo..=hi {
                let d = (z as f64 - c).abs();
                let wz = match ssp {
                    Ssp::Gaussian => (-4.0 * 2f64.ln() * (d / fwhm).powi(2)).exp(),
                    _ => (1.0 - d / fwhm).max(0.0),
                };
                if wz > 0.0 {
                    w.push((z, wz));
                }
            }
            let total: f64 = w.iter().map(|p| p.1).sum();
            let mut out = vec![0f64; plane];
            for (z, wz) in w {
                let s = &vol.values[z * plane..(z + 1) * plane];
                for (o, &v) in out.iter_mut().zip(s) {
                    *o += wz / total * f64::from(v);
                }
            }
            out.into_iter().map(|v| v as f32).collect()
        })
        .collect();
    let zvol = Volume::new(
        vol.name.clone(),
        [zs.len(), ny, nx],
        [vol.spacing[0] * f[0] as f64, vol.spacing[1], vol.spacing[2]],
        zs.concat(),
    );
    let mut t = thick(&zvol, [1, f[1], f[2]]);
    t.name = format!("{} thick", vol.name);
    t
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
    /// Standard deviation (HU) of the noisy minus the noise-free reconstruction in the region
    /// (source = sharp, target = soft).
    pub sharp_noise_hu: f64,
    pub soft_noise_hu: f64,
    /// Mean HU of the noisy reconstructions in the region, and of the truth there.
    pub sharp_mean_hu: f64,
    pub soft_mean_hu: f64,
    pub truth_mean_hu: f64,
    /// The same in the uniform lung-density region (-950 .. -750 HU), when the slice has one of at
    /// least 20 pixels (the phantoms' lung insert).
    pub lung_roi_pixels: usize,
    pub sharp_lung_noise_hu: Option<f64>,
    pub soft_lung_noise_hu: Option<f64>,
    /// Seconds for one slice (acquisitions, reconstructions, post-filters).
    pub seconds_per_slice: f64,
}

/// Pixels of slice `truth` whose 7 × 7 neighbourhood lies within ±15 HU of the centre and whose
/// value is in `range`: a uniform region.
fn uniform_region(truth: &[f32], ny: usize, nx: usize, range: [f32; 2]) -> Vec<usize> {
    let r = 3isize;
    let mut roi = Vec::new();
    for y in r..ny as isize - r {
        for x in r..nx as isize - r {
            let c = truth[y as usize * nx + x as usize];
            if !(range[0]..=range[1]).contains(&c) {
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
    roi
}

/// Measures the noise of the (sharp, soft) pair on slice `z`: the region is every pixel whose 7 × 7
/// neighbourhood in the truth lies within ±15 HU of its centre and in soft tissue (-150 .. 150 HU),
/// i.e. a uniform soft-tissue ROI; noise = std of (noisy − noise-free reconstruction) there, each
/// through the same filters and post-filters. The lung figures use -950 .. -750 HU.
pub fn measure_noise(vol: &Volume, z: usize, cfg: &SimConfig, seed: u64) -> Option<NoiseReport> {
    let [_, ny, nx] = vol.shape;
    let truth = vol.slice(z);
    let sc = Scanner::new(ny, nx, cfg.sharp, cfg.soft);
    let pixel = 0.5 * (vol.spacing[1] + vol.spacing[2]);
    let started = std::time::Instant::now();
    let (a, b) = simulate_slice(&sc, truth, pixel, cfg, true, seed);
    let seconds = started.elapsed().as_secs_f64();
    let (a0, b0) = simulate_slice(&sc, truth, pixel, cfg, false, seed);
    let roi = uniform_region(truth, ny, nx, [-150.0, 150.0]);
    if roi.len() < 20 {
        return None;
    }
    let stats = |roi: &[usize], img: &[f32], base: &[f32]| {
        let n = roi.len() as f64;
        let d: Vec<f64> = roi.iter().map(|&i| f64::from(img[i] - base[i])).collect();
        let m = d.iter().sum::<f64>() / n;
        (d.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
    };
    let mean = |img: &[f32]| roi.iter().map(|&i| f64::from(img[i])).sum::<f64>() / roi.len() as f64;
    let lung = uniform_region(truth, ny, nx, [-950.0, -750.0]);
    let lung_ok = lung.len() >= 20;
    Some(NoiseReport {
        slice: z,
        roi_pixels: roi.len(),
        sharp_noise_hu: stats(&roi, &a, &a0),
        soft_noise_hu: stats(&roi, &b, &b0),
        sharp_mean_hu: mean(&a),
        soft_mean_hu: mean(&b),
        truth_mean_hu: mean(truth),
        lung_roi_pixels: lung.len(),
        sharp_lung_noise_hu: lung_ok.then(|| stats(&lung, &a, &a0)),
        soft_lung_noise_hu: lung_ok.then(|| stats(&lung, &b, &b0)),
        seconds_per_slice: seconds,
    })
}
