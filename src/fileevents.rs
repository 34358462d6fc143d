//! "This file grew": one inotify instance per manager, read on the runtime, waking the task that
//! owns the file. Watches scan new output when it arrives, with no tick.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

pub struct FileEvents {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor -> who to wake. One path may have several subscribers (several adopted
    /// tasks of one session directory); the kernel gives them one descriptor.
    subscribers: Mutex<HashMap<i32, Vec<(u64, Arc<Notify>)>>>,
    next: std::sync::atomic::AtomicU64,
    /// The reader task; `stop` ends it, so the descriptor closes with the last holder.
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

/// One subscriber's hold on a watched path; give it back with `unsubscribe`.
#[derive(Debug)]
pub struct Subscription {
    wd: i32,
    token: u64,
}

/// Events worth waking for: the file was written; a file was created or renamed into a directory.
pub const MODIFIED: u32 = 0x2; // IN_MODIFY
pub const APPEARED: u32 = 0x100 | 0x80; // IN_CREATE | IN_MOVED_TO

impl FileEvents {
    /// Must be called on the runtime: it starts the reader task. Linux only (inotify); other
    /// systems get an error and watches fall back to a slow check.
    #[cfg(not(target_os = "linux"))]
    pub fn start() -> io::Result<Arc<FileEvents>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    #[cfg(target_os = "linux")]
    pub fn start() -> io::Result<Arc<FileEvents>> {
        // SAFETY: inotify_init1 returns a new descriptor that we own, or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        let me = Arc::new(FileEvents { fd, subscribers: Mutex::new(HashMap::new()), next: Default::default(), reader: Mutex::new(None) });
        let weak = Arc::downgrade(&me);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let Some(me) = weak.upgrade() else { return };
                let Ok(mut guard) = me.fd.readable().await else { return };
                // SAFETY: reading into our own buffer from our own descriptor.
                let n = unsafe { libc::read(me.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                        guard.clear_ready();
                        continue;
                    }
                    return;
                }
                let mut off = 0usize;
                let header = std::mem::size_of::<libc::inotify_event>();
                while off + header <= n as usize {
                    // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                    let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                    if let Some(list) = me.subscribers.lock().unwrap().get(&ev.wd) {
                        for (_, n) in list {
                            n.notify_one();
                        }
                    }
                    off += header + ev.len as usize;
                }
            }
        });
        if let Ok(mut r) = me.reader.lock() {
            *r = Some(reader.abort_handle());
        }
        Ok(me)
    }

    /// Stops reading events (the manager closes): the inotify descriptor is released once the
    /// last holder lets go.
    pub fn stop(&self) {
        if let Some(r) = self.reader.lock().ok().and_then(|mut r| r.take()) {
            r.abort();
        }
    }

    /// Wakes `notify` on `events` (MODIFIED, APPEARED) at `path`.
    #[cfg(target_os = "linux")]
    pub fn subscribe(&self, path: &Path, events: u32, notify: Arc<Notify>) -> io::Result<Subscription> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // IN_MASK_ADD: another subscriber of the same path keeps the events it asked for.
        let mask = events | libc::IN_DONT_FOLLOW | libc::IN_MASK_ADD;
        // SAFETY: valid C string and our own inotify descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.subscribers.lock().unwrap().entry(wd).or_default().push((token, notify));
        Ok(Subscription { wd, token })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn subscribe(&self, _path: &Path, _events: u32, _notify: Arc<Notify>) -> io::Result<Subscription> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub fn unsubscribe(&self, sub: Subscription) {
        let mut subs = self.subscribers.lock().unwrap();
        let Some(list) = subs.get_mut(&sub.wd) else { return };
        list.retain(|(t, _)| *t != sub.token);
        if list.is_empty() {
            subs.remove(&sub.wd);
            #[cfg(target_os = "linux")]
            // SAFETY: removing a watch from our own descriptor; nobody else uses it any more.
            unsafe {
                libc::inotify_rm_watch(self.fd.get_ref().as_raw_fd(), sub.wd)
            };
        }
    }
}
