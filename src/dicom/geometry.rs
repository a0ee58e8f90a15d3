//! Slice sorting and geometry checks. Slices are ordered by ImagePositionPatient projected on the
//! normal of ImageOrientationPatient (never by InstanceNumber or file name), then the series must
//! have one orientation, one matrix size, one pixel spacing, and uniform gaps (no missing slices).
//! Gantry tilt (slice origins drifting in-plane from one slice to the next) is measured and reported.

use super::{SliceHeader, VolumeError};

/// The validated grid of a series, in sorted slice order.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub rows: usize,
    pub columns: usize,
    /// (row spacing, column spacing) in mm.
    pub pixel_spacing: [f64; 2],
    /// Row direction cosines then column direction cosines.
    pub orientation: [f64; 6],
    /// Unit normal (row × column).
    pub normal: [f64; 3],
    /// ImagePositionPatient of every slice, in sorted order.
    pub positions: Vec<[f64; 3]>,
    /// Median distance between consecutive slices along the normal (mm).
    pub spacing: f64,
    /// Angle between the slice-to-slice step and the normal (degrees); 0 for an untilted series.
    pub tilt_degrees: f64,
}

impl Geometry {
    pub fn slices(&self) -> usize {
        self.positions.len()
    }
}

/// Tolerances and bounds for [`sort_and_check`] (`[volume]` of the configuration).
#[derive(Debug, Clone, Copy)]
pub struct GeometryLimits {
    pub spacing_tolerance: f64,
    pub max_tilt_degrees: f64,
    /// Largest Rows or Columns: every reader after the check allocates Rows x Columns x 4 bytes
    /// per slice (dicom-rs's decoders before they read a byte of an encapsulated frame), so a
    /// 1 KB file declaring 65535 x 65535 cost 17 GB (found by fuzzing, `series_file`).
    pub max_matrix: u16,
}

impl Default for GeometryLimits {
    /// The shipped defaults (`config/ct-harmonizer.toml` [volume]).
    fn default() -> Self {
        GeometryLimits {
            spacing_tolerance: 0.1,
            max_tilt_degrees: 30.0,
            max_matrix: 2048,
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Positions farther than this from the patient origin (mm) are not a CT's.
const MAX_POSITION_MM: f64 = 1.0e6;
/// Pixel spacing and slice thickness above this (mm) are not a CT's.
const MAX_SPACING_MM: f64 = 1.0e3;

/// What makes slice `s`'s numbers unusable, if anything: a decimal string may hold "NaN", "inf" or
/// 1e300, which dicom-rs parses; unchecked, they went on into the derived series as invalid DS
/// values ("NaN", a 600-character position), a zero pixel spacing, or pixels that all became NaN
/// (a NaN or zero RescaleSlope), i.e. a mangled series that looked harmonized.
fn implausible_numbers(s: &SliceHeader, position: [f64; 3], spacing: [f64; 2]) -> Option<String> {
    let within = |v: f64, max: f64| v.is_finite() && v.abs() <= max;
    if !position.iter().all(|&v| within(v, MAX_POSITION_MM)) {
        return Some(format!(
            "ImagePositionPatient {position:?} of {} is not a position (finite, within {MAX_POSITION_MM} mm)",
            s.label()
        ));
    }
    if !spacing
        .iter()
        .all(|&v| within(v, MAX_SPACING_MM) && v > 0.0)
    {
        return Some(format!(
            "PixelSpacing {spacing:?} of {} is not a spacing (positive, at most {MAX_SPACING_MM} mm)",
            s.label()
        ));
    }
    if let Some(t) = s.slice_thickness {
        if !(within(t, MAX_SPACING_MM) && t >= 0.0) {
            return Some(format!(
                "SliceThickness {t} of {} is not a thickness (0 to {MAX_SPACING_MM} mm)",
                s.label()
            ));
        }
    }
    if !(s.rescale_slope.is_finite() && s.rescale_slope != 0.0 && s.rescale_intercept.is_finite()) {
        return Some(format!(
            "RescaleSlope {} / RescaleIntercept {} of {} do not map stored values to HU (finite, slope not 0)",
            s.rescale_slope,
            s.rescale_intercept,
            s.label()
        ));
    }
    None
}

/// Sorts `slices` in place along the slice normal and validates the grid.
pub fn sort_and_check(
    series_uid: &str,
    slices: &mut [SliceHeader],
    limits: GeometryLimits,
) -> Result<Geometry, VolumeError> {
    let fail = |reason: String| VolumeError::Geometry {
        series_uid: series_uid.to_string(),
        reason,
    };
    if slices.len() < 2 {
        return Err(fail(format!(
            "has {} slice(s); a volume needs at least 2",
            slices.len()
        )));
    }
    let first = &slices[0];
    let missing = |s: &SliceHeader, tag: &str| VolumeError::MissingTag {
        path: s.path.clone(),
        tag: tag.to_string(),
    };
    let orientation = first
        .image_orientation
        .ok_or_else(|| missing(first, "ImageOrientationPatient"))?;
    let pixel_spacing = first
        .pixel_spacing
        .ok_or_else(|| missing(first, "PixelSpacing"))?;
    let (rows, columns) = match (first.rows, first.columns) {
        (Some(r), Some(c)) if r > 0 && c > 0 => (r, c),
        _ => return Err(missing(first, "Rows/Columns")),
    };
    if rows > limits.max_matrix || columns > limits.max_matrix {
        return Err(fail(format!(
            "matrix {rows}x{columns} of {} is larger than volume.max_matrix = {}",
            first.label(),
            limits.max_matrix
        )));
    }
    let row_dir = [orientation[0], orientation[1], orientation[2]];
    let col_dir = [orientation[3], orientation[4], orientation[5]];
    let n = cross(row_dir, col_dir);
    let n_len = norm(n);
    if !(0.99..1.01).contains(&norm(row_dir))
        || !(0.99..1.01).contains(&norm(col_dir))
        || dot(row_dir, col_dir).abs() > 0.01
        || n_len < 0.99
    {
        return Err(fail(format!(
            "ImageOrientationPatient {orientation:?} in {} is not two orthonormal directions",
            first.label()
        )));
    }
    let normal = [n[0] / n_len, n[1] / n_len, n[2] / n_len];
    for s in slices.iter() {
        let o = s
            .image_orientation
            .ok_or_else(|| missing(s, "ImageOrientationPatient"))?;
        if o.iter()
            .zip(&orientation)
            .any(|(a, b)| (a - b).abs() > 1e-3)
        {
            return Err(fail(format!(
                "mixed orientations: {} has {o:?}, {} has {orientation:?}",
                s.label(),
                first.label()
            )));
        }
        if s.rows != Some(rows) || s.columns != Some(columns) {
            return Err(fail(format!(
                "mixed matrix sizes: {} is {}x{}, {} is {rows}x{columns}",
                s.label(),
                s.rows.unwrap_or(0),
                s.columns.unwrap_or(0),
                first.label()
            )));
        }
        let ps = s.pixel_spacing.ok_or_else(|| missing(s, "PixelSpacing"))?;
        if ps
            .iter()
            .zip(&pixel_spacing)
            .any(|(a, b)| (a - b).abs() > 1e-3)
        {
            return Err(fail(format!(
                "mixed pixel spacing: {} has {ps:?}, {} has {pixel_spacing:?}",
                s.label(),
                first.label()
            )));
        }
        let p = s
            .image_position
            .ok_or_else(|| missing(s, "ImagePositionPatient"))?;
        if let Some(reason) = implausible_numbers(s, p, ps) {
            return Err(fail(reason));
        }
    }
    let pos = |s: &SliceHeader| s.image_position.unwrap_or([0.0; 3]);
    slices.sort_by(|a, b| dot(pos(a), normal).total_cmp(&dot(pos(b), normal)));
    let positions: Vec<[f64; 3]> = slices.iter().map(pos).collect();
    let gaps: Vec<f64> = positions
        .windows(2)
        .map(|w| dot(sub(w[1], w[0]), normal))
        .collect();
    for (i, g) in gaps.iter().enumerate() {
        if *g < 1e-3 {
            return Err(fail(format!(
                "{} and {} are at the same position along the slice normal",
                slices[i].label(),
                slices[i + 1].label()
            )));
        }
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let spacing = sorted[sorted.len() / 2];
    for (i, g) in gaps.iter().enumerate() {
        if (g - spacing).abs() > limits.spacing_tolerance * spacing {
            let missing_slices = (g / spacing).round() as i64 - 1;
            return Err(fail(format!(
                "gap of {g:.3} mm between {} and {} where the series spacing is {spacing:.3} mm{}",
                slices[i].label(),
                slices[i + 1].label(),
                if missing_slices > 0 {
                    format!(" ({missing_slices} slice(s) missing)")
                } else {
                    " (non-uniform spacing)".to_string()
                }
            )));
        }
    }
    // Tilt: angle between the overall step (first to last origin) and the normal.
    let span = sub(positions[positions.len() - 1], positions[0]);
    let along = dot(span, normal);
    let tilt_degrees = (norm(span).max(1e-12).recip() * along)
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    if tilt_degrees > limits.max_tilt_degrees {
        return Err(fail(format!(
            "gantry tilt of {tilt_degrees:.2} degrees is above the configured limit of {:.2}",
            limits.max_tilt_degrees
        )));
    }
    Ok(Geometry {
        rows: usize::from(rows),
        columns: usize::from(columns),
        pixel_spacing,
        orientation,
        normal,
        positions,
        spacing,
        tilt_degrees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GeometryLimits = GeometryLimits {
        spacing_tolerance: 0.1,
        max_tilt_degrees: 30.0,
        max_matrix: 4096,
    };

    fn slice(i: usize, pos: [f64; 3], iop: [f64; 6]) -> SliceHeader {
        SliceHeader {
            sop_instance_uid: format!("1.2.3.{i}"),
            instance_number: Some(i as i64),
            image_position: Some(pos),
            image_orientation: Some(iop),
            pixel_spacing: Some([0.5, 0.5]),
            slice_thickness: Some(1.0),
            ..SliceHeader::test_slice(&format!("f{i}.dcm"), crate::dicom::header::CT_IMAGE_STORAGE)
        }
    }

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    #[test]
    fn sorts_by_position_not_instance_number() {
        // Instance numbers run against z, files shuffled.
        let mut s: Vec<_> = [3usize, 0, 2, 1]
            .iter()
            .map(|&k| slice(10 - k, [0.0, 0.0, -(k as f64) * 2.0], AXIAL))
            .collect();
        let g = sort_and_check("1.2.3", &mut s, LIMITS).unwrap();
        let z: Vec<f64> = g.positions.iter().map(|p| p[2]).collect();
        assert_eq!(z, vec![-6.0, -4.0, -2.0, 0.0]);
        assert!((g.spacing - 2.0).abs() < 1e-9);
        assert!(g.tilt_degrees < 1e-6);
    }

    #[test]
    fn oblique_orientation_sorts_along_normal() {
        let c = std::f64::consts::FRAC_1_SQRT_2;
        // Row along x, column along (0, c, -c): normal = (0, c, c).
        let iop = [1.0, 0.0, 0.0, 0.0, c, -c];
        let mut s: Vec<_> = [2.0, 0.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &k)| slice(i, [5.0, k * c, k * c], iop))
            .collect();
        let g = sort_and_check("1.2.3", &mut s, LIMITS).unwrap();
        assert!((g.spacing - 1.0).abs() < 1e-9);
        assert_eq!(g.positions[0], [5.0, 0.0, 0.0]);
    }

    #[test]
    fn gap_is_an_error_naming_the_files() {
        let mut s: Vec<_> = [0.0, 1.0, 2.0, 4.0, 5.0]
            .iter()
            .enumerate()
            .map(|(i, &z)| slice(i, [0.0, 0.0, z], AXIAL))
            .collect();
        let e = sort_and_check("1.2.3", &mut s, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1.2.3") && e.contains("f2.dcm") && e.contains("1 slice(s) missing"),
            "{e}"
        );
    }

    /// Numbers a decimal string can hold but a CT cannot (found by feeding such series to
    /// `process`: each came out as a "harmonized" series with NaN in its DS values, a zero pixel
    /// spacing or every pixel lost): refused, naming the attribute, the value and the file.
    #[test]
    fn implausible_numbers_are_refused() {
        let nan = f64::NAN;
        type Edit = Box<dyn Fn(&mut SliceHeader)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "ImagePositionPatient [NaN",
                Box::new(move |h| h.image_position = Some([nan, 0.0, 0.0])),
            ),
            (
                "ImagePositionPatient [1e300",
                Box::new(|h| h.image_position = Some([1e300, 0.0, 0.0])),
            ),
            (
                "PixelSpacing [NaN",
                Box::new(move |h| h.pixel_spacing = Some([nan, nan])),
            ),
            (
                "PixelSpacing [0.0",
                Box::new(|h| h.pixel_spacing = Some([0.0, 0.0])),
            ),
            (
                "PixelSpacing [-1.0",
                Box::new(|h| h.pixel_spacing = Some([-1.0, -1.0])),
            ),
            (
                "PixelSpacing [1e300",
                Box::new(|h| h.pixel_spacing = Some([1e300, 1e300])),
            ),
            (
                "SliceThickness NaN",
                Box::new(move |h| h.slice_thickness = Some(nan)),
            ),
            (
                "SliceThickness -2",
                Box::new(|h| h.slice_thickness = Some(-2.0)),
            ),
            ("RescaleSlope NaN", Box::new(move |h| h.rescale_slope = nan)),
            (
                "RescaleSlope inf",
                Box::new(|h| h.rescale_slope = f64::INFINITY),
            ),
            ("RescaleSlope 0", Box::new(|h| h.rescale_slope = 0.0)),
            (
                "RescaleIntercept NaN",
                Box::new(move |h| h.rescale_intercept = nan),
            ),
        ];
        for (want, edit) in edits {
            let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
            // Same spacing on both, so that only the number itself can be refused.
            for h in &mut s {
                edit(h);
            }
            let e = sort_and_check("1.2.3", &mut s, LIMITS)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // 0 thickness and a negative slope are numbers a CT may carry.
        let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
        for h in &mut s {
            h.slice_thickness = Some(0.0);
            h.rescale_slope = -1.0;
        }
        sort_and_check("1.2.3", &mut s, LIMITS).unwrap();
    }

    /// A declared matrix beyond `max_matrix` is refused before anything allocates it; at the limit
    /// it passes.
    #[test]
    fn a_matrix_beyond_the_limit_is_refused() {
        for (rows, columns) in [(65535, 65535), (4097, 512), (512, 4097)] {
            let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
            for h in &mut s {
                h.rows = Some(rows);
                h.columns = Some(columns);
            }
            let e = sort_and_check("1.2.3", &mut s, LIMITS)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("matrix {rows}x{columns}"))
                    && e.contains("volume.max_matrix = 4096")
                    && e.contains("1.2.3"),
                "{e}"
            );
        }
        let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
        for h in &mut s {
            h.rows = Some(4096);
            h.columns = Some(4096);
        }
        sort_and_check("1.2.3", &mut s, LIMITS).unwrap();
    }

    #[test]
    fn mixed_sizes_single_slice_and_missing_tags() {
        let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
        s[1].rows = Some(8);
        let e = sort_and_check("1.2.3", &mut s, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mixed matrix sizes"), "{e}");

        let mut one = vec![slice(0, [0.0; 3], AXIAL)];
        let e = sort_and_check("1.2.3", &mut one, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2"), "{e}");

        let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
        s[1].image_position = None;
        let e = sort_and_check("1.2.3", &mut s, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f1.dcm") && e.contains("ImagePositionPatient"),
            "{e}"
        );

        let mut s = vec![slice(0, [0.0; 3], AXIAL), slice(1, [0.0, 0.0, 1.0], AXIAL)];
        s[0].pixel_spacing = None;
        let e = sort_and_check("1.2.3", &mut s, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f0.dcm") && e.contains("PixelSpacing"), "{e}");
    }

    #[test]
    fn tilt_is_measured() {
        // Each slice's origin moves 1 mm in y per 1 mm in z: a 45-degree shear.
        let mut s: Vec<_> = (0..4)
            .map(|i| slice(i, [0.0, i as f64 * 0.2, i as f64], AXIAL))
            .collect();
        let g = sort_and_check("1.2.3", &mut s, LIMITS).unwrap();
        assert!((g.tilt_degrees - 0.2f64.atan().to_degrees()).abs() < 1e-6);
        let mut s: Vec<_> = (0..4)
            .map(|i| slice(i, [0.0, i as f64, i as f64], AXIAL))
            .collect();
        let e = sort_and_check("1.2.3", &mut s, LIMITS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gantry tilt"), "{e}");
    }
}
