//! Paired training data by simulation (`ct-train synth`, DESIGN §5): no one ships paired scanner
//! reconstructions, so we make them. Two modes (`--mode`):
//!
//! - **realistic** (the default, `synth_format` 2): source and target are two *separate
//!   acquisitions* of the anatomy, with independent Poisson noise and their own dose, filter and
//!   post-filter, stored as a scanner stores them; the source protocol is drawn per case
//!   (domain randomisation) so a model learns the target, not one source.
//! - **shared** (the first `synth`): one noisy sinogram reconstructed twice, sharp and soft; a
//!   kernel change is then exactly a linear filter. Kept as a regression set.
//!
//! **Scanner.** Each axial slice is one acquisition: HU to linear attenuation
//! (`mu = mu_water · (1 + HU/1000)`, clamped at 0), a parallel-beam forward projection (Joseph's
//! method: one linear interpolation per image row or column crossed, so every pixel on the ray is
//! visited once), Poisson counting noise at `photons` incident photons per detector bin and view
//! (`I = Poisson(I0 · exp(-L))`, `L = -ln(max(I, 1)/I0)`), then filtered back-projection.
//! Geometry: detector bins one pixel wide covering the image diagonal (`ceil(√(rows² + cols²)) +
//! 1`, ≥ N√2), and `ceil(π/2 · max(rows, cols))` views over 180°. The ramp is the band-limited
//! spatial-domain filter of Kak & Slaney, applied by zero-padded FFT; windows multiply its
//! spectrum ([`filters`]: ramp, Shepp-Logan, edge-enhancing `enhance` with MTF above 1 at mid
//! frequencies, Hann, Hamming, Butterworth and Gaussian apodisations with cut-offs in documented
//! ranges).
//!
//! **Realistic protocol** (defaults; every range a flag, every case's draw recorded in
//! `synth.toml` under `[case.protocol]`):
//!
//! | | source (domain A) | target (domain B) |
//! |---|---|---|
//! | dose, photons per ray | log-uniform in [`DEFAULT_SOURCE_PHOTONS`] (low dose .. standard) | [`DEFAULT_TARGET_PHOTONS`] |
//! | filter | one of `enhance`, `shepp-logan`, `ramp`, `butterworth` (parameters drawn in their ranges) | `hann:0.8` |
//! | post-filter ([`ir`]) | none | TV blend, strength 0.5, λ = 30 HU |
//! | storage | int16, whole HU, clipped to -1024 .. 3071 | same |
//!
//! Dose range: [`DOSE_RANGE`] photons per ray for any acquisition. Measured noise (std of noisy
//! minus noise-free reconstruction in the uniform soft tissue of the middle slice, before storage;
//! phantom seed 3000, 256 × 256 pixels of 1.37 mm; `ct-train synth --source phantom --size 256
//! --slices 4 --seed 3000 --no-thick --source-filters F --source-photons N`), in HU:
//!
//! | source filter | 1e4 photons | 3e4 | 1e5 |
//! |---|---|---|---|
//! | `ramp` | 74.8 | 43.0 | 23.5 |
//! | `enhance:0.6:0.45` | 73.0 | 42.2 | 23.1 |
//! | `shepp-logan` | 60.7 | 34.9 | 19.1 |
//! | `butterworth:0.6:4` | 39.6 | | |
//!
//! so the default source range 1e4 .. 6e4 spans clinical low dose (40-80 HU after a sharp kernel)
//! to near standard dose. Target `hann:0.8`: 13.0 HU at 3e4, 10.0 HU at 5e4 as FBP; with the TV
//! blend at strength 0.5 (λ 30 HU) 7.7 and 5.8 HU. At 128 × 128 (2.73 mm pixels) `ramp` gives
//! 59.5 HU at 1e4 and 33.9 HU at 3e4. Every case's figures, lung insert included, are in
//! `synth.toml` (`[case.noise]`).
//!
//! **Nonlinear target.** [`ir`]: an edge-preserving TV (ROF, Chambolle's algorithm) post-filter
//! blended with the FBP like vendors' "x % IR" settings.
//!
//! **Resolution.** The super-resolution source ("thick") is the target reconstruction (before
//! storage) through a slice-sensitivity profile in z ([`Ssp`]: Gaussian of FWHM = the thick slice,
//! 4 thin slices, by default in the realistic mode; the shared mode's box average otherwise) and
//! 2 × 2 box averages in-plane (seed 000's task: 4× z, 2× x/y), written on its own coarse grid (4×
//! slice spacing, 2× pixel spacing); volumes are cropped to multiples first so `soft` is exactly the
//! high-resolution target of `thick`.
//!
//! **Layout.** `OUT/<case>/{sharp,soft,thick}` as DICOM series folders (ConvolutionKernel
//! `SIM-SHARP`, `SIM-SOFT`, and `SIM-SOFT` for the thick series) or as `sharp.nii.gz`, `soft.nii.gz`,
//! `thick.nii.gz`; plus `OUT/synth.toml` recording the parameters, each case's protocol, the
//! phantoms' insert geometry and the measured noise. With `--unpaired`, cases alternate between
//! the domains and hold one member only: `OUT/unpaired/a/<case>/sharp` (source) and
//! `OUT/unpaired/b/<case>/soft` (target), different anatomy per domain, for the cycle modes
//! (`ct-train train --mode unpaired --unpaired-a OUT/unpaired/a --unpaired-b OUT/unpaired/b`);
//! the thick series of domain A's cases (the super-resolution source) goes to
//! `OUT/unpaired/a-thick/<case>/thick`.
//!
//! **Format.** `synth.toml` carries `synth_format` ([`SYNTH_FORMAT`]; a file without it is format
//! 1, the first `synth`). Training refuses data and checkpoints of another format
//! ([`check_data_format`]).
//!
//! Files: [`filters`] (reconstruction filters), [`scanner`] (FFT, projection, Poisson noise, FBP),
//! [`ir`] (the nonlinear post-filter), [`volumes`] (a volume's simulated pair, slice profiles,
//! storage, crops, noise figures), this module (sources, protocols, layout, the CLI).

pub mod filters;
pub mod ir;
pub mod scanner;
pub mod volumes;

pub use filters::{Family, FilterChoice};
pub use ir::Ir;
pub use scanner::{Filter, Scanner};

use crate::data::rng::Rng;
use scanner::mix;
pub use volumes::*;

use crate::data::nifti::{self, NiftiError};
use crate::data::phantom::{self, InsertGeometry, PhantomConfig};
use crate::data::{load_dicom_series, load_volume, DataError, Volume};
use crate::lib_bridge::{SampleError, SeriesSpec, CRANIUM_INV3};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Version of the data `synth` writes, as `synth_format` in `synth.toml` (module docs). 1: the
/// first `synth` (no field): shared sinogram, floats. 2: realistic mode, int16 storage, protocols.
pub const SYNTH_FORMAT: u32 = 2;
/// Documented range of any acquisition's dose (photons per ray) in the realistic mode.
pub const DOSE_RANGE: [f64; 2] = [1.0e3, 1.0e7];
/// Default source dose range (log-uniform per case).
pub const DEFAULT_SOURCE_PHOTONS: [f64; 2] = [1.0e4, 6.0e4];
/// Default target dose.
pub const DEFAULT_TARGET_PHOTONS: [f64; 2] = [5.0e4, 5.0e4];
/// Default source filter families (one drawn per case).
pub const DEFAULT_SOURCE_FILTERS: &str = "enhance,shepp-logan,ramp,butterworth";
/// Default target filter.
pub const DEFAULT_TARGET_FILTER: &str = "hann:0.8";
/// Default target post-filter strength range and TV weight.
pub const DEFAULT_TARGET_IR: [f64; 2] = [0.5, 0.5];
pub const DEFAULT_IR_WEIGHT_HU: f64 = 30.0;

/// The realistic mode's protocol ranges (module docs); [`Protocol::draw`] makes one case's.
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    /// Source dose range (photons per ray), drawn log-uniformly.
    pub source_photons: [f64; 2],
    pub target_photons: [f64; 2],
    /// Source filters: one entry drawn per case.
    pub source_filters: Vec<FilterChoice>,
    pub target_filters: Vec<FilterChoice>,
    /// Post-filter strength ranges ([`ir::STRENGTH_RANGE`]), drawn uniformly.
    pub source_ir: [f64; 2],
    pub target_ir: [f64; 2],
    /// TV weight λ (HU) of both post-filters ([`ir::WEIGHT_RANGE`]).
    pub ir_weight_hu: f64,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            source_photons: DEFAULT_SOURCE_PHOTONS,
            target_photons: DEFAULT_TARGET_PHOTONS,
            source_filters: vec![
                FilterChoice::Random(Family::Enhance),
                FilterChoice::Fixed(Filter::SheppLogan),
                FilterChoice::Fixed(Filter::Ramp),
                FilterChoice::Random(Family::Butterworth),
            ],
            target_filters: vec![FilterChoice::Fixed(Filter::HannCut(0.8))],
            source_ir: [0.0, 0.0],
            target_ir: DEFAULT_TARGET_IR,
            ir_weight_hu: DEFAULT_IR_WEIGHT_HU,
        }
    }
}

/// Parses `LO` or `LO,HI` (a single value is a fixed one).
pub fn parse_range(flag: &str, s: &str) -> Result<[f64; 2], SynthError> {
    let v = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| SynthError::Invalid(format!("{flag} {s:?}: {p:?} is not a number")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match v[..] {
        [a] => Ok([a, a]),
        [a, b] if a <= b => Ok([a, b]),
        _ => Err(SynthError::Invalid(format!(
            "{flag} {s:?}: expected LO or LO,HI with LO <= HI"
        ))),
    }
}

fn check_range(flag: &str, r: [f64; 2], allowed: [f64; 2], unit: &str) -> Result<(), SynthError> {
    for v in r {
        if !(v.is_finite() && v >= allowed[0] && v <= allowed[1]) {
            return Err(SynthError::Invalid(format!(
                "{flag} {v}: outside the documented range {} .. {} {unit}",
                allowed[0], allowed[1]
            )));
        }
    }
    Ok(())
}

impl Protocol {
    /// Checks every range against its documented one; the error names the flag and the value.
    pub fn validate(&self) -> Result<(), SynthError> {
        check_range(
            "--source-photons",
            self.source_photons,
            DOSE_RANGE,
            "photons per ray",
        )?;
        check_range(
            "--target-photons",
            self.target_photons,
            DOSE_RANGE,
            "photons per ray",
        )?;
        check_range(
            "--source-ir",
            self.source_ir,
            ir::STRENGTH_RANGE,
            "(blend fraction)",
        )?;
        check_range(
            "--target-ir",
            self.target_ir,
            ir::STRENGTH_RANGE,
            "(blend fraction)",
        )?;
        check_range(
            "--ir-weight",
            [self.ir_weight_hu; 2],
            ir::WEIGHT_RANGE,
            "HU",
        )?;
        if self.source_filters.is_empty() || self.target_filters.is_empty() {
            return Err(SynthError::Invalid("a filter list is empty".into()));
        }
        Ok(())
    }

    /// One case's concrete settings, drawn from `seed` (the same seed gives the same protocol).
    pub fn draw(&self, base: &SimConfig, seed: u64) -> SimConfig {
        let mut rng = Rng::new(mix(seed, 0x5052_4f54));
        let log_uniform = |rng: &mut Rng, r: [f64; 2]| {
            (r[0].ln() + (r[1].ln() - r[0].ln()) * rng.uniform())
                .exp()
                .round()
        };
        let uniform = |rng: &mut Rng, r: [f64; 2]| r[0] + (r[1] - r[0]) * rng.uniform();
        let pick = |rng: &mut Rng, l: &[FilterChoice]| {
            let k = ((rng.uniform() * l.len() as f64) as usize).min(l.len() - 1);
            l[k].draw(rng)
        };
        let photons = log_uniform(&mut rng, self.source_photons);
        let target_photons = log_uniform(&mut rng, self.target_photons);
        let sharp = pick(&mut rng, &self.source_filters);
        let soft = pick(&mut rng, &self.target_filters);
        let sharp_ir = Ir {
            strength: uniform(&mut rng, self.source_ir),
            weight_hu: self.ir_weight_hu,
        };
        let soft_ir = Ir {
            strength: uniform(&mut rng, self.target_ir),
            weight_hu: self.ir_weight_hu,
        };
        SimConfig {
            photons,
            sharp,
            soft,
            seed: base.seed,
            mode: PairMode::Independent,
            target_photons,
            sharp_ir,
            soft_ir,
            int16_storage: true,
        }
    }
}

/// One case's drawn protocol, as recorded in `synth.toml` (`[case.protocol]`).
#[derive(Debug, Clone, Serialize)]
pub struct CaseProtocol {
    pub source_photons: f64,
    pub source_filter: Filter,
    pub source_ir_strength: f64,
    pub target_photons: f64,
    pub target_filter: Filter,
    pub target_ir_strength: f64,
    pub ir_weight_hu: f64,
    pub ir_method: &'static str,
}

impl CaseProtocol {
    fn of(c: &SimConfig) -> Self {
        Self {
            source_photons: c.photons,
            source_filter: c.sharp,
            source_ir_strength: c.sharp_ir.strength,
            target_photons: c.target_photons,
            target_filter: c.soft,
            target_ir_strength: c.soft_ir.strength,
            ir_weight_hu: c.soft_ir.weight_hu,
            ir_method: "tv-blend",
        }
    }
}

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
    #[error(transparent)]
    Phantom(#[from] crate::data::phantom_head::PhantomError),
    #[error("writing {path}: {source}")]
    Series { path: PathBuf, source: SampleError },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    Summary { path: PathBuf, reason: String },
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
    /// Procedural head phantoms ([`crate::data::phantom_head`]).
    HeadPhantom,
    /// A DICOM folder (every series in it is a case), a NIfTI file or an `.inv3` project.
    Path(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> Self {
        match s {
            "cranium" => Self::Cranium,
            "phantom" => Self::Phantom,
            "head-phantom" => Self::HeadPhantom,
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
    /// Shared (the first `synth`, the default of this struct) or independent (realistic).
    pub mode: PairMode,
    /// The realistic mode's ranges (ignored in the shared mode).
    pub protocol: Protocol,
    /// Slice profile of the thick source.
    pub ssp: Ssp,
    /// Write an unpaired set (`OUT/unpaired/{a,b}`, module docs).
    pub unpaired: bool,
}

impl Default for SynthOptions {
    /// The first `synth`'s behaviour: shared mode, box profile, paired, one phantom.
    fn default() -> Self {
        Self {
            out: PathBuf::new(),
            source: Source::Phantom,
            sim: SimConfig::default(),
            format: Format::Dicom,
            size: 0,
            slices: 0,
            cases: 1,
            thick: true,
            mode: PairMode::Shared,
            protocol: Protocol::default(),
            ssp: Ssp::Box,
            unpaired: false,
        }
    }
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
    /// `paired`, or the domain (`a` source, `b` target) of an unpaired set's case.
    pub role: &'static str,
    /// The case's drawn protocol (realistic mode).
    pub protocol: Option<CaseProtocol>,
    /// The phantom's quality-control inserts (voxels of the thin volumes; realistic phantoms).
    pub inserts: Option<InsertGeometry>,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    program: String,
    /// [`SYNTH_FORMAT`].
    synth_format: u32,
    /// `shared` or `independent`.
    mode: PairMode,
    /// The shared mode's dose; the realistic mode's source range `[lo, hi]`.
    photons: toml::Value,
    /// The shared mode's filters; the realistic mode's filter lists.
    sharp_filter: String,
    soft_filter: String,
    seed: u64,
    format: Format,
    mu_water_per_mm: f64,
    thick_factors: [usize; 3],
    thick_ssp: Ssp,
    /// `float` (shared mode) or `int16 clipped -1024 .. 3071` (realistic).
    storage: &'static str,
    unpaired: bool,
    protocol: Option<ProtocolSummary>,
    note: &'static str,
    case: &'a [CaseSummary],
}

#[derive(Debug, Serialize)]
struct ProtocolSummary {
    source_photons: [f64; 2],
    target_photons: [f64; 2],
    source_filters: String,
    target_filters: String,
    source_ir: [f64; 2],
    target_ir: [f64; 2],
    ir_weight_hu: f64,
    ir_method: &'static str,
    dose_range: [f64; 2],
}

fn list(l: &[FilterChoice]) -> String {
    l.iter()
        .map(|c| match c {
            FilterChoice::Fixed(f) => f.to_string(),
            FilterChoice::Random(fam) => format!("{fam:?}").to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `synth_format` of the `synth.toml` in `dir` or its parent (a case folder or `OUT/unpaired`):
/// `None` when neither has one (data not made by `synth`), 1 when the file has no such key.
pub fn data_format(dir: &Path) -> Result<Option<(PathBuf, u32)>, DataError> {
    let candidates = [Some(dir), dir.parent()];
    let Some(path) = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("synth.toml"))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| DataError::Source {
        path: path.clone(),
        reason: format!("not a readable synth.toml: {e}"),
    })?;
    let f = match v.get("synth_format") {
        None => 1,
        Some(x) => x
            .as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| DataError::Source {
                path: path.clone(),
                reason: format!("synth_format {x} is not a whole number"),
            })?,
    };
    Ok(Some((path, f)))
}

/// Refuses data whose `synth.toml` has another `synth_format` than [`SYNTH_FORMAT`] (an older
/// `synth`'s data: regenerate it); returns the format when the data is `synth`'s.
pub fn check_data_format(dir: &Path) -> Result<Option<u32>, DataError> {
    match data_format(dir)? {
        Some((path, found)) if found != SYNTH_FORMAT => Err(DataError::SynthFormat {
            path,
            found,
            expected: SYNTH_FORMAT,
        }),
        other => Ok(other.map(|(_, f)| f)),
    }
}

/// A case's anatomy: name, volume and the phantom inserts' geometry.
type SourceCase = (String, Volume, Option<InsertGeometry>);

fn source_volumes(o: &SynthOptions) -> Result<Vec<SourceCase>, SynthError> {
    let vols: Vec<SourceCase> = match &o.source {
        Source::Phantom | Source::HeadPhantom => {
            let head = matches!(o.source, Source::HeadPhantom);
            let size = if o.size == 0 { 256 } else { o.size };
            let slices = if o.slices == 0 { 48 } else { o.slices };
            (0..o.cases.max(1))
                .map(|k| {
                    let seed = o.sim.seed.wrapping_add(k as u64);
                    let base = if head {
                        PhantomConfig::head(size, slices, seed)
                    } else {
                        PhantomConfig::chest(size, slices, seed)
                    };
                    let cfg = PhantomConfig {
                        inserts: o.mode == PairMode::Independent,
                        ..base
                    };
                    let (name, volume) = if head {
                        (
                            format!("head-phantom-{seed:04}"),
                            crate::data::phantom_head::head(&cfg)?,
                        )
                    } else {
                        (format!("phantom-{seed:04}"), phantom::chest(&cfg))
                    };
                    Ok((name, volume, phantom::insert_geometry(&cfg)))
                })
                .collect::<Result<_, SynthError>>()?
        }
        Source::Cranium => vec![(
            "cranium".to_string(),
            load_volume(Path::new(CRANIUM_INV3))?,
            None,
        )],
        Source::Path(p) if p.is_dir() => load_dicom_series(p)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("series-{i:02}"), v, None))
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
            vec![(stem, load_volume(p)?, None)]
        }
    };
    Ok(vols
        .into_iter()
        .map(|(n, v, g)| {
            // Phantoms are generated at the size asked: no shrink, no slice crop, so the insert
            // geometry stays in the written grid.
            let v = shrink_inplane(&v, o.size);
            (n, central_slices(&v, o.slices), g)
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
    let realistic = o.mode == PairMode::Independent;
    if realistic {
        o.protocol.validate()?;
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(&o.out).map_err(io(&o.out))?;
    let mut out = Vec::new();
    for (k, (name, vol, inserts)) in source_volumes(o)?.into_iter().enumerate() {
        let started = std::time::Instant::now();
        let (vol, inserts) = if o.thick {
            let c = crop_to_multiple(&vol, THICK_FACTORS)?;
            // The crop is centred: shift the insert geometry by the in-plane offset.
            let off = [0, 1, 2].map(|a| ((vol.shape[a] - c.shape[a]) / 2) as f64);
            let g = inserts.map(|mut g| {
                for c in [
                    &mut g.water_centre,
                    &mut g.rod_centre,
                    &mut g.soft_roi_centre,
                    &mut g.lung_centre,
                    &mut g.lung_roi_centre,
                ] {
                    c[0] -= off[1];
                    c[1] -= off[2];
                }
                g
            });
            (c, g)
        } else {
            (vol, inserts)
        };
        let case_seed = mix(o.sim.seed, k as u64 + 1);
        let sim = if realistic {
            o.protocol.draw(&o.sim, case_seed)
        } else {
            o.sim.clone()
        };
        let pair = simulate_volume_raw(&vol, &sim, case_seed);
        let role = match (o.unpaired, k % 2) {
            (false, _) => "paired",
            (true, 0) => "a",
            (true, _) => "b",
        };
        let dir = if o.unpaired {
            o.out.join("unpaired").join(role).join(&name)
        } else {
            o.out.join(&name)
        };
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
        let stored = |v: &Volume| {
            let mut v = v.clone();
            if sim.int16_storage {
                store_int16(&mut v.values);
            }
            v
        };
        if role != "b" {
            write_volume(
                &stored(&pair.sharp),
                &dir,
                "sharp",
                o.format,
                base("sharp", vol.shape, vol.spacing, "SIM-SHARP", 2),
            )?;
        }
        if role != "a" {
            write_volume(
                &stored(&pair.soft),
                &dir,
                "soft",
                o.format,
                base("soft", vol.shape, vol.spacing, "SIM-SOFT", 3),
            )?;
        }
        let mut thick_shape = None;
        // The thick series is the super-resolution source, so in an unpaired set it belongs to
        // domain A's cases, in a folder of its own (`unpaired/a-thick`): `unpaired/a` and
        // `unpaired/b` then hold exactly the kernel task's two domains.
        if o.thick && role != "b" {
            let t = stored(&thick_ssp(&pair.soft, THICK_FACTORS, o.ssp));
            let mut spec = base("thick", t.shape, t.spacing, "SIM-SOFT", 4);
            // Thick slice k is centred on thin slices 4k .. 4k+3: centre it there.
            spec.origin[2] = -(THICK_FACTORS[0] as f64 - 1.0) / 2.0 * vol.spacing[0];
            let tdir = if role == "a" {
                let d = o.out.join("unpaired").join("a-thick").join(&name);
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                d
            } else {
                dir.clone()
            };
            write_volume(&t, &tdir, "thick", o.format, spec)?;
            thick_shape = Some(t.shape);
        }
        let noise = measure_noise(&vol, nz / 2, &sim, mix(case_seed, 999_999));
        let s = CaseSummary {
            name: name.clone(),
            source: vol.name.clone(),
            shape: [nz, ny, nx],
            spacing: vol.spacing,
            thick_shape,
            noise,
            seconds: started.elapsed().as_secs_f64(),
            role,
            protocol: realistic.then(|| CaseProtocol::of(&sim)),
            inserts,
        };
        tracing::info!(
            case = %name,
            shape = ?s.shape,
            role,
            source_filter = %sim.sharp,
            source_photons = sim.photons,
            sharp_noise_hu = noise.map(|n| n.sharp_noise_hu),
            soft_noise_hu = noise.map(|n| n.soft_noise_hu),
            seconds = s.seconds,
            "simulated"
        );
        out.push(s);
    }
    let p = &o.protocol;
    let summary = Summary {
        program: format!("ct-train {}", env!("CARGO_PKG_VERSION")),
        synth_format: SYNTH_FORMAT,
        mode: o.mode,
        photons: if realistic {
            toml::Value::Array(p.source_photons.iter().map(|&v| v.into()).collect())
        } else {
            o.sim.photons.into()
        },
        sharp_filter: if realistic {
            list(&p.source_filters)
        } else {
            o.sim.sharp.to_string()
        },
        soft_filter: if realistic {
            list(&p.target_filters)
        } else {
            o.sim.soft.to_string()
        },
        seed: o.sim.seed,
        format: o.format,
        mu_water_per_mm: MU_WATER_PER_MM,
        thick_factors: THICK_FACTORS,
        thick_ssp: o.ssp,
        storage: if realistic {
            "int16 clipped -1024 .. 3071"
        } else {
            "float"
        },
        unpaired: o.unpaired,
        protocol: realistic.then(|| ProtocolSummary {
            source_photons: p.source_photons,
            target_photons: p.target_photons,
            source_filters: list(&p.source_filters),
            target_filters: list(&p.target_filters),
            source_ir: p.source_ir,
            target_ir: p.target_ir,
            ir_weight_hu: p.ir_weight_hu,
            ir_method: "tv-blend",
            dose_range: DOSE_RANGE,
        }),
        note: "noise: std (HU) of noisy minus noise-free reconstruction over the uniform \
               soft-tissue region of the middle slice (7x7 neighbourhood within 15 HU, -150..150 HU; \
               lung: -950..-750 HU), before int16 storage. inserts: voxel [y, x] of the written \
               thin volumes, every slice",
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
    /// Anatomy: `cranium` (Debian's invesalius-examples head CT), `phantom` (procedural chests),
    /// `head-phantom` (procedural heads: scalp, skull with diploe and air cells, grey and white
    /// matter, CSF; 260 mm field of view, --size at least 64), a DICOM folder (every series a
    /// case), a `.nii` / `.nii.gz` file or an `.inv3` project.
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
    /// Number of phantom cases, chest or head (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    pub cases: usize,
    /// Output format: dicom or nifti.
    #[arg(long, default_value = "dicom")]
    pub format: String,
    /// Do not write the thick-slice super-resolution source.
    #[arg(long)]
    pub no_thick: bool,
    /// `realistic`: separate acquisitions (independent noise, own dose, filter and post-filter per
    /// domain, int16 storage, per-case protocol); `shared`: the first synth's one sinogram
    /// reconstructed with --sharp and --soft (--photons its dose).
    #[arg(long, default_value = "realistic")]
    pub mode: String,
    /// Realistic mode: source dose, photons per ray, `LO` or `LO,HI` (log-uniform per case), in
    /// 1000 .. 1e7.
    #[arg(long, default_value = "10000,60000")]
    pub source_photons: String,
    /// Realistic mode: target dose, `LO` or `LO,HI`, in 1000 .. 1e7.
    #[arg(long, default_value = "50000")]
    pub target_photons: String,
    /// Realistic mode: source filters, one drawn per case: `NAME[:P1[:P2]]` fixed, or a family
    /// name alone drawn in its documented range (ramp, shepp-logan, enhance, hann, hamming,
    /// butterworth, gaussian).
    #[arg(long, default_value = DEFAULT_SOURCE_FILTERS)]
    pub source_filters: String,
    /// Realistic mode: target filter(s), same syntax.
    #[arg(long, default_value = DEFAULT_TARGET_FILTER)]
    pub target_filter: String,
    /// Realistic mode: source post-filter (TV blend) strength, `LO` or `LO,HI` in 0 .. 1.
    #[arg(long, default_value = "0")]
    pub source_ir: String,
    /// Realistic mode: target post-filter (TV blend) strength, `LO` or `LO,HI` in 0 .. 1.
    #[arg(long, default_value = "0.5")]
    pub target_ir: String,
    /// Realistic mode: TV weight of the post-filters (HU, 1 .. 200).
    #[arg(long, default_value_t = DEFAULT_IR_WEIGHT_HU)]
    pub ir_weight: f64,
    /// Slice-sensitivity profile of the thick source: gaussian, triangle or box (default: gaussian
    /// in the realistic mode, box in the shared one).
    #[arg(long)]
    pub ssp: Option<String>,
    /// Write an unpaired set: cases alternate between `OUT/unpaired/a/<case>/sharp` and
    /// `OUT/unpaired/b/<case>/soft` (different anatomy per domain).
    #[arg(long)]
    pub unpaired: bool,
}

impl SynthArgs {
    /// The options these arguments ask for (every range checked).
    pub fn options(&self) -> Result<SynthOptions, SynthError> {
        let format = match self.format.to_ascii_lowercase().as_str() {
            "dicom" => Format::Dicom,
            "nifti" | "nii" => Format::Nifti,
            f => {
                return Err(SynthError::Invalid(format!(
                    "unknown --format {f:?}; use dicom or nifti"
                )))
            }
        };
        let mode = match self.mode.to_ascii_lowercase().as_str() {
            "realistic" | "independent" => PairMode::Independent,
            "shared" => PairMode::Shared,
            m => {
                return Err(SynthError::Invalid(format!(
                    "unknown --mode {m:?}; use realistic or shared"
                )))
            }
        };
        let protocol = Protocol {
            source_photons: parse_range("--source-photons", &self.source_photons)?,
            target_photons: parse_range("--target-photons", &self.target_photons)?,
            source_filters: FilterChoice::parse_list(&self.source_filters)?,
            target_filters: FilterChoice::parse_list(&self.target_filter)?,
            source_ir: parse_range("--source-ir", &self.source_ir)?,
            target_ir: parse_range("--target-ir", &self.target_ir)?,
            ir_weight_hu: self.ir_weight,
        };
        if mode == PairMode::Independent {
            protocol.validate()?;
        }
        let ssp = match &self.ssp {
            Some(s) => Ssp::parse(s)?,
            None if mode == PairMode::Independent => Ssp::Gaussian,
            None => Ssp::Box,
        };
        Ok(SynthOptions {
            out: self.out.clone(),
            source: Source::parse(&self.source),
            sim: SimConfig {
                photons: self.photons,
                sharp: Filter::parse(&self.sharp)?,
                soft: Filter::parse(&self.soft)?,
                seed: self.seed,
                ..SimConfig::default()
            },
            format,
            size: self.size,
            slices: self.slices,
            cases: self.cases,
            thick: !self.no_thick,
            mode,
            protocol,
            ssp,
            unpaired: self.unpaired,
        })
    }
}

/// Runs `ct-train synth` from its arguments and prints one line per case.
pub fn run_cli(a: SynthArgs) -> anyhow::Result<()> {
    let o = a.options()?;
    let cases = run(&o)?;
    println!(
        "{:<16} {:>16} {:>12} {:>12} {:>10} {:>9}  protocol",
        "case", "shape (z,y,x)", "sharp noise", "soft noise", "ROI px", "s/slice"
    );
    for c in &cases {
        let n = c.noise;
        println!(
            "{:<16} {:>16} {:>12} {:>12} {:>10} {:>9}  {}",
            c.name,
            format!("{}x{}x{}", c.shape[0], c.shape[1], c.shape[2]),
            n.map(|n| format!("{:.1} HU", n.sharp_noise_hu))
                .unwrap_or_default(),
            n.map(|n| format!("{:.1} HU", n.soft_noise_hu))
                .unwrap_or_default(),
            n.map(|n| n.roi_pixels.to_string()).unwrap_or_default(),
            n.map(|n| format!("{:.3}", n.seconds_per_slice))
                .unwrap_or_default(),
            c.protocol
                .as_ref()
                .map(|p| format!(
                    "{} {:.0} photons -> {} {:.0} photons, IR {:.2}",
                    p.source_filter,
                    p.source_photons,
                    p.target_filter,
                    p.target_photons,
                    p.target_ir_strength
                ))
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
                ..SynthOptions::default()
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

    fn args(extra: &[&str]) -> Result<SynthOptions, SynthError> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            a: SynthArgs,
        }
        let mut v = vec!["synth", "--out", "/nonexistent"];
        v.extend_from_slice(extra);
        W::try_parse_from(v).unwrap().a.options()
    }

    /// Bad input: a dose, post-filter strength or filter outside its documented range is refused
    /// naming the flag and the value.
    #[test]
    fn dose_or_filter_out_of_range_is_refused_naming_the_value() {
        let o = args(&[]).unwrap();
        assert_eq!(o.mode, PairMode::Independent);
        assert_eq!(o.ssp, Ssp::Gaussian);
        assert_eq!(o.protocol, Protocol::default());
        for (flags, needle) in [
            (vec!["--source-photons", "50,30000"], "--source-photons 50"),
            (vec!["--target-photons", "2e7"], "--target-photons 20000000"),
            (vec!["--source-photons", "3e4,4e3"], "LO <= HI"),
            (vec!["--target-ir", "1.5"], "--target-ir 1.5"),
            (vec!["--ir-weight", "0"], "--ir-weight 0"),
            (vec!["--source-filters", "enhance,hann:1.4"], "cut-off 1.4"),
            (vec!["--target-filter", "box"], "unknown filter \"box\""),
            (vec!["--mode", "paired"], "unknown --mode"),
            (vec!["--ssp", "sinc"], "unknown slice profile"),
        ] {
            let e = args(&flags).unwrap_err().to_string();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
        assert!(e_contains_range(
            &args(&["--source-photons", "500"]).unwrap_err()
        ));
        // The shared mode keeps the first synth's checks only.
        let o = args(&["--mode", "shared", "--source-photons", "1"]).unwrap();
        assert_eq!((o.mode, o.ssp), (PairMode::Shared, Ssp::Box));
        let mut o = SynthOptions {
            out: tempfile::tempdir().unwrap().path().join("x"),
            mode: PairMode::Independent,
            ..SynthOptions::default()
        };
        o.protocol.source_photons = [10.0, 10.0];
        assert!(run(&o)
            .unwrap_err()
            .to_string()
            .contains("--source-photons 10"));
    }

    fn e_contains_range(e: &SynthError) -> bool {
        e.to_string().contains("1000 .. 10000000 photons per ray")
    }

    /// Independent acquisitions: the two members' noise is uncorrelated (the shared mode's is the
    /// same noise through two filters), each at its own dose.
    #[test]
    fn independent_acquisitions_have_uncorrelated_noise() {
        let n = 40;
        let vol = Volume::new("disc", [1, n, n], [1.0, 1.0, 1.0], disc(n, 40.0));
        let sc = Scanner::new(n, n, Filter::Hann, Filter::Hann);
        let corr = |cfg: &SimConfig| {
            let (a, b) = simulate_slice(&sc, vol.slice(0), 1.0, cfg, true, 5);
            let (a0, b0) = simulate_slice(&sc, vol.slice(0), 1.0, cfg, false, 5);
            let da: Vec<f64> = a.iter().zip(&a0).map(|(x, y)| f64::from(x - y)).collect();
            let db: Vec<f64> = b.iter().zip(&b0).map(|(x, y)| f64::from(x - y)).collect();
            let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(x, y)| x * y).sum::<f64>();
            let r = dot(&da, &db) / (dot(&da, &da) * dot(&db, &db)).sqrt();
            (r, dot(&da, &da).sqrt(), dot(&db, &db).sqrt())
        };
        let shared = SimConfig {
            photons: 1e4,
            sharp: Filter::Hann,
            soft: Filter::Hann,
            ..SimConfig::default()
        };
        assert!(corr(&shared).0 > 0.999);
        let indep = SimConfig {
            mode: PairMode::Independent,
            target_photons: 1e6,
            ..shared.clone()
        };
        let (r, na, nb) = corr(&indep);
        assert!(r.abs() < 0.2, "{r}");
        // 100x the dose: a tenth of the noise.
        assert!((na / nb - 10.0).abs() < 2.5, "{na} {nb}");
    }

    /// Every filter keeps the HU of a large uniform region (no low-frequency gain): the water
    /// disc's centre reconstructs near 0 HU, noise-free.
    #[test]
    fn every_filter_keeps_water_at_zero() {
        let n = 48;
        let img = disc(n, 0.0);
        for f in [
            "ramp",
            "shepp-logan",
            "enhance:1.5:0.3",
            "enhance:0.6:0.45",
            "hann:0.5",
            "hamming:0.7",
            "butterworth:0.4:8",
            "gaussian:0.3",
        ] {
            let f = Filter::parse(f).unwrap();
            let sc = Scanner::new(n, n, f, f);
            let s = sc.acquire(&img, 1.0, None, 0);
            let (a, _) = sc.reconstruct_pair(&s, f, &s, f, 1.0);
            let c = n / 2;
            let mean = (c - 4..c + 4).map(|y| a[y * n + c]).sum::<f32>() / 8.0;
            assert!(mean.abs() < 30.0, "{f}: {mean}");
        }
    }

    /// The realistic mode writes int16 volumes floored at -1024 HU, the per-case protocol, the
    /// inserts and the format; the thick source has a Gaussian slice profile.
    #[test]
    fn realistic_set_is_stored_like_a_scanner_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("real");
        let o = SynthOptions {
            out: out.clone(),
            format: Format::Nifti,
            size: 32,
            slices: 8,
            cases: 2,
            mode: PairMode::Independent,
            ssp: Ssp::Gaussian,
            ..SynthOptions::default()
        };
        let s = run(&o).unwrap();
        assert_eq!(s.len(), 2);
        for c in &s {
            let p = c.protocol.as_ref().unwrap();
            assert!(
                p.source_photons >= DEFAULT_SOURCE_PHOTONS[0]
                    && p.source_photons <= DEFAULT_SOURCE_PHOTONS[1],
                "{p:?}"
            );
            assert_eq!(p.target_filter, Filter::HannCut(0.8));
            assert!(c.inserts.is_some());
            for m in ["sharp.nii.gz", "soft.nii.gz", "thick.nii.gz"] {
                let v = load_volume(&out.join(&c.name).join(m)).unwrap();
                assert!(
                    v.values.iter().all(|x| x.fract() == 0.0 && *x >= -1024.0),
                    "{m}"
                );
            }
        }
        let mut v = vec![-1100.4, -1023.6, 12.5, 5000.0];
        store_int16(&mut v);
        assert_eq!(v, [-1024.0, -1024.0, 13.0, 3071.0]);
        // Two cases draw two protocols.
        let (p0, p1) = (
            s[0].protocol.as_ref().unwrap(),
            s[1].protocol.as_ref().unwrap(),
        );
        assert_ne!(p0.source_photons, p1.source_photons);
        let text = std::fs::read_to_string(out.join("synth.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            v["synth_format"].as_integer(),
            Some(i64::from(SYNTH_FORMAT))
        );
        assert_eq!(v["mode"].as_str(), Some("independent"));
        assert_eq!(v["thick_ssp"].as_str(), Some("gaussian"));
        let c0 = &v["case"][0];
        for k in [
            "source_photons",
            "source_filter",
            "target_photons",
            "target_ir_strength",
        ] {
            assert!(c0["protocol"].get(k).is_some(), "{k}");
        }
        for k in [
            "rod_centre",
            "rod_radius",
            "soft_roi_centre",
            "lung_roi_centre",
        ] {
            assert!(c0["inserts"].get(k).is_some(), "{k}");
        }
        assert_eq!(check_data_format(&out).unwrap(), Some(SYNTH_FORMAT));
        // Trains: the pairs load.
        let d = crate::data::load_pairs(&out, [-1024.0, 3071.0], crate::config::TaskArg::Kernel)
            .unwrap();
        assert_eq!(d.pairs.len(), 2);
    }

    /// The slice profiles: box is the first synth's mean; Gaussian and triangle keep a linear ramp
    /// in z and spread an impulse over more thin slices than the box.
    #[test]
    fn slice_profiles() {
        let n = 16 * 2 * 2;
        let ramp = Volume::new(
            "r",
            [16, 2, 2],
            [1.0; 3],
            (0..n).map(|i| (i / 4) as f32).collect(),
        );
        assert_eq!(
            thick_ssp(&ramp, [4, 2, 2], Ssp::Box),
            thick(&ramp, [4, 2, 2])
        );
        for ssp in [Ssp::Gaussian, Ssp::Triangle] {
            let t = thick_ssp(&ramp, [4, 2, 2], ssp);
            assert_eq!(t.shape, [4, 1, 1]);
            assert_eq!(t.spacing, [4.0, 2.0, 2.0]);
            for k in 1..3 {
                assert!(
                    (t.values[k] - (4 * k) as f32 - 1.5).abs() < 1e-3,
                    "{ssp:?} {t:?}"
                );
            }
            // An impulse at thin slice 8 reaches thick slice 1 (slices 4..7) and 3 (12..15) too.
            let imp = Volume::new(
                "i",
                [16, 2, 2],
                [1.0; 3],
                (0..n).map(|i| if i / 4 == 8 { 1.0 } else { 0.0 }).collect(),
            );
            let t = thick_ssp(&imp, [4, 2, 2], ssp);
            assert!(
                t.values[1] > 0.0 && t.values[2] > t.values[1],
                "{ssp:?} {t:?}"
            );
            let b = thick(&imp, [4, 2, 2]);
            assert_eq!(b.values[1], 0.0);
        }
        assert!(Ssp::parse("triangle").is_ok());
    }

    /// The unpaired set: one domain per case, different anatomy, loadable for unpaired training.
    #[test]
    fn unpaired_set_has_one_member_per_case() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("u");
        let o = SynthOptions {
            out: out.clone(),
            format: Format::Nifti,
            size: 24,
            slices: 8,
            cases: 2,
            mode: PairMode::Independent,
            unpaired: true,
            ..SynthOptions::default()
        };
        let s = run(&o).unwrap();
        assert_eq!((s[0].role, s[1].role), ("a", "b"));
        let a = out.join("unpaired/a").join(&s[0].name);
        let b = out.join("unpaired/b").join(&s[1].name);
        assert!(a.join("sharp.nii.gz").is_file() && !a.join("soft.nii.gz").exists());
        assert!(b.join("soft.nii.gz").is_file() && !b.join("sharp.nii.gz").exists());
        // Each domain folder holds its kernel-task member only (`--unpaired-a/-b` load every
        // volume below them); the thick series of A's cases is beside, for super-resolution.
        assert!(!b.join("thick.nii.gz").exists() && !a.join("thick.nii.gz").exists());
        assert!(out
            .join("unpaired/a-thick")
            .join(&s[0].name)
            .join("thick.nii.gz")
            .is_file());
        assert_ne!(s[0].name, s[1].name);
        for (domain, want) in [("a", 1), ("b", 1)] {
            let v = crate::data::amortised::load_domain(
                &out.join("unpaired").join(domain),
                [-1024.0, 3071.0],
            )
            .unwrap();
            assert_eq!(v.len(), want, "domain {domain}");
            assert_eq!(v[0].shape, [8, 24, 24], "domain {domain}");
        }
        let d = crate::data::load_pairs(
            &out.join("unpaired"),
            [-1024.0, 3071.0],
            crate::config::TaskArg::Kernel,
        )
        .unwrap();
        assert_eq!(d.pairs.len(), 1);
    }

    /// Bad input: data of an older `synth` format (a synth.toml without `synth_format`, or another
    /// value) is refused by the loader, naming the file and the value.
    #[test]
    fn older_synth_format_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("old");
        std::fs::create_dir_all(d.join("case")).unwrap();
        std::fs::write(d.join("synth.toml"), "photons = 30000.0\n").unwrap();
        let load = |p: &Path| {
            crate::data::load_pairs(p, [-1024.0, 3071.0], crate::config::TaskArg::Kernel)
                .unwrap_err()
                .to_string()
        };
        for p in [d.clone(), d.join("case")] {
            let e = load(&p);
            assert!(
                e.contains("synth_format 1")
                    && e.contains(&d.join("synth.toml").display().to_string()),
                "{e}"
            );
        }
        std::fs::write(d.join("synth.toml"), "synth_format = 7\n").unwrap();
        assert!(load(&d).contains("synth_format 7"));
        std::fs::write(
            d.join("synth.toml"),
            format!("synth_format = {SYNTH_FORMAT}\n"),
        )
        .unwrap();
        assert!(load(&d).contains("no case found"));
    }
}
