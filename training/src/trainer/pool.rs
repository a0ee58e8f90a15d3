//! The unpaired image pool (CycleGAN, pool size 50 in MODELS.md §1) and its checkpoint file format:
//! little-endian `u64` count, then per image its 5 dims (`u64`) and its values (`f32`).

use super::{io_err, TrainError};
use crate::data::rng::{Rng, RngExt};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::path::Path;

/// The unpaired image pool (CycleGAN): until full, every fake is stored and returned; then each
/// fake is, with probability 1/2, swapped for a random stored one.
#[derive(Debug, Default)]
pub struct ImagePool<B: Backend> {
    size: usize,
    images: Vec<Tensor<B, 5>>,
}

impl<B: Backend> ImagePool<B> {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            images: Vec::new(),
        }
    }

    pub fn query(&mut self, fake: Tensor<B, 5>, rng: &mut Rng) -> Tensor<B, 5> {
        if self.size == 0 {
            return fake;
        }
        if self.images.len() < self.size {
            self.images.push(fake.clone());
            return fake;
        }
        if rng.uniform() < 0.5 {
            let i = rng.below(self.images.len());
            std::mem::replace(&mut self.images[i], fake)
        } else {
            fake
        }
    }

    /// Stored images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Writes the stored images to `path`: little-endian `u64` count, then per image its 5 dims
    /// (`u64`) and its values (`f32`).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(self.images.len() as u64).to_le_bytes());
        for t in &self.images {
            for d in t.dims() {
                bytes.extend_from_slice(&(d as u64).to_le_bytes());
            }
            let v = t.to_data().convert::<f32>().to_vec::<f32>().map_err(|e| {
                TrainError::Checkpoint {
                    path: path.to_owned(),
                    reason: format!("image pool: {e:?}"),
                }
            })?;
            for x in v {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(path, bytes).map_err(io_err(path))
    }

    /// Reads images written by [`Self::save`] (replacing the stored ones).
    pub fn load(&mut self, path: &Path, device: &B::Device) -> Result<(), TrainError> {
        let bad = |reason: &str| TrainError::Checkpoint {
            path: path.to_owned(),
            reason: format!("image pool: {reason}"),
        };
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let mut at = 0usize;
        let u64_at = |at: &mut usize| -> Result<usize, TrainError> {
            let b = bytes
                .get(*at..*at + 8)
                .ok_or_else(|| bad("truncated file"))?;
            *at += 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(a)).map_err(|_| bad("size out of range"))
        };
        let n = u64_at(&mut at)?;
        if n > self.size {
            return Err(bad(&format!("{n} images for a pool of {}", self.size)));
        }
        let mut images = Vec::with_capacity(n);
        for _ in 0..n {
            let mut dims = [0usize; 5];
            for d in &mut dims {
                *d = u64_at(&mut at)?;
            }
            let len: usize = dims.iter().product();
            let raw = bytes
                .get(at..at + 4 * len)
                .ok_or_else(|| bad("truncated file"))?;
            at += 4 * len;
            let v: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            images.push(Tensor::from_data(TensorData::new(v, dims), device));
        }
        if at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        self.images = images;
        Ok(())
    }
}
