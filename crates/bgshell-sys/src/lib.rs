//! bgshell's platform seam: everything the addon and `bgshell-supervisor` need from the OS that
//! POSIX does not give in one portable form. std + libc only, so the supervisor (no async
//! runtime, a `poll` loop) and the addon (tokio) share it.
//!
//! This file is the interface; `linux.rs` implements it. A port to another OS writes
//! `<os>.rs` with the same items and adds it below. For macOS: `proc_pidinfo`
//! (`PROC_PIDTBSDINFO`) for process facts and start times, `proc_listchildpids` and
//! `sysctl(KERN_PROCARGS2)` for the scans, a kqueue with `EVFILT_PROC`/`NOTE_EXIT` for
//! [`ProcessHandle`] and one with `EVFILT_VNODE` for [`FileWatcher`] (a kqueue descriptor is
//! itself pollable, which is all the callers ask of a handle).
//!
//! The contract, in short:
//! - **Process facts** ([`process_stat`]): parent, group, zombie or not, and a start time that
//!   tells two processes with the same pid apart. The start time is an opaque number in the OS's
//!   own unit (clock ticks since boot on Linux); it is stored in records, compared for equality,
//!   and turned into wall-clock time only by [`start_ticks_to_unix_ms`].
//! - **Scans**: [`children_of`], [`all_pids`], [`process_args`].
//! - **Exit notification** ([`ProcessHandle`]): a descriptor that becomes readable once the
//!   process has exited (zombie or reaped), and signals that reach that process and no other.
//! - **File-change notification** ([`FileWatcher`]): one descriptor that becomes readable when a
//!   watched file is written or an entry appears in a watched directory.
//! - **Descriptors and sockets**: [`close_range`], and Unix sockets addressed by a directory
//!   descriptor plus a name ([`bind_in`], [`connect_in`]), so a long store path never meets the
//!   ~104-byte limit of a socket address.
//!
//! What POSIX gives portably ([`killpg`], the fallback of [`close_range`]) is implemented here,
//! once, for every OS. Every call's result is checked; `unsafe` stays in small blocks with a
//! SAFETY note.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bgshell runs on Linux only for now (it needs /proc, pidfd and inotify, or their equivalents). \
     Porting it means writing crates/bgshell-sys/src/<os>.rs: see the README, section Porting."
);

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// What the OS says of a process (alive or a zombie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// Exited but not yet reaped by its parent.
    pub zombie: bool,
    pub ppid: u32,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in the OS's own unit (Linux: clock ticks since boot, field 22 of
    /// /proc/PID/stat). Equal for the same process, different for a later one with its pid.
    pub start_ticks: u64,
}

/// The facts of process `pid`, or None when there is no such process (or they cannot be read).
pub fn process_stat(pid: u32) -> Option<ProcessStat> {
    imp::process_stat(pid)
}

/// When (unix ms) a process with start time `ticks` ([`ProcessStat::start_ticks`]) started.
pub fn start_ticks_to_unix_ms(ticks: u64) -> Option<u64> {
    imp::start_ticks_to_unix_ms(ticks)
}

/// The pids of `parent`'s children (zombies included).
pub fn children_of(parent: u32) -> Vec<u32> {
    imp::children_of(parent)
}

/// Every pid on the system that this process may look at.
pub fn all_pids() -> Vec<u32> {
    imp::all_pids()
}

/// The argument vector `pid` was started with (argv[0] first), or None when it cannot be read.
pub fn process_args(pid: u32) -> Option<Vec<Vec<u8>>> {
    imp::process_args(pid)
}

/// A handle on one process, not necessarily our child: readable (as a descriptor) once the
/// process has exited, and a way to signal it that cannot reach another process that took its
/// pid meanwhile.
#[derive(Debug)]
pub struct ProcessHandle(imp::ProcessHandle);

impl ProcessHandle {
    /// Opens a handle on `pid` (close-on-exec). Check the process's identity after opening: the
    /// handle pins whatever process holds the pid at this moment.
    pub fn open(pid: u32) -> io::Result<ProcessHandle> {
        imp::ProcessHandle::open(pid).map(ProcessHandle)
    }

    /// Sends `signal` to the process; an error (ESRCH) once it has exited.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.0.signal(signal)
    }
}

impl AsFd for ProcessHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for ProcessHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What a [`FileWatcher`] watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// The file was written to.
    Modified,
    /// An entry was created in, or moved into, the directory.
    Appeared,
}

/// Names one watch of a [`FileWatcher`]; the same file watched twice has the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(pub i32);

/// File-change notification: one non-blocking, close-on-exec descriptor, readable while
/// changes are pending; [`FileWatcher::read`] says which watches they belong to.
#[derive(Debug)]
pub struct FileWatcher(imp::FileWatcher);

impl FileWatcher {
    pub fn new() -> io::Result<FileWatcher> {
        imp::FileWatcher::new().map(FileWatcher)
    }

    /// Watches `path` (not followed if it is a symlink) for `change`. Watching a file that is
    /// already watched adds `change` to what it is watched for and returns the same id.
    pub fn watch_path(&self, path: &Path, change: FileChange) -> io::Result<WatchId> {
        self.0.watch_path(path, change)
    }

    /// Watches the open file `file` for `change`, wherever it is linked (or if it is not).
    pub fn watch_file(&self, file: BorrowedFd<'_>, change: FileChange) -> io::Result<WatchId> {
        self.0.watch_file(file, change)
    }

    /// Stops watching: the id is not reported any more.
    pub fn unwatch(&self, id: WatchId) -> io::Result<()> {
        self.0.unwatch(id)
    }

    /// Reads the changes pending now (one read), calling `changed` with each one's watch; a
    /// watch may be reported several times. `WouldBlock` when none is pending.
    pub fn read(&self, changed: impl FnMut(WatchId)) -> io::Result<()> {
        self.0.read(changed)
    }
}

impl AsFd for FileWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for FileWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Binds a Unix socket named `name` in the open directory `dir`.
pub fn bind_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<UnixListener> {
    imp::bind_in(dir, name)
}

/// Connects to the Unix socket named `name` in the open directory `dir`.
pub fn connect_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<UnixStream> {
    imp::connect_in(dir, name)
}

/// Swaps two directory entries of the same filesystem in one atomic step (both must exist):
/// readers of either name see one file or the other, never neither. Unsupported (an error of
/// kind `Unsupported`, or `InvalidInput` from a filesystem without it) where the OS cannot;
/// callers then fall back to a rename.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    imp::exchange(a, b)
}

/// Sends `signal` to process group `pgid`, as is: no refusal rules (the callers have them) and
/// ESRCH is an error like any other.
pub fn killpg(pgid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: sending a signal has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes every descriptor from `first` to `last` (inclusive). Call it only while no Rust
/// object owns one of them (at the start of a process, before any is opened).
pub fn close_range(first: RawFd, last: RawFd) {
    if first > last || imp::close_range(first, last).is_ok() {
        return;
    }
    // The OS could not do it in one call: one descriptor at a time, up to the process's limit.
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(256, 65536) as RawFd;
    for fd in first..=last.min(max) {
        // SAFETY: closing descriptors no Rust object owns (the caller's promise above); EBADF
        // for the ones that are not open is expected and harmless.
        unsafe { libc::close(fd) };
    }
}
