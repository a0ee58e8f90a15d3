//! The conditioning inputs of a multi-stage model (MEGAN, seed 001; `shared/MODELS.md` §2), computed
//! here once for both sides: the daemon ([`super::Translator`]) and the training program
//! (`ct-train train --arch megan`, through its `lib_bridge`) call these functions, so the network
//! sees the same inputs in training and in production.
//!
//! - [`edge_map`]: the **gradient-magnitude edge map** of a block in model units. MEGAN uses
//!   gradient-magnitude-weighted Canny edges; we use the simpler map without Canny's non-maximum
//!   suppression and hysteresis (one 3-D central-difference gradient, no thresholds), which keeps it
//!   local (radius 1 voxel), so a tile's edge map needs only one more voxel of valid margin. The
//!   magnitude is scaled onto [-1, 1] (MODELS.md §2: "intensities scaled to [−1, 1]"):
//!   `2 · min(|∇u| / EDGE_FULL_SCALE, 1) − 1`.
//! - [`Downsampler`]: block means of `f_z × f_y × f_x` voxels (a partial block at the end of an axis
//!   averages the voxels it has), fed slab by slab so that the daemon never holds the
//!   full-resolution volume; [`block_mean`] is the same for a volume in memory (training).
//! - [`previous_at`]: nearest-neighbour up-sampling of the previous stage's output.

/// Gradient magnitude (model units per voxel) mapped to the top of the edge map's range: 0.25 unit
/// per voxel = 187.5 HU per voxel with the seed's window [-1150, 350] (soft tissue to bone or air
/// across two voxels saturates; noise of a soft kernel stays in the lower part).
pub const EDGE_FULL_SCALE: f32 = 0.25;

/// The edge map of `u` (z-major, `dims` = [depth, rows, columns], model units): central differences
/// along each axis with the edge value replicated beyond the block, magnitude scaled onto [-1, 1]
/// (module docs). Same length as `u`.
pub fn edge_map(u: &[f32], dims: [usize; 3]) -> Vec<f32> {
    let [d, h, w] = dims;
    let at = |z: usize, y: usize, x: usize| u[(z * h + y) * w + x];
    let mut out = Vec::with_capacity(u.len());
    for z in 0..d {
        let (z0, z1) = (z.saturating_sub(1), (z + 1).min(d - 1));
        for y in 0..h {
            let (y0, y1) = (y.saturating_sub(1), (y + 1).min(h - 1));
            for x in 0..w {
                let (x0, x1) = (x.saturating_sub(1), (x + 1).min(w - 1));
                let gz = (at(z1, y, x) - at(z0, y, x)) * 0.5;
                let gy = (at(z, y1, x) - at(z, y0, x)) * 0.5;
                let gx = (at(z, y, x1) - at(z, y, x0)) * 0.5;
                let g = (gz * gz + gy * gy + gx * gx).sqrt();
                out.push(2.0 * (g / EDGE_FULL_SCALE).min(1.0) - 1.0);
            }
        }
    }
    out
}

/// Grid of `dims` block-averaged by `factor`: each axis rounded up.
pub fn low_dims(dims: [usize; 3], factor: [usize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| dims[a].div_ceil(factor[a].max(1)))
}

/// Block means of a volume fed in z order (module docs). Memory: the low-resolution volume only.
#[derive(Debug, Clone)]
pub struct Downsampler {
    dims: [usize; 3],
    factor: [usize; 3],
    low: [usize; 3],
    sums: Vec<f32>,
    /// Series slices received so far.
    next_z: usize,
}

/// Errors feeding a [`Downsampler`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DownsampleError {
    #[error("slab at z {z0} ({depth} slices of {rows}x{columns}) does not continue a {d}x{h}x{w} volume at z {expected} in blocks of {fz} slices", d = dims[0], h = dims[1], w = dims[2], fz = factor[0])]
    Slab {
        z0: usize,
        depth: usize,
        rows: usize,
        columns: usize,
        expected: usize,
        dims: [usize; 3],
        factor: [usize; 3],
    },
    #[error("volume of {d} slices ended at z {at}", d = dims[0])]
    Incomplete { at: usize, dims: [usize; 3] },
}

impl Downsampler {
    /// A downsampler of a `dims` volume by `factor` (each factor >= 1).
    pub fn new(dims: [usize; 3], factor: [usize; 3]) -> Self {
        let factor = factor.map(|f| f.max(1));
        let low = low_dims(dims, factor);
        Self {
            dims,
            factor,
            low,
            sums: vec![0.0; low.iter().product()],
            next_z: 0,
        }
    }

    /// Slices to read per [`Downsampler::push`] so that no block is split between slabs: a whole
    /// number of blocks, at least `at_least` slices.
    pub fn chunk_depth(&self, at_least: usize) -> usize {
        at_least.max(1).div_ceil(self.factor[0]) * self.factor[0]
    }

    /// Adds the next `depth` slices (`values` z-major, model units), starting at slice `z0`, which
    /// must be where the previous slab ended; `z0` and each slab but the last must be whole blocks.
    pub fn push(&mut self, z0: usize, depth: usize, values: &[f32]) -> Result<(), DownsampleError> {
        let [d, h, w] = self.dims;
        let [fz, fy, fx] = self.factor;
        let [_, lh, lw] = self.low;
        let bad = || DownsampleError::Slab {
            z0,
            depth,
            rows: h,
            columns: w,
            expected: self.next_z,
            dims: self.dims,
            factor: self.factor,
        };
        if z0 != self.next_z
            || !z0.is_multiple_of(fz)
            || z0 + depth > d
            || values.len() != depth * h * w
        {
            return Err(bad());
        }
        for z in 0..depth {
            let lz = (z0 + z) / fz;
            for y in 0..h {
                let row = &values[(z * h + y) * w..(z * h + y + 1) * w];
                let base = (lz * lh + y / fy) * lw;
                for (x, v) in row.iter().enumerate() {
                    self.sums[base + x / fx] += v;
                }
            }
        }
        self.next_z = z0 + depth;
        Ok(())
    }

    /// The block means, z-major on [`low_dims`], once every slice was pushed.
    pub fn finish(self) -> Result<(Vec<f32>, [usize; 3]), DownsampleError> {
        let [d, h, w] = self.dims;
        if self.next_z != d {
            return Err(DownsampleError::Incomplete {
                at: self.next_z,
                dims: self.dims,
            });
        }
        let [fz, fy, fx] = self.factor;
        let [ld, lh, lw] = self.low;
        let count = |i: usize, f: usize, n: usize| ((i + 1) * f).min(n) - i * f;
        let mut sums = self.sums;
        for z in 0..ld {
            let cz = count(z, fz, d);
            for y in 0..lh {
                let cy = count(y, fy, h);
                for x in 0..lw {
                    let n = (cz * cy * count(x, fx, w)) as f32;
                    sums[(z * lh + y) * lw + x] /= n;
                }
            }
        }
        Ok((sums, self.low))
    }
}

/// Block means of a whole volume in memory (`values` z-major, `dims`), by `factor`: the same
/// computation as feeding a [`Downsampler`] slab by slab.
pub fn block_mean(
    values: &[f32],
    dims: [usize; 3],
    factor: [usize; 3],
) -> Result<(Vec<f32>, [usize; 3]), DownsampleError> {
    let mut ds = Downsampler::new(dims, factor);
    ds.push(0, dims[0], values)?;
    ds.finish()
}

/// The previous stage's value for series voxel (z, y, x): its output `low` (z-major, `low_dims`)
/// sampled nearest-neighbour, i.e. at block (z / f_z, y / f_y, x / f_x).
pub fn previous_at(
    low: &[f32],
    low_dims: [usize; 3],
    factor: [usize; 3],
    z: usize,
    y: usize,
    x: usize,
) -> f32 {
    let [ld, lh, lw] = low_dims;
    let lz = (z / factor[0]).min(ld.saturating_sub(1));
    let ly = (y / factor[1]).min(lh.saturating_sub(1));
    let lx = (x / factor[2]).min(lw.saturating_sub(1));
    low.get((lz * lh + ly) * lw + lx).copied().unwrap_or(0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn edge_map_of_a_ramp_and_a_constant() {
        let dims = [3, 4, 5];
        let flat = vec![0.3; 60];
        assert!(edge_map(&flat, dims).iter().all(|&e| e == -1.0));
        // u = 0.1 x: gradient 0.1 per voxel inside, 0.05 at the two x faces (replicated edge).
        let ramp: Vec<f32> = (0..60).map(|i| 0.1 * (i % 5) as f32).collect();
        let e = edge_map(&ramp, dims);
        let inner = 2.0 * 0.1 / EDGE_FULL_SCALE - 1.0;
        let face = 2.0 * 0.05 / EDGE_FULL_SCALE - 1.0;
        assert!((e[2] - inner).abs() < 1e-6, "{}", e[2]);
        assert!((e[0] - face).abs() < 1e-6, "{}", e[0]);
        // A step of 2 units saturates.
        let step: Vec<f32> = (0..60)
            .map(|i| if i % 5 < 2 { -1.0 } else { 1.0 })
            .collect();
        assert_eq!(edge_map(&step, dims)[1], 1.0);
    }

    #[test]
    fn downsampler_by_slabs_equals_whole_volume_and_averages_partial_blocks() {
        let dims = [7, 5, 6];
        let v: Vec<f32> = (0..210).map(|i| ((i * 37) % 11) as f32).collect();
        let (whole, low) = block_mean(&v, dims, [2, 2, 4]).unwrap();
        assert_eq!(low, [4, 3, 2]);
        let mut ds = Downsampler::new(dims, [2, 2, 4]);
        let chunk = ds.chunk_depth(3);
        assert_eq!(chunk, 4);
        let plane = 30;
        let mut z = 0;
        while z < 7 {
            let n = chunk.min(7 - z);
            ds.push(z, n, &v[z * plane..(z + n) * plane]).unwrap();
            z += n;
        }
        let (by_slabs, _) = ds.finish().unwrap();
        assert_eq!(whole, by_slabs);
        // The last z block holds one slice, the last y block one row, the last x block 2 columns.
        let expect = (v[6 * plane + 4 * 6 + 4] + v[6 * plane + 4 * 6 + 5]) / 2.0;
        assert!((whole[(3 * 3 + 2) * 2 + 1] - expect).abs() < 1e-6);
    }

    #[test]
    fn downsampler_refuses_a_gap_or_a_split_block() {
        let mut ds = Downsampler::new([4, 2, 2], [2, 1, 1]);
        assert!(ds.push(1, 1, &[0.0; 4]).is_err());
        ds.push(0, 2, &[0.0; 8]).unwrap();
        assert!(ds.clone().finish().is_err());
        assert!(ds.push(3, 1, &[0.0; 4]).is_err());
    }

    #[test]
    fn previous_is_nearest_neighbour() {
        let low = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(previous_at(&low, [1, 2, 2], [4, 4, 4], 3, 5, 2), 3.0);
        assert_eq!(previous_at(&low, [1, 2, 2], [4, 4, 4], 0, 7, 7), 4.0);
    }
}
