//! Process identity, the one module for it: which process a record means (start times against
//! pid reuse), which group may be signalled and how, and reaping a child with its resource use.
//! The addon's rules and the supervisor's signals and reaping both come from here; the OS facts
//! come from the platform seam (`bgshell_sys`). Waiting for an exit on the addon's runtime is the
//! addon's own (`src/proc.rs`).

use std::io;

use bgshell_sys::ProcessHandle;
pub use bgshell_sys::ProcessStat as Stat;

use crate::protocol::Usage;

pub fn stat(pid: u32) -> Option<Stat> {
    bgshell_sys::process_stat(pid)
}

/// Start time of a process, in the OS's unit (`bgshell_sys::ProcessStat::start_ticks`).
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_ticks)
}

/// This process's start time, read once.
pub fn own_start_ticks() -> Option<u64> {
    static TICKS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| start_ticks(std::process::id()))
}

/// How far from a record's `started_at` a process without a recorded start time may have
/// started and still be taken for the task's (FORMAT.md, process identity): the record is
/// written just before the spawn, so the process starts a little after it; never long before.
pub const STARTED_AFTER_SLACK_MS: u64 = 2_000;
pub const STARTED_BEFORE_SLACK_MS: u64 = 5_000;

/// When (unix ms) a process that started `ticks` after boot started.
pub fn ticks_to_unix_ms(ticks: u64) -> Option<u64> {
    bgshell_sys::start_ticks_to_unix_ms(ticks)
}

/// Who a record says one of a task's processes is. A pid names that process only while its
/// start time matches the recorded one; a record without one (aft) is matched against the
/// task's start (`started_at`) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub started_at_ms: u64,
}

impl Identity {
    pub fn new(pid: Option<u32>, start_ticks: Option<u64>, started_at_ms: u64) -> Option<Identity> {
        pid.filter(|p| *p > 1).map(|pid| Identity { pid, start_ticks, started_at_ms })
    }

    /// Whether a process with this stat is the one recorded.
    pub fn matches(&self, stat: &Stat) -> bool {
        match self.start_ticks {
            Some(t) => stat.start_ticks == t,
            None => ticks_to_unix_ms(stat.start_ticks)
                .is_some_and(|at| at <= self.started_at_ms + STARTED_AFTER_SLACK_MS && at + STARTED_BEFORE_SLACK_MS >= self.started_at_ms),
        }
    }

    /// The process is alive (a zombie counts as gone) and is the one recorded.
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| !s.zombie && self.matches(&s))
    }
}

/// True when `pid` is alive and is the process that was started (same start time). A zombie
/// counts as gone. Without a start time, only liveness is known: used for our own children.
pub fn is_same_process(pid: u32, ticks: Option<u64>) -> bool {
    stat(pid).is_some_and(|s| !s.zombie && ticks.is_none_or(|t| s.start_ticks == t))
}

/// A group id that may ever be signalled: not init's or the kernel's (≤ 1), not our own.
fn signallable(pgid: i32) -> bool {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    pgid > 1 && pgid != unsafe { libc::getpgrp() }
}

/// The process group a task's process leads, when that is proven: the process is alive and is
/// the recorded one, and `pgid` is its group now. Never init's group, never our own, never
/// pid/pgid ≤ 1, never this process.
pub fn proven_group(leader: &Identity, pgid: Option<i32>) -> Option<i32> {
    let pgid = pgid.filter(|g| signallable(*g))?;
    if leader.pid == std::process::id() {
        return None;
    }
    let st = stat(leader.pid)?;
    (!st.zombie && leader.matches(&st) && st.pgrp == pgid).then_some(pgid)
}

/// The group of a task whose leader was proven before and has since exited: while no process
/// holds the leader's pid, the group id cannot have been given to anyone else (a group's id is
/// its creator's pid, not reused while the group has members), so what is left of it is the
/// task's. A pid held by another process now means the number was reused: nothing then.
pub fn group_after_leader(leader: &Identity, pgid: Option<i32>) -> Option<i32> {
    if let Some(g) = proven_group(leader, pgid) {
        return Some(g);
    }
    let pgid = pgid.filter(|g| signallable(*g) && *g as u32 == leader.pid)?;
    match stat(leader.pid) {
        None => Some(pgid),
        Some(st) if st.zombie && leader.matches(&st) => Some(pgid),
        Some(_) => None,
    }
}

/// Sends `signal` to a proven group. ESRCH (already gone) is not an error.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    if !signallable(pgid) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal process group ≤ 1 or our own"));
    }
    match bgshell_sys::killpg(pgid, signal) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(e),
        _ => Ok(()),
    }
}

/// Signals one proven process (not its group), through a process handle so that the pid cannot
/// be reused between the check and the signal. For a task whose group is not proven.
pub fn signal_process(id: &Identity, signal: i32) -> io::Result<()> {
    if id.pid == std::process::id() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal this process"));
    }
    let handle = ProcessHandle::open(id.pid)?;
    if !id.is_alive() {
        return Ok(());
    }
    handle.signal(signal)
}

/// The command a live supervisor started: its child that leads its own group (the task).
pub fn task_of_supervisor(supervisor: &Identity) -> Option<(u32, Stat)> {
    if !supervisor.is_alive() {
        return None;
    }
    bgshell_sys::children_of(supervisor.pid)
        .into_iter()
        .find_map(|pid| stat(pid).filter(|s| s.pgrp == pid as i32 && !s.zombie).map(|s| (pid, s)))
}

/// How a reaped child ended: its wait status and `wait4`'s resource use (its own and that of the
/// descendants it reaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub status: libc::c_int,
    pub usage: Usage,
}

/// Reaps our own child `pid` if it has exited; never blocks. None while it runs (or when it is
/// not our child).
pub fn reap(pid: u32) -> Option<Reaped> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = pid as libc::pid_t;
    // SAFETY: wait4 with WNOHANG on a pid we spawned, with valid out-pointers.
    if unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) } != pid {
        return None;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    // ru_maxrss is in KiB on Linux (bytes on macOS).
    #[cfg(target_os = "macos")]
    let max_rss_kb = ru.ru_maxrss as u64 / 1024;
    #[cfg(not(target_os = "macos"))]
    let max_rss_kb = ru.ru_maxrss as u64;
    Some(Reaped { status, usage: Usage { max_rss_kb, user_ms: ms(ru.ru_utime), system_ms: ms(ru.ru_stime) } })
}

/// The supervisor of `task_id`, found by its command line (`--id <task_id>`): for a `starting`
/// record written without the supervisor's identity (older versions). Its start time must still
/// match the task's start (see `Identity`) before anything is done with it.
pub fn find_supervisor(task_id: &str, started_at_ms: u64) -> Option<Identity> {
    for pid in bgshell_sys::all_pids() {
        let Some(args) = bgshell_sys::process_args(pid) else { continue };
        let is_supervisor = args.first().is_some_and(|a| a.ends_with(crate::SUPERVISOR_NAME.as_bytes()));
        if is_supervisor && args.windows(2).any(|w| w[0] == b"--id" && w[1] == task_id.as_bytes()) {
            let id = Identity { pid, start_ticks: None, started_at_ms };
            if id.is_alive() {
                return Some(Identity { start_ticks: start_ticks(pid), ..id });
            }
        }
    }
    None
}
