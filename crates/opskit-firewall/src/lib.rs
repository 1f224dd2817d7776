//! The Docker iptables policy of spec §3: three containers, A and B talk, C is alone, the LAN
//! range reaches everything, A:8080 and C:80 are public, and all of it survives reboots.
//!
//! - [`ruleset`]: the policy compiled into `DOCKER-USER` and `OPSKIT-INBOUND` rules (pure).
//! - [`render`]: the rules as `iptables-restore` input and as the spec's plain commands (pure).
//! - [`iptables`]: the adapter (`iptables-restore`, `iptables-save`, a throw-away namespace to
//!   normalise and test rules); [`docker`]: what Docker says about the containers.
//! - [`apply`], [`persist`], [`verify`]: the three plans the engine runs.
//! - [`drift`]: live chains against the policy; [`matrix`] and [`netns`]: the reachability
//!   matrix, probed from inside the network namespaces of the lab.
//!
//! The Docker host the tests and the drill run against (network namespaces with Docker's own
//! rules) is the lab's `firewall` component (`opskit-lab`).

#![warn(missing_docs)]

pub mod apply;
pub mod docker;
pub mod drift;
pub mod iptables;
pub mod matrix;
pub mod netns;
pub mod observe;
pub mod persist;
pub mod render;
pub mod ruleset;
pub mod verify;
