//! Reads a sorted series in z-slabs: only the slices of the current slab (plus the overlap shared
//! with the previous one) are in memory, whatever the length of the series.

use std::collections::VecDeque;

use super::{decode, SliceHeader, VolumeError};

/// One decoded range of slices in HU, `[z][y][x]` contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Slab {
    /// First slice index (in sorted order).
    pub z0: usize,
    pub depth: usize,
    pub rows: usize,
    pub columns: usize,
    pub hu: Vec<f32>,
}

/// Reads slices of a sorted series on demand, caching the ones a following slab re-reads.
pub struct SlabReader {
    slices: Vec<SliceHeader>,
    rows: usize,
    columns: usize,
    cache: VecDeque<(usize, Vec<f32>)>,
    frames: decode::FrameReader,
}

impl SlabReader {
    pub fn new(slices: Vec<SliceHeader>, rows: usize, columns: usize) -> Self {
        Self {
            slices,
            rows,
            columns,
            cache: VecDeque::new(),
            frames: decode::FrameReader::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    pub fn headers(&self) -> &[SliceHeader] {
        &self.slices
    }

    /// Slices `z0 .. z0 + depth`. Ranges must move forward (z0 never decreases).
    pub fn read(&mut self, z0: usize, depth: usize) -> Result<Slab, VolumeError> {
        while self.cache.front().is_some_and(|(z, _)| *z < z0) {
            self.cache.pop_front();
        }
        let plane = self.rows * self.columns;
        let mut hu = Vec::with_capacity(plane * depth);
        for z in z0..z0 + depth {
            if let Some((_, data)) = self.cache.iter().find(|(cz, _)| *cz == z) {
                hu.extend_from_slice(data);
                continue;
            }
            let h = self.slices.get(z).ok_or_else(|| VolumeError::SliceIndex {
                index: z,
                slices: self.slices.len(),
            })?;
            let data = self.frames.read(h)?;
            hu.extend_from_slice(&data);
            self.cache.push_back((z, data));
        }
        Ok(Slab {
            z0,
            depth,
            rows: self.rows,
            columns: self.columns,
            hu,
        })
    }
}
