//! Measurements kept by the proxy itself: latency histograms cheap enough for the hot path.

pub mod histogram;
pub mod normalize;
pub mod stats;
