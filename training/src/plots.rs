//! Pictures of a training run, written beside `losses.csv` at every checkpoint so a person can
//! watch it (issue 4, item 6):
//! - `losses.png` ([`loss_png`]): the loss curves of `losses.csv` drawn with `plotters`: left the
//!   weighted L1 (paired) or cycle (unpaired) terms, right the adversarial terms of both
//!   generators and both discriminators; thin lines are the raw values, thick ones a moving
//!   average over ~2% of the steps.
//! - `val/step_NNNNNN.png` ([`slices_png`]): for a few fixed validation patches, the middle axial
//!   slice of input | output | target, grey levels on [-1, 1] (the trainer maps the seed window
//!   [-1150, 350] HU there, whatever the model's own window).
//!
//! - `<csv stem>-nps.png` ([`nps_png`]) and `<csv stem>-bland-altman.png` ([`bland_altman_png`]),
//!   drawn by `ct-train eval`: the mean noise power spectra of the target and of each method, and
//!   the Bland–Altman plot of the emphysema index (difference output − target against their mean,
//!   per case, with the bias and the 95 % limits of agreement), one panel per method.
//!
//! Text needs a TrueType font: the first of [`FONT_PATHS`] that exists (Debian's
//! `fonts-dejavu-core`, installed by `scripts/setup.sh`). Without one the curves are still drawn,
//! without axis labels or legend, and one warning says so.

use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Fonts tried for text, in order.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Errors drawing a picture; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Csv { path: PathBuf, reason: String },
    #[error("cannot draw {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Registers the first font found (once per process); false when there is none.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                // The font data must live for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!(
            "no TrueType font found (looked for {FONT_PATHS:?}): loss plots are drawn without labels"
        );
        false
    })
}

/// Columns of `losses.csv` drawn, by panel.
const L1_COLUMNS: [&str; 2] = ["rec_ab", "rec_ba"];
const GAN_COLUMNS: [&str; 4] = ["gan_ab", "gan_ba", "d_a", "d_b"];

/// The `losses.csv` columns by name, as (header, values) with the step column first.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTable {
    pub steps: Vec<f64>,
    pub columns: Vec<(String, Vec<f64>)>,
}

/// Parses `losses.csv` text (header `step,...`, one row per step).
pub fn parse_losses(text: &str, path: &Path) -> Result<LossTable, PlotError> {
    let bad = |reason: String| PlotError::Csv {
        path: path.to_owned(),
        reason,
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("empty file".into()))?
        .split(',')
        .collect();
    if header.first() != Some(&"step") {
        return Err(bad(format!("header {header:?} does not start with `step`")));
    }
    let mut steps = Vec::new();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); header.len() - 1];
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<f64> = line
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("row {}: {e}", i + 2)))?;
        if v.len() != header.len() {
            return Err(bad(format!(
                "row {} has {} fields, the header {}",
                i + 2,
                v.len(),
                header.len()
            )));
        }
        steps.push(v[0]);
        for (c, x) in cols.iter_mut().zip(&v[1..]) {
            c.push(*x);
        }
    }
    Ok(LossTable {
        steps,
        columns: header[1..]
            .iter()
            .map(|h| (*h).to_owned())
            .zip(cols)
            .collect(),
    })
}

/// Centred moving average over `w` samples (shrinking at the ends).
pub fn moving_average(v: &[f64], w: usize) -> Vec<f64> {
    let h = w / 2;
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(h), (i + h + 1).min(v.len()));
            v[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws `losses.csv` into `out` (PNG, 1200×450).
pub fn loss_png(csv: &Path, out: &Path) -> Result<(), PlotError> {
    let text = std::fs::read_to_string(csv).map_err(|source| PlotError::Read {
        path: csv.to_owned(),
        source,
    })?;
    let table = parse_losses(&text, csv)?;
    let (w, h) = (1200u32, 450u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| PlotError::Draw {
        path: out.to_owned(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let panels = root.split_evenly((1, 2));
        let text = font();
        for (area, (names, title)) in panels.iter().zip([
            (&L1_COLUMNS[..], "weighted L1 / cycle terms"),
            (
                &GAN_COLUMNS[..],
                "adversarial terms (G) and discriminator losses",
            ),
        ]) {
            let series: Vec<(&str, &Vec<f64>)> = names
                .iter()
                .filter_map(|n| {
                    table
                        .columns
                        .iter()
                        .find(|(h, _)| h == n)
                        .map(|(h, v)| (h.as_str(), v))
                })
                .collect();
            draw_panel(area, &table.steps, &series, title, text)
                .map_err(|e| draw_err(e.to_string()))?;
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    write_rgb_png(out, w, h, &buf)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    steps: &[f64],
    series: &[(&str, &Vec<f64>)],
    title: &str,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let x_max = steps.last().copied().unwrap_or(1.0).max(1.0);
    let w = (steps.len() / 50).max(1);
    let smooth: Vec<Vec<f64>> = series.iter().map(|(_, v)| moving_average(v, w)).collect();
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .copied()
        .filter(|x| x.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo.min(0.0), hi * 1.05)
    } else {
        (0.0, 1.0)
    };
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(title, ("sans-serif", 18))
            .x_label_area_size(32)
            .y_label_area_size(52);
    }
    let mut chart = b.build_cartesian_2d(0.0..x_max, lo..hi)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("step");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (k, ((name, raw), sm)) in series.iter().zip(&smooth).enumerate() {
        let c = COLORS[k % COLORS.len()];
        chart.draw_series(LineSeries::new(
            steps.iter().copied().zip(raw.iter().copied()),
            c.mix(0.25).stroke_width(1),
        ))?;
        let s = chart.draw_series(LineSeries::new(
            steps.iter().copied().zip(sm.iter().copied()),
            c.stroke_width(2),
        ))?;
        if text {
            s.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// Draws NPS curves (`(label, frequency in cycles/mm, NPS in HU²·mm²)`) into `out` (PNG,
/// 900×560); the curve labelled `target` is black and thick.
pub fn nps_png(out: &Path, curves: &[(&str, &[f64], &[f64])]) -> Result<(), PlotError> {
    let (w, h) = (900u32, 560u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| PlotError::Draw {
        path: out.to_owned(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        draw_nps(&root, curves, font()).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    write_rgb_png(out, w, h, &buf)
}

fn draw_nps<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    curves: &[(&str, &[f64], &[f64])],
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let fmax = curves
        .iter()
        .flat_map(|c| c.1.iter())
        .copied()
        .fold(0.0, f64::max)
        .max(1e-6);
    let pmax = curves
        .iter()
        .flat_map(|c| c.2.iter())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.05;
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(
            "noise power spectrum (soft-tissue ROIs)",
            ("sans-serif", 18),
        )
        .x_label_area_size(36)
        .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(0.0..fmax, 0.0..pmax)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("frequency (cycles/mm)").y_desc("NPS (HU² mm²)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let mut k = 0;
    for (label, f, p) in curves {
        let (c, width) = if *label == "target" {
            (BLACK, 3)
        } else {
            k += 1;
            (COLORS[(k - 1) % COLORS.len()], 2)
        };
        let s = chart.draw_series(LineSeries::new(
            f.iter().copied().zip(p.iter().copied()),
            c.stroke_width(width),
        ))?;
        if text {
            let l = (*label).to_owned();
            s.label(l).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(width))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// One Bland–Altman panel: a title, the per-case points `(mean, difference)` and the
/// `(bias, lower, upper)` lines.
pub type BlandAltmanPanel = (String, Vec<(f64, f64)>, (f64, f64, f64));

/// Draws Bland–Altman panels (one per method, side by side) of quantity `what` into `out` (PNG,
/// 420 px per panel × 420).
pub fn bland_altman_png(
    out: &Path,
    what: &str,
    panels: &[BlandAltmanPanel],
) -> Result<(), PlotError> {
    let n = panels.len().max(1);
    let (w, h) = (420 * n as u32, 420u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| PlotError::Draw {
        path: out.to_owned(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let areas = root.split_evenly((1, n));
        let text = font();
        // One y range for every panel, so the methods compare at a glance.
        let span = panels
            .iter()
            .flat_map(|(_, p, (b, lo, hi))| p.iter().map(|q| q.1).chain([*b, *lo, *hi]))
            .filter(|v| v.is_finite())
            .fold(0.5f64, |a, v| a.max(v.abs()))
            * 1.15;
        for (area, panel) in areas.iter().zip(panels) {
            draw_ba(area, what, panel, span, text).map_err(|e| draw_err(e.to_string()))?;
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    write_rgb_png(out, w, h, &buf)
}

fn draw_ba<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    what: &str,
    (title, pts, (bias, lo, hi)): &BlandAltmanPanel,
    span: f64,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
        let pad = 0.1 * (xmax - xmin);
        (xmin - pad, xmax + pad)
    } else if xmin.is_finite() {
        (xmin - 1.0, xmin + 1.0)
    } else {
        (0.0, 1.0)
    };
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        let t: String = title.chars().take(40).collect();
        b.caption(t, ("sans-serif", 15))
            .x_label_area_size(36)
            .y_label_area_size(48);
    }
    let mut chart = b.build_cartesian_2d(xmin..xmax, -span..span)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(format!("mean {what}"))
            .y_desc("output − target");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (v, c) in [(*bias, COLORS[0]), (*lo, COLORS[1]), (*hi, COLORS[1])] {
        chart.draw_series(LineSeries::new([(xmin, v), (xmax, v)], c.stroke_width(2)))?;
    }
    chart.draw_series(
        pts.iter()
            .map(|&(x, y)| Circle::new((x, y), 4, BLACK.filled())),
    )?;
    Ok(())
}

fn write_rgb_png(out: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<(), PlotError> {
    write_png(out, w, h, png::ColorType::Rgb, rgb)
}

fn write_png(
    out: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    data: &[u8],
) -> Result<(), PlotError> {
    let io = |source| PlotError::Write {
        path: out.to_owned(),
        source,
    };
    let enc_err = |e: png::EncodingError| PlotError::Draw {
        path: out.to_owned(),
        reason: e.to_string(),
    };
    let tmp = out.with_extension("png.tmp");
    {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut e = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        e.set_color(color);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e.write_header().map_err(enc_err)?;
        wr.write_image_data(data).map_err(enc_err)?;
        wr.finish().map_err(enc_err)?;
    }
    std::fs::rename(&tmp, out).map_err(io)
}

/// One validation row: the same axial slice (`rows × columns`, model units) of input, output and
/// target.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceRow {
    pub rows: usize,
    pub columns: usize,
    pub input: Vec<f32>,
    pub output: Vec<f32>,
    pub target: Vec<f32>,
}

/// Gap between panels, in pixels (white).
const GAP: usize = 4;

/// Writes the rows as one grey PNG: per row input | output | target, [-1, 1] → black..white,
/// each voxel drawn as `zoom × zoom` pixels.
pub fn slices_png(out: &Path, rows: &[SliceRow], zoom: usize) -> Result<(), PlotError> {
    let zoom = zoom.max(1);
    let cell_w = rows.iter().map(|r| r.columns).max().unwrap_or(1) * zoom;
    let cell_h = rows.iter().map(|r| r.rows).max().unwrap_or(1) * zoom;
    let w = 3 * cell_w + 4 * GAP;
    let h = rows.len().max(1) * (cell_h + GAP) + GAP;
    let mut img = vec![255u8; w * h];
    for (i, r) in rows.iter().enumerate() {
        let y0 = GAP + i * (cell_h + GAP);
        for (j, plane) in [&r.input, &r.output, &r.target].into_iter().enumerate() {
            let x0 = GAP + j * (cell_w + GAP);
            for y in 0..r.rows * zoom {
                for x in 0..r.columns * zoom {
                    let v = plane.get((y / zoom) * r.columns + x / zoom).copied();
                    let g = v.map_or(0.0, |v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round());
                    img[(y0 + y) * w + x0 + x] = g as u8;
                }
            }
        }
    }
    write_png(out, w as u32, h as u32, png::ColorType::Grayscale, &img)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const CSV: &str = "step,lr,gan_ab,gan_ba,rec_ab,rec_ba,d_a,d_b,seconds\n\
        1,2e-4,0.7,0.7,10.0,11.0,0.69,0.69,1.0\n\
        2,2e-4,0.8,0.6,8.0,9.0,0.6,0.7,1.0\n\
        3,2e-4,0.9,0.5,6.0,7.0,0.5,0.71,1.0\n";

    #[test]
    fn losses_parse_and_plot() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("losses.csv");
        std::fs::write(&csv, CSV).unwrap();
        let t = parse_losses(CSV, &csv).unwrap();
        assert_eq!(t.steps, [1.0, 2.0, 3.0]);
        assert_eq!(t.columns[3].0, "rec_ab");
        assert_eq!(t.columns[3].1, [10.0, 8.0, 6.0]);
        let png = dir.path().join("losses.png");
        loss_png(&csv, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Not a blank picture: the curves (and, with a font, the labels) mark the white background.
        let d = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = d.read_info().unwrap();
        let mut px = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut px).unwrap();
        let drawn = px.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count();
        assert!(drawn > 500, "{drawn} drawn pixels");
    }

    #[test]
    fn malformed_losses_name_the_file_and_row() {
        let p = Path::new("run/losses.csv");
        let e = parse_losses("step,a\n1,x\n", p).unwrap_err().to_string();
        assert!(e.contains("run/losses.csv") && e.contains("row 2"), "{e}");
        let e = parse_losses("", p).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn moving_average_of_a_ramp_is_the_ramp_inside() {
        let v: Vec<f64> = (0..10).map(f64::from).collect();
        let m = moving_average(&v, 3);
        assert_eq!(m[5], 5.0);
        assert_eq!(m[0], 0.5);
    }

    #[test]
    fn slice_rows_are_laid_out_in_three_panels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.png");
        let r = SliceRow {
            rows: 2,
            columns: 3,
            input: vec![-1.0; 6],
            output: vec![0.0; 6],
            target: vec![1.0; 6],
        };
        slices_png(&out, &[r.clone(), r], 2).unwrap();
        let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let mut rd = d.read_info().unwrap();
        let mut px = vec![0; rd.output_buffer_size().unwrap()];
        let info = rd.next_frame(&mut px).unwrap();
        let w = 3 * 6 + 4 * GAP;
        assert_eq!(
            (info.width as usize, info.height as usize),
            (w, 2 * (4 + GAP) + GAP)
        );
        let at = |x: usize, y: usize| px[y * w + x];
        assert_eq!(at(GAP, GAP), 0);
        assert_eq!(at(2 * GAP + 6, GAP), 128);
        assert_eq!(at(3 * GAP + 12, GAP), 255);
    }

    #[test]
    fn nps_and_bland_altman_pictures_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let f: Vec<f64> = (0..33).map(|i| f64::from(i) / 64.0).collect();
        let a: Vec<f64> = f.iter().map(|x| 100.0 * x * (-8.0 * x).exp()).collect();
        let b: Vec<f64> = f.iter().map(|x| 60.0 * x * (-12.0 * x).exp()).collect();
        let p = dir.path().join("nps.png");
        nps_png(&p, &[("target", &f, &a), ("gaussian", &f, &b)]).unwrap();
        let q = dir.path().join("ba.png");
        let panel = (
            "m".to_string(),
            vec![(5.0, 0.1), (7.0, -0.3), (9.0, 0.2)],
            (0.0, -0.5, 0.5),
        );
        bland_altman_png(&q, "EI (%)", &[panel.clone(), panel]).unwrap();
        for png in [p, q] {
            let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
            let mut r = d.read_info().unwrap();
            let mut px = vec![0; r.output_buffer_size().unwrap()];
            r.next_frame(&mut px).unwrap();
            let drawn = px.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count();
            assert!(drawn > 300, "{}: {drawn} drawn pixels", png.display());
        }
    }
}
