//! What the proxy measures and how it is shown: latency histograms and counters cheap enough
//! for the hot path ([`histogram`], [`stats`]), the Prometheus endpoint ([`metrics`]), SQL
//! normalization for logs ([`normalize`]), the live status page ([`status`]).
//!
//! May import: [`crate::upstream`] (the pools it reports on), [`crate::server`] (pool stats),
//! [`crate::budget`] (its state), [`crate::config`], [`crate::logging`]. Never [`crate::client`],
//! [`crate::admin`], [`crate::shared`] or [`crate::proxy`].

pub mod histogram;
pub mod metrics;
pub mod normalize;
pub mod report;
pub mod slowlog;
pub mod stats;
pub mod status;
