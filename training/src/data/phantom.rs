//! Procedural chest phantoms: 3-D coherent, seeded volumes in HU so that training and evaluation see
//! lungs (`ct-train synth --source phantom`).
//!
//! Everything is defined in millimetres on a continuous chest model and then sampled on the voxel
//! grid, so neighbouring slices agree and the phantom looks the same at any resolution. Layers, from
//! the outside in: air (-1000), a body outline with a wobbling boundary, subcutaneous fat (-100) and
//! muscle (50); two lungs near -850 HU with a smooth parenchymal texture and emphysema-like
//! low-attenuation blobs (-960 .. -990); a mediastinum with heart and aorta; a vertebral column
//! (cortical shell 700 HU, cancellous core 220 HU, discs, spinal canal) and ribs (oblique bony arcs
//! along the chest wall); branching vessel trees (40 HU) and airway trees (air lumen with a soft-tissue
//! wall, from the trachea down) grown from the hila; and solid or ground-glass nodules. Edges are
//! partial-volume blended over one voxel.
//!
//! With [`PhantomConfig::inserts`] (`ct-train synth`'s independent mode turns it on) a quality
//! control section lies in the air in front of the chest, as calibration phantoms lie on or under
//! a patient: a water cylinder (0 HU) holding a Teflon-like rod (900 HU, an edge for the MTF) and a
//! uniform soft-tissue ROI, and a lung-equivalent foam cylinder (-850 HU, uniform, for lung noise
//! and NPS). Their geometry is [`InsertGeometry`], recorded per case in `synth.toml`.

use crate::data::rng::Rng;
use std::f64::consts::PI;

use crate::volume::Volume;

/// Phantom settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomConfig {
    /// Voxels (z, y, x).
    pub shape: [usize; 3],
    /// Voxel size (z, y, x) in mm.
    pub spacing: [f64; 3],
    pub seed: u64,
    /// Add the quality-control inserts (module docs).
    pub inserts: bool,
}

/// Geometry of the quality-control inserts, in voxels of the phantom's grid: centres `[y, x]`
/// (fractional, voxel centres at integers), radii in pixels (x spacing), running through every
/// slice. Recorded per case in `synth.toml` as `[case.inserts]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct InsertGeometry {
    pub water_centre: [f64; 2],
    pub water_radius: f64,
    pub water_hu: f64,
    /// The rod: its edge against the water is the MTF edge.
    pub rod_centre: [f64; 2],
    pub rod_radius: f64,
    pub rod_hu: f64,
    /// Uniform soft-tissue (water) ROI for noise and NPS, clear of the rod and the wall.
    pub soft_roi_centre: [f64; 2],
    pub soft_roi_radius: f64,
    pub lung_centre: [f64; 2],
    pub lung_radius: f64,
    pub lung_hu: f64,
    /// Uniform lung-density ROI inside the foam cylinder.
    pub lung_roi_centre: [f64; 2],
    pub lung_roi_radius: f64,
}

/// The inserts in mm (x, y from the image centre; radius) of a field of view: water, rod, soft ROI,
/// lung foam, lung ROI.
fn insert_mm(fov: [f64; 3]) -> [(f64, f64, f64); 5] {
    let (w, h) = (fov[2], fov[1]);
    let s = w.min(h);
    // Centred 0.415 h in front of the centre: the cylinders span -0.485 h .. -0.345 h, clear of
    // the field of view's edge (-0.5 h) and of the body (its outline reaches -0.333 h at most).
    let y = -0.415 * h;
    [
        (-0.17 * w, y, 0.07 * s),
        (-0.17 * w + 0.028 * s, y, 0.022 * s),
        (-0.17 * w - 0.033 * s, y, 0.02 * s),
        (0.17 * w, y, 0.07 * s),
        (0.17 * w, y, 0.042 * s),
    ]
}

/// Rod, water and lung-foam values (HU).
const ROD_HU: f64 = 900.0;
const WATER_HU: f64 = 0.0;
const FOAM_HU: f64 = -850.0;

/// The inserts' geometry in voxels (None without inserts).
pub fn insert_geometry(cfg: &PhantomConfig) -> Option<InsertGeometry> {
    if !cfg.inserts {
        return None;
    }
    let [nz, ny, nx] = cfg.shape;
    let [dz, dy, dx] = cfg.spacing;
    let fov = [nz as f64 * dz, ny as f64 * dy, nx as f64 * dx];
    let m = insert_mm(fov);
    let px =
        |(x, y, _): (f64, f64, f64)| [(y + fov[1] / 2.0) / dy - 0.5, (x + fov[2] / 2.0) / dx - 0.5];
    Some(InsertGeometry {
        water_centre: px(m[0]),
        water_radius: m[0].2 / dx,
        water_hu: WATER_HU,
        rod_centre: px(m[1]),
        rod_radius: m[1].2 / dx,
        rod_hu: ROD_HU,
        soft_roi_centre: px(m[2]),
        soft_roi_radius: m[2].2 / dx,
        lung_centre: px(m[3]),
        lung_radius: m[3].2 / dx,
        lung_hu: FOAM_HU,
        lung_roi_centre: px(m[4]),
        lung_roi_radius: m[4].2 / dx,
    })
}

impl PhantomConfig {
    /// A chest phantom with a 350 mm field of view in-plane and 1.25 mm slices (thicker when few
    /// rows, so the same anatomy fits).
    pub fn chest(size: usize, slices: usize, seed: u64) -> Self {
        let px = 350.0 / size.max(1) as f64;
        Self {
            shape: [slices, size, size],
            spacing: [px.max(1.25), px, px],
            seed,
            inserts: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    a: [f64; 3],
    b: [f64; 3],
    r: f64,
}

/// Geometry of the chest model in mm: x left-right, y anterior (-) to posterior (+), z down.
struct Chest {
    /// Body semi-axes.
    ba: f64,
    bb: f64,
    /// Boundary wobble: (amplitude, harmonic, phase, z frequency).
    wobble: Vec<(f64, f64, f64, f64)>,
    /// Total z extent in mm.
    zlen: f64,
    /// Texture cosines: (kx, ky, kz, phase, amplitude).
    texture: Vec<[f64; 5]>,
    /// Rib z positions at the spine and their slope (mm of z per radian).
    ribs: Vec<f64>,
    rib_slope: f64,
}

impl Chest {
    fn new(fov: [f64; 3], rng: &mut Rng) -> Self {
        let mut wobble = Vec::new();
        for h in [2.0, 3.0, 5.0] {
            wobble.push((
                0.025 / (h - 1.0) + 0.01 * rng.uniform(),
                h,
                2.0 * PI * rng.uniform(),
                2.0 * PI / (200.0 + 200.0 * rng.uniform()),
            ));
        }
        let mut texture = Vec::new();
        for _ in 0..10 {
            let wl = 6.0 + 24.0 * rng.uniform();
            let (th, ph) = (PI * rng.uniform(), 2.0 * PI * rng.uniform());
            let k = 2.0 * PI / wl;
            texture.push([
                k * th.sin() * ph.cos(),
                k * th.sin() * ph.sin(),
                k * th.cos(),
                2.0 * PI * rng.uniform(),
                8.0 + 6.0 * rng.uniform(),
            ]);
        }
        let zlen = fov[0];
        let rib_pitch = 24.0;
        let first = -rib_pitch * rng.uniform();
        let mut ribs = Vec::new();
        let mut z = first - 2.0 * rib_pitch;
        while z < zlen + 3.0 * rib_pitch {
            ribs.push(z);
            z += rib_pitch;
        }
        Self {
            ba: 0.43 * fov[2],
            bb: 0.31 * fov[1],
            wobble,
            zlen,
            texture,
            ribs,
            rib_slope: 18.0,
        }
    }

    /// Relative body radius at polar angle `th` and depth `z`.
    fn boundary(&self, th: f64, z: f64) -> f64 {
        1.0 + self
            .wobble
            .iter()
            .map(|(a, h, p, fz)| a * (h * th + p + (fz * z).sin()).sin())
            .sum::<f64>()
    }

    /// Lung scale along z: smaller at the apex (top of the volume).
    fn lung_scale(&self, z: f64) -> f64 {
        let t = (z / self.zlen.max(1.0)).clamp(0.0, 1.0);
        0.8 + 0.2 * (0.5 * PI * t).sin()
    }

    /// Signed "inside" measure of lung `side` (-1 right, +1 left in x): < 1 inside.
    fn lung_level(&self, side: f64, x: f64, y: f64, z: f64) -> f64 {
        let s = self.lung_scale(z);
        let cx = side * 0.47 * self.ba;
        let cy = -0.02 * self.bb;
        let (ax, ay) = (0.33 * self.ba * s, 0.70 * self.bb * s);
        let u = ((x - cx) / ax).abs();
        let v = ((y - cy) / ay).abs();
        // Flatten the medial side a little (heart notch on the left).
        let medial = if (x - cx) * side < 0.0 { 1.15 } else { 1.0 };
        (u * medial).powf(2.4) + v.powf(2.4)
    }

    fn texture(&self, x: f64, y: f64, z: f64) -> f64 {
        self.texture
            .iter()
            .map(|t| t[4] * (t[0] * x + t[1] * y + t[2] * z + t[3]).cos())
            .sum()
    }
}

/// Adds the quality-control inserts (module docs) to `hu` when `cfg.inserts` is on: the same
/// cylinders for every phantom (chest and head, [`crate::data::phantom_head`]).
pub(crate) fn stamp_inserts(cfg: &PhantomConfig, hu: &mut [f32]) {
    if !cfg.inserts {
        return;
    }
    let [nz, ny, nx] = cfg.shape;
    let [dz, dy, dx] = cfg.spacing;
    let fov = [nz as f64 * dz, ny as f64 * dy, nx as f64 * dx];
    let pix = dx.min(dy);
    let pos = |z: usize, y: usize, x: usize| {
        [
            (x as f64 + 0.5) * dx - fov[2] / 2.0,
            (y as f64 + 0.5) * dy - fov[1] / 2.0,
            (z as f64 + 0.5) * dz,
        ]
    };
    let m = insert_mm(fov);
    for (k, val) in [(0, WATER_HU), (1, ROD_HU), (3, FOAM_HU)] {
        let (cx, cy, r) = m[k];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let p = pos(z, y, x);
                    let d = ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt();
                    let w = smooth_step(d - r, pix) as f32;
                    if w > 0.0 {
                        let i = (z * ny + y) * nx + x;
                        hu[i] = hu[i] * (1.0 - w) + val as f32 * w;
                    }
                }
            }
        }
    }
}

pub(crate) fn smooth_step(d: f64, pixel: f64) -> f64 {
    // Coverage of a voxel whose centre is at signed distance `d` (negative = inside) from an edge.
    (0.5 - d / pixel).clamp(0.0, 1.0)
}

fn dist_to_seg(p: [f64; 3], s: &Seg) -> f64 {
    let ab = [s.b[0] - s.a[0], s.b[1] - s.a[1], s.b[2] - s.a[2]];
    let ap = [p[0] - s.a[0], p[1] - s.a[1], p[2] - s.a[2]];
    let l2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
    let t = if l2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}

fn normalize(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
    [v[0] / n, v[1] / n, v[2] / n]
}

/// Grows a branching tree: each segment splits into two children turned by about ±`spread`
/// radians, shortened and thinned by `shrink`, until the radius falls under `min_r`.
#[allow(clippy::too_many_arguments)]
fn grow(
    rng: &mut Rng,
    out: &mut Vec<Seg>,
    start: [f64; 3],
    dir: [f64; 3],
    len: f64,
    r: f64,
    min_r: f64,
    depth: usize,
) {
    if r < min_r || depth > 9 {
        return;
    }
    let dir = normalize(dir);
    let end = [
        start[0] + dir[0] * len,
        start[1] + dir[1] * len,
        start[2] + dir[2] * len,
    ];
    out.push(Seg {
        a: start,
        b: end,
        r,
    });
    // A perpendicular basis for the turn.
    let helper = if dir[2].abs() < 0.9 {
        [0.0, 0.0, 1.0]
    } else {
        [1.0, 0.0, 0.0]
    };
    let u = normalize([
        dir[1] * helper[2] - dir[2] * helper[1],
        dir[2] * helper[0] - dir[0] * helper[2],
        dir[0] * helper[1] - dir[1] * helper[0],
    ]);
    let w = [
        dir[1] * u[2] - dir[2] * u[1],
        dir[2] * u[0] - dir[0] * u[2],
        dir[0] * u[1] - dir[1] * u[0],
    ];
    let phi = 2.0 * PI * rng.uniform();
    for sign in [-1.0, 1.0] {
        let spread = sign * (0.35 + 0.35 * rng.uniform());
        let (c, s) = (spread.cos(), spread.sin());
        let (pc, ps) = (phi.cos(), phi.sin());
        let side = [
            u[0] * pc + w[0] * ps,
            u[1] * pc + w[1] * ps,
            u[2] * pc + w[2] * ps,
        ];
        let nd = [
            dir[0] * c + side[0] * s,
            dir[1] * c + side[1] * s,
            dir[2] * c + side[2] * s,
        ];
        let shrink = 0.68 + 0.12 * rng.uniform();
        let child_len = len * (0.75 + 0.1 * rng.uniform());
        grow(rng, out, end, nd, child_len, r * shrink, min_r, depth + 1);
    }
}

/// Generates a chest phantom in HU.
pub fn chest(cfg: &PhantomConfig) -> Volume {
    let [nz, ny, nx] = cfg.shape;
    let [dz, dy, dx] = cfg.spacing;
    let fov = [nz as f64 * dz, ny as f64 * dy, nx as f64 * dx];
    let mut rng = Rng::new(cfg.seed ^ 0x6368_6573_7470_6861);
    let ch = Chest::new(fov, &mut rng);
    let pix = dx.min(dy);
    let pos = |z: usize, y: usize, x: usize| {
        [
            (x as f64 + 0.5) * dx - fov[2] / 2.0,
            (y as f64 + 0.5) * dy - fov[1] / 2.0,
            (z as f64 + 0.5) * dz,
        ]
    };

    // Emphysema blobs and nodules, placed inside the lungs.
    let mut blobs: Vec<([f64; 3], f64, f64)> = Vec::new(); // centre, radius, HU
    let mut nodules: Vec<([f64; 3], f64, f64)> = Vec::new();
    let place = |rng: &mut Rng, r: f64| -> Option<[f64; 3]> {
        for _ in 0..100 {
            let p = [
                (rng.uniform() - 0.5) * fov[2],
                (rng.uniform() - 0.5) * fov[1],
                rng.uniform() * fov[0],
            ];
            let side = if p[0] < 0.0 { -1.0 } else { 1.0 };
            if ch.lung_level(side, p[0], p[1], p[2]) < 0.75 && r < 0.2 * ch.ba {
                return Some(p);
            }
        }
        None
    };
    let n_blobs = 6 + (rng.uniform() * 10.0) as usize;
    for _ in 0..n_blobs {
        let r = 4.0 + 10.0 * rng.uniform();
        if let Some(p) = place(&mut rng, r) {
            blobs.push((p, r, -965.0 - 25.0 * rng.uniform()));
        }
    }
    let n_nod = 2 + (rng.uniform() * 4.0) as usize;
    for _ in 0..n_nod {
        let r = 2.5 + 6.0 * rng.uniform();
        if let Some(p) = place(&mut rng, r) {
            let hu = if rng.uniform() < 0.3 {
                -550.0
            } else {
                20.0 + 30.0 * rng.uniform()
            };
            nodules.push((p, r, hu));
        }
    }

    let mut hu = vec![-1000f32; nz * ny * nx];
    let mut lung = vec![false; nz * ny * nx];
    let (spine_y, spine_r) = (0.62 * ch.bb, 0.075 * ch.ba);
    let canal = (spine_y + spine_r + 0.045 * ch.ba, 0.032 * ch.ba);
    let aorta = ([0.12 * ch.ba, 0.33 * ch.bb], 0.05 * ch.ba);
    let heart = ([0.08 * ch.ba, -0.2 * ch.bb], [0.24 * ch.ba, 0.42 * ch.bb]);
    let disc_pitch = 26.0;
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let p = pos(z, y, x);
                let (px_, py_, pz_) = (p[0], p[1], p[2]);
                let th = py_.atan2(px_);
                let rho = ((px_ / ch.ba).powi(2) + (py_ / ch.bb).powi(2)).sqrt();
                let edge = ch.boundary(th, pz_);
                // Signed distance to the body outline, approximately in mm.
                let scale = (ch.ba * ch.bb).sqrt();
                let d_body = (rho - edge) * scale;
                let mut v = -1000.0;
                let cov = smooth_step(d_body, pix);
                if cov > 0.0 {
                    let fat_in = 0.055 * scale;
                    let tissue = if d_body > -fat_in { -100.0 } else { 50.0 };
                    v = -1000.0 * (1.0 - cov) + tissue * cov;
                    // Mediastinum: heart (lower slices) and aorta.
                    let hz = (pz_ / ch.zlen.max(1.0)).clamp(0.0, 1.0);
                    let hs = 0.6 + 0.4 * hz;
                    let hd = (((px_ - heart.0[0]) / (heart.1[0] * hs)).powi(2)
                        + ((py_ - heart.0[1]) / (heart.1[1] * hs)).powi(2))
                    .sqrt();
                    if hd < 1.0 {
                        v = 40.0;
                    }
                    // Lungs.
                    for side in [-1.0, 1.0] {
                        let lv = ch.lung_level(side, px_, py_, pz_);
                        if lv < 1.0 && hd >= 1.0 {
                            let mut l = -850.0 + ch.texture(px_, py_, pz_);
                            for (c, r, bhu) in &blobs {
                                let d = ((px_ - c[0]).powi(2)
                                    + (py_ - c[1]).powi(2)
                                    + (pz_ - c[2]).powi(2))
                                .sqrt();
                                let w = smooth_step(d - r, 2.0 * pix);
                                l = l * (1.0 - w) + bhu * w;
                            }
                            // Soft lung boundary over about one voxel.
                            let w = ((1.0 - lv) / 0.05).clamp(0.0, 1.0);
                            v = v * (1.0 - w) + l * w;
                            lung[(z * ny + y) * nx + x] = w > 0.5;
                        }
                    }
                    let ad = ((px_ - aorta.0[0]).powi(2) + (py_ - aorta.0[1]).powi(2)).sqrt();
                    let w = smooth_step(ad - aorta.1, pix);
                    v = v * (1.0 - w) + 45.0 * w;
                    // Spine: cancellous body with a cortical shell; discs; canal with arch.
                    let sd = (px_.powi(2) + (py_ - spine_y).powi(2)).sqrt();
                    let in_disc = (pz_.rem_euclid(disc_pitch)) < 5.0;
                    let body_w = smooth_step(sd - spine_r, pix);
                    if body_w > 0.0 {
                        let core = if in_disc {
                            90.0
                        } else if sd > spine_r - 2.5 {
                            700.0
                        } else {
                            220.0
                        };
                        v = v * (1.0 - body_w) + core * body_w;
                    }
                    let cd = (px_.powi(2) + (py_ - canal.0).powi(2)).sqrt();
                    if !in_disc {
                        let arch = smooth_step((cd - canal.1 - 4.0).abs() - 2.5, pix);
                        v = v * (1.0 - arch) + 650.0 * arch;
                    }
                    let cw = smooth_step(cd - canal.1, pix);
                    v = v * (1.0 - cw) + 20.0 * cw;
                    // Ribs: oblique arcs just inside the outline, sloping down anteriorly.
                    let ang = (py_ / ch.bb).atan2(px_ / ch.ba); // 0 = lateral, pi/2 posterior
                    let from_back = (PI / 2.0 - ang.abs()).abs(); // 0 at the spine
                    if from_back > 0.25 && from_back < 2.6 {
                        let rr = 0.9 * edge * scale;
                        let radial = rho * scale - rr;
                        for &zr in &ch.ribs {
                            let zc = zr + ch.rib_slope * from_back;
                            let dzr = (pz_ - zc) / 5.0;
                            let dr = radial / 4.0;
                            let e = (dzr * dzr + dr * dr).sqrt();
                            if e < 1.3 {
                                let w = smooth_step((e - 1.0) * 4.0, pix);
                                let bone = if e > 0.7 { 750.0 } else { 250.0 };
                                v = v * (1.0 - w) + bone * w;
                            }
                        }
                    }
                }
                for (c, r, nhu) in &nodules {
                    let d =
                        ((px_ - c[0]).powi(2) + (py_ - c[1]).powi(2) + (pz_ - c[2]).powi(2)).sqrt();
                    let w = smooth_step(d - r, pix);
                    if w > 0.0 {
                        v = v * (1.0 - w) + nhu * w;
                    }
                }
                hu[(z * ny + y) * nx + x] = v as f32;
            }
        }
    }

    // Vessel and airway trees from the hila.
    let mut vessels = Vec::new();
    let mut airways = Vec::new();
    let top = -0.1 * fov[0];
    let carina = [0.0, 0.12 * ch.bb, 0.3 * fov[0]];
    airways.push(Seg {
        a: [0.0, 0.12 * ch.bb, top],
        b: carina,
        r: 8.0,
    });
    for side in [-1.0, 1.0] {
        let hilum = [side * 0.3 * ch.ba, 0.0, 0.45 * fov[0]];
        airways.push(Seg {
            a: carina,
            b: [side * 0.22 * ch.ba, 0.05 * ch.bb, 0.4 * fov[0]],
            r: 6.0,
        });
        let bronchus = [side * 0.22 * ch.ba, 0.05 * ch.bb, 0.4 * fov[0]];
        for k in 0..3 {
            let dir = [
                side * (0.8 + 0.4 * rng.uniform()),
                -0.5 + 1.0 * rng.uniform(),
                -0.9 + 0.9 * k as f64,
            ];
            grow(&mut rng, &mut airways, bronchus, dir, 22.0, 4.5, 0.9, 0);
        }
        for k in 0..5 {
            let dir = [
                side * (0.7 + 0.5 * rng.uniform()),
                -0.8 + 1.6 * rng.uniform(),
                -1.2 + 0.6 * k as f64,
            ];
            let (len, r) = (20.0 + 8.0 * rng.uniform(), 4.5 + 1.5 * rng.uniform());
            grow(&mut rng, &mut vessels, hilum, dir, len, r, 0.6, 0);
        }
    }
    let stamp = |hu: &mut [f32], seg: &Seg, r: f64, val: f32, only_lung: bool| {
        let lo = |a: f64, b: f64, d: f64| ((a.min(b) - r - 1.0) / d).floor().max(0.0) as usize;
        let hi = |a: f64, b: f64, d: f64, n: usize| {
            (((a.max(b) + r + 1.0) / d).ceil().max(0.0) as usize).min(n)
        };
        let off = [fov[2] / 2.0, fov[1] / 2.0, 0.0];
        let (x0, x1) = (
            lo(seg.a[0] + off[0], seg.b[0] + off[0], dx),
            hi(seg.a[0] + off[0], seg.b[0] + off[0], dx, nx),
        );
        let (y0, y1) = (
            lo(seg.a[1] + off[1], seg.b[1] + off[1], dy),
            hi(seg.a[1] + off[1], seg.b[1] + off[1], dy, ny),
        );
        let (z0, z1) = (lo(seg.a[2], seg.b[2], dz), hi(seg.a[2], seg.b[2], dz, nz));
        for z in z0..z1 {
            for y in y0..y1 {
                for x in x0..x1 {
                    let i = (z * ny + y) * nx + x;
                    if only_lung && !lung[i] {
                        continue;
                    }
                    let d = dist_to_seg(pos(z, y, x), seg);
                    let w = smooth_step(d - r, pix) as f32;
                    if w > 0.0 {
                        hu[i] = hu[i] * (1.0 - w) + val * w;
                    }
                }
            }
        }
    };
    for s in &vessels {
        stamp(&mut hu, s, s.r, 40.0, true);
    }
    for (k, s) in airways.iter().enumerate() {
        // The trachea and main bronchi run through the mediastinum; the rest stay in the lungs.
        let in_lung = k > 2;
        let wall = (0.25 * s.r).max(0.8);
        stamp(&mut hu, s, s.r + wall, -50.0, in_lung);
        stamp(&mut hu, s, s.r, -1000.0, in_lung);
    }
    stamp_inserts(cfg, &mut hu);
    Volume::new(
        format!("phantom chest seed {}", cfg.seed),
        cfg.shape,
        cfg.spacing,
        hu,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn phantom_is_seeded_and_has_lungs_bone_and_body() {
        let cfg = PhantomConfig::chest(48, 6, 5);
        let a = chest(&cfg);
        assert_eq!(a, chest(&cfg));
        assert_ne!(
            a.values,
            chest(&PhantomConfig {
                seed: 6,
                ..cfg.clone()
            })
            .values
        );
        let n = a.values.len() as f64;
        let frac =
            |lo: f32, hi: f32| a.values.iter().filter(|&&v| v >= lo && v < hi).count() as f64 / n;
        assert!(frac(-900.0, -780.0) > 0.1, "lung {}", frac(-900.0, -780.0));
        assert!(frac(300.0, 1000.0) > 0.003, "bone {}", frac(300.0, 1000.0));
        assert!(frac(-200.0, 100.0) > 0.1, "soft tissue");
        assert!(frac(-1001.0, -990.0) > 0.1, "air");
        // Coherent in z: neighbouring slices are close.
        let plane = 48 * 48;
        let diff: f64 = (0..plane)
            .map(|i| f64::from((a.values[2 * plane + i] - a.values[3 * plane + i]).abs()))
            .sum::<f64>()
            / plane as f64;
        assert!(diff < 150.0, "{diff}");
        assert!(insert_geometry(&cfg).is_none());
    }

    /// The inserts sit in air in front of the body, at the recorded voxel positions, uniform where
    /// the ROIs are recorded.
    #[test]
    fn inserts_are_where_the_geometry_says() {
        let cfg = PhantomConfig {
            inserts: true,
            ..PhantomConfig::chest(128, 2, 5)
        };
        let v = chest(&cfg);
        let g = insert_geometry(&cfg).unwrap();
        let at = |c: [f64; 2]| v.values[v.idx(1, c[0].round() as usize, c[1].round() as usize)];
        assert_eq!(at(g.rod_centre), 900.0);
        assert_eq!(at(g.soft_roi_centre), 0.0);
        assert_eq!(at(g.lung_roi_centre), -850.0);
        // Every pixel of the ROIs is uniform; the rod's edge is inside the water.
        for (c, r, hu) in [
            (g.soft_roi_centre, g.soft_roi_radius, 0.0),
            (g.lung_roi_centre, g.lung_roi_radius, -850.0),
        ] {
            for y in 0..128 {
                for x in 0..128 {
                    if (y as f64 - c[0]).hypot(x as f64 - c[1]) <= r {
                        assert_eq!(v.values[v.idx(0, y, x)], hu, "{y} {x}");
                    }
                }
            }
        }
        let dist = (g.rod_centre[1] - g.water_centre[1]).abs() + g.rod_radius;
        assert!(dist + 2.0 < g.water_radius);
        // Without inserts the same place is air.
        let plain = chest(&PhantomConfig::chest(128, 2, 5));
        let c = g.rod_centre;
        assert_eq!(
            plain.values[plain.idx(1, c[0] as usize, c[1] as usize)],
            -1000.0
        );
    }
}
