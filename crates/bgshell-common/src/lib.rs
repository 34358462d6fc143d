//! What the bgshell addon and `bgshell-supervisor` share, each rule written once: the line
//! protocol between them ([`protocol`]), private files written atomically and the exit marker
//! ([`fsutil`]), and which process a record means and which group may be signalled ([`proc`]).
//! std + libc + the platform seam (`bgshell_sys`) only: no async runtime, no N-API, so the
//! supervisor stays small. The addon's waits on its runtime are in its own `src/proc.rs`.

pub mod fsutil;
pub mod proc;
pub mod protocol;

/// The supervisor binary's file name: the addon finds it beside its `.node` and recognises a
/// running supervisor by it.
pub const SUPERVISOR_NAME: &str = "bgshell-supervisor";
