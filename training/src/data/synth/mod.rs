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

//!
//! Files: [`scanner`] (filters, FFT, projection, Poisson noise, FBP), [`volumes`] (a volume's
//! simulated pair, thick slices, crops, noise figures), this module (sources, layout, the CLI).

pub mod scanner;
pub mod volumes;

pub use scanner::{Filter, Scanner};

use scanner::mix;
pub use volumes::*;

use crate::data::nifti::{self, NiftiError};
use crate::data::phantom::{self, PhantomConfig};
use crate::data::{load_dicom_series, load_volume, DataError, Volume};
use crate::lib_bridge::{SampleError, SeriesSpec, CRANIUM_INV3};
use serde::Serialize;
use std::path::{Path, PathBuf};

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
            nifti::write(&p, v.shape, v.spacing, &v.values, nifti::WriteType::Int16)?;
        }
        Format::Dicom => {
            let p = dir.join(what);
            let plane = v.shape[1] * v.shape[2];
            spec.series_description = format!("SIMULATED {}", what.to_ascii_uppercase());
            spec.write(&p, |z| v.values[z * plane..(z + 1) * plane].to_vec())
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
    use super::scanner::fft;
    use super::*;
    use std::f64::consts::PI;

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
        assert_eq!(p1.sharp.values, p2.sharp.values);
        assert_ne!(p1.sharp.values, simulate_volume(&vol, &cfg, 8).sharp.values);
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
        assert!((t.values[0] - (1.5 * 24.0 + 0.5 * 6.0 + 0.5) as f32).abs() < 1e-4);
        let s = shrink_inplane(&v, 3);
        assert_eq!(s.shape, [8, 2, 3]);
        assert!((s.values[0] - (0.5 * 6.0 + 0.5) as f32).abs() < 1e-4);
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
