//! Agreement statistics: Lin's concordance correlation coefficient, Bland–Altman limits of
//! agreement, and percentiles.

/// Lin's concordance correlation coefficient of paired values (Lin, Biometrics 45:255, 1989):
/// `ρc = 2 s_xy / (s_x² + s_y² + (x̄ − ȳ)²)` with the moments taken with divisor n (Lin's
/// estimator). `None` when there are fewer than 2 pairs or the denominator is 0 (both sides
/// constant and equal: agreement is then undefined, not perfect).
pub fn ccc(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = x[..n].iter().sum::<f64>() / nf;
    let my = y[..n].iter().sum::<f64>() / nf;
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for (a, b) in x[..n].iter().zip(&y[..n]) {
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
        sxy += (a - mx) * (b - my);
    }
    let (sxx, syy, sxy) = (sxx / nf, syy / nf, sxy / nf);
    let den = sxx + syy + (mx - my) * (mx - my);
    (den > 0.0 && den.is_finite()).then(|| 2.0 * sxy / den)
}

/// Bland–Altman agreement of a measurement (output) against a reference (target) over cases
/// (Bland & Altman, Lancet 327:307, 1986): bias = mean difference, limits = bias ± 1.96 · sd of the
/// differences (sample sd, divisor n − 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlandAltman {
    pub n: usize,
    pub bias: f64,
    pub sd: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Bland–Altman of `output` against `target` (same order); `None` under 2 pairs.
pub fn bland_altman(output: &[f64], target: &[f64]) -> Option<BlandAltman> {
    let d: Vec<f64> = output.iter().zip(target).map(|(a, b)| a - b).collect();
    if d.len() < 2 {
        return None;
    }
    let n = d.len() as f64;
    let bias = d.iter().sum::<f64>() / n;
    let sd = (d.iter().map(|v| (v - bias).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    Some(BlandAltman {
        n: d.len(),
        bias,
        sd,
        lower: bias - 1.96 * sd,
        upper: bias + 1.96 * sd,
    })
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics
/// (Hyndman & Fan type 7, numpy's default); `None` for no values.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let h = (values.len() - 1) as f64 * (q / 100.0).clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(values[lo] + (h - lo as f64) * (values[hi] - values[lo]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ccc_of_identical_is_one_and_of_shifted_follows_the_formula() {
        let x = [1.0, 2.0, 4.0, 7.0, 11.0];
        assert!((ccc(&x, &x).unwrap() - 1.0).abs() < 1e-15);
        // y = x + c: s_xy = s_x², so ρc = 2 s² / (2 s² + c²) exactly.
        let c = 1.5;
        let y: Vec<f64> = x.iter().map(|v| v + c).collect();
        let m = x.iter().sum::<f64>() / 5.0;
        let s2 = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 5.0;
        let want = 2.0 * s2 / (2.0 * s2 + c * c);
        let got = ccc(&x, &y).unwrap();
        assert!((got - want).abs() < 1e-12 && got < 1.0, "{got} vs {want}");
        // A scaled copy is perfectly correlated but not concordant.
        let z: Vec<f64> = x.iter().map(|v| 2.0 * v).collect();
        assert!(ccc(&x, &z).unwrap() < 0.9);
        assert_eq!(ccc(&[3.0, 3.0], &[3.0, 3.0]), None);
        assert_eq!(ccc(&[1.0], &[1.0]), None);
    }

    #[test]
    fn bland_altman_and_percentiles() {
        let b = bland_altman(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((b.bias - 2.0).abs() < 1e-12 && (b.sd - 1.0).abs() < 1e-12);
        assert!((b.upper - 3.96).abs() < 1e-12 && (b.lower - 0.04).abs() < 1e-12);
        assert_eq!(bland_altman(&[1.0], &[1.0]), None);
        let mut v: Vec<f64> = (1..=11).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut v, 15.0), Some(2.5));
        assert_eq!(percentile(&mut v, 100.0), Some(11.0));
        assert_eq!(percentile(&mut [], 15.0), None);
    }
}
