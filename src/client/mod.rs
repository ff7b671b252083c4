//! The client side: handshake and authentication ([`handshake`]), the per-client session
//! loop ([`session`]) and the byte relay it runs while a server is attached ([`relay`]).
//!
//! May import: the neutral layers ([`crate::shared`], [`crate::upstream`], [`crate::params`],
//! [`crate::server`], [`crate::prepared`], [`crate::wire`], [`crate::observe`] for counters) and
//! [`crate::admin`] for the console a login may open. Never [`crate::proxy`].

pub mod handshake;
pub mod io;
pub mod relay;
pub mod reuse;
pub mod session;
pub mod timing;
