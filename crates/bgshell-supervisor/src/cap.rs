//! The output cap, head + tail (API.md "Output cap"): past `cap` bytes a task's output file keeps
//! its first half-cap and its latest half-cap. The bytes in between are deallocated in place by
//! punching a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the file's logical size keeps growing
//! with the output, so every kept byte keeps its offset, while its blocks stay near the cap. The
//! hole is the record of what was dropped: readers find it with SEEK_DATA/SEEK_HOLE. Nothing is
//! copied. The hole is aligned to the filesystem's blocks, so exactly the hole reads as dropped
//! (what is kept may exceed each half by up to one block).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

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
