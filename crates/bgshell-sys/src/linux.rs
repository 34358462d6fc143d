//! The seam on Linux: /proc for process facts and scans, pidfd for exits and signals, inotify
//! for file changes, /proc/self/fd/N for paths relative to a directory descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::{FileChange, ProcessStat, WatchId};

/// Parses /proc/PID/stat: the one parser of that file.
pub fn process_stat(pid: u32) -> Option<ProcessStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcessStat> {
    // The command name in field 2 may contain spaces and parentheses: count from the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(ProcessStat {
        zombie: *fields.first()?.as_bytes().first()? == b'Z',
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Start ticks count CLK_TCK per second from boot (CLOCK_BOOTTIME, which includes suspend).
pub fn start_ticks_to_unix_ms(ticks: u64) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut boot = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if hz <= 0 || unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) } != 0 {
        return None;
    }
    let since_boot_ms = boot.tv_sec as u64 * 1000 + boot.tv_nsec as u64 / 1_000_000;
    let started_ms_after_boot = ticks.saturating_mul(1000) / hz as u64;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    Some(now_ms.saturating_sub(since_boot_ms.saturating_sub(started_ms_after_boot)))
}

pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())).collect()
}

/// By the ppid field of every process's stat.
pub fn children_of(parent: u32) -> Vec<u32> {
    all_pids().into_iter().filter(|pid| process_stat(*pid).is_some_and(|s| s.ppid == parent)).collect()
}

/// /proc/PID/cmdline: the arguments, each ended by a NUL.
pub fn process_args(pid: u32) -> Option<Vec<Vec<u8>>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let body = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
    Some(body.split(|b| *b == 0).map(<[u8]>::to_vec).collect())
}

/// A pidfd.
#[derive(Debug)]
pub struct ProcessHandle(OwnedFd);

impl ProcessHandle {
    pub fn open(pid: u32) -> io::Result<ProcessHandle> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open returns a new descriptor that we own, or -1. Its descriptors are
        // close-on-exec.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(ProcessHandle(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An inotify instance.
#[derive(Debug)]
pub struct FileWatcher(OwnedFd);

fn mask(change: FileChange) -> u32 {
    match change {
        FileChange::Modified => libc::IN_MODIFY,
        FileChange::Appeared => libc::IN_CREATE | libc::IN_MOVED_TO,
    }
}

impl FileWatcher {
    pub fn new() -> io::Result<FileWatcher> {
        // SAFETY: inotify_init1 returns a new descriptor that we own, or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        Ok(FileWatcher(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    fn add_watch(&self, path: &Path, mask: u32) -> io::Result<WatchId> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid C string and our own inotify descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WatchId(wd))
    }

    pub fn watch_path(&self, path: &Path, change: FileChange) -> io::Result<WatchId> {
        // IN_MASK_ADD: a second watch of the same file keeps the events the first asked for.
        self.add_watch(path, mask(change) | libc::IN_DONT_FOLLOW | libc::IN_MASK_ADD)
    }

    pub fn watch_file(&self, file: BorrowedFd<'_>, change: FileChange) -> io::Result<WatchId> {
        // The magic link /proc/self/fd/N is followed to the open file itself.
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        self.add_watch(&path, mask(change) | libc::IN_MASK_ADD)
    }

    pub fn unwatch(&self, id: WatchId) -> io::Result<()> {
        // SAFETY: removing a watch from our own descriptor.
        if unsafe { libc::inotify_rm_watch(self.0.as_raw_fd(), id.0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn read(&self, mut changed: impl FnMut(WatchId)) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        // SAFETY: reading into our own buffer, within its length, from our own descriptor.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut off = 0usize;
        while off + header <= n as usize {
            // SAFETY: the kernel wrote whole events within the `n` bytes read; read_unaligned
            // copes with the buffer's alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
            changed(WatchId(ev.wd));
            off += header + ev.len as usize;
        }
        Ok(())
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The path of `name` inside the open directory `dir`, through /proc/self/fd: short whatever
/// the directory's own path is.
fn path_in(dir: BorrowedFd<'_>, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

pub fn bind_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<UnixListener> {
    UnixListener::bind(path_in(dir, name))
}

pub fn connect_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<UnixStream> {
    UnixStream::connect(path_in(dir, name))
}

pub fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; the caller owns none of them as Rust objects.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last as libc::c_uint, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that live across the call; renameat2 reads them only.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_counts_fields_from_the_last_parenthesis() {
        let text = "42 (a) (b) c) Z 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        let st = parse_stat(text).unwrap();
        assert_eq!(st, ProcessStat { zombie: true, ppid: 7, pgrp: 42, start_ticks: 123456 });
        assert!(parse_stat("42 (no end").is_none());
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let st = process_stat(me).unwrap();
        assert!(!st.zombie);
        // SAFETY: getppid/getpgrp have no preconditions.
        assert_eq!(st.ppid, unsafe { libc::getppid() } as u32);
        assert_eq!(st.pgrp, unsafe { libc::getpgrp() });
        let started = start_ticks_to_unix_ms(st.start_ticks).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(started <= now + 1000 && started + 3_600_000 > now, "started {started}, now {now}");
        assert!(all_pids().contains(&me));
        assert!(children_of(st.ppid).contains(&me));
        assert!(!process_args(me).unwrap().is_empty());
    }

    #[test]
    fn process_handle_signals_and_becomes_readable() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let handle = ProcessHandle::open(child.id()).unwrap();
        handle.signal(libc::SIGKILL).unwrap();
        let mut p = libc::pollfd { fd: handle.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1);
        child.wait().unwrap();
        assert_eq!(handle.signal(0).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn watcher_reports_writes_and_new_entries() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("bgshell-sys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = FileWatcher::new().unwrap();
        assert_eq!(w.read(|_| {}).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let appeared = w.watch_path(&dir, FileChange::Appeared).unwrap();
        let mut f = std::fs::File::create(dir.join("a")).unwrap();
        let modified = w.watch_file(f.as_fd(), FileChange::Modified).unwrap();
        f.write_all(b"x").unwrap();
        let mut seen = Vec::new();
        w.read(|id| seen.push(id)).unwrap();
        assert!(seen.contains(&appeared) && seen.contains(&modified), "{seen:?}");
        w.unwatch(modified).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
