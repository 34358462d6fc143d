//! Process facts and exit notification on the manager side: pidfds on the runtime (no polling,
//! no SIGCHLD handler to fight libuv or Bun over), /proc start times against pid reuse.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces and parentheses: count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// This process's start time, read once.
pub fn own_start_ticks() -> Option<u64> {
    static TICKS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| start_ticks(std::process::id()))
}

/// True when `pid` is alive and is the process that was started (same start time). A zombie
/// counts as gone.
pub fn is_same_process(pid: u32, ticks: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return false };
    if rest.starts_with("Z ") {
        return false;
    }
    match ticks {
        Some(t) => rest.split(' ').nth(19).and_then(|f| f.parse::<u64>().ok()) == Some(t),
        None => true,
    }
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

/// Sends `signal` to process group `pgid`. ESRCH (already gone) is not an error.
pub fn killpg(pgid: i32, signal: i32) -> io::Result<()> {
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

/// The supervisor of `task_id`, found by its command line (`--id <task_id>`). Used only for a
/// `starting` record whose manager died mid-spawn: no pid was recorded, but a process may run.
pub fn find_supervisor(task_id: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_supervisor = args.first().is_some_and(|a| a.ends_with(b"bgshell-supervisor"));
        if is_supervisor && args.windows(2).any(|w| w[0] == b"--id" && w[1] == task_id.as_bytes()) {
            return Some(pid);
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
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rfind(')').and_then(|i| stat.get(i + 2..)).and_then(|rest| rest.split(' ').nth(1)?.parse::<u32>().ok()))
                == Some(parent)
        })
        .collect()
}
