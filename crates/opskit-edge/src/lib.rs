//! The ipo.com nginx edge of spec §2.
//!
//! - [`render`]: settings + target nginx version → one complete `nginx.conf` (pure).
//! - [`check`]: `nginx -t` of a rendered config in a scratch prefix; any warning fails.
//! - [`probe`]: checks a live server against every behaviour of spec §2 (drives `curl`).
//! - [`apply`]: the deploy plan: backup → write → `nginx -t` → reload → probe, rolled back by
//!   the engine when any step fails.
//! - [`rig`]: starts a real nginx + php-fpm + bot upstream with fixtures in one directory, for
//!   the lab and the tests.

#![warn(missing_docs)]

pub mod apply;
pub mod check;
pub mod probe;

pub mod render;
pub mod rig;
