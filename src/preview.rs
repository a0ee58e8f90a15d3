//! A PNG for people: for a few slices, input | output | difference side by side (soft-tissue window
//! for the images, ±100 HU mapped to black..white for the difference).
//!
//! Each panel is shown the radiological way, from the slice's direction cosines
//! (ImageOrientationPatient): on an axial slice the patient's right is on the image's left and
//! anterior is up; a coronal slice has right on the left and head up; a sagittal slice anterior on
//! the left and head up. Rows and columns are flipped (and swapped, when the rows run head-foot)
//! as needed, and the panel edges carry orientation letters (R/L, A/P, S/I). The panels are named
//! in a band at the top ("INPUT", "OUTPUT", "DIFFERENCE") and each row of panels is headed by its
//! slice position along the patient axis the slice is normal to (e.g. "Z = -123.5 MM", from
//! ImagePositionPatient). Text comes from a 5x7 bitmap font compiled in (no system font).

use std::path::Path;

/// Where a slice lies in the patient: ImageOrientationPatient (row direction, then column
/// direction) and ImagePositionPatient (the first pixel's centre, mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub orientation: [f64; 6],
    pub position: [f64; 3],
}

/// One captured slice: input (resampled to the output grid) and output, in HU.
#[derive(Debug, Clone)]
pub struct PreviewSlice {
    pub index: usize,
    pub rows: usize,
    pub columns: usize,
    pub input: Vec<f32>,
    pub output: Vec<f32>,
    /// The slice's orientation and position; None: drawn as stored, without letters or position.
    pub placement: Option<Placement>,
}

impl PreviewSlice {
    /// This slice with its orientation and (when known) position.
    pub fn placed(mut self, orientation: [f64; 6], position: Option<[f64; 3]>) -> Self {
        self.placement = Some(Placement {
            orientation,
            position: position.unwrap_or([f64::NAN; 3]),
        });
        self
    }
}

/// Errors writing a preview.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("cannot write preview {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("no slices to preview")]
    Empty,
}

fn window(v: f32, center: f32, width: f32) -> u8 {
    (((v - (center - width / 2.0)) / width).clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Output slice indices to capture for a series of `n` output slices.
pub fn pick(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [n / 4, n / 2, (3 * n) / 4]
        .into_iter()
        .filter(|&i| i < n)
        .collect();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// Orientation

/// The patient axis (0 = x, 1 = y, 2 = z in DICOM's LPS system) a direction mostly points along,
/// and the sign of that component.
fn dominant(d: [f64; 3]) -> (usize, f64) {
    let axis = (1..3).fold(0, |a, i| if d[i].abs() > d[a].abs() { i } else { a });
    (axis, if d[axis] < 0.0 { -1.0 } else { 1.0 })
}

/// Letter of the patient direction along `axis` with `sign` (LPS: +x left, +y posterior, +z head).
fn letter(axis: usize, sign: f64) -> char {
    match (axis, sign > 0.0) {
        (0, true) => 'L',
        (0, false) => 'R',
        (1, true) => 'P',
        (1, false) => 'A',
        (_, true) => 'S',
        (_, false) => 'I',
    }
}

/// How a stored slice maps onto the displayed panel, and the letters at the panel's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display {
    /// The displayed panel's rows run along the stored columns (and its columns along the rows).
    pub transpose: bool,
    pub flip_rows: bool,
    pub flip_columns: bool,
    /// Letters at the top, bottom, left and right edges; None without a placement.
    pub letters: Option<[char; 4]>,
}

impl Display {
    /// As stored: no flips, no letters.
    const STORED: Display = Display {
        transpose: false,
        flip_rows: false,
        flip_columns: false,
        letters: None,
    };

    /// The radiological display of a slice with these direction cosines.
    pub fn radiological(orientation: [f64; 6]) -> Self {
        let o = orientation;
        let (row_dir, col_dir) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let (ra, _) = dominant(row_dir);
        let (ca, _) = dominant(col_dir);
        // Across the screen: x before y before z (axial and coronal: right-left; sagittal:
        // anterior-posterior). A column direction that fits better across means a swap.
        let transpose = ca < ra;
        let (across, down) = if transpose {
            (col_dir, row_dir)
        } else {
            (row_dir, col_dir)
        };
        let (aa, asign) = dominant(across);
        let (da, dsign) = dominant(down);
        // Rightwards: towards the patient's left (+x), posterior (+y), head (+z).
        let flip_across = asign < 0.0;
        // Downwards: towards posterior (+y), feet (-z), left (+x).
        let flip_down = if da == 2 { dsign > 0.0 } else { dsign < 0.0 };
        let right = letter(aa, if flip_across { -asign } else { asign });
        let bottom = letter(da, if flip_down { -dsign } else { dsign });
        let opposite = |c: char| match c {
            'L' => 'R',
            'R' => 'L',
            'P' => 'A',
            'A' => 'P',
            'S' => 'I',
            _ => 'S',
        };
        Display {
            transpose,
            flip_rows: flip_down,
            flip_columns: flip_across,
            letters: Some([opposite(bottom), bottom, opposite(right), right]),
        }
    }

    fn of(slice: &PreviewSlice) -> Self {
        slice
            .placement
            .map_or(Self::STORED, |p| Self::radiological(p.orientation))
    }

    /// Displayed (rows, columns) of a stored (rows, columns) slice.
    pub fn size(&self, rows: usize, columns: usize) -> (usize, usize) {
        if self.transpose {
            (columns, rows)
        } else {
            (rows, columns)
        }
    }

    /// Index into the stored slice of displayed pixel (y, x).
    pub fn source(&self, y: usize, x: usize, rows: usize, columns: usize) -> usize {
        let (h, w) = self.size(rows, columns);
        let a = if self.flip_rows { h - 1 - y } else { y };
        let b = if self.flip_columns { w - 1 - x } else { x };
        let (r, c) = if self.transpose { (b, a) } else { (a, b) };
        r * columns + c
    }
}

/// The slice's position along the patient axis it is normal to, e.g. "z = -123.5 mm".
pub fn position_label(p: &Placement) -> Option<String> {
    let o = p.orientation;
    let normal = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    let (axis, _) = dominant(normal);
    let v = p.position[axis];
    v.is_finite()
        .then(|| format!("{} = {:.1} mm", ["x", "y", "z"][axis], v))
}

// ---------------------------------------------------------------------------------------------
// Text

/// A 5x7 bitmap font: each glyph is 7 rows of 5 bits (most significant bit = leftmost pixel).
/// Drawn for this file (no third-party source; Apache-2.0 like the rest of ct-harmonizer).
/// Upper-case letters, digits and the few signs the labels use; lower case is drawn upper case,
/// anything else as '?'.
#[rustfmt::skip]
const FONT: &[(char, [u8; 7])] = &[
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001]),
    ('Y', [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100]),
    (' ', [0; 7]),
];

const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;

fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_uppercase();
    FONT.iter()
        .find(|(g, _)| *g == c)
        .or_else(|| FONT.iter().find(|(g, _)| *g == '?'))
        .map_or([0; 7], |(_, bits)| *bits)
}

/// Width in pixels of `text` drawn at `scale` (one blank column between glyphs).
fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    (n * (GLYPH_W + 1)).saturating_sub(1) * scale
}

/// A grayscale raster.
struct Canvas {
    width: usize,
    height: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, v: u8) {
        if x < self.width && y < self.height {
            self.px[y * self.width + x] = v;
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, v: u8) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, v);
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y): white on the existing pixels.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize) {
        for (i, c) in text.chars().enumerate() {
            let gx = x + i * (GLYPH_W + 1) * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        self.fill(gx + col * scale, y + row * scale, scale, scale, 255);
                    }
                }
            }
        }
    }

    /// A letter on a black box (legible on any image), its box's top-left corner at (x, y).
    fn boxed(&mut self, x: usize, y: usize, c: char, scale: usize) {
        self.fill(x, y, (GLYPH_W + 2) * scale, (GLYPH_H + 2) * scale, 0);
        self.text(x + scale, y + scale, &c.to_string(), scale);
    }
}

/// The preview's layout: panel size (as displayed), text scale, gap between panels, band height.
struct Layout {
    h: usize,
    w: usize,
    scale: usize,
    gap: usize,
    band: usize,
}

impl Layout {
    fn new(first: &PreviewSlice) -> Self {
        let (h, w) = Display::of(first).size(first.rows, first.columns);
        let scale = (w / 256).max(1);
        Layout {
            h,
            w,
            scale,
            gap: 4,
            band: (GLYPH_H + 6) * scale,
        }
    }

    fn width(&self) -> usize {
        3 * self.w + 2 * self.gap
    }

    fn height(&self, n: usize) -> usize {
        self.band + n * (self.band + self.h)
    }

    /// Left edge of panel `p` (0 input, 1 output, 2 difference).
    fn panel_x(&self, p: usize) -> usize {
        p * (self.w + self.gap)
    }

    /// Top edge of the images of slice row `r`.
    fn row_y(&self, r: usize) -> usize {
        self.band + r * (self.band + self.h) + self.band
    }
}

/// The panel names of the top band, and shorter ones for panels too narrow for them.
pub const PANELS: [&str; 3] = ["input", "output", "difference"];
const PANELS_SHORT: [&str; 3] = ["in", "out", "diff"];

/// Draws the preview: a band with the panel names, then per slice a band with its position and a
/// row of three panels (input, output, difference), each shown the radiological way.
fn render(slices: &[PreviewSlice]) -> Result<Canvas, PreviewError> {
    let first = slices.first().ok_or(PreviewError::Empty)?;
    let l = Layout::new(first);
    let mut c = Canvas {
        width: l.width(),
        height: l.height(slices.len()),
        px: vec![0; l.width() * l.height(slices.len())],
    };
    let pad = 3 * l.scale;
    let fits = PANELS.iter().all(|n| text_width(n, l.scale) + pad <= l.w);
    let names = if fits { PANELS } else { PANELS_SHORT };
    for (p, name) in names.iter().enumerate() {
        c.text(l.panel_x(p) + pad, pad, name, l.scale);
    }
    for (r, s) in slices.iter().enumerate() {
        let d = Display::of(s);
        let (h, w) = d.size(s.rows, s.columns);
        let y0 = l.row_y(r);
        if let Some(label) = s.placement.as_ref().and_then(position_label) {
            c.text(pad, y0 - l.band + pad, &label, l.scale);
        }
        for y in 0..h.min(l.h) {
            let row = (y0 + y) * c.width;
            for x in 0..w.min(l.w) {
                let i = d.source(y, x, s.rows, s.columns);
                c.px[row + x] = window(s.input[i], 40.0, 400.0);
                c.px[row + l.panel_x(1) + x] = window(s.output[i], 40.0, 400.0);
                c.px[row + l.panel_x(2) + x] = window(s.output[i] - s.input[i], 0.0, 200.0);
            }
        }
        if let Some([top, bottom, left, right]) = d.letters {
            let (bw, bh) = ((GLYPH_W + 2) * l.scale, (GLYPH_H + 2) * l.scale);
            if l.w > 3 * bw && l.h > 3 * bh {
                for p in 0..3 {
                    let x0 = l.panel_x(p);
                    c.boxed(x0 + (l.w - bw) / 2, y0, top, l.scale);
                    c.boxed(x0 + (l.w - bw) / 2, y0 + l.h - bh, bottom, l.scale);
                    c.boxed(x0, y0 + (l.h - bh) / 2, left, l.scale);
                    c.boxed(x0 + l.w - bw, y0 + (l.h - bh) / 2, right, l.scale);
                }
            }
        }
    }
    Ok(c)
}

/// Writes the rows of `slices` (one row each) as a grayscale PNG.
pub fn write_png(path: &Path, slices: &[PreviewSlice]) -> Result<(), PreviewError> {
    let img = render(slices)?;
    let err = |reason: String| PreviewError::Write {
        path: path.display().to_string(),
        reason,
    };
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        img.width as u32,
        img.height as u32,
    );
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(&img.px)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    fn slice(rows: usize, columns: usize, input: Vec<f32>) -> PreviewSlice {
        PreviewSlice {
            index: 0,
            rows,
            columns,
            output: input.clone(),
            input,
            placement: None,
        }
    }

    fn lit(c: &Canvas, x0: usize, y0: usize, w: usize, h: usize) -> usize {
        (y0..y0 + h)
            .flat_map(|y| (x0..x0 + w).map(move |x| (x, y)))
            .filter(|&(x, y)| c.px[y * c.width + x] == 255)
            .count()
    }

    fn glyph_pixels(text: &str) -> usize {
        text.chars()
            .map(|ch| {
                glyph(ch)
                    .iter()
                    .map(|b| b.count_ones() as usize)
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.png");
        let s = PreviewSlice {
            index: 0,
            rows: 8,
            columns: 8,
            input: vec![0.0; 64],
            output: vec![50.0; 64],
            placement: None,
        };
        write_png(&p, &[s.clone(), s]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(pick(8), vec![2, 4, 6]);
        assert_eq!(pick(1), vec![0]);
    }

    #[test]
    fn radiological_display_of_each_plane() {
        let d = Display::radiological(AXIAL);
        assert!(!d.transpose && !d.flip_rows && !d.flip_columns);
        assert_eq!(d.letters, Some(['A', 'P', 'R', 'L']));
        // Stored rotated by 180 degrees (rows run anterior, columns run right): both flipped back.
        let d = Display::radiological([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
        assert!(!d.transpose && d.flip_rows && d.flip_columns);
        assert_eq!(d.letters, Some(['A', 'P', 'R', 'L']));
        // Coronal, head up; sagittal, anterior on the left and head up.
        let d = Display::radiological([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]);
        assert!(!d.transpose && !d.flip_rows && !d.flip_columns);
        assert_eq!(d.letters, Some(['S', 'I', 'R', 'L']));
        let d = Display::radiological([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(!d.transpose && d.flip_rows && !d.flip_columns);
        assert_eq!(d.letters, Some(['S', 'I', 'A', 'P']));
        // Axial with the rows running front to back: swapped.
        let d = Display::radiological([0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(d.transpose && !d.flip_rows && !d.flip_columns);
        assert_eq!(d.letters, Some(['A', 'P', 'R', 'L']));
        assert_eq!(d.size(4, 6), (6, 4));
        // Displayed (y, x) is stored (row x, column y).
        assert_eq!(d.source(5, 3, 4, 6), 3 * 6 + 5);
    }

    #[test]
    fn an_upside_down_slice_comes_out_anterior_up_and_right_on_the_left() {
        let (rows, cols) = (40, 48);
        let mut input = vec![-1000.0; rows * cols];
        // A bright mark stored near the first pixel, which lies anterior-left of the patient
        // (row direction -x: columns run to the patient's right; column direction -y: rows run
        // anterior... so the first row is the most posterior, the first column the most left).
        input[8 * cols + 10] = 1000.0;
        let s = slice(rows, cols, input)
            .placed([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0], Some([10.0, 20.0, -123.5]));
        let c = render(std::slice::from_ref(&s)).unwrap();
        let l = Layout::new(&s);
        let y0 = l.row_y(0);
        let at = |panel: usize, y: usize, x: usize| c.px[(y0 + y) * c.width + l.panel_x(panel) + x];
        // Posterior goes down and the patient's left goes right: the mark moves to the far corner.
        assert_eq!(at(0, rows - 1 - 8, cols - 1 - 10), 255);
        assert_eq!(at(1, rows - 1 - 8, cols - 1 - 10), 255);
        assert_eq!(at(0, 8, 10), 0);
        // The same slice stored the usual way is drawn as stored.
        let mut usual = vec![-1000.0; rows * cols];
        usual[8 * cols + 10] = 1000.0;
        let u = slice(rows, cols, usual).placed(AXIAL, Some([0.0; 3]));
        let c = render(&[u]).unwrap();
        assert_eq!(c.px[(y0 + 8) * c.width + 10], 255);
        // Orientation letters on the panel edges: a boxed 'A' centred at the top of each panel.
        let bw = GLYPH_W + 2;
        for p in 0..3 {
            let x = l.panel_x(p) + (cols - bw) / 2;
            assert_eq!(
                lit(&c, x, y0, bw, GLYPH_H + 2),
                glyph_pixels("A"),
                "panel {p}"
            );
        }
    }

    #[test]
    fn panels_and_positions_are_labelled_with_the_bundled_font() {
        let s = slice(40, 64, vec![-1000.0; 40 * 64]).placed(AXIAL, Some([10.0, 20.0, -123.5]));
        let label = position_label(&s.placement.unwrap()).unwrap();
        assert_eq!(label, "z = -123.5 mm");
        let coronal = Placement {
            orientation: [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
            position: [0.0, -40.3, 7.0],
        };
        assert_eq!(position_label(&coronal).unwrap(), "y = -40.3 mm");
        let c = render(std::slice::from_ref(&s)).unwrap();
        let l = Layout::new(&s);
        // The top band holds exactly the three panel names' pixels, each over its panel.
        for (p, name) in PANELS.iter().enumerate() {
            assert_eq!(
                lit(&c, l.panel_x(p), 0, l.w, l.band),
                glyph_pixels(name),
                "{name}"
            );
        }
        // A known glyph where "input" starts: 'I' of the 5x7 font.
        let i = [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ];
        for (y, row) in i.iter().enumerate() {
            for (x, ch) in row.chars().enumerate() {
                let v = c.px[(3 + y) * c.width + 3 + x];
                assert_eq!(v == 255, ch == '#', "'I' at ({x}, {y})");
            }
        }
        // The slice's band: its position, and nothing without a placement.
        let band_y = l.row_y(0) - l.band;
        assert_eq!(lit(&c, 0, band_y, c.width, l.band), glyph_pixels(&label));
        let bare = render(&[slice(40, 64, vec![-1000.0; 40 * 64])]).unwrap();
        assert_eq!(lit(&bare, 0, band_y, bare.width, l.band), 0);
        // Panels too narrow for "difference" (59 pixels) get the short names, never a cut one.
        let narrow = render(&[slice(40, 48, vec![-1000.0; 40 * 48])]).unwrap();
        let nl = Layout::new(&slice(40, 48, Vec::new()));
        for (p, name) in PANELS_SHORT.iter().enumerate() {
            assert_eq!(
                lit(&narrow, nl.panel_x(p), 0, nl.w, nl.band),
                glyph_pixels(name)
            );
        }
        assert!(text_width(&label, 1) < l.width());
    }

    #[test]
    fn font_table_is_well_formed() {
        for (k, (c, rows)) in FONT.iter().enumerate() {
            assert!(rows.iter().all(|r| *r < 32), "{c}: more than 5 columns");
            assert!(!FONT[k + 1..].iter().any(|(d, _)| d == c), "{c} twice");
        }
        for c in "INPUTOUTPUTDIFFERENCEXYZ=-.0123456789MLRAPSI".chars() {
            assert!(FONT.iter().any(|(g, _)| *g == c), "{c} missing");
        }
        assert_eq!(glyph('z'), glyph('Z'));
        assert_eq!(glyph('~'), glyph('?'));
    }
}
