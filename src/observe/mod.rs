//! What the proxy measures and how it is shown: latency histograms and counters cheap enough
//! for the hot path ([`histogram`], [`stats`]), the Prometheus endpoint ([`metrics`]), SQL
//! normalization for logs ([`normalize`]).

pub mod histogram;
pub mod metrics;
pub mod normalize;
pub mod report;
pub mod slowlog;
pub mod stats;
