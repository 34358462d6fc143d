//! bgshell: durable background shell tasks for Node.js and Bun harnesses.
//!
//! bindings (N-API surface) -> manager (lifecycle, events) -> store (bundles, index) and
//! launcher (supervisor per task) -> watcher pieces (proc, fileevents, watch). Everything
//! OS-specific is behind the platform seam, the `bgshell_sys` crate (crates/bgshell-sys); what
//! the supervisor shares with us (protocol, fsutil, process identity) is the `bgshell_common`
//! crate (crates/bgshell-common), whose modules are named here as our own.

mod bindings;
mod error;
mod fileevents;
mod keys;
mod launcher;
mod lifecycle;
mod manager;
mod output;
mod proc;
mod store;
mod sync;
mod watch;

use bgshell_common::{fsutil, protocol};
