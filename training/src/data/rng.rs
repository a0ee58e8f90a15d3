//! The one random generator of the crate: the library's SplitMix64 ([`Rng`], a small, fully
//! specified generator, so runs reproduce across crate versions), with the two draws training
//! needs on top ([`RngExt::below`]) and the per-step seeding ([`step_rng`]). Phantoms, simulated
//! noise, patch positions, image-pool choices and least-squares samples all draw from it.

pub use crate::lib_bridge::Rng;

/// Draws [`Rng`] lacks.
pub trait RngExt {
    /// Uniform in `0..n` (`n > 0`; 0 is treated as 1).
    fn below(&mut self, n: usize) -> usize;
}

impl RngExt for Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The generator for `step` of a run seeded with `seed` (the constants are SplitMix64's and the
/// 64-bit golden ratio, so neighbouring steps and seeds get unrelated streams).
pub fn step_rng(seed: u64, step: u64) -> Rng {
    let state =
        (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut s = Rng::new(state);
    s.next_u64();
    s
}
