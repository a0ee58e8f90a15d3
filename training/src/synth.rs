//! Paired training data by simulation (`ct-train synth`, DESIGN §5): no one ships paired scanner
//! reconstructions, so we make them.
//!
//! **Kernels.** Each axial slice is treated as one acquisition: HU to linear attenuation
//! (`mu = mu_water · (1 + HU/1000)`, clamped at 0), a parallel-beam forward projection (Joseph's
//! method: one linear interpolation per image row or column crossed, so every pixel on the ray is
//! visited once), Poisson counting noise at `photons` incident photons per detector bin and view
//! (`I = Poisson(I0 · exp(-L))`, `L = -ln(max(I, 1)/I0)`), then filtered back-projection of the *same*
//! noisy sinogram twice: with a sharp filter (ramp, or Shepp-Logan) and with a soft one (Hann, or
//! Hamming). The two images are the (sharp, soft) pair: the same anatomy and the same quanta, two
//! kernels, exactly what a scanner's two reconstructions of one raw data set give. Geometry: detector
//! bins one pixel wide covering the image diagonal (`ceil(√(rows² + cols²)) + 1`, ≥ N√2), and
//! `ceil(π/2 · max(rows, cols))` views over 180°. The ramp is the band-limited spatial-domain filter
//! of Kak & Slaney, applied by zero-padded FFT; windows multiply its spectrum (Hann
//! `0.5(1 + cos 2πf)`, Hamming `0.54 + 0.46 cos 2πf`, Shepp-Logan `sinc f`, `f` in cycles/bin).
//!
//! **Resolution.** The super-resolution source ("thick") is the soft reconstruction averaged over
//! groups of 4 slices in z and 2 × 2 pixels in-plane (seed 000's task: 4× z, 2× x/y), written on its
//! own coarse grid (4× slice spacing, 2× pixel spacing); volumes are cropped to multiples first so
//! `soft` is exactly the high-resolution target of `thick`.
//!
//! **Layout.** `OUT/<case>/{sharp,soft,thick}` as DICOM series folders (ConvolutionKernel
//! `SIM-SHARP`, `SIM-SOFT`, and `SIM-SOFT` for the thick series) or as `sharp.nii.gz`, `soft.nii.gz`,
//! `thick.nii.gz`; plus `OUT/synth.toml` recording the parameters and the measured noise.

use ct_harmonizer::samples::{Rng, SampleError, SeriesSpec, CRANIUM_INV3};
use rayon::prelude::*;
use serde::Serialize;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use crate::data::{load_dicom_series, load_volume, DataError, Volume};
use crate::nifti::{self, NiftiError};
use crate::phantom::{self, PhantomConfig};

/// Linear attenuation of water (1/mm) at a typical effective CT energy (about 70 keV).
pub const MU_WATER_PER_MM: f64 = 0.0192;
/// Default incident photons per detector bin and view.
pub const DEFAULT_PHOTONS: f64 = 3.0e4;
/// Thick-slice factors (z, y, x).
pub const THICK_FACTORS: [usize; 3] = [4, 2, 2];

/// Errors simulating data. Each names the file or folder and the reason.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    #[error("writing {path}: {source}")]
    Series { path: PathBuf, source: SampleError },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot serialize the summary: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// Reconstruction filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    Ramp,
    SheppLogan,
    Hann,
    Hamming,
}

impl Filter {
    pub fn parse(s: &str) -> Result<Self, SynthError> {
        match s.to_ascii_lowercase().as_str() {
            "ramp" | "ram-lak" => Ok(Self::Ramp),
            "shepp-logan" | "shepp_logan" => Ok(Self::SheppLogan),
            "hann" | "hanning" => Ok(Self::Hann),
            "hamming" => Ok(Self::Hamming),
            _ => Err(SynthError::Invalid(format!(
                "unknown filter {s:?}; use ramp, shepp-logan, hann or hamming"
            ))),
        }
    }

    /// Window multiplying the ramp at `f` cycles per detector bin, `f ∈ [0, 0.5]`.
    pub fn window(self, f: f64) -> f64 {
        match self {
            Self::Ramp => 1.0,
            Self::SheppLogan => {
                if f == 0.0 {
                    1.0
                } else {
                    (PI * f).sin() / (PI * f)
                }
            }
            Self::Hann => 0.5 * (1.0 + (2.0 * PI * f).cos()),
            Self::Hamming => 0.54 + 0.46 * (2.0 * PI * f).cos(),
        }
    }
}

/// In-place iterative radix-2 complex FFT (`inverse` = conjugate twiddles, with 1/n scaling).
fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let ang = sign * 2.0 * PI / len as f64;
        let (wr, wi) = (ang.cos(), ang.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0f64, 0.0f64);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let (xr, xi) = (re[b] * cr - im[b] * ci, re[b] * ci + im[b] * cr);
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
                let t = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = t;
            }
        }
        len <<= 1;
    }
    if inverse {
        let s = 1.0 / n as f64;
        re.iter_mut().for_each(|v| *v *= s);
        im.iter_mut().for_each(|v| *v *= s);
    }
}

/// Poisson sample: inversion by multiplication below 40, normal approximation above.
fn poisson(rng: &mut Rng, lambda: f64) -> f64 {
    if lambda < 40.0 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= rng.uniform();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    } else {
        (lambda + lambda.sqrt() * rng.normal()).round().max(0.0)
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut r = Rng::new(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}

/// Precomputed parallel-beam geometry and filters for one slice size.
#[derive(Debug, Clone)]
pub struct Scanner {
    pub rows: usize,
    pub cols: usize,
    pub views: usize,
    pub bins: usize,
    /// (cos θ, sin θ) per view.
    trig: Vec<(f64, f64)>,
    pad: usize,
    /// Ramp × window spectra (length `pad`) for the sharp and the soft filter.
    sharp_h: Vec<f64>,
    soft_h: Vec<f64>,
    pub sharp: Filter,
    pub soft: Filter,
}

impl Scanner {
    pub fn new(rows: usize, cols: usize, sharp: Filter, soft: Filter) -> Self {
        let views = ((PI / 2.0) * rows.max(cols) as f64).ceil() as usize;
        let diag = ((rows * rows + cols * cols) as f64).sqrt();
        let bins = diag.ceil() as usize + 1;
        let trig = (0..views)
            .map(|i| {
                let th = PI * i as f64 / views as f64;
                (th.cos(), th.sin())
            })
            .collect();
        let pad = (2 * bins).next_power_of_two();
        // Kak & Slaney's band-limited ramp, tau = 1 bin.
        let mut hr = vec![0.0; pad];
        let mut hi = vec![0.0; pad];
        hr[0] = 0.25;
        for n in 1..pad / 2 {
            if n % 2 == 1 {
                let v = -1.0 / (PI * PI * (n * n) as f64);
                hr[n] = v;
                hr[pad - n] = v;
            }
        }
        fft(&mut hr, &mut hi, false);
        let spectrum = |f: Filter| -> Vec<f64> {
            (0..pad)
                .map(|k| {
                    let fr = k.min(pad - k) as f64 / pad as f64;
                    hr[k] * f.window(fr)
                })
                .collect()
        };
        Self {
            rows,
            cols,
            views,
            bins,
            trig,
            pad,
            sharp_h: spectrum(sharp),
            soft_h: spectrum(soft),
            sharp,
            soft,
        }
    }

    /// Parallel-beam projections (Joseph's method) of `img` (row-major, rows × cols, values per
    /// pixel): `views × bins` line integrals in pixel units.
    pub fn project(&self, img: &[f64]) -> Vec<f64> {
        let (rows, cols, bins) = (self.rows, self.cols, self.bins);
        let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0);
        let tc = (bins as f64 - 1.0) / 2.0;
        let mut sino = vec![0.0; self.views * bins];
        sino.par_chunks_mut(bins)
            .zip(self.trig.par_iter())
            .for_each(|(out, &(c, s))| {
                for (b, o) in out.iter_mut().enumerate() {
                    let t = b as f64 - tc;
                    let mut acc = 0.0;
                    if c.abs() >= s.abs() {
                        // The ray crosses every row once: x = t / cos θ - yc · tan θ.
                        let (a0, slope) = (t / c + cx, -s / c);
                        for y in 0..rows {
                            let x = a0 + slope * (y as f64 - cy);
                            if x <= -1.0 || x >= cols as f64 {
                                continue;
                            }
                            let i = x.floor();
                            let f = x - i;
                            let i = i as isize;
                            let row = &img[y * cols..(y + 1) * cols];
                            let get = |k: isize| {
                                if k >= 0 && (k as usize) < cols {
                                    row[k as usize]
                                } else {
                                    0.0
                                }
                            };
                            acc += (1.0 - f) * get(i) + f * get(i + 1);
                        }
                        *o = acc / c.abs();
                    } else {
                        // The ray crosses every column once: y = t / sin θ - xc / tan θ.
                        let (a0, slope) = (t / s + cy, -c / s);
                        for x in 0..cols {
                            let y = a0 + slope * (x as f64 - cx);
                            if y <= -1.0 || y >= rows as f64 {
                                continue;
                            }
                            let i = y.floor();
                            let f = y - i;
                            let i = i as isize;
                            let get = |k: isize| {
                                if k >= 0 && (k as usize) < rows {
                                    img[k as usize * cols + x]
                                } else {
                                    0.0
                                }
                            };
                            acc += (1.0 - f) * get(i) + f * get(i + 1);
                        }
                        *o = acc / s.abs();
                    }
                }
            });
        sino
    }

    /// Filters every view with the sharp and the soft filter at once (one forward FFT and one
    /// inverse FFT per view: the two real results travel as the real and imaginary parts).
    fn filter(&self, sino: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let bins = self.bins;
        let mut sharp = vec![0.0; sino.len()];
        let mut soft = vec![0.0; sino.len()];
        sharp
            .par_chunks_mut(bins)
            .zip(soft.par_chunks_mut(bins))
            .zip(sino.par_chunks(bins))
            .for_each(|((qs, qo), p)| {
                let mut re = vec![0.0; self.pad];
                let mut im = vec![0.0; self.pad];
                re[..bins].copy_from_slice(p);
                fft(&mut re, &mut im, false);
                for k in 0..self.pad {
                    let (a, b) = (re[k], im[k]);
                    let (hs, ho) = (self.sharp_h[k], self.soft_h[k]);
                    // (a + ib)·hs + i·(a + ib)·ho
                    re[k] = a * hs - b * ho;
                    im[k] = b * hs + a * ho;
                }
                fft(&mut re, &mut im, true);
                qs.copy_from_slice(&re[..bins]);
                qo.copy_from_slice(&im[..bins]);
            });
        (sharp, soft)
    }

    /// Back-projects two filtered sinograms at once; returns images in the sinogram's units per
    /// pixel.
    fn backproject(&self, qa: &[f64], qb: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (rows, cols, bins) = (self.rows, self.cols, self.bins);
        let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0);
        let tc = (bins as f64 - 1.0) / 2.0;
        let scale = PI / self.views as f64;
        let mut a = vec![0.0; rows * cols];
        let mut b = vec![0.0; rows * cols];
        a.par_chunks_mut(cols)
            .zip(b.par_chunks_mut(cols))
            .enumerate()
            .for_each(|(y, (ra, rb))| {
                let yc = y as f64 - cy;
                for (v, &(c, s)) in self.trig.iter().enumerate() {
                    let pa = &qa[v * bins..(v + 1) * bins];
                    let pb = &qb[v * bins..(v + 1) * bins];
                    let t0 = -cx * c + yc * s + tc;
                    for x in 0..cols {
                        let t = t0 + x as f64 * c;
                        let i = t.floor();
                        let f = t - i;
                        let i = i as usize; // t >= 0 and t + 1 < bins by construction
                        if i + 1 < bins {
                            ra[x] += pa[i] + f * (pa[i + 1] - pa[i]);
                            rb[x] += pb[i] + f * (pb[i + 1] - pb[i]);
                        }
                    }
                }
                ra.iter_mut().for_each(|v| *v *= scale);
                rb.iter_mut().for_each(|v| *v *= scale);
            });
        (a, b)
    }

    /// Simulates one acquisition of an HU slice with `pixel_mm` pixels: returns the (sharp, soft)
    /// reconstructions in HU. `photons = None` gives the noise-free reconstructions.
    pub fn simulate(
        &self,
        hu: &[f32],
        pixel_mm: f64,
        photons: Option<f64>,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let mu_px = MU_WATER_PER_MM * pixel_mm;
        let img: Vec<f64> = hu
            .iter()
            .map(|&h| (mu_px * (1.0 + f64::from(h) / 1000.0)).max(0.0))
            .collect();
        let mut sino = self.project(&img);
        if let Some(i0) = photons {
            sino.par_chunks_mut(self.bins)
                .enumerate()
                .for_each(|(v, row)| {
                    let mut rng = Rng::new(mix(seed, v as u64));
                    for l in row.iter_mut() {
                        let counts = poisson(&mut rng, i0 * (-*l).exp()).max(1.0);
                        *l = -(counts / i0).ln();
                    }
                });
        }
        let (qs, qo) = self.filter(&sino);
        let (a, b) = self.backproject(&qs, &qo);
        let to_hu = |v: Vec<f64>| -> Vec<f32> {
            v.iter()
                .map(|&m| ((m / mu_px - 1.0) * 1000.0) as f32)
                .collect()
        };
        (to_hu(a), to_hu(b))
    }
}

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
                acc += vol.hu[row..row + f[2]]
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
                        acc += a * b * f64::from(vol.hu[vol.idx(z, y, x)]);
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

/// Output format of `synth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Dicom,
    Nifti,
}

/// Where the anatomy comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The InVesalius head CT (Debian `invesalius-examples`).
    Cranium,
    /// Procedural chest phantoms.
    Phantom,
    /// A DICOM folder (every series in it is a case), a NIfTI file or an `.inv3` project.
    Path(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> Self {
        match s {
            "cranium" => Self::Cranium,
            "phantom" => Self::Phantom,
            p => Self::Path(PathBuf::from(p)),
        }
    }
}

/// `ct-train synth` options.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub source: Source,
    pub sim: SimConfig,
    pub format: Format,
    /// In-plane size (longer side); 0 keeps the source's. Phantoms are generated at this size
    /// (256 when 0).
    pub size: usize,
    /// Slices per case (central ones; phantoms are generated with this many; 0 = all, 48 for
    /// phantoms).
    pub slices: usize,
    /// Phantom cases to generate.
    pub cases: usize,
    /// Also write the thick-slice super-resolution source.
    pub thick: bool,
}

/// One written case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub name: String,
    pub source: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub thick_shape: Option<[usize; 3]>,
    pub noise: Option<NoiseReport>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    program: String,
    photons: f64,
    sharp_filter: Filter,
    soft_filter: Filter,
    seed: u64,
    format: Format,
    mu_water_per_mm: f64,
    thick_factors: [usize; 3],
    note: &'static str,
    case: &'a [CaseSummary],
}

fn source_volumes(o: &SynthOptions) -> Result<Vec<(String, Volume)>, SynthError> {
    let vols = match &o.source {
        Source::Phantom => {
            let size = if o.size == 0 { 256 } else { o.size };
            let slices = if o.slices == 0 { 48 } else { o.slices };
            (0..o.cases.max(1))
                .map(|k| {
                    let seed = o.sim.seed.wrapping_add(k as u64);
                    (
                        format!("phantom-{seed:04}"),
                        phantom::chest(&PhantomConfig::chest(size, slices, seed)),
                    )
                })
                .collect()
        }
        Source::Cranium => vec![("cranium".to_string(), load_volume(Path::new(CRANIUM_INV3))?)],
        Source::Path(p) if p.is_dir() => load_dicom_series(p)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("series-{i:02}"), v))
            .collect(),
        Source::Path(p) => {
            let stem = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "volume".into());
            let stem = stem
                .trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .trim_end_matches(".inv3")
                .to_string();
            vec![(stem, load_volume(p)?)]
        }
    };
    Ok(vols
        .into_iter()
        .map(|(n, v)| {
            let v = shrink_inplane(&v, o.size);
            (n, central_slices(&v, o.slices))
        })
        .collect())
}

fn write_volume(
    v: &Volume,
    dir: &Path,
    what: &str,
    format: Format,
    mut spec: SeriesSpec,
) -> Result<(), SynthError> {
    match format {
        Format::Nifti => {
            let p = dir.join(format!("{what}.nii.gz"));
            nifti::write(&p, v.shape, v.spacing, &v.hu, nifti::WriteType::Int16)?;
        }
        Format::Dicom => {
            let p = dir.join(what);
            let plane = v.shape[1] * v.shape[2];
            spec.series_description = format!("SIMULATED {}", what.to_ascii_uppercase());
            spec.write(&p, |z| v.hu[z * plane..(z + 1) * plane].to_vec())
                .map_err(|source| SynthError::Series { path: p, source })?;
        }
    }
    Ok(())
}

/// Runs `ct-train synth`: simulates every case and writes the pairs and a summary.
pub fn run(o: &SynthOptions) -> Result<Vec<CaseSummary>, SynthError> {
    if !(o.sim.photons.is_finite() && o.sim.photons >= 1.0) {
        return Err(SynthError::Invalid(format!(
            "--photons {} must be at least 1",
            o.sim.photons
        )));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(&o.out).map_err(io(&o.out))?;
    let mut out = Vec::new();
    for (k, (name, vol)) in source_volumes(o)?.into_iter().enumerate() {
        let started = std::time::Instant::now();
        let vol = if o.thick {
            crop_to_multiple(&vol, THICK_FACTORS)?
        } else {
            vol
        };
        let case_seed = mix(o.sim.seed, k as u64 + 1);
        let pair = simulate_volume(&vol, &o.sim, case_seed);
        let dir = o.out.join(&name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let [nz, ny, nx] = vol.shape;
        let base = |tag: &str, shape: [usize; 3], spacing: [f64; 3], kernel: &str, number| {
            let mut s = SeriesSpec::axial(
                &format!("ct-train-synth-{name}-{}-{tag}", o.sim.seed),
                shape[1],
                shape[2],
                shape[0],
                spacing,
            );
            s.patient_name = "SIMULATED^PAIR".into();
            s.patient_id = format!("SIM-{name}");
            s.convolution_kernel = kernel.into();
            s.series_number = number;
            s
        };
        write_volume(
            &pair.sharp,
            &dir,
            "sharp",
            o.format,
            base("sharp", vol.shape, vol.spacing, "SIM-SHARP", 2),
        )?;
        write_volume(
            &pair.soft,
            &dir,
            "soft",
            o.format,
            base("soft", vol.shape, vol.spacing, "SIM-SOFT", 3),
        )?;
        let mut thick_shape = None;
        if o.thick {
            let t = thick(&pair.soft, THICK_FACTORS);
            let mut spec = base("thick", t.shape, t.spacing, "SIM-SOFT", 4);
            // Thick slice k is the mean of thin slices 4k .. 4k+3: centre it there.
            spec.origin[2] = -(THICK_FACTORS[0] as f64 - 1.0) / 2.0 * vol.spacing[0];
            write_volume(&t, &dir, "thick", o.format, spec)?;
            thick_shape = Some(t.shape);
        }
        let noise = measure_noise(&vol, nz / 2, &o.sim, mix(case_seed, 999_999));
        let s = CaseSummary {
            name: name.clone(),
            source: vol.name.clone(),
            shape: [nz, ny, nx],
            spacing: vol.spacing,
            thick_shape,
            noise,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            case = %name,
            shape = ?s.shape,
            sharp_noise_hu = noise.map(|n| n.sharp_noise_hu),
            soft_noise_hu = noise.map(|n| n.soft_noise_hu),
            seconds = s.seconds,
            "simulated"
        );
        out.push(s);
    }
    let summary = Summary {
        program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
        photons: o.sim.photons,
        sharp_filter: o.sim.sharp,
        soft_filter: o.sim.soft,
        seed: o.sim.seed,
        format: o.format,
        mu_water_per_mm: MU_WATER_PER_MM,
        thick_factors: THICK_FACTORS,
        note: "noise: std (HU) of noisy minus noise-free reconstruction over the uniform \
               soft-tissue region of the middle slice (7x7 neighbourhood within 15 HU, -150..150 HU)",
        case: &out,
    };
    let path = o.out.join("synth.toml");
    std::fs::write(&path, toml::to_string_pretty(&summary)?).map_err(io(&path))?;
    Ok(out)
}

/// Command-line arguments of `ct-train synth`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Output folder: one sub-folder per case with `sharp`, `soft` and `thick`, plus `synth.toml`.
    #[arg(long)]
    pub out: PathBuf,
    /// Anatomy: `cranium` (Debian's invesalius-examples head CT), `phantom` (procedural chests), a
    /// DICOM folder (every series a case), a `.nii` / `.nii.gz` file or an `.inv3` project.
    #[arg(long, default_value = "phantom")]
    pub source: String,
    /// Incident photons per detector bin and view (Poisson noise).
    #[arg(long, default_value_t = DEFAULT_PHOTONS)]
    pub photons: f64,
    /// Seed for phantoms and noise (the same seed gives the same data).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sharp reconstruction filter: ramp or shepp-logan.
    #[arg(long, default_value = "ramp")]
    pub sharp: String,
    /// Soft reconstruction filter: hann or hamming.
    #[arg(long, default_value = "hann")]
    pub soft: String,
    /// In-plane size (longer side) in pixels; larger sources are shrunk by area averaging.
    /// Phantoms are generated at this size (256 when 0).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Slices per case (the central ones; 48 for phantoms when 0; all otherwise).
    #[arg(long, default_value_t = 0)]
    pub slices: usize,
    /// Number of phantom cases (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    pub cases: usize,
    /// Output format: dicom or nifti.
    #[arg(long, default_value = "dicom")]
    pub format: String,
    /// Do not write the thick-slice super-resolution source.
    #[arg(long)]
    pub no_thick: bool,
}

/// Runs `ct-train synth` from its arguments and prints one line per case.
pub fn run_cli(a: SynthArgs) -> anyhow::Result<()> {
    let format = match a.format.to_ascii_lowercase().as_str() {
        "dicom" => Format::Dicom,
        "nifti" | "nii" => Format::Nifti,
        f => anyhow::bail!("unknown --format {f:?}; use dicom or nifti"),
    };
    let o = SynthOptions {
        out: a.out,
        source: Source::parse(&a.source),
        sim: SimConfig {
            photons: a.photons,
            sharp: Filter::parse(&a.sharp)?,
            soft: Filter::parse(&a.soft)?,
            seed: a.seed,
        },
        format,
        size: a.size,
        slices: a.slices,
        cases: a.cases,
        thick: !a.no_thick,
    };
    let cases = run(&o)?;
    println!(
        "{:<16} {:>16} {:>12} {:>12} {:>10} {:>9}",
        "case", "shape (z,y,x)", "sharp noise", "soft noise", "ROI px", "s/slice"
    );
    for c in &cases {
        let n = c.noise;
        println!(
            "{:<16} {:>16} {:>12} {:>12} {:>10} {:>9}",
            c.name,
            format!("{}x{}x{}", c.shape[0], c.shape[1], c.shape[2]),
            n.map(|n| format!("{:.1} HU", n.sharp_noise_hu))
                .unwrap_or_default(),
            n.map(|n| format!("{:.1} HU", n.soft_noise_hu))
                .unwrap_or_default(),
            n.map(|n| n.roi_pixels.to_string()).unwrap_or_default(),
            n.map(|n| format!("{:.3}", n.seconds_per_slice))
                .unwrap_or_default(),
        );
    }
    println!("wrote {}", o.out.join("synth.toml").display());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn disc(n: usize, hu_in: f32) -> Vec<f32> {
        let c = (n as f32 - 1.0) / 2.0;
        (0..n * n)
            .map(|i| {
                let (y, x) = ((i / n) as f32 - c, (i % n) as f32 - c);
                if (x * x + y * y).sqrt() < 0.4 * n as f32 {
                    hu_in
                } else {
                    -1000.0
                }
            })
            .collect()
    }

    #[test]
    fn fft_round_trip_and_known_transform() {
        let mut re: Vec<f64> = (0..16).map(|i| (i as f64 * 0.3).sin()).collect();
        let orig = re.clone();
        let mut im = vec![0.0; 16];
        fft(&mut re, &mut im, false);
        fft(&mut re, &mut im, true);
        for (a, b) in re.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-12);
        }
        let mut re = vec![1.0; 8];
        let mut im = vec![0.0; 8];
        fft(&mut re, &mut im, false);
        assert!((re[0] - 8.0).abs() < 1e-12 && re[1..].iter().all(|v| v.abs() < 1e-12));
    }

    #[test]
    fn geometry_and_noise_free_reconstruction() {
        let n = 32;
        let sc = Scanner::new(n, n, Filter::Ramp, Filter::Hann);
        assert!(sc.views as f64 >= PI / 2.0 * n as f64);
        assert!(sc.bins as f64 >= n as f64 * 2f64.sqrt());
        let img = disc(n, 0.0);
        let (a, b) = sc.simulate(&img, 1.0, None, 0);
        // Interior of the water disc is close to 0 HU and outside to -1000 for both filters.
        let c = n / 2;
        for v in [a[c * n + c], b[c * n + c], a[(c + 3) * n + c - 4]] {
            assert!(v.abs() < 30.0, "{v}");
        }
        assert!((a[1] + 1000.0).abs() < 60.0, "{}", a[1]);
        // Projections of a constant image equal the chord lengths: the central ray is the width.
        let ones = vec![1.0; n * n];
        let p = sc.project(&ones);
        let mid = p[(sc.bins - 1) / 2];
        assert!((mid - n as f64).abs() < 1.0, "{mid}");
    }

    #[test]
    fn soft_filter_has_less_noise_and_is_seeded() {
        let n = 40;
        let img = disc(n, 40.0);
        let vol = Volume::new("disc", [1, n, n], [1.0, 1.0, 1.0], img);
        let cfg = SimConfig {
            photons: 1e4,
            ..SimConfig::default()
        };
        let r = measure_noise(&vol, 0, &cfg, 3).unwrap();
        assert!(r.sharp_noise_hu > 1.5 * r.soft_noise_hu, "{r:?}");
        assert!((r.soft_mean_hu - 40.0).abs() < 15.0, "{r:?}");
        let p1 = simulate_volume(&vol, &cfg, 7);
        let p2 = simulate_volume(&vol, &cfg, 7);
        assert_eq!(p1.sharp.hu, p2.sharp.hu);
        assert_ne!(p1.sharp.hu, simulate_volume(&vol, &cfg, 8).sharp.hu);
        for f in ["ramp", "shepp-logan", "hann", "hamming"] {
            let f = Filter::parse(f).unwrap();
            assert!((f.window(0.0) - 1.0).abs() < 1e-12);
        }
        assert!(Filter::parse("box").is_err());
    }

    #[test]
    fn thick_and_resampling() {
        let v = Volume::new(
            "v",
            [8, 4, 6],
            [1.0, 0.5, 0.5],
            (0..192).map(|i| i as f32).collect(),
        );
        let t = thick(&v, THICK_FACTORS);
        assert_eq!(t.shape, [2, 2, 3]);
        assert_eq!(t.spacing, [4.0, 1.0, 1.0]);
        // Mean of z 0..4, y 0..2, x 0..2 of i = z*24 + y*6 + x.
        assert!((t.hu[0] - (1.5 * 24.0 + 0.5 * 6.0 + 0.5) as f32).abs() < 1e-4);
        let s = shrink_inplane(&v, 3);
        assert_eq!(s.shape, [8, 2, 3]);
        assert!((s.hu[0] - (0.5 * 6.0 + 0.5) as f32).abs() < 1e-4);
        let c = crop_to_multiple(
            &Volume::new("w", [9, 5, 5], [1.0; 3], vec![0.0; 225]),
            [4, 2, 2],
        )
        .unwrap();
        assert_eq!(c.shape, [8, 4, 4]);
        assert!(crop_to_multiple(
            &Volume::new("w", [3, 5, 5], [1.0; 3], vec![0.0; 75]),
            [4, 2, 2]
        )
        .is_err());
        assert_eq!(central_slices(&v, 2).shape, [2, 4, 6]);
    }

    #[test]
    fn writes_a_nifti_and_a_dicom_case() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Nifti, Format::Dicom] {
            let out = dir.path().join(format!("{format:?}"));
            let o = SynthOptions {
                out: out.clone(),
                source: Source::Phantom,
                sim: SimConfig::default(),
                format,
                size: 24,
                slices: 8,
                cases: 1,
                thick: true,
            };
            let s = run(&o).unwrap();
            assert_eq!(s[0].shape, [8, 24, 24]);
            assert_eq!(s[0].thick_shape, Some([2, 12, 12]));
            let case = out.join(&s[0].name);
            let (sharp, thick) = match format {
                Format::Nifti => ("sharp.nii.gz", "thick.nii.gz"),
                Format::Dicom => ("sharp", "thick"),
            };
            let a = load_volume(&case.join(sharp)).unwrap();
            assert_eq!(a.shape, [8, 24, 24]);
            let t = load_volume(&case.join(thick)).unwrap();
            assert_eq!(t.shape, [2, 12, 12]);
            assert!(out.join("synth.toml").is_file());
        }
    }
}
