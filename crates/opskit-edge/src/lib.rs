//! The ipo.com nginx edge of spec §2.
//!
//! - [`render`]: settings + target nginx version → one complete `nginx.conf` (pure).
//! - [`check`]: `nginx -t` of a rendered config in a scratch prefix; any warning fails.
//! - [`probe`]: checks a live server against every behaviour of spec §2 (drives `curl`).
//! - [`apply`]: the deploy plan: backup → write → `nginx -t` → reload → quick probe → probe,
//!   rolled back by the engine when any step fails; [`diff`] shows what it would change.
//!
//! The real edge the tests and the drill run against (nginx, php-fpm, a bot upstream) is the
//! lab's `nginx` component (`opskit-lab`).

#![warn(missing_docs)]

pub mod apply;
pub mod check;
pub mod diff;
pub mod probe;

pub mod render;
