//! A PNG for people: for a few slices, input | output | difference side by side (soft-tissue window
//! for the images, ±100 HU mapped to black..white for the difference).

use std::path::Path;

/// One captured slice: input (resampled to the output grid) and output, in HU.
#[derive(Debug, Clone)]
pub struct PreviewSlice {
    pub index: usize,
    pub rows: usize,
    pub columns: usize,
    pub input: Vec<f32>,
    pub output: Vec<f32>,
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

/// Writes the rows of `slices` (one row each) as a grayscale PNG.
pub fn write_png(path: &Path, slices: &[PreviewSlice]) -> Result<(), PreviewError> {
    let first = slices.first().ok_or(PreviewError::Empty)?;
    let (h, w) = (first.rows, first.columns);
    let gap = 4;
    let width = 3 * w + 2 * gap;
    let height = slices.len() * h + (slices.len() - 1) * gap;
    let mut img = vec![0u8; width * height];
    for (r, s) in slices.iter().enumerate() {
        for y in 0..h.min(s.rows) {
            let row = (r * (h + gap) + y) * width;
            for x in 0..w.min(s.columns) {
                let i = y * s.columns + x;
                img[row + x] = window(s.input[i], 40.0, 400.0);
                img[row + w + gap + x] = window(s.output[i], 40.0, 400.0);
                img[row + 2 * (w + gap) + x] = window(s.output[i] - s.input[i], 0.0, 200.0);
            }
        }
    }
    let err = |reason: String| PreviewError::Write {
        path: path.display().to_string(),
        reason,
    };
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(&img)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        write_png(&p, &[s.clone(), s]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(pick(8), vec![2, 4, 6]);
        assert_eq!(pick(1), vec![0]);
    }
}
