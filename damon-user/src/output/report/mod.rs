//! Reports over records: the access table, heatmaps (ASCII, PNG, SVG), and the working-set size
//! and region-count distributions.

pub mod access;
pub mod distribution;
pub mod heatmap;
pub mod picture;
