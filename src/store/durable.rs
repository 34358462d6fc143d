//! The durability policy of FORMAT.md. `Strict`: every write is fsynced, with its directory,
//! before it counts. `Batched` (default): a write counts once it is renamed into place (which
//! survives any process crash); one group commit, on its own thread, fsyncs every file written
//! in a window of at most `WINDOW` and their directories, one pass for all; `flush` (close())
//! waits for it. Nothing on the caller's thread waits for the disk.

use crate::sync::Locked;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::fsutil;

/// The longest a batched write waits for its fsync.
pub const WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Batched,
    Strict,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "batched" => Some(Durability::Batched),
            "strict" => Some(Durability::Strict),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    pending: BTreeSet<PathBuf>,
    /// Writes handed over so far, and how many of them are known synced.
    written: u64,
    synced: u64,
    running: bool,
    flush_now: bool,
}

pub struct Syncer {
    policy: Durability,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Syncer {
    pub fn new(policy: Durability) -> Syncer {
        Syncer { policy, state: Default::default() }
    }

    /// Every write is to be on disk before it counts.
    pub fn strict(&self) -> bool {
        self.policy == Durability::Strict
    }

    /// Runs a write of the store. Strict writes wait for the disk, so they run `off_worker`.
    /// Batched writes never wait for the disk and run as they are.
    pub fn blocking<T>(&self, write: impl FnOnce() -> T) -> T {
        if self.strict() {
            off_worker(write)
        } else {
            write()
        }
    }

    /// A file was just written (renamed into place). Strict: synced now, with its directory.
    pub fn wrote(&self, path: &Path) -> std::io::Result<()> {
        if self.policy == Durability::Strict {
            return fsutil::sync_file_and_dir(path);
        }
        let (lock, _) = &*self.state;
        let mut st = lock.locked();
        st.pending.insert(path.to_path_buf());
        st.written += 1;
        if !st.running {
            st.running = true;
            let state = self.state.clone();
            if std::thread::Builder::new().name("bgshell-fsync".into()).spawn(move || group_commit(&state)).is_err() {
                // No thread: sync here rather than never.
                st.running = false;
                let pending = std::mem::take(&mut st.pending);
                st.synced = st.written;
                drop(st);
                sync_all(&pending);
                return Ok(());
            }
        }
        // No wake-up: the group commit thread takes this write at the end of its window
        // (waking it here would only put it back to sleep, and on a busy machine it would take
        // the CPU from the caller, which is on the way to announcing a task's end).
        Ok(())
    }

    /// Waits until every write handed over so far is fsynced (close()).
    pub fn flush(&self) {
        let (lock, cv) = &*self.state;
        let mut st = lock.locked();
        let target = st.written;
        st.flush_now = true;
        cv.notify_all();
        while st.synced < target && st.running {
            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs work that may wait (an fsync, SQLite) so that no task of the runtime waits behind it: on
/// a runtime worker, the runtime first hands that worker's other tasks to another thread
/// (`block_in_place`). Anywhere else (a blocking thread, the JS thread) it just runs.
pub fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    // block_in_place exists on the multi-thread runtime only (the addon's); off a worker it
    // runs the closure as it is.
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// The group-commit thread: waits for writes, lets a window's worth gather, fsyncs them all
/// (files, then their directories, each once), and ends when nothing is left.
fn group_commit(state: &(Mutex<State>, Condvar)) {
    let (lock, cv) = state;
    loop {
        let mut st = lock.locked();
        if st.pending.is_empty() {
            st.running = false;
            cv.notify_all();
            return;
        }
        if !st.flush_now {
            st = cv.wait_timeout_while(st, WINDOW, |s| !s.flush_now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        st.flush_now = false;
        let pending = std::mem::take(&mut st.pending);
        let upto = st.written;
        drop(st);
        sync_all(&pending);
        let mut st = lock.locked();
        st.synced = st.synced.max(upto);
        cv.notify_all();
    }
}

fn sync_all(files: &BTreeSet<PathBuf>) {
    let mut dirs = BTreeSet::new();
    for f in files {
        // A file replaced or removed since is synced by its own later write, or gone.
        let _ = fsutil::sync_path(f, false);
        if let Some(d) = f.parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    for d in dirs {
        let _ = fsutil::sync_path(&d, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_writes_are_synced_by_flush() {
        let dir = std::env::temp_dir().join(format!("bgshell-durable-{}", crate::store::ids::new_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Syncer::new(Durability::Batched);
        for i in 0..20 {
            let p = dir.join(format!("f{i}"));
            fsutil::atomic_replace(&p, b"x", "t").unwrap();
            s.wrote(&p).unwrap();
        }
        s.flush();
        let st = s.state.0.locked();
        assert_eq!(st.synced, 20);
        assert!(st.pending.is_empty());
        drop(st);
        assert_eq!(Durability::parse("strict"), Some(Durability::Strict));
        assert_eq!(Durability::parse("lazy"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
