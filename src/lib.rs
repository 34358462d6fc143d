//! bgshell: durable background shell tasks for Node.js and Bun harnesses.
//!
//! bindings (N-API surface) -> manager (lifecycle, events) -> store (bundles, index) and
//! launcher (supervisor per task) -> watcher pieces (proc, fileevents, watch). Everything
//! OS-specific is behind the platform seam, the `bgshell_sys` crate (crates/bgshell-sys).

mod bindings;
mod error;
mod fileevents;
// Shared with the supervisor binary, which uses parts this library does not.
#[allow(dead_code)]
mod fsutil;
mod keys;
mod launcher;
mod lifecycle;
mod manager;
mod output;
mod proc;
#[allow(dead_code)]
mod protocol;
mod store;
mod sync;
mod watch;
