//! Process facts and exit notification on the manager side: pidfds on the runtime (no polling,
//! no SIGCHLD handler to fight libuv or Bun over), /proc start times against pid reuse.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// What /proc/PID/stat says of a process: the one parser of that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: u8,
    pub ppid: u32,
    pub pgrp: i32,
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces and parentheses: count from the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
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
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut boot = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if hz <= 0 || unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) } != 0 {
        return None;
    }
    let since_boot_ms = boot.tv_sec as u64 * 1000 + boot.tv_nsec as u64 / 1_000_000;
    let started_ms_after_boot = ticks.saturating_mul(1000) / hz as u64;
    Some(crate::fsutil::unix_millis().saturating_sub(since_boot_ms.saturating_sub(started_ms_after_boot)))
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
            None => ticks_to_unix_ms(stat.start_ticks).is_some_and(|at| {
                at <= self.started_at_ms + STARTED_AFTER_SLACK_MS && at + STARTED_BEFORE_SLACK_MS >= self.started_at_ms
            }),
        }
    }

    /// The process is alive (a zombie counts as gone) and is the one recorded.
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.state != b'Z' && self.matches(&s))
    }
}

/// True when `pid` is alive and is the process that was started (same start time). A zombie
/// counts as gone. Without a start time, only liveness is known: used for our own children.
pub fn is_same_process(pid: u32, ticks: Option<u64>) -> bool {
    stat(pid).is_some_and(|s| s.state != b'Z' && ticks.is_none_or(|t| s.start_ticks == t))
}

fn own_group() -> i32 {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    unsafe { libc::getpgrp() }
}

/// The process group a task's process leads, when that is proven: the process is alive and is
/// the recorded one, and `pgid` is its group now. Never init's group, never our own, never
/// pid/pgid ≤ 1, never this process.
pub fn proven_group(leader: &Identity, pgid: Option<i32>) -> Option<i32> {
    let pgid = pgid.filter(|g| *g > 1 && *g != own_group())?;
    if leader.pid == std::process::id() {
        return None;
    }
    let st = stat(leader.pid)?;
    (st.state != b'Z' && leader.matches(&st) && st.pgrp == pgid).then_some(pgid)
}

/// The group of a task whose leader was proven before and has since exited: while no process
/// holds the leader's pid, the group id cannot have been given to anyone else (a group's id is
/// its creator's pid, not reused while the group has members), so what is left of it is the
/// task's. A pid held by another process now means the number was reused: nothing then.
pub fn group_after_leader(leader: &Identity, pgid: Option<i32>) -> Option<i32> {
    if let Some(g) = proven_group(leader, pgid) {
        return Some(g);
    }
    let pgid = pgid.filter(|g| *g > 1 && *g != own_group() && *g as u32 == leader.pid)?;
    match stat(leader.pid) {
        None => Some(pgid),
        Some(st) if st.state == b'Z' && leader.matches(&st) => Some(pgid),
        Some(_) => None,
    }
}

/// Sends `signal` to a proven group. ESRCH (already gone) is not an error.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 || pgid == own_group() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal process group ≤ 1 or our own"));
    }
    // SAFETY: sending a signal has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Signals one proven process (not its group), through a pidfd so that the pid cannot be
/// reused between the check and the signal. For a task whose group is not proven.
pub fn signal_process(id: &Identity, signal: i32) -> io::Result<()> {
    if id.pid == std::process::id() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal this process"));
    }
    let fd = pidfd_open(id.pid)?;
    if !id.is_alive() {
        return Ok(());
    }
    // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, std::os::fd::AsRawFd::as_raw_fd(&fd), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The command a live supervisor started: its child that leads its own group (the task).
pub fn task_of_supervisor(supervisor: &Identity) -> Option<(u32, Stat)> {
    if !supervisor.is_alive() {
        return None;
    }
    children_of(supervisor.pid).into_iter().find_map(|pid| stat(pid).filter(|s| s.pgrp == pid as i32 && s.state != b'Z').map(|s| (pid, s)))
}

pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open returns a new descriptor that we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Resolves when the process behind `pidfd` has exited. Readiness comes from the runtime's
/// epoll; nothing ticks.
pub async fn exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: the AsyncFd owns `pidfd`, so the descriptor stays open and the same for as long as
    // it is registered.
    let afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// Waits for `pid` to exit: by pidfd where the OS has one; else (non-Linux) by a slow check,
/// the only option there without being its parent.
pub async fn wait_gone(pid: u32, ticks: Option<u64>) {
    match pidfd_open(pid) {
        Ok(fd) => {
            // Opened after the check below would race; check identity once the fd pins the pid.
            if is_same_process(pid, ticks) || cfg!(not(target_os = "linux")) {
                let _ = exited(fd).await;
            }
        }
        Err(_) => {
            while is_alive(pid) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until the recorded process is gone (at once when it is not, or is not the recorded one).
pub async fn wait_identity_gone(id: &Identity) {
    match pidfd_open(id.pid) {
        // The pidfd pins the pid: checked after opening, the identity cannot change under us.
        Ok(fd) if id.is_alive() => {
            let _ = exited(fd).await;
        }
        Ok(_) => {}
        Err(_) => {
            while id.is_alive() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits for our own child to exit, then reaps it so no zombie is left behind.
pub async fn reap_child(pid: u32) {
    wait_gone(pid, None).await;
    reap(pid);
}

fn is_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Reaps our own child `pid` if it has exited; never blocks.
pub fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid we spawned.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

/// The supervisor of `task_id`, found by its command line (`--id <task_id>`): for a `starting`
/// record written without the supervisor's identity (older versions). Its start time must still
/// match the task's start (see `Identity`) before anything is done with it.
pub fn find_supervisor(task_id: &str, started_at_ms: u64) -> Option<Identity> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_supervisor = args.first().is_some_and(|a| a.ends_with(b"bgshell-supervisor"));
        if is_supervisor && args.windows(2).any(|w| w[0] == b"--id" && w[1] == task_id.as_bytes()) {
            let id = Identity { pid, start_ticks: None, started_at_ms };
            if id.is_alive() {
                return Some(Identity { start_ticks: start_ticks(pid), ..id });
            }
        }
    }
    None
}

/// Children of `parent` (by the ppid field of /proc/PID/stat).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}
