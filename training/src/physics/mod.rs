//! Physics-grade image-quality figures of `ct-train eval` beside PSNR and SSIM (issue 11, item 3):
//! what a CT physicist measures when two reconstructions are said to be "the same kernel".
//!
//! - [`roi`]: fixed regions of interest taken from the **target** of each case (no phantom geometry
//!   needed): uniform soft-tissue squares and uniform lung squares, found on the target smoothed
//!   in-plane, and used unchanged for every method's output; or, for the realistic phantoms, the
//!   regions and squares of their quality-control inserts ([`insert_rois`]: water, lung foam).
//! - [`nps`]: ROI noise standard deviation and the 2-D noise power spectrum, radially averaged
//!   (ICRU Report 87, 2012, §4; Boedeker, Cooper & McNitt-Gray, Phys. Med. Biol. 52:4027, 2007;
//!   Dolly et al., J. Appl. Clin. Med. Phys. 17(3), 2016), its peak and mean frequency and its
//!   distance to the target's.
//! - [`mtf`]: the modulation transfer function from a circular edge (a rod), by the oversampled
//!   edge-spread function (the edge method of IEC 62220-1 / Samei, Flynn & Reimann, Med. Phys.
//!   25:102, 1998, on the circular edge of Richard et al., Med. Phys. 39:4115, 2012), and MTF50.
//! - [`texture`]: first-order and GLCM radiomic features with the IBSI definitions (Zwanenburg et
//!   al., Radiology 295:328, 2020; the IBSI reference manual, arXiv:1612.07003).
//! - [`stats`]: Lin's concordance correlation coefficient, Bland–Altman bias and limits of
//!   agreement, percentiles (Perc15).
//!
//! The lung density figures (emphysema index LAA-950, Perc15) use the lung mask of
//! [`crate::metrics::lung_mask`].

pub mod mtf;
pub mod nps;
pub mod roi;
pub mod stats;
pub mod texture;

pub use mtf::{mtf50, mtf_circular_edge, mtf_rod_insert, MtfCurve};
pub use nps::{ensemble_residual, nps_radial, region_noise_std, roi_noise_std, NpsCurve};
pub use roi::{
    find_rois, insert_rois, Cylinder, InsertClass, InsertRois, Inserts, Roi, RoiError, RoiSet,
};
pub use stats::{bland_altman, ccc, percentile, BlandAltman};
pub use texture::{features, FEATURE_NAMES};
