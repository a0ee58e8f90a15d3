//! Loading one volume: a DICOM series folder (sorted, checked and decoded by the daemon's own
//! volume code), a NIfTI file or an InVesalius `.inv3` project.

use super::nifti;
use super::{DataError, Volume};
use crate::lib_bridge::{
    group_series, read_inv3, scan, sort_and_check, GeometryLimits, SlabReader,
};
use std::path::Path;

/// Loads a volume: a folder holding one DICOM series, a `.nii` / `.nii.gz` file, or an InVesalius
/// `.inv3` project.
pub fn load_volume(path: &Path) -> Result<Volume, DataError> {
    if path.is_dir() {
        let mut all = load_dicom_series(path)?;
        return match all.len() {
            1 => Ok(all.remove(0)),
            n => Err(DataError::Source {
                path: path.to_owned(),
                reason: format!("holds {n} DICOM series; point at a folder with exactly one"),
            }),
        };
    }
    if nifti::is_nifti_name(path) {
        let v = nifti::read(path)?;
        return Ok(Volume::new(
            path.display().to_string(),
            v.shape,
            v.spacing,
            v.data,
        ));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("inv3"))
    {
        let v = read_inv3(path)?;
        return Ok(Volume::new(
            path.display().to_string(),
            v.shape,
            v.spacing,
            v.hu.iter().map(|&x| f32::from(x)).collect(),
        ));
    }
    if !path.exists() {
        return Err(DataError::Source {
            path: path.to_owned(),
            reason: "no such file or folder".into(),
        });
    }
    Err(DataError::Source {
        path: path.to_owned(),
        reason: "not a DICOM series folder, a .nii / .nii.gz file or an .inv3 project".into(),
    })
}

/// Loads every DICOM series under `dir` (recursively), sorted and checked by the daemon's geometry
/// code and decoded to HU slab by slab. Series are returned in (study, series) UID order.
pub fn load_dicom_series(dir: &Path) -> Result<Vec<Volume>, DataError> {
    let found = scan(&[dir.to_owned()]).map_err(|source| DataError::Ingest {
        path: dir.to_owned(),
        source,
    })?;
    if let Some(e) = found.rejected.into_iter().next() {
        return Err(DataError::Volume {
            path: dir.to_owned(),
            source: e,
        });
    }
    let groups = group_series(found.images);
    if groups.is_empty() {
        return Err(DataError::Source {
            path: dir.to_owned(),
            reason: "no DICOM images found".into(),
        });
    }
    // The daemon's shipped defaults (`config/ct-harmonizer.toml` [volume]).
    let limits = GeometryLimits::default();
    let mut out = Vec::with_capacity(groups.len());
    for mut s in groups {
        let verr = |source| DataError::Volume {
            path: dir.to_owned(),
            source,
        };
        let g = sort_and_check(&s.series_uid, &mut s.slices, limits).map_err(verr)?;
        let n = g.slices();
        let mut reader = SlabReader::new(s.slices, g.rows, g.columns);
        let mut hu = Vec::with_capacity(n * g.rows * g.columns);
        // Slices decoded at a time: bounds the decoder's memory only, the volume is the same.
        const SLAB: usize = 16;
        let mut z0 = 0;
        while z0 < n {
            let depth = SLAB.min(n - z0);
            hu.extend_from_slice(&reader.read(z0, depth).map_err(verr)?.hu);
            z0 += depth;
        }
        out.push(Volume::new(
            format!("{} (series {})", dir.display(), s.series_uid),
            [n, g.rows, g.columns],
            [g.spacing, g.pixel_spacing[0], g.pixel_spacing[1]],
            hu,
        ));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::lib_bridge::SeriesSpec;

    #[test]
    fn loads_dicom_and_nifti() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SeriesSpec::axial("data-test", 6, 5, 3, [2.0, 0.7, 0.6]);
        spec.write(&dir.path().join("dcm"), |z| {
            (0..30).map(|i| (z * 100 + i) as f32 - 50.0).collect()
        })
        .unwrap();
        let v = load_volume(&dir.path().join("dcm")).unwrap();
        assert_eq!(v.shape, [3, 6, 5]);
        assert!((v.spacing[0] - 2.0).abs() < 1e-9 && (v.spacing[2] - 0.6).abs() < 1e-9);
        // Sorted along the normal: z runs head to feet, sorted ascending in position, so the first
        // sorted slice is the last written one.
        let firsts: Vec<f32> = (0..3).map(|z| v.slice(z)[0]).collect();
        assert!(
            firsts == [150.0, 50.0, -50.0] || firsts == [-50.0, 50.0, 150.0],
            "{firsts:?}"
        );
        let nii = dir.path().join("v.nii.gz");
        nifti::write(&nii, v.shape, v.spacing, &v.values, nifti::WriteType::Int16).unwrap();
        let w = load_volume(&nii).unwrap();
        assert_eq!((w.shape, &w.values), (v.shape, &v.values));
        assert!(load_volume(&dir.path().join("nothing")).is_err());
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "x").unwrap();
        assert!(load_volume(&txt).unwrap_err().to_string().contains("a.txt"));
        let c = v.crop([1, 2, 1], [2, 2, 3]);
        assert_eq!(c.values[0], v.values[v.idx(1, 2, 1)]);
        assert_eq!(c.values.len(), 12);
    }
}
