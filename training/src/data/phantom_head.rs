//! Procedural head phantoms: 3-D coherent, seeded volumes in HU of an adult head through the
//! cerebrum (`ct-train synth --source head-phantom`), the anatomy the chest phantoms
//! ([`crate::data::phantom`]) lack: a thick bony shell around piecewise-constant brain.
//!
//! Like the chest, everything is defined in millimetres on a continuous model and sampled on the
//! voxel grid (x left-right, y anterior (-) to posterior (+), z down from the first slice); the
//! layers' edges are partial-volume blended over one voxel. From the outside in:
//!
//! - air, then a head outline: an ellipsoid (semi-axes drawn per seed, the slab cutting it at a
//!   drawn height above its equator) with a gently wobbling boundary;
//! - scalp of soft tissue with a subcutaneous fat band, thicker laterally (temporalis muscle);
//! - the skull: a shell of varying thickness (thicker frontally and occipitally) with cortical outer
//!   and inner tables and lower-density diploe between them; in the lowest slices, by chance, a
//!   frontal sinus and mastoid air cells (air inside a locally thickened skull, tables kept);
//! - a thin subarachnoid CSF layer, then the brain: a grey-matter cortex following gyri, CSF-filled
//!   sulci between them, white matter under the cortex, the interhemispheric fissure, lateral
//!   ventricles (curved, around the midline) and a third ventricle, deep grey nuclei, a faint smooth
//!   texture; optionally a calcified pineal gland or choroid plexus and an acute bleed.
//!
//! HU values (each drawn per seed inside the range quoted where it is set): air -1000 and water 0
//! by the definition of the scale; the tissue ranges are the textbook ones collected in Buzug,
//! *Computed Tomography* (Springer 2008, p. 475: fat -100 .. -50, white matter 20 .. 30, grey
//! matter 37 .. 45, haematoma 40 .. 90, bone 700 .. 3000) and Grainger & Allison's *Diagnostic
//! Radiology* (7th ed.: soft tissue and muscle 40 .. 80, calcification 100 .. 400, acute
//! haemorrhage 50 .. 80); CSF 0 .. 15 (the +15 of Lev & Gonzalez, "CT angiography and CT perfusion
//! imaging", in *Brain Mapping: The Methods*, 2nd ed., 2002, down to water).
//!
//! With [`PhantomConfig::inserts`] the chest's quality-control inserts are added
//! ([`crate::data::phantom::insert_geometry`]): the head sits posterior of the field of view's
//! centre so that the inserts in front of it stay in air.

use crate::data::phantom::{smooth_step, stamp_inserts, PhantomConfig};
use crate::data::rng::Rng;
use crate::volume::Volume;
use std::f64::consts::PI;

/// In-plane field of view of a head phantom (mm): a usual head display field of view (adult heads
/// measure about 150 × 190 mm), leaving room for the inserts in front.
pub const HEAD_FOV_MM: f64 = 260.0;
/// Fewest in-plane pixels of a head phantom: 4.1 mm pixels, still finer than the skull (4 .. 9 mm
/// thick here).
pub const HEAD_MIN_SIZE: usize = 64;

/// Errors making a head phantom.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error(
        "head phantom (seed {seed}): {size} pixels in-plane give {pixel_mm:.1} mm pixels, coarser \
         than the skull; use at least {HEAD_MIN_SIZE} (--size)"
    )]
    TooSmall {
        seed: u64,
        size: usize,
        pixel_mm: f64,
    },
    #[error("head phantom (seed {seed}): no slices (--slices must be at least 1)")]
    NoSlices { seed: u64 },
}

impl PhantomConfig {
    /// A head phantom with a [`HEAD_FOV_MM`] field of view in-plane and 1.25 mm slices (thicker when
    /// the pixels are, as the chest's).
    pub fn head(size: usize, slices: usize, seed: u64) -> Self {
        let px = HEAD_FOV_MM / size.max(1) as f64;
        Self {
            shape: [slices, size, size],
            spacing: [px.max(1.25), px, px],
            seed,
            inserts: false,
        }
    }
}

/// A local thickening of the skull holding air (frontal sinus, mastoid): centre angle (rad, polar
/// angle of the outline), depth z (mm), angular and z half-widths, extra skull thickness (mm), and
/// its air cells relative to the thickened diploe (angle offset, z offset, radius mm).
struct AirBone {
    th: f64,
    z: f64,
    w_th: f64,
    w_z: f64,
    extra: f64,
    cells: Vec<(f64, f64, f64)>,
}

/// An ellipsoid: centre, semi-axes (mm), HU.
struct Blob {
    c: [f64; 3],
    r: [f64; 3],
    hu: f64,
}

impl Blob {
    /// Approximate signed distance (mm, negative inside).
    fn dist(&self, p: [f64; 3]) -> f64 {
        let l = ((p[0] - self.c[0]) / self.r[0]).powi(2)
            + ((p[1] - self.c[1]) / self.r[1]).powi(2)
            + ((p[2] - self.c[2]) / self.r[2]).powi(2);
        (l.sqrt() - 1.0) * self.r[0].min(self.r[1]).min(self.r[2])
    }
}

/// Geometry and tissue values of one head, in mm and HU.
struct Head {
    /// Outline semi-axes (x, y) at the equator, vertical semi-axis, equator depth (z), centre y.
    a: f64,
    b: f64,
    c: f64,
    zc: f64,
    cy: f64,
    /// Boundary wobble: (amplitude, harmonic, phase, z frequency).
    wobble: Vec<(f64, f64, f64, f64)>,
    scalp: f64,
    fat_at: f64,
    fat: f64,
    temporalis: f64,
    skull: f64,
    /// Skull thickness harmonics: (amplitude, harmonic, phase).
    skull_var: Vec<(f64, f64, f64)>,
    outer_table: f64,
    inner_table: f64,
    csf_layer: f64,
    sulcus_depth: f64,
    cortex: f64,
    /// Gyral folding cosines: (kx, ky, kz, phase); and the brain texture's, with amplitude.
    folds: Vec<[f64; 4]>,
    texture: Vec<[f64; 5]>,
    air_bones: Vec<AirBone>,
    /// Lateral ventricles: (x offset at their centre, y centre, z centre, semi-axes x, y, z).
    ventricles: [f64; 6],
    /// Deep grey nuclei, calcifications and bleeds, stamped in this order.
    blobs: Vec<Blob>,
    hu: Tissues,
}

/// The tissue values of one head (HU, each drawn in its cited range).
struct Tissues {
    scalp: f64,
    fat: f64,
    cortical: f64,
    diploe: f64,
    csf: f64,
    grey: f64,
    white: f64,
}

impl Head {
    fn new(fov: [f64; 3], rng: &mut Rng) -> Self {
        let mut u = |lo: f64, hi: f64| lo + (hi - lo) * rng.uniform();
        let zlen = fov[0];
        let c = u(95.0, 110.0);
        let hu = Tissues {
            // Soft tissue and muscle 40 .. 80 HU (Grainger & Allison); scalp 40 .. 60.
            scalp: u(40.0, 60.0),
            // Fat -100 .. -50 HU (Buzug 2008).
            fat: u(-100.0, -80.0),
            // Cortical bone: bone 700 .. 3000 HU (Buzug 2008); the skull's tables 1300 .. 1900.
            cortical: u(1300.0, 1900.0),
            // Diploe: marrow-filled trabecular bone between the tables, well under cortical bone
            // (our choice inside Buzug's bone range; the chest's cancellous core is 220 HU).
            diploe: u(350.0, 700.0),
            // CSF 0 .. 15 HU (Lev & Gonzalez 2002, module docs).
            csf: u(2.0, 12.0),
            // Grey matter 37 .. 45, white matter 20 .. 30 HU (Buzug 2008).
            grey: u(37.0, 45.0),
            white: u(22.0, 30.0),
        };
        let mut wobble = Vec::new();
        for h in [2.0, 3.0, 4.0] {
            wobble.push((
                0.008 / (h - 1.0) + 0.006 * u(0.0, 1.0),
                h,
                u(0.0, 2.0 * PI),
                2.0 * PI / u(150.0, 300.0),
            ));
        }
        let skull_var = [2.0, 3.0, 5.0]
            .into_iter()
            .map(|h| (u(0.0, 0.12), h, u(0.0, 2.0 * PI)))
            .collect();
        let mut folds = Vec::new();
        for _ in 0..6 {
            let wl = u(22.0, 34.0);
            let (th, ph) = (u(0.0, PI), u(0.0, 2.0 * PI));
            let k = 2.0 * PI / wl;
            folds.push([
                k * th.sin() * ph.cos(),
                k * th.sin() * ph.sin(),
                k * th.cos(),
                u(0.0, 2.0 * PI),
            ]);
        }
        let mut texture = Vec::new();
        for _ in 0..8 {
            let wl = u(5.0, 20.0);
            let (th, ph) = (u(0.0, PI), u(0.0, 2.0 * PI));
            let k = 2.0 * PI / wl;
            texture.push([
                k * th.sin() * ph.cos(),
                k * th.sin() * ph.sin(),
                k * th.cos(),
                u(0.0, 2.0 * PI),
                u(0.15, 0.4),
            ]);
        }
        // The slab cuts the head 10 .. 45 mm above its widest level (z grows downwards).
        let zc = zlen / 2.0 + u(10.0, 45.0);
        let (a, b) = (u(68.0, 78.0), u(86.0, 95.0));
        let cy = 0.06 * fov[1];
        let mut air_bones = Vec::new();
        // Frontal sinus (anterior, lowest slices) in 70 % of heads.
        if u(0.0, 1.0) < 0.7 {
            let n = 2 + (u(0.0, 3.0) as usize);
            let cells = (0..n)
                .map(|_| (u(-0.18, 0.18), u(-6.0, 6.0), u(3.0, 6.0)))
                .collect();
            air_bones.push(AirBone {
                th: -PI / 2.0 + u(-0.1, 0.1),
                z: zlen * u(0.75, 1.05),
                w_th: u(0.25, 0.4),
                w_z: u(10.0, 16.0),
                extra: u(8.0, 14.0),
                cells,
            });
        }
        // Mastoid air cells (posterolateral, lowest slices), per side in 50 % of heads.
        for side in [-1.0, 1.0] {
            if u(0.0, 1.0) < 0.5 {
                let n = 3 + (u(0.0, 5.0) as usize);
                let cells = (0..n)
                    .map(|_| (u(-0.12, 0.12), u(-5.0, 5.0), u(1.5, 3.5)))
                    .collect();
                // Polar angle: 0 = left (+x), pi/2 = posterior (+y).
                let th = if side > 0.0 { 0.65 } else { PI - 0.65 };
                air_bones.push(AirBone {
                    th: th + u(-0.1, 0.1),
                    z: zlen * u(0.85, 1.1),
                    w_th: u(0.2, 0.3),
                    w_z: u(8.0, 12.0),
                    extra: u(6.0, 10.0),
                    cells,
                });
            }
        }
        let vz = zc - u(10.0, 30.0);
        let ventricles = [
            u(5.0, 8.0),
            cy + u(-8.0, 4.0),
            vz,
            u(3.5, 7.0),
            u(24.0, 32.0),
            u(10.0, 16.0),
        ];
        let mut blobs = Vec::new();
        // Deep grey nuclei (thalamus, basal ganglia) beside the ventricles.
        for side in [-1.0, 1.0] {
            for (dy, r) in [
                (u(8.0, 14.0), [9.0, 11.0, 10.0]),
                (-u(6.0, 10.0), [7.0, 10.0, 9.0]),
            ] {
                let off = if dy > 0.0 { 11.0 } else { 20.0 };
                blobs.push(Blob {
                    c: [
                        side * (off + u(0.0, 4.0)),
                        ventricles[1] + dy,
                        vz + u(0.0, 8.0),
                    ],
                    r,
                    hu: hu.grey + u(-2.0, 2.0),
                });
            }
        }
        // Calcification 100 .. 400 HU (Grainger & Allison): pineal gland on the midline behind
        // the third ventricle (60 %), choroid plexus in a ventricle's atrium (40 %).
        if u(0.0, 1.0) < 0.6 {
            let r = u(1.5, 3.0);
            blobs.push(Blob {
                c: [0.0, ventricles[1] + u(14.0, 20.0), vz + u(2.0, 8.0)],
                r: [r, r, r],
                hu: u(100.0, 400.0),
            });
        }
        if u(0.0, 1.0) < 0.4 {
            let side = if u(0.0, 1.0) < 0.5 { -1.0 } else { 1.0 };
            let r = u(1.5, 3.0);
            blobs.push(Blob {
                c: [
                    side * (ventricles[0] + 6.0),
                    ventricles[1] + 0.7 * ventricles[4],
                    vz,
                ],
                r: [r, r, r],
                hu: u(100.0, 400.0),
            });
        }
        // An acute bleed 55 .. 80 HU (haemorrhage 50 .. 80, Grainger & Allison; haematoma 40 ..
        // 90, Buzug) in 40 % of heads, somewhere in a hemisphere.
        if u(0.0, 1.0) < 0.4 {
            let side = if u(0.0, 1.0) < 0.5 { -1.0 } else { 1.0 };
            let r = [u(4.0, 10.0), u(4.0, 12.0), u(4.0, 10.0)];
            blobs.push(Blob {
                c: [
                    side * u(22.0, 40.0),
                    cy + u(-45.0, 45.0),
                    u(0.2, 0.8) * zlen,
                ],
                r,
                hu: u(55.0, 80.0),
            });
        }
        Self {
            a,
            b,
            c,
            zc,
            cy,
            wobble,
            scalp: u(3.5, 6.0),
            fat_at: u(1.0, 1.8),
            fat: u(1.0, 2.5),
            temporalis: u(3.0, 8.0),
            skull: u(5.0, 7.5),
            skull_var,
            outer_table: u(1.6, 2.4),
            inner_table: u(1.6, 2.4),
            csf_layer: u(1.0, 2.5),
            sulcus_depth: u(10.0, 18.0),
            cortex: u(2.5, 3.5),
            folds,
            texture,
            air_bones,
            ventricles,
            blobs,
            hu,
        }
    }

    /// Cross-section scale of the outline at depth z (0 above the vertex).
    fn scale(&self, z: f64) -> f64 {
        (1.0 - ((z - self.zc) / self.c).powi(2)).max(0.0).sqrt()
    }

    fn boundary(&self, th: f64, z: f64) -> f64 {
        1.0 + self
            .wobble
            .iter()
            .map(|(a, h, p, fz)| a * (h * th + p + (fz * z).sin()).sin())
            .sum::<f64>()
    }

    /// Gyral folding field in about -1 .. 1.
    fn fold(&self, p: [f64; 3]) -> f64 {
        let s: f64 = self
            .folds
            .iter()
            .map(|f| (f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + f[3]).cos())
            .sum();
        s / (self.folds.len() as f64 / 2.0).sqrt()
    }

    fn texture(&self, p: [f64; 3]) -> f64 {
        self.texture
            .iter()
            .map(|t| t[4] * (t[0] * p[0] + t[1] * p[1] + t[2] * p[2] + t[3]).cos())
            .sum()
    }

    /// HU at point `p` (mm) for voxels of size `pix` (mm).
    fn value(&self, p: [f64; 3], pix: f64) -> f64 {
        let [x, y, z] = p;
        let s = self.scale(z);
        if s < 0.05 {
            return -1000.0;
        }
        let (ax, by) = (self.a * s, self.b * s);
        let yy = y - self.cy;
        let th = yy.atan2(x);
        let rho = ((x / ax).powi(2) + (yy / by).powi(2)).sqrt();
        let edge = self.boundary(th, z);
        // Depth below the outline, approximately in mm.
        let dep = (edge - rho) * (ax * by).sqrt();
        let cov = smooth_step(-dep, pix);
        if cov <= 0.0 {
            return -1000.0;
        }
        let t = &self.hu;
        // Scalp, with the fat band and the temporalis laterally.
        let lateral = ((th.cos().abs() - 0.6) / 0.4).clamp(0.0, 1.0);
        let scalp = self.scalp + self.temporalis * lateral;
        let mut v = -1000.0 * (1.0 - cov) + t.scalp * cov;
        let fat_w = smooth_step(band(dep, self.fat_at, self.fat_at + self.fat), pix);
        v = v * (1.0 - fat_w) + t.fat * fat_w;
        // Skull thickness here: harmonics, frontal and occipital thickening, air-bone bumps.
        let mut skull = self.skull
            * (1.0
                + self
                    .skull_var
                    .iter()
                    .map(|(a, h, ph)| a * (h * th + ph).sin())
                    .sum::<f64>()
                + 0.25 * th.sin().abs());
        let mut cells = Vec::new();
        for ab in &self.air_bones {
            let dth = angle_diff(th, ab.th);
            let w = (-(dth / ab.w_th).powi(2) - ((z - ab.z) / ab.w_z).powi(2)).exp();
            skull += ab.extra * w;
            for &(cth, cz, r) in &ab.cells {
                cells.push((angle_diff(th, ab.th + cth), z - (ab.z + cz), r));
            }
        }
        let bone_out = scalp;
        let bone_in = scalp + skull;
        let w = smooth_step(band(dep, bone_out, bone_in), pix);
        v = v * (1.0 - w) + t.cortical * w;
        let (d0, d1) = (bone_out + self.outer_table, bone_in - self.inner_table);
        if d1 > d0 {
            let w = smooth_step(band(dep, d0, d1), pix);
            v = v * (1.0 - w) + t.diploe * w;
            // Air cells replace diploe only, in its outer half and a voxel clear of the outer
            // table: the tables stay closed around them even after the partial-volume blend.
            let mid = d0 + 0.3 * (d1 - d0);
            let arc = rho * (ax * by).sqrt();
            for (dth, dz, r) in cells {
                let d = ((dth * arc).powi(2) + dz.powi(2) + (dep - mid).powi(2)).sqrt() - r;
                let d = d.max(band(dep, d0 + pix, 0.5 * (d0 + d1)));
                let w = smooth_step(d, pix);
                v = v * (1.0 - w) + -1000.0 * w;
            }
        }
        // Subarachnoid CSF, then the brain.
        let w = smooth_step(bone_in - dep, pix);
        v = v * (1.0 - w) + t.csf * w;
        let brain_at = bone_in + self.csf_layer;
        let w = smooth_step(brain_at - dep, pix);
        if w > 0.0 {
            let b = self.brain(p, dep - brain_at, rho, pix);
            v = v * (1.0 - w) + b * w;
        }
        v
    }

    /// Brain tissue at `p`, `db` mm under the brain's surface, `rho` the relative outline radius.
    fn brain(&self, p: [f64; 3], db: f64, rho: f64, pix: f64) -> f64 {
        let t = &self.hu;
        let [x, y, z] = p;
        let f = self.fold(p).abs();
        let mut v = if db < self.sulcus_depth && f < 0.08 {
            t.csf
        } else if db < self.cortex || (db < self.sulcus_depth + self.cortex && f < 0.9) {
            t.grey
        } else {
            t.white
        };
        v += self.texture(p);
        // Interhemispheric fissure, away from the central (callosal) part.
        if rho > 0.45 {
            let w = smooth_step(x.abs() - 1.0, pix);
            v = v * (1.0 - w) + t.csf * w;
        }
        // Lateral ventricles (curving away from the midline at both ends) and the third.
        let vt = &self.ventricles;
        for side in [-1.0, 1.0] {
            let xc = side * (vt[0] + 0.012 * (y - vt[1]).powi(2));
            let vent = Blob {
                c: [xc, vt[1], vt[2]],
                r: [vt[3], vt[4], vt[5]],
                hu: t.csf,
            };
            let w = smooth_step(vent.dist(p), pix);
            v = v * (1.0 - w) + vent.hu * w;
        }
        let third = band(y, vt[1] - 12.0, vt[1] + 10.0)
            .max(band(z, vt[2] - 4.0, vt[2] + vt[5] + 6.0))
            .max(x.abs() - 1.5);
        let w = smooth_step(third, pix);
        v = v * (1.0 - w) + t.csf * w;
        for bl in &self.blobs {
            let w = smooth_step(bl.dist(p), pix);
            if w > 0.0 {
                v = v * (1.0 - w) + bl.hu * w;
            }
        }
        v
    }
}

/// Signed distance (negative inside) of `d` to the interval `lo .. hi`.
fn band(d: f64, lo: f64, hi: f64) -> f64 {
    (lo - d).max(d - hi)
}

/// `a - b` wrapped to -pi .. pi.
fn angle_diff(a: f64, b: f64) -> f64 {
    (a - b + PI).rem_euclid(2.0 * PI) - PI
}

/// Generates a head phantom in HU; refuses grids too coarse for a skull or without slices.
pub fn head(cfg: &PhantomConfig) -> Result<Volume, PhantomError> {
    let [nz, ny, nx] = cfg.shape;
    let [dz, dy, dx] = cfg.spacing;
    if nz == 0 {
        return Err(PhantomError::NoSlices { seed: cfg.seed });
    }
    if ny.min(nx) < HEAD_MIN_SIZE {
        return Err(PhantomError::TooSmall {
            seed: cfg.seed,
            size: ny.min(nx),
            pixel_mm: dx.max(dy),
        });
    }
    let fov = [nz as f64 * dz, ny as f64 * dy, nx as f64 * dx];
    let mut rng = Rng::new(cfg.seed ^ 0x6865_6164_7068_616e);
    let h = Head::new(fov, &mut rng);
    let pix = dx.min(dy);
    let mut hu = vec![-1000f32; nz * ny * nx];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let p = [
                    (x as f64 + 0.5) * dx - fov[2] / 2.0,
                    (y as f64 + 0.5) * dy - fov[1] / 2.0,
                    (z as f64 + 0.5) * dz,
                ];
                hu[(z * ny + y) * nx + x] = h.value(p, pix) as f32;
            }
        }
    }
    stamp_inserts(cfg, &mut hu);
    Ok(Volume::new(
        format!("phantom head seed {}", cfg.seed),
        cfg.shape,
        cfg.spacing,
        hu,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::data::phantom::insert_geometry;

    #[test]
    fn head_is_seeded_and_seeds_differ() {
        let cfg = PhantomConfig::head(64, 4, 4000);
        let a = head(&cfg).unwrap();
        assert_eq!(a, head(&cfg).unwrap());
        let b = head(&PhantomConfig::head(64, 4, 4001)).unwrap();
        assert_ne!(a.values, b.values);
        assert_eq!(a.shape, [4, 64, 64]);
    }

    /// Every value is in the cited ranges (air .. cortical bone); cortical bone, diploe, brain and
    /// CSF are all present.
    #[test]
    fn head_has_skull_brain_and_csf_in_range() {
        for seed in [4000, 4001, 4002] {
            let v = head(&PhantomConfig::head(128, 8, seed)).unwrap();
            let n = v.values.len() as f64;
            let frac = |lo: f32, hi: f32| {
                v.values.iter().filter(|&&x| x >= lo && x < hi).count() as f64 / n
            };
            assert!(v.values.iter().all(|&x| (-1000.0..=1900.0).contains(&x)));
            assert!(frac(1200.0, 1901.0) > 0.002, "cortical {seed}");
            assert!(frac(300.0, 750.0) > 0.002, "diploe {seed}");
            assert!(frac(35.0, 47.0) > 0.03, "grey matter {seed}");
            assert!(frac(19.0, 32.0) > 0.03, "white matter {seed}");
            assert!(frac(-1.0, 14.0) > 0.003, "csf {seed}");
            assert!(frac(-1001.0, -990.0) > 0.2, "air {seed}");
        }
    }

    /// Along every ray from the head's centre, the brain (CSF .. calcification values) reaches bone
    /// before anything else: the skull is a closed shell around it, in every slice.
    #[test]
    fn skull_is_a_closed_shell_around_the_brain() {
        for seed in [4000, 4003, 4007] {
            let cfg = PhantomConfig::head(128, 16, seed);
            let v = head(&cfg).unwrap();
            let [nz, ny, nx] = v.shape;
            let (cy, cx) = (
                (HEAD_FOV_MM / 2.0 + 0.06 * HEAD_FOV_MM) / cfg.spacing[1] - 0.5,
                nx as f64 / 2.0 - 0.5,
            );
            for z in 0..nz {
                let at =
                    |y: f64, x: f64| v.values[v.idx(z, y.round() as usize, x.round() as usize)];
                if !(0.0..60.0).contains(&at(cy, cx)) {
                    continue; // a slice above the brain (none in these seeds' slabs)
                }
                for k in 0..180 {
                    let a = 2.0 * PI * k as f64 / 180.0;
                    let mut r = 0.0;
                    let mut prev = (cy.round(), cx.round());
                    let bone = loop {
                        r += 0.25;
                        let (y, x) = (cy + r * a.sin(), cx + r * a.cos());
                        assert!(
                            y >= 0.0 && x >= 0.0 && y < ny as f64 - 1.0 && x < nx as f64 - 1.0,
                            "seed {seed} slice {z} angle {k}: no bone before the edge"
                        );
                        let h = at(y, x);
                        // A diagonal step passes a corner: the shell must close in the 4-connected
                        // sense, so the two pixels at the corner count as crossed.
                        let (py, px) = (y.round(), x.round());
                        let corner = if py != prev.0 && px != prev.1 {
                            at(prev.0, px).max(at(py, prev.1))
                        } else {
                            f32::MIN
                        };
                        prev = (py, px);
                        // Bone: the inner table (partial volume included; a calcification is 400
                        // HU at most).
                        if h.max(corner) >= 450.0 {
                            break r;
                        }
                        assert!(
                            (-20.0..450.0).contains(&h),
                            "seed {seed} slice {z} angle {k}: {h} HU inside the skull at r {r}"
                        );
                    };
                    assert!(bone > 10.0, "seed {seed} slice {z}: bone at {bone} px");
                    // ... and bone (700 HU and more, Buzug's range; the tables blurred by the
                    // partial volume) follows within six pixels (the skull's thickest diploe), in the
                    // ray's pixels or their 4-neighbours.
                    let peak = (0..=24)
                        .map(|k| {
                            let r = bone + 0.25 * k as f64;
                            let (y, x) = ((cy + r * a.sin()).round(), (cx + r * a.cos()).round());
                            [(0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)]
                                .into_iter()
                                .map(|(dy, dx)| at(y + dy, x + dx))
                                .fold(f32::MIN, f32::max)
                        })
                        .fold(f32::MIN, f32::max);
                    assert!(
                        peak >= 700.0,
                        "seed {seed} slice {z} angle {k}: peak {peak}"
                    );
                }
            }
        }
    }

    /// The inserts stay in air in front of the head, uniform where their ROIs are recorded.
    #[test]
    fn head_inserts_are_clear_of_the_head() {
        for seed in [4000, 4001, 4002, 4003] {
            let cfg = PhantomConfig {
                inserts: true,
                ..PhantomConfig::head(128, 4, seed)
            };
            let v = head(&cfg).unwrap();
            let g = insert_geometry(&cfg).unwrap();
            for (c, r, hu) in [
                (g.soft_roi_centre, g.soft_roi_radius, 0.0),
                (g.lung_roi_centre, g.lung_roi_radius, -850.0),
            ] {
                for z in 0..4 {
                    for y in 0..128 {
                        for x in 0..128 {
                            if (y as f64 - c[0]).hypot(x as f64 - c[1]) <= r {
                                assert_eq!(v.values[v.idx(z, y, x)], hu, "{seed} {z} {y} {x}");
                            }
                        }
                    }
                }
            }
            // A ring just outside each cylinder is air: the head does not touch them.
            for (c, r) in [
                (g.water_centre, g.water_radius),
                (g.lung_centre, g.lung_radius),
            ] {
                for k in 0..64 {
                    let a = 2.0 * PI * k as f64 / 64.0;
                    let (y, x) = (c[0] + (r + 2.0) * a.sin(), c[1] + (r + 2.0) * a.cos());
                    let h = v.values[v.idx(2, y.round() as usize, x.round() as usize)];
                    assert_eq!(h, -1000.0, "seed {seed}: {h} HU next to an insert");
                }
            }
        }
    }

    /// Grids too coarse for a skull, or without slices, are refused with the reason.
    #[test]
    fn head_refuses_coarse_or_empty_grids() {
        let e = head(&PhantomConfig::head(48, 4, 7))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("seed 7")
                && e.contains("48 pixels")
                && e.contains("5.4 mm")
                && e.contains("--size"),
            "{e}"
        );
        let e = head(&PhantomConfig::head(128, 0, 7))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no slices") && e.contains("--slices"), "{e}");
        assert!(head(&PhantomConfig::head(HEAD_MIN_SIZE, 1, 7)).is_ok());
    }
}
