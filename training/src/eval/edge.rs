//! The edge phantom of the MTF figures: a water cylinder with a rod, reconstructed by the
//! simulated scanner ([`crate::data::synth::simulate_volume`]) into a sharp input and a soft
//! target, so every method's MTF is measured on the same edge as the target's.
//!
//! Geometry: [`EDGE_SLICES`] slices of [`EDGE_SIZE`]² pixels at the held-out cases' voxel size; a
//! water cylinder (0 HU) of radius 0.45·size in air, a rod of radius [`ROD_RADIUS_PX`] px and
//! [`ROD_HU`] HU centred off the pixel grid (so the circular edge samples every sub-pixel phase).
//! The rod contrast sits inside every shipped model's HU window; nonlinear methods (TV) have a
//! contrast-dependent MTF, so this is the MTF at 300 HU contrast.
//! The scanner settings are read from `synth.toml` in the pairs folder (photons, sharp_filter,
//! soft_filter) when present and readable, else `ct-train synth`'s defaults.

use crate::data::synth::{simulate_volume, Filter, SimConfig};
use crate::physics::{mtf50, mtf_circular_edge};
use crate::volume::Volume;
use std::path::Path;

/// Slices of the edge phantom.
pub const EDGE_SLICES: usize = 8;
/// In-plane size of the edge phantom.
pub const EDGE_SIZE: usize = 128;
/// Radius of the rod (pixels).
pub const ROD_RADIUS_PX: f64 = 24.0;
/// HU of the rod (in water).
pub const ROD_HU: f32 = 300.0;

/// The simulated edge phantom.
#[derive(Debug, Clone)]
pub struct EdgePhantom {
    pub sharp: Volume,
    pub soft: Volume,
    pub centre: (f64, f64),
    /// What the scanner settings came from.
    pub settings: String,
}

/// The scanner settings of the pairs folder's `synth.toml`, or the defaults.
fn sim_config(pairs: &Path) -> (SimConfig, String) {
    let path = pairs.join("synth.toml");
    let mut cfg = SimConfig::default();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return (cfg, "ct-train synth defaults (no synth.toml)".into());
    };
    let Ok(v) = text.parse::<toml::Table>() else {
        return (
            cfg,
            format!("ct-train synth defaults ({} unreadable)", path.display()),
        );
    };
    if let Some(p) = v.get("photons").and_then(|p| p.as_float()) {
        if p > 0.0 {
            cfg.photons = p;
        }
    }
    for (key, slot) in [
        ("sharp_filter", &mut cfg.sharp),
        ("soft_filter", &mut cfg.soft),
    ] {
        if let Some(f) = v
            .get(key)
            .and_then(|s| s.as_str())
            .and_then(|s| Filter::parse(s).ok())
        {
            *slot = f;
        }
    }
    let what = format!(
        "{} photons, {:?} / {:?} (from {})",
        cfg.photons,
        cfg.sharp,
        cfg.soft,
        path.display()
    );
    (cfg, what)
}

/// Builds and reconstructs the edge phantom at voxel size `spacing`.
pub fn edge_phantom(pairs: &Path, spacing: [f64; 3]) -> EdgePhantom {
    let n = EDGE_SIZE as f64;
    let centre = (0.5 * n - 0.3, 0.5 * n + 0.2);
    let mut truth = Volume::from_fn(
        "edge phantom",
        [EDGE_SLICES, EDGE_SIZE, EDGE_SIZE],
        |_, y, x| {
            let (dy, dx) = (y as f64 - centre.0, x as f64 - centre.1);
            let r = (dy * dy + dx * dx).sqrt();
            if r <= ROD_RADIUS_PX {
                ROD_HU
            } else if r <= 0.45 * n {
                0.0
            } else {
                -1000.0
            }
        },
    );
    truth.spacing = spacing;
    let (cfg, settings) = sim_config(pairs);
    let pair = simulate_volume(&truth, &cfg, 0x3d9e);
    EdgePhantom {
        sharp: pair.sharp,
        soft: pair.soft,
        centre,
        settings,
    }
}

impl EdgePhantom {
    /// MTF50 (cycles/mm) of a volume on the phantom's grid.
    pub fn mtf50(&self, v: &Volume) -> Option<f64> {
        mtf_circular_edge(v, 0..v.shape[0], self.centre, ROD_RADIUS_PX)
            .as_ref()
            .and_then(mtf50)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Through the simulated scanner the soft (Hann) reconstruction has a lower MTF50 than the
    /// sharp (ramp) one, and a Gaussian blur lowers it further.
    #[test]
    fn the_soft_kernel_has_a_lower_mtf50_than_the_sharp_one() {
        let e = edge_phantom(Path::new("/nonexistent"), [1.0, 0.7, 0.7]);
        assert!(e.settings.contains("defaults"));
        let (s, t) = (e.mtf50(&e.sharp).unwrap(), e.mtf50(&e.soft).unwrap());
        assert!(t < 0.9 * s, "soft {t} vs sharp {s} cycles/mm");
        let b = Volume::new(
            "b",
            e.soft.shape,
            e.soft.spacing,
            crate::resample::gaussian_blur(&e.soft.values, e.soft.shape, 1.0, 0.0),
        );
        assert!(e.mtf50(&b).unwrap() < t);
    }
}
