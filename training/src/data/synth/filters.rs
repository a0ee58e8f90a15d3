//! Reconstruction filters of `ct-train synth`: the ramp times a window, each window given by numbers
//! in documented ranges, written and parsed as `NAME[:P1[:P2]]` (`hann:0.8`, `butterworth:0.6:4`,
//! `enhance:0.6:0.45`). A family name alone in a randomised list (`--source-filters`) draws its
//! parameters uniformly from the documented range ([`Family::draw`]).
//!
//! Windows at `r = f / f_N` (frequency over the detector's Nyquist frequency, `r ∈ [0, 1]`):
//!
//! | spec | window | parameter ranges |
//! |---|---|---|
//! | `ramp` | 1 (Ram-Lak) | - |
//! | `shepp-logan` | `sinc(r/2)` = `sin(πr/2)/(πr/2)` | - |
//! | `hann` / `hann:c` | `0.5 (1 + cos(π r/c))` for `r < c`, 0 above | `c ∈ [0.2, 1]` (1 when omitted) |
//! | `hamming` / `hamming:c` | `0.54 + 0.46 cos(π r/c)` for `r < c`, 0 above | `c ∈ [0.2, 1]` |
//! | `butterworth:c:n` | `1 / (1 + (r/c)^(2n))` | `c ∈ [0.2, 1]`, `n ∈ [1, 10]` (4 when omitted) |
//! | `gaussian:c` | `exp(-ln 2 · (r/c)²)` (half height at `c`) | `c ∈ [0.2, 1]` |
//! | `enhance:g:m` | `sinc(r/2) · (1 + g · b(r))`, `b(r) = 0.5 (1 + cos(π (r − m)/0.25))` for `|r − m| < 0.25`, 0 else | `g ∈ [0.1, 1.5]`, `m ∈ [0.3, 0.75]` |
//!
//! `enhance` is the edge-enhancing sharp kernel of vendors' bone and lung kernels (MTF above 1 at
//! mid frequencies, e.g. Siemens B70f/B80f, GE BONEPLUS): the Shepp-Logan roll-off times a Gaussian
//! raised-cosine boost of relative height `g` centred at `m`, zero below `m − 0.25` (the low
//! frequencies, hence the HU of large uniform regions, stay the Shepp-Logan kernel's); with `g = 0.6, m = 0.45` the window peaks at 1.47
//! (r = 0.45). The soft windows are the classical apodisations (Hann, Hamming: Kak & Slaney,
//! *Principles of Computerized Tomographic Imaging*, 1988, §3; Butterworth and Gaussian: the
//! usual nuclear-medicine/CT smoothing windows), cut-off `c` as a fraction of Nyquist.

use super::SynthError;
use crate::data::rng::Rng;
use std::f64::consts::PI;

/// Documented range of every cut-off (fraction of Nyquist).
pub const CUTOFF_RANGE: [f64; 2] = [0.2, 1.0];
/// Documented range of the Butterworth order.
pub const ORDER_RANGE: [f64; 2] = [1.0, 10.0];
/// Documented range of the `enhance` boost height.
pub const GAIN_RANGE: [f64; 2] = [0.1, 1.5];
/// Documented range of the `enhance` boost centre (fraction of Nyquist).
pub const CENTRE_RANGE: [f64; 2] = [0.3, 0.75];
/// Half-width (fraction of Nyquist) of the `enhance` boost: it is 0 below `centre − 0.25`, so the
/// low frequencies (and the HU of large uniform regions) are the Shepp-Logan kernel's.
pub const BOOST_HALF_WIDTH: f64 = 0.25;

/// A reconstruction filter: the ramp times one window (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Filter {
    Ramp,
    SheppLogan,
    /// Hann with its cut-off at Nyquist (`hann`, the shared mode's soft filter).
    Hann,
    /// Hamming with its cut-off at Nyquist.
    Hamming,
    HannCut(f64),
    HammingCut(f64),
    Butterworth {
        cutoff: f64,
        order: f64,
    },
    Gaussian(f64),
    Enhance {
        gain: f64,
        centre: f64,
    },
}

/// A filter family: a [`Filter`] whose parameters are drawn per case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ramp,
    SheppLogan,
    Hann,
    Hamming,
    Butterworth,
    Gaussian,
    Enhance,
}

/// One entry of a filter list: a fixed filter, or a family drawn per case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FilterChoice {
    Fixed(Filter),
    Random(Family),
}

fn sinc_half(r: f64) -> f64 {
    let a = PI * r / 2.0;
    if a == 0.0 {
        1.0
    } else {
        a.sin() / a
    }
}

fn uniform(rng: &mut Rng, r: [f64; 2]) -> f64 {
    r[0] + (r[1] - r[0]) * rng.uniform()
}

fn check(spec: &str, what: &str, v: f64, range: [f64; 2]) -> Result<f64, SynthError> {
    if v.is_finite() && v >= range[0] && v <= range[1] {
        Ok(v)
    } else {
        Err(SynthError::Invalid(format!(
            "filter {spec:?}: {what} {v} is outside its documented range {} .. {}",
            range[0], range[1]
        )))
    }
}

impl Family {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ramp" | "ram-lak" => Self::Ramp,
            "shepp-logan" | "shepp_logan" => Self::SheppLogan,
            "hann" | "hanning" => Self::Hann,
            "hamming" => Self::Hamming,
            "butterworth" => Self::Butterworth,
            "gaussian" => Self::Gaussian,
            "enhance" | "edge" => Self::Enhance,
            _ => return None,
        })
    }

    /// A filter of this family with parameters drawn uniformly in their documented ranges.
    pub fn draw(self, rng: &mut Rng) -> Filter {
        match self {
            Self::Ramp => Filter::Ramp,
            Self::SheppLogan => Filter::SheppLogan,
            Self::Hann => Filter::HannCut(uniform(rng, CUTOFF_RANGE)),
            Self::Hamming => Filter::HammingCut(uniform(rng, CUTOFF_RANGE)),
            Self::Butterworth => Filter::Butterworth {
                cutoff: uniform(rng, CUTOFF_RANGE),
                order: uniform(rng, ORDER_RANGE).round(),
            },
            Self::Gaussian => Filter::Gaussian(uniform(rng, CUTOFF_RANGE)),
            Self::Enhance => Filter::Enhance {
                gain: uniform(rng, GAIN_RANGE),
                centre: uniform(rng, CENTRE_RANGE),
            },
        }
    }
}

impl FilterChoice {
    /// A family name alone is [`Self::Random`] (except `ramp` and `shepp-logan`, which have no
    /// parameters); with numbers it is [`Self::Fixed`].
    pub fn parse(s: &str) -> Result<Self, SynthError> {
        let f = Filter::parse(s)?;
        if s.contains(':') {
            return Ok(Self::Fixed(f));
        }
        let lower = s.trim().to_ascii_lowercase();
        Ok(match Family::parse(&lower) {
            Some(Family::Ramp | Family::SheppLogan) | None => Self::Fixed(f),
            Some(fam) => Self::Random(fam),
        })
    }

    /// Parses a comma-separated list (at least one entry).
    pub fn parse_list(s: &str) -> Result<Vec<Self>, SynthError> {
        let v = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if v.is_empty() {
            return Err(SynthError::Invalid(format!("filter list {s:?} is empty")));
        }
        Ok(v)
    }

    pub fn draw(self, rng: &mut Rng) -> Filter {
        match self {
            Self::Fixed(f) => f,
            Self::Random(fam) => fam.draw(rng),
        }
    }
}

impl Filter {
    /// Parses `NAME[:P1[:P2]]` (module docs); a parameter outside its documented range, an unknown
    /// name or a malformed number is an error naming the spec.
    pub fn parse(s: &str) -> Result<Self, SynthError> {
        let lower = s.trim().to_ascii_lowercase();
        let mut parts = lower.split(':');
        let name = parts.next().unwrap_or_default();
        let nums = parts
            .map(|p| {
                p.trim().parse::<f64>().map_err(|_| {
                    SynthError::Invalid(format!("filter {s:?}: {p:?} is not a number"))
                })
            })
            .collect::<Result<Vec<f64>, _>>()?;
        let Some(fam) = Family::parse(name) else {
            return Err(SynthError::Invalid(format!(
                "unknown filter {s:?}; use ramp, shepp-logan, hann, hamming, butterworth, \
                 gaussian or enhance (with parameters NAME:P1[:P2])"
            )));
        };
        let max_params = match fam {
            Family::Ramp | Family::SheppLogan => 0,
            Family::Hann | Family::Hamming | Family::Gaussian => 1,
            Family::Butterworth | Family::Enhance => 2,
        };
        if nums.len() > max_params {
            return Err(SynthError::Invalid(format!(
                "filter {s:?}: {name} takes at most {max_params} parameter(s)"
            )));
        }
        let cut = |i: usize, default: f64| {
            check(
                s,
                "cut-off",
                nums.get(i).copied().unwrap_or(default),
                CUTOFF_RANGE,
            )
        };
        Ok(match fam {
            Family::Ramp => Self::Ramp,
            Family::SheppLogan => Self::SheppLogan,
            Family::Hann if nums.is_empty() => Self::Hann,
            Family::Hamming if nums.is_empty() => Self::Hamming,
            Family::Hann => Self::HannCut(cut(0, 1.0)?),
            Family::Hamming => Self::HammingCut(cut(0, 1.0)?),
            Family::Gaussian => Self::Gaussian(cut(0, 0.5)?),
            Family::Butterworth => Self::Butterworth {
                cutoff: cut(0, 0.6)?,
                order: check(s, "order", nums.get(1).copied().unwrap_or(4.0), ORDER_RANGE)?,
            },
            Family::Enhance => Self::Enhance {
                gain: check(s, "gain", nums.first().copied().unwrap_or(0.6), GAIN_RANGE)?,
                centre: check(
                    s,
                    "centre",
                    nums.get(1).copied().unwrap_or(0.45),
                    CENTRE_RANGE,
                )?,
            },
        })
    }

    /// Window multiplying the ramp at `f` cycles per detector bin, `f ∈ [0, 0.5]`.
    pub fn window(self, f: f64) -> f64 {
        let r = (2.0 * f).clamp(0.0, 1.0);
        let cut_cos = |c: f64, a: f64| {
            if r < c {
                a + (1.0 - a) * (PI * r / c).cos()
            } else {
                0.0
            }
        };
        match self {
            Self::Ramp => 1.0,
            Self::SheppLogan => sinc_half(r),
            Self::Hann => 0.5 * (1.0 + (2.0 * PI * f).cos()),
            Self::Hamming => 0.54 + 0.46 * (2.0 * PI * f).cos(),
            Self::HannCut(c) => cut_cos(c, 0.5),
            Self::HammingCut(c) => cut_cos(c, 0.54),
            Self::Butterworth { cutoff, order } => 1.0 / (1.0 + (r / cutoff).powf(2.0 * order)),
            Self::Gaussian(c) => (-(2f64.ln()) * (r / c).powi(2)).exp(),
            Self::Enhance { gain, centre } => {
                let d = (r - centre) / BOOST_HALF_WIDTH;
                let bump = if d.abs() < 1.0 {
                    0.5 * (1.0 + (PI * d).cos())
                } else {
                    0.0
                };
                sinc_half(r) * (1.0 + gain * bump)
            }
        }
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ramp => write!(f, "ramp"),
            Self::SheppLogan => write!(f, "shepp-logan"),
            Self::Hann => write!(f, "hann"),
            Self::Hamming => write!(f, "hamming"),
            Self::HannCut(c) => write!(f, "hann:{c:.3}"),
            Self::HammingCut(c) => write!(f, "hamming:{c:.3}"),
            Self::Butterworth { cutoff, order } => write!(f, "butterworth:{cutoff:.3}:{order}"),
            Self::Gaussian(c) => write!(f, "gaussian:{c:.3}"),
            Self::Enhance { gain, centre } => write!(f, "enhance:{gain:.3}:{centre:.3}"),
        }
    }
}

/// Written as its spec string (`"ramp"`, `"hann:0.800"`), which [`Filter::parse`] reads back.
impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn filter_specs_parse_round_trip_and_have_the_documented_shapes() {
        for s in [
            "ramp",
            "shepp-logan",
            "hann",
            "hamming",
            "hann:0.800",
            "hamming:0.500",
            "butterworth:0.600:4",
            "gaussian:0.400",
            "enhance:0.600:0.450",
        ] {
            let f = Filter::parse(s).unwrap();
            assert_eq!(f.to_string(), s);
            assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
            assert!((f.window(0.0) - 1.0).abs() < 1e-12, "{s}");
        }
        // Full-band cut-offs equal the shared mode's windows.
        for f in [0.0, 0.1, 0.2, 0.3, 0.45] {
            let a = Filter::parse("hann:1").unwrap().window(f);
            assert!((a - Filter::Hann.window(f)).abs() < 1e-12);
        }
        // Edge enhancement: above 1 at mid frequencies, below at Nyquist.
        let e = Filter::parse("enhance:0.6:0.45").unwrap();
        assert!(
            e.window(0.225) > 1.4 && e.window(0.5) < 1.0,
            "{}",
            e.window(0.225)
        );
        // Gaussian: half height at the cut-off; Hann: zero beyond it.
        let g = Filter::parse("gaussian:0.4").unwrap();
        assert!((g.window(0.2) - 0.5).abs() < 1e-12);
        assert_eq!(Filter::parse("hann:0.5").unwrap().window(0.3), 0.0);
        // Families alone are drawn in range, seeded.
        let list = FilterChoice::parse_list("enhance,hann,ramp").unwrap();
        assert!(matches!(list[0], FilterChoice::Random(Family::Enhance)));
        assert_eq!(list[2], FilterChoice::Fixed(Filter::Ramp));
        for k in 0..50 {
            match list[0].draw(&mut Rng::new(k)) {
                Filter::Enhance { gain, centre } => {
                    assert!((GAIN_RANGE[0]..=GAIN_RANGE[1]).contains(&gain));
                    assert!((CENTRE_RANGE[0]..=CENTRE_RANGE[1]).contains(&centre));
                }
                f => panic!("{f:?}"),
            }
            let Filter::HannCut(c) = list[1].draw(&mut Rng::new(k)) else {
                panic!()
            };
            assert!((CUTOFF_RANGE[0]..=CUTOFF_RANGE[1]).contains(&c));
        }
    }

    /// Bad input: a filter or cut-off out of its documented range, or unknown, is an error naming
    /// the value.
    #[test]
    fn filter_out_of_range_or_unknown_is_refused_naming_the_value() {
        for (s, needle) in [
            ("hann:1.5", "cut-off 1.5"),
            ("hamming:0.05", "cut-off 0.05"),
            ("butterworth:0.5:20", "order 20"),
            ("gaussian:-1", "cut-off -1"),
            ("enhance:3:0.5", "gain 3"),
            ("enhance:0.5:0.95", "centre 0.95"),
            ("enhance:0.5:0.2", "centre 0.2"),
            ("hann:abc", "\"abc\" is not a number"),
            ("ramp:0.5", "at most 0"),
            ("box", "unknown filter \"box\""),
        ] {
            let e = Filter::parse(s).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(s), "{s}: {e}");
        }
        assert!(FilterChoice::parse_list("enhance,box").is_err());
        assert!(FilterChoice::parse_list(" , ").is_err());
    }
}
