//! Radiomic texture features of one 2-D ROI, with the definitions of the Image Biomarker
//! Standardisation Initiative (IBSI reference manual v11, arXiv:1612.07003; Zwanenburg et al.,
//! Radiology 295:328, 2020). Section numbers below are the manual's.
//!
//! **Intensity-based statistics** (§3.3) on the HU values `x` of the ROI (N voxels): mean, variance
//! (divisor N), skewness, excess kurtosis, median, 10th and 90th percentiles, interquartile range,
//! range, mean absolute deviation, root mean square, energy `Σ x²`.
//!
//! **Discretisation** (§2.7): fixed bin width [`BIN_WIDTH_HU`] from [`BIN_ORIGIN_HU`] (the
//! IBSI's recommendation for CT, where HU are calibrated): grey level `i = ⌊(x − origin)/w⌋ + 1`.
//! **Intensity histogram** (§3.4): entropy `−Σ pᵢ log₂ pᵢ` and uniformity `Σ pᵢ²`.
//!
//! **GLCM** (§3.6): in-plane, distance 1 (Chebyshev), the four directions (0,1), (1,1), (1,0),
//! (1,−1), each pair counted both ways (symmetric), the four matrices **merged** into one and
//! normalised to `p_ij` (the IBSI's "2D, merged" aggregation). With `p_{x+y}(k)`, `p_{x−y}(k)` the
//! diagonal and cross-diagonal marginals and `μ` the marginal mean (the matrix is symmetric, so
//! `μ_i = μ_j`): joint maximum, joint average `Σ i p_ij`, joint variance `Σ (i − μ)² p_ij`, joint
//! entropy, difference average `Σ k p_{x−y}(k)`, difference variance, difference entropy, sum
//! average `Σ k p_{x+y}(k)`, sum variance, sum entropy, angular second moment `Σ p_ij²` (energy),
//! contrast `Σ (i − j)² p_ij`, dissimilarity `Σ |i − j| p_ij`, inverse difference
//! `Σ p_ij / (1 + |i − j|)`, inverse difference moment `Σ p_ij / (1 + (i − j)²)` (homogeneity),
//! inverse variance `Σ_{i≠j} p_ij / (i − j)²`, correlation `(Σ i j p_ij − μ²) / σ²`, cluster
//! tendency, shade and prominence `Σ (i + j − 2μ)^{2,3,4} p_ij`.

/// Bin width (HU) of the fixed-bin-size discretisation.
pub const BIN_WIDTH_HU: f64 = 25.0;
/// Lower bound of the first bin (HU).
pub const BIN_ORIGIN_HU: f64 = -1024.0;

/// Feature names, in the order of [`features`].
pub const FEATURE_NAMES: [&str; 34] = [
    "fo_mean",
    "fo_variance",
    "fo_skewness",
    "fo_kurtosis",
    "fo_median",
    "fo_p10",
    "fo_p90",
    "fo_iqr",
    "fo_range",
    "fo_mad",
    "fo_rms",
    "fo_energy",
    "ih_entropy",
    "ih_uniformity",
    "cm_joint_max",
    "cm_joint_avg",
    "cm_joint_var",
    "cm_joint_entr",
    "cm_diff_avg",
    "cm_diff_var",
    "cm_diff_entr",
    "cm_sum_avg",
    "cm_sum_var",
    "cm_sum_entr",
    "cm_energy",
    "cm_contrast",
    "cm_dissimilarity",
    "cm_inv_diff",
    "cm_inv_diff_mom",
    "cm_inv_var",
    "cm_corr",
    "cm_clust_tend",
    "cm_clust_shade",
    "cm_clust_prom",
];

/// Grey level (1-based) of a HU value (module docs).
pub fn grey_level(hu: f32) -> usize {
    (((f64::from(hu) - BIN_ORIGIN_HU) / BIN_WIDTH_HU)
        .floor()
        .max(0.0) as usize)
        + 1
}

/// The merged, symmetric, normalised GLCM of a rows × cols image of grey levels (1..=ng), as a
/// dense ng × ng matrix (`p[(i−1)·ng + (j−1)]`). All zero when the image has no neighbour pair.
pub fn glcm(levels: &[usize], rows: usize, cols: usize, ng: usize) -> Vec<f64> {
    let mut m = vec![0f64; ng * ng];
    let mut total = 0.0;
    for y in 0..rows {
        for x in 0..cols {
            let a = levels[y * cols + x];
            for (dy, dx) in [(0isize, 1isize), (1, 1), (1, 0), (1, -1)] {
                let (yy, xx) = (y as isize + dy, x as isize + dx);
                if yy < 0 || xx < 0 || yy >= rows as isize || xx >= cols as isize {
                    continue;
                }
                let b = levels[yy as usize * cols + xx as usize];
                m[(a - 1) * ng + (b - 1)] += 1.0;
                m[(b - 1) * ng + (a - 1)] += 1.0;
                total += 2.0;
            }
        }
    }
    if total > 0.0 {
        m.iter_mut().for_each(|v| *v /= total);
    }
    m
}

fn entropy(p: impl Iterator<Item = f64>) -> f64 {
    -p.filter(|&v| v > 0.0).map(|v| v * v.log2()).sum::<f64>()
}

/// The GLCM features (the `cm_*` names, in order) of a normalised matrix whose grey levels are
/// `offset + 1 ..= offset + ng`.
pub fn glcm_features(p: &[f64], ng: usize, offset: usize) -> [f64; 20] {
    let lv = |k: usize| (offset + k + 1) as f64;
    let mut mu = 0.0;
    for i in 0..ng {
        for j in 0..ng {
            mu += lv(i) * p[i * ng + j];
        }
    }
    let mut f = [0f64; 20];
    let mut jmax = 0f64;
    let (mut jvar, mut asm, mut con, mut dis, mut id, mut idm, mut iv, mut sij) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut ct, mut cs, mut cp) = (0.0, 0.0, 0.0);
    let mut pdiff = vec![0f64; ng];
    let mut psum = vec![0f64; 2 * ng + 2 * offset + 1];
    for i in 0..ng {
        for j in 0..ng {
            let v = p[i * ng + j];
            if v == 0.0 {
                continue;
            }
            let (a, b) = (lv(i), lv(j));
            let d = (a - b).abs();
            jmax = jmax.max(v);
            jvar += (a - mu).powi(2) * v;
            asm += v * v;
            con += d * d * v;
            dis += d * v;
            id += v / (1.0 + d);
            idm += v / (1.0 + d * d);
            if i != j {
                iv += v / (d * d);
            }
            sij += a * b * v;
            let t = a + b - 2.0 * mu;
            ct += t * t * v;
            cs += t * t * t * v;
            cp += t * t * t * t * v;
            pdiff[i.abs_diff(j)] += v;
            psum[(offset + i + 1) + (offset + j + 1)] += v;
        }
    }
    let davg: f64 = pdiff.iter().enumerate().map(|(k, v)| k as f64 * v).sum();
    let dvar: f64 = pdiff
        .iter()
        .enumerate()
        .map(|(k, v)| (k as f64 - davg).powi(2) * v)
        .sum();
    let savg: f64 = psum.iter().enumerate().map(|(k, v)| k as f64 * v).sum();
    let svar: f64 = psum
        .iter()
        .enumerate()
        .map(|(k, v)| (k as f64 - savg).powi(2) * v)
        .sum();
    f[0] = jmax;
    f[1] = mu;
    f[2] = jvar;
    f[3] = entropy(p.iter().copied());
    f[4] = davg;
    f[5] = dvar;
    f[6] = entropy(pdiff.iter().copied());
    f[7] = savg;
    f[8] = svar;
    f[9] = entropy(psum.iter().copied());
    f[10] = asm;
    f[11] = con;
    f[12] = dis;
    f[13] = id;
    f[14] = idm;
    f[15] = iv;
    // Correlation is 1 by convention for a one-level image (IBSI §3.6.20 leaves σ = 0 undefined;
    // pyradiomics returns 1).
    f[16] = if jvar > 0.0 {
        (sij - mu * mu) / jvar
    } else {
        1.0
    };
    f[17] = ct;
    f[18] = cs;
    f[19] = cp;
    f
}

/// Every feature of [`FEATURE_NAMES`] for a rows × cols ROI of HU values.
pub fn features(hu: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let n = hu.len().max(1) as f64;
    let x: Vec<f64> = hu.iter().map(|&v| f64::from(v)).collect();
    let mean = x.iter().sum::<f64>() / n;
    let m2 = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let m3 = x.iter().map(|v| (v - mean).powi(3)).sum::<f64>() / n;
    let m4 = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    let (skew, kurt) = if m2 > 0.0 {
        (m3 / m2.powf(1.5), m4 / (m2 * m2) - 3.0)
    } else {
        (0.0, 0.0)
    };
    let mut sorted = x.clone();
    let mut pct = |q: f64| super::stats::percentile(&mut sorted, q).unwrap_or(0.0);
    let (median, p10, p90, p25, p75) = (pct(50.0), pct(10.0), pct(90.0), pct(25.0), pct(75.0));
    let (lo, hi) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mad = x.iter().map(|v| (v - mean).abs()).sum::<f64>() / n;
    let energy: f64 = x.iter().map(|v| v * v).sum();
    let rms = (energy / n).sqrt();
    // Discretised grey levels, shifted so the smallest present is 1 (the matrix stays small);
    // the absolute level (offset + k) enters the level-dependent features.
    let g: Vec<usize> = hu.iter().map(|&v| grey_level(v)).collect();
    let gmin = g.iter().copied().min().unwrap_or(1);
    let gmax = g.iter().copied().max().unwrap_or(1);
    let ng = gmax - gmin + 1;
    let local: Vec<usize> = g.iter().map(|&v| v - gmin + 1).collect();
    let mut hist = vec![0f64; ng];
    for &l in &local {
        hist[l - 1] += 1.0 / n;
    }
    let ih_entropy = entropy(hist.iter().copied());
    let uniformity: f64 = hist.iter().map(|p| p * p).sum();
    let cm = glcm_features(&glcm(&local, rows, cols, ng), ng, gmin - 1);
    let mut out = vec![
        mean,
        m2,
        skew,
        kurt,
        median,
        p10,
        p90,
        p75 - p25,
        hi - lo,
        mad,
        rms,
        energy,
        ih_entropy,
        uniformity,
    ];
    out.extend_from_slice(&cm);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn glcm_of_a_small_known_image_matches_hand_computed_values() {
        // [[1, 2], [2, 1]]: horizontal and vertical pairs are (1,2) and (2,1) twice each way;
        // the diagonal gives (1,1) and the anti-diagonal (2,2), each counted both ways. Counts:
        // (1,1) 2, (2,2) 2, (1,2) 4, (2,1) 4 of 12.
        let p = glcm(&[1, 2, 2, 1], 2, 2, 2);
        let want = [1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{p:?}");
        }
        let f = glcm_features(&p, 2, 0);
        let name = |n: &str| FEATURE_NAMES.iter().position(|x| *x == n).unwrap() - 14;
        let close =
            |n: &str, v: f64| assert!((f[name(n)] - v).abs() < 1e-12, "{n}: {}", f[name(n)]);
        close("cm_contrast", 2.0 / 3.0);
        close("cm_energy", 5.0 / 18.0);
        close("cm_inv_diff_mom", 2.0 / 3.0);
        close("cm_joint_entr", 6f64.log2() / 3.0 + 2.0 * 3f64.log2() / 3.0);
        close("cm_corr", -1.0 / 3.0);
        close("cm_joint_avg", 1.5);
        close("cm_dissimilarity", 2.0 / 3.0);
        close("cm_sum_avg", 3.0);
        close("cm_joint_max", 1.0 / 3.0);
        close("cm_inv_var", 2.0 / 3.0);
    }

    #[test]
    fn first_order_features_and_their_count() {
        assert_eq!(FEATURE_NAMES.len(), 14 + 20);
        // 25 HU bins from -1024: -1000 is level 1, -999 level 2, 0 level 41.
        assert_eq!(grey_level(-1000.0), 1);
        assert_eq!(grey_level(-999.0), 2);
        assert_eq!(grey_level(0.0), 41);
        let hu = [0.0f32, 10.0, 20.0, 30.0];
        let f = features(&hu, 2, 2);
        assert_eq!(f.len(), FEATURE_NAMES.len());
        assert!((f[0] - 15.0).abs() < 1e-12 && (f[1] - 125.0).abs() < 1e-12);
        assert!((f[8] - 30.0).abs() < 1e-12 && (f[9] - 10.0).abs() < 1e-12);
        // Levels 41 (0 in [-24, 1)), 42 (10 and 20 in [1, 26)), 43 (30): entropy of (¼, ½, ¼).
        assert!((f[12] - 1.5).abs() < 1e-12, "{}", f[12]);
        assert!((f[13] - 0.375).abs() < 1e-12, "{}", f[13]);
        // Shift invariance of GLCM contrast between identical textures at different levels.
        let g = features(&[100.0, 110.0, 120.0, 130.0], 2, 2);
        assert!((f[25] - g[25]).abs() < 1e-12);
    }
}
