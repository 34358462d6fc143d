//! The output cap, head + tail (API.md "Output cap"): past `cap` bytes a task's output file keeps
//! its first half-cap and its latest half-cap. The bytes in between are deallocated in place by
//! punching a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the file's logical size keeps growing
//! with the output, so every kept byte keeps its offset, while its blocks stay near the cap. The
//! hole is the record of what was dropped: readers find it with SEEK_DATA/SEEK_HOLE. Nothing is
//! copied. The hole is aligned to the filesystem's blocks, so exactly the hole reads as dropped
//! (what is kept may exceed each half by up to one block).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// How long a task runs before its output files are watched. The watch (an inotify instance and
/// a mark on each file) was a good part of a short task's supervisor CPU (issue #15: 0.07-0.5 ms
/// of 0.6-1.4 ms, calm to loaded machine), and most short commands end sooner: they are brought
/// within the cap at their end. A task that runs on has its files checked when the watch starts,
/// so what it wrote meanwhile is cut then; after that the cap follows the writer as it always did.
pub const WATCH_AFTER: Duration = Duration::from_millis(20);

/// Keeps a task's output files (our own fd 1 and 2, which the command inherited) within `cap`
/// bytes each: their first and latest half-cap.
pub struct OutputCap {
    cap: u64,
    files: Vec<(File, Capped)>,
    /// Wakes us when a file is written; without one (none could be made, or not yet started)
    /// the cap is applied when the task ends.
    watcher: Option<bgshell_sys::FileWatcher>,
    /// When the watch is due to start; `None` once it has, or with no cap.
    watch_at: Option<Instant>,
}

impl OutputCap {
    pub fn new(cap: u64) -> OutputCap {
        let mut files = Vec::new();
        if cap > 0 {
            for out in [1, 2] {
                // Our own stdout/stderr (the task's files); a stream that is not open has no cap.
                let Ok(dup) = super::dup_cloexec(out) else { continue };
                files.push((File::from(dup), Capped::default()));
            }
        }
        let watch_at = (!files.is_empty()).then(|| Instant::now() + WATCH_AFTER);
        OutputCap { cap, files, watcher: None, watch_at }
    }

    /// Starts the watch once it is due; says how long until it is.
    pub fn tick(&mut self) -> Option<Duration> {
        let at = self.watch_at?;
        let left = at.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Some(left);
        }
        self.watch_at = None;
        self.watcher = bgshell_sys::FileWatcher::new().ok();
        if let Some(w) = &self.watcher {
            for (file, _) in &self.files {
                // A file that cannot be watched is still capped when the task ends.
                let _ = w.watch_file(file.as_fd(), bgshell_sys::FileChange::Modified);
            }
        }
        // What was written before the watch existed: no event will tell of it.
        self.enforce();
        None
    }

    pub fn fd(&self) -> Option<i32> {
        self.watcher.as_ref().map(|w| w.as_raw_fd())
    }

    pub fn enforce(&mut self) {
        if let Some(w) = &self.watcher {
            // Drain what is pending: the sizes are checked below whatever it said.
            while w.read(|_| {}).is_ok() {}
        }
        for (f, state) in &mut self.files {
            enforce(f, self.cap, state);
        }
    }
}

/// Per-file state of the cap.
#[derive(Debug, Default)]
pub struct Capped {
    /// The hole reaches up to here already.
    punched_to: u64,
    /// The filesystem cannot punch holes: fall back to keeping the first `cap` bytes.
    unsupported: bool,
}

/// The range to punch in a file of `size` bytes with blocks of `blk`, if any: `[start, end)`,
/// both multiples of `blk`, leaving at least `cap / 2` bytes before and `cap - cap / 2` after.
pub fn hole_for(size: u64, cap: u64, blk: u64) -> Option<(u64, u64)> {
    if cap == 0 || size <= cap {
        return None;
    }
    let blk = blk.max(1);
    let head = cap / 2;
    let start = head.div_ceil(blk) * blk;
    let end = (size - (cap - head)) / blk * blk;
    (end > start).then_some((start, end))
}

/// Brings `file` back within the cap. Cheap when nothing new is to be dropped (one fstat).
pub fn enforce(file: &File, cap: u64, state: &mut Capped) {
    if cap == 0 {
        return;
    }
    let Ok(md) = file.metadata() else { return };
    if md.len() <= cap {
        return;
    }
    if state.unsupported {
        let _ = file.set_len(cap);
        return;
    }
    let Some((start, end)) = hole_for(md.len(), cap, md.blksize()) else { return };
    let from = start.max(state.punched_to);
    if end <= from {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: fallocate on our own descriptor; only deallocates the given byte range.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (end - from) as libc::off_t,
            )
        };
        if r == 0 {
            state.punched_to = end;
            return;
        }
        let err = std::io::Error::last_os_error().raw_os_error();
        if !matches!(err, Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
            return; // transient (EINTR, ENOSPC for metadata): tried again at the next write
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (from, file.as_raw_fd());
    state.unsupported = true;
    let _ = file.set_len(cap);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_leaves_half_cap_each_side() {
        assert_eq!(hole_for(100, 100, 4), None);
        assert_eq!(hole_for(10_000, 1000, 1), Some((500, 9500)));
        let (s, e) = hole_for(1 << 20, 64 << 10, 4096).unwrap();
        assert_eq!((s % 4096, e % 4096), (0, 0));
        assert!(s >= 32 << 10 && (1 << 20) - e >= 32 << 10);
        assert!(s < (32 << 10) + 4096 && (1 << 20) - e < (32 << 10) + 4096);
        assert_eq!(hole_for(8000, 1000, 4096), None, "no whole block to drop yet");
        assert_eq!(hole_for(9000, 1000, 4096), Some((4096, 8192)));
    }
}
