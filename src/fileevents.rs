//! "This file grew": one file watcher per manager (`bgshell_sys::FileWatcher`: inotify on
//! Linux), read on the runtime, waking the task that owns the file. Watches scan new output when
//! it arrives, with no tick.

use crate::sync::Locked;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bgshell_sys::{FileChange, FileWatcher, WatchId};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Watch -> who to wake (a token per subscriber, to unsubscribe one).
type Subscribers = HashMap<WatchId, Vec<(u64, Arc<Notify>)>>;

pub struct FileEvents {
    watcher: AsyncFd<FileWatcher>,
    /// Watch -> who to wake. One path may have several subscribers (several adopted tasks of one
    /// session directory); the watcher gives them one watch.
    subscribers: Mutex<Subscribers>,
    next: std::sync::atomic::AtomicU64,
    /// The reader task; `stop` ends it, so the descriptor closes with the last holder.
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

/// One subscriber's hold on a watched path; give it back with `unsubscribe`.
#[derive(Debug)]
pub struct Subscription {
    watch: WatchId,
    token: u64,
}

/// Events worth waking for: the file was written; a file was created or renamed into a directory.
pub const MODIFIED: FileChange = FileChange::Modified;
pub const APPEARED: FileChange = FileChange::Appeared;

impl FileEvents {
    /// Must be called on the runtime: it starts the reader task.
    pub fn start() -> io::Result<Arc<FileEvents>> {
        // SAFETY: the AsyncFd owns the watcher, so its descriptor stays open and the same for as
        // long as it is registered.
        let watcher =
            unsafe { AsyncFd::register_with_interest(FileWatcher::new()?, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        let me =
            Arc::new(FileEvents { watcher, subscribers: Mutex::new(HashMap::new()), next: Default::default(), reader: Mutex::new(None) });
        let weak = Arc::downgrade(&me);
        let reader = tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let Ok(mut guard) = me.watcher.readable().await else { return };
                let read = me.watcher.get_ref().read(|watch| {
                    // Woken outside the lock: a waking task may unsubscribe at once, and waking
                    // can take this thread off the CPU (on 2 cores it did, for over a
                    // millisecond, while the woken task waited for the lock).
                    let woken: Vec<Arc<Notify>> =
                        me.subscribers.locked().get(&watch).map(|list| list.iter().map(|(_, n)| n.clone()).collect()).unwrap_or_default();
                    for n in woken {
                        n.notify_one();
                    }
                });
                match read {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(_) => return,
                }
            }
        });
        if let Ok(mut r) = me.reader.lock() {
            *r = Some(reader.abort_handle());
        }
        Ok(me)
    }

    /// Stops reading events (the manager closes): the watcher's descriptor is released once the
    /// last holder lets go.
    pub fn stop(&self) {
        if let Some(r) = self.reader.lock().ok().and_then(|mut r| r.take()) {
            r.abort();
        }
    }

    /// Wakes `notify` on `change` (MODIFIED, APPEARED) at `path`.
    pub fn subscribe(&self, path: &Path, change: FileChange, notify: Arc<Notify>) -> io::Result<Subscription> {
        // Another subscriber of the same path keeps the changes it asked for.
        let watch = self.watcher.get_ref().watch_path(path, change)?;
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.subscribers.locked().entry(watch).or_default().push((token, notify));
        Ok(Subscription { watch, token })
    }

    pub fn unsubscribe(&self, sub: Subscription) {
        let mut subs = self.subscribers.locked();
        let Some(list) = subs.get_mut(&sub.watch) else { return };
        list.retain(|(t, _)| *t != sub.token);
        if list.is_empty() {
            subs.remove(&sub.watch);
            // Nobody else uses the watch any more; a watch the kernel already dropped (its file
            // was deleted) is not an error worth reporting.
            let _ = self.watcher.get_ref().unwatch(sub.watch);
        }
    }
}
