//! Tiling with overlap, keeping only each tile's valid core (as MEGAN stitches, seed 001): a tile's
//! output within `margin` voxels of a tile face that is not also a volume face is discarded, and the
//! cores partition the volume exactly. For a model whose receptive-field radius is at most the margin,
//! the stitched result equals a single whole-volume pass (no seams, no blending weights to tune).

/// One tile along one axis, in input voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisTile {
    /// First input voxel the tile reads.
    pub start: usize,
    /// Input voxels the tile reads.
    pub len: usize,
    /// Input-voxel range whose output this tile owns.
    pub core_start: usize,
    pub core_end: usize,
}

/// Errors planning tiles.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TilingError {
    #[error("tile size {tile} leaves no valid core with a margin of {margin} on each side")]
    NoCore { tile: usize, margin: usize },
}

/// Tiles covering `0..n` with tiles of `tile` voxels whose cores keep `margin` voxels away from
/// interior tile faces. A tile never exceeds the volume; the last tile is shifted back to end at `n`.
pub fn axis_tiles(n: usize, tile: usize, margin: usize) -> Result<Vec<AxisTile>, TilingError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if tile >= n {
        return Ok(vec![AxisTile {
            start: 0,
            len: n,
            core_start: 0,
            core_end: n,
        }]);
    }
    if tile <= 2 * margin {
        return Err(TilingError::NoCore { tile, margin });
    }
    let mut tiles = Vec::new();
    let mut core_start: usize = 0;
    loop {
        let start = core_start.saturating_sub(margin);
        if start + tile >= n {
            tiles.push(AxisTile {
                start: n - tile,
                len: tile,
                core_start,
                core_end: n,
            });
            return Ok(tiles);
        }
        let core_end = start + tile - margin;
        tiles.push(AxisTile {
            start,
            len: tile,
            core_start,
            core_end,
        });
        core_start = core_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(n: usize, tile: usize, margin: usize) {
        let tiles = axis_tiles(n, tile, margin).unwrap();
        let mut next = 0;
        for t in &tiles {
            assert_eq!(t.core_start, next, "cores must be contiguous: {tiles:?}");
            assert!(t.core_start < t.core_end);
            assert!(t.start + t.len <= n);
            assert!(t.start <= t.core_start && t.core_end <= t.start + t.len);
            if t.start > 0 {
                assert!(t.core_start - t.start >= margin, "{tiles:?}");
            }
            if t.start + t.len < n {
                assert!(t.start + t.len - t.core_end >= margin, "{tiles:?}");
            }
            next = t.core_end;
        }
        assert_eq!(next, n);
    }

    #[test]
    fn cores_partition_the_axis_and_respect_margins() {
        for n in 1..80 {
            for tile in [1, 5, 8, 16, 33] {
                for margin in [0, 1, 3] {
                    if tile > 2 * margin || tile >= n {
                        check(n, tile, margin);
                    }
                }
            }
        }
    }

    #[test]
    fn too_small_tile_is_an_error() {
        assert_eq!(
            axis_tiles(100, 6, 3),
            Err(TilingError::NoCore { tile: 6, margin: 3 })
        );
    }
}
