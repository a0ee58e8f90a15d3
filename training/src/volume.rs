//! The one volume type of the crate: a `[z][y][x]` block of `f32` with its voxel size, in HU as
//! loaded or simulated, or in model units once mapped through a [`crate::config::HuWindow`]. It sits below
//! every module that handles volumes (`resample`, `metrics`, `data`, `eval`), so none of them
//! imports another for it.

use crate::config::HuWindow;

/// A volume, `[z][y][x]` contiguous, with its voxel size (z, y, x) in mm. Its values are HU as
/// loaded or simulated, or model units ([-1, 1]) once mapped by [`Volume::to_model_units`].
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Where it came from (file, folder or generator), for messages.
    pub name: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub values: Vec<f32>,
}

impl Volume {
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        spacing: [f64; 3],
        values: Vec<f32>,
    ) -> Self {
        Self {
            name: name.into(),
            shape,
            spacing,
            values,
        }
    }

    /// A volume of unit spacing whose value at (z, y, x) is `f(z, y, x)` (synthetic test volumes).
    pub fn from_fn(
        name: impl Into<String>,
        shape: [usize; 3],
        f: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let [d, h, w] = shape;
        let values = (0..d * h * w)
            .map(|i| f(i / (h * w), (i / w) % h, i % w))
            .collect();
        Self::new(name, shape, [1.0, 1.0, 1.0], values)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Index of voxel (z, y, x).
    pub fn idx(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.shape[1] + y) * self.shape[2] + x
    }

    /// Axial slice `z` (rows × columns).
    pub fn slice(&self, z: usize) -> &[f32] {
        let plane = self.shape[1] * self.shape[2];
        &self.values[z * plane..(z + 1) * plane]
    }

    /// The sub-volume starting at `origin` of size `size` (must lie inside).
    pub fn crop(&self, origin: [usize; 3], size: [usize; 3]) -> Volume {
        let mut values = Vec::with_capacity(size.iter().product());
        for z in origin[0]..origin[0] + size[0] {
            for y in origin[1]..origin[1] + size[1] {
                let i = self.idx(z, y, origin[2]);
                values.extend_from_slice(&self.values[i..i + size[2]]);
            }
        }
        Volume::new(self.name.clone(), size, self.spacing, values)
    }

    /// The same volume in model units: every HU value through `window` ([`HuWindow::to_unit`]).
    pub fn to_model_units(&self, window: HuWindow) -> Volume {
        Volume::new(
            self.name.clone(),
            self.shape,
            self.spacing,
            self.values.iter().map(|&h| window.to_unit(h)).collect(),
        )
    }
}
