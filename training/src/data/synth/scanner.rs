//! The simulated scanner of `ct-train synth` (module docs of [`super`]): reconstruction filters,
//! a radix-2 FFT, Joseph's parallel-beam projector, Poisson counting noise and filtered
//! back-projection of one noisy sinogram with two filters.

pub use super::filters::Filter;
use super::MU_WATER_PER_MM;
use crate::data::rng::Rng;
use rayon::prelude::*;
use std::f64::consts::PI;

/// In-place iterative radix-2 complex FFT (`inverse` = conjugate twiddles, with 1/n scaling).
pub(crate) fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
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
pub(crate) fn poisson(rng: &mut Rng, lambda: f64) -> f64 {
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

pub(crate) fn mix(a: u64, b: u64) -> u64 {
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
    /// The band-limited ramp's spectrum (length `pad`).
    ramp_h: Vec<f64>,
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
        let mut sc = Self {
            rows,
            cols,
            views,
            bins,
            trig,
            pad,
            ramp_h: hr,
            sharp_h: Vec::new(),
            soft_h: Vec::new(),
            sharp,
            soft,
        };
        sc.sharp_h = sc.spectrum(sharp);
        sc.soft_h = sc.spectrum(soft);
        sc
    }

    /// Ramp × window of `f` on the zero-padded FFT grid.
    pub fn spectrum(&self, f: Filter) -> Vec<f64> {
        let pad = self.pad;
        (0..pad)
            .map(|k| {
                let fr = k.min(pad - k) as f64 / pad as f64;
                self.ramp_h[k] * f.window(fr)
            })
            .collect()
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

    /// One acquisition of an HU slice with `pixel_mm` pixels: line integrals of the linear
    /// attenuation (pixel units, `views × bins`), with Poisson counting noise at `photons` incident
    /// photons per ray when given (`None`: noise-free).
    pub fn acquire(&self, hu: &[f32], pixel_mm: f64, photons: Option<f64>, seed: u64) -> Vec<f64> {
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
        sino
    }

    /// Filters two sinograms with two filters at once (one complex FFT per view: `a` travels as the
    /// real part, `b` as the imaginary part, and the two spectra are separated by symmetry).
    fn filter_pair(&self, sa: &[f64], ha: &[f64], sb: &[f64], hb: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (bins, pad) = (self.bins, self.pad);
        let mut qa = vec![0.0; sa.len()];
        let mut qb = vec![0.0; sb.len()];
        qa.par_chunks_mut(bins)
            .zip(qb.par_chunks_mut(bins))
            .zip(sa.par_chunks(bins).zip(sb.par_chunks(bins)))
            .for_each(|((oa, ob), (pa, pb))| {
                let mut re = vec![0.0; pad];
                let mut im = vec![0.0; pad];
                re[..bins].copy_from_slice(pa);
                im[..bins].copy_from_slice(pb);
                fft(&mut re, &mut im, false);
                let (xr, xi) = (re.clone(), im.clone());
                for k in 0..pad {
                    let m = (pad - k) % pad;
                    // A = (X_k + conj X_-k) / 2, B = (X_k - conj X_-k) / 2i.
                    let (ar, ai) = (0.5 * (xr[k] + xr[m]), 0.5 * (xi[k] - xi[m]));
                    let (br, bi) = (0.5 * (xi[k] + xi[m]), -0.5 * (xr[k] - xr[m]));
                    // Y = Ha·A + i·Hb·B
                    re[k] = ha[k] * ar - hb[k] * bi;
                    im[k] = ha[k] * ai + hb[k] * br;
                }
                fft(&mut re, &mut im, true);
                oa.copy_from_slice(&re[..bins]);
                ob.copy_from_slice(&im[..bins]);
            });
        (qa, qb)
    }

    /// Filtered back-projection of two sinograms (from [`Self::acquire`]) with their own filters;
    /// returns the two images in HU.
    pub fn reconstruct_pair(
        &self,
        sa: &[f64],
        fa: Filter,
        sb: &[f64],
        fb: Filter,
        pixel_mm: f64,
    ) -> (Vec<f32>, Vec<f32>) {
        let (ha, hb) = (self.spectrum(fa), self.spectrum(fb));
        let (qa, qb) = self.filter_pair(sa, &ha, sb, &hb);
        let (a, b) = self.backproject(&qa, &qb);
        (to_hu(a, pixel_mm), to_hu(b, pixel_mm))
    }

    /// Simulates one acquisition of an HU slice with `pixel_mm` pixels: returns the (sharp, soft)
    /// reconstructions in HU of the one noisy sinogram (the shared mode). `photons = None` gives
    /// the noise-free reconstructions.
    pub fn simulate(
        &self,
        hu: &[f32],
        pixel_mm: f64,
        photons: Option<f64>,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let sino = self.acquire(hu, pixel_mm, photons, seed);
        let (qs, qo) = self.filter(&sino);
        let (a, b) = self.backproject(&qs, &qo);
        (to_hu(a, pixel_mm), to_hu(b, pixel_mm))
    }
}

/// Back-projected attenuation (per pixel) to HU.
fn to_hu(v: Vec<f64>, pixel_mm: f64) -> Vec<f32> {
    let mu_px = MU_WATER_PER_MM * pixel_mm;
    v.iter()
        .map(|&m| ((m / mu_px - 1.0) * 1000.0) as f32)
        .collect()
}
