//! The client side: handshake and authentication ([`handshake`]), the per-client session
//! loop ([`session`]), the byte relay it runs while a server is attached ([`relay`]), and the
//! session settings that follow a client between servers ([`params`]), and its startup settings
//! as PostgreSQL takes them in transaction mode ([`canonical`]).

pub mod canonical;
pub mod handshake;
pub mod io;
pub mod params;
pub mod relay;
pub mod reuse;
pub mod session;
pub mod timing;
