//! Reading what a task printed: exit-aware previews for completions. Reads only the bytes it
//! shows (seek + bounded read), so a 1 GiB log costs the same as a 1 KiB one.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::store::{Mode, TaskPaths, TaskRecord};

/// On success an agent needs to see how it ended: a short tail.
pub const SUCCESS_TAIL_BYTES: u64 = 600;
/// On failure the command's context is at the start and the error at the end.
pub const FAILURE_HEAD_BYTES: u64 = 512;
pub const FAILURE_TAIL_BYTES: u64 = 1792;

#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub text: String,
    pub truncated: bool,
}

/// The files that make up a task's output, in reading order (stdout then stderr).
fn streams(rec: &TaskRecord, paths: &TaskPaths) -> Vec<PathBuf> {
    match rec.mode {
        Mode::Pipes => vec![paths.stdout.clone(), paths.stderr.clone()],
        Mode::Pty => vec![paths.pty.clone()],
    }
}

fn len(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Reads `count` bytes at `offset` of the concatenation of `files` (whose sizes are `sizes`).
fn read_concat(files: &[PathBuf], sizes: &[u64], mut offset: u64, mut count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize);
    for (file, &size) in files.iter().zip(sizes) {
        if count == 0 {
            break;
        }
        if offset >= size {
            offset -= size;
            continue;
        }
        let take = (size - offset).min(count);
        if let Ok(mut f) = crate::fsutil::open_nofollow(file) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::with_capacity(take as usize);
                let _ = (&mut f).take(take).read_to_end(&mut buf);
                out.extend_from_slice(&buf);
            }
        }
        count -= take;
        offset = 0;
    }
    out
}

/// Decodes bytes cut out of a larger stream: a character split at either edge is dropped
/// rather than shown as garbage; other invalid bytes become U+FFFD.
pub fn decode_cut(bytes: &[u8], cut_start: bool, cut_end: bool) -> String {
    let mut start = 0;
    if cut_start {
        // Skip continuation bytes (10xxxxxx) of a character that began before the cut.
        while start < bytes.len().min(3) && bytes[start] & 0xC0 == 0x80 {
            start += 1;
        }
    }
    let mut end = bytes.len();
    if cut_end {
        // Drop an incomplete trailing sequence.
        let mut i = end;
        while i > start && end - i < 4 {
            i -= 1;
            let b = bytes[i];
            if b & 0xC0 != 0x80 {
                let need = if b >= 0xF0 { 4 } else if b >= 0xE0 { 3 } else if b >= 0xC0 { 2 } else { 1 };
                if end - i < need {
                    end = i;
                }
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

/// The preview that goes with a completion: a short tail on success; head and a longer tail on
/// failure, with a line saying how much was left out and where the full output is.
pub fn preview(rec: &TaskRecord, paths: &TaskPaths) -> Preview {
    let files = streams(rec, paths);
    let sizes: Vec<u64> = files.iter().map(|f| len(f)).collect();
    let total: u64 = sizes.iter().sum();
    let success = rec.exit_code == Some(0);
    let where_ = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    if success {
        if total <= SUCCESS_TAIL_BYTES {
            return Preview { text: decode_cut(&read_concat(&files, &sizes, 0, total), false, false), truncated: false };
        }
        let tail = read_concat(&files, &sizes, total - SUCCESS_TAIL_BYTES, SUCCESS_TAIL_BYTES);
        let omitted = total - SUCCESS_TAIL_BYTES;
        let text = format!("[... {omitted} earlier bytes omitted; full output: {where_}]\n{}", decode_cut(&tail, true, false));
        return Preview { text, truncated: true };
    }
    if total <= FAILURE_HEAD_BYTES + FAILURE_TAIL_BYTES {
        return Preview { text: decode_cut(&read_concat(&files, &sizes, 0, total), false, false), truncated: false };
    }
    let head = read_concat(&files, &sizes, 0, FAILURE_HEAD_BYTES);
    let tail = read_concat(&files, &sizes, total - FAILURE_TAIL_BYTES, FAILURE_TAIL_BYTES);
    let omitted = total - FAILURE_HEAD_BYTES - FAILURE_TAIL_BYTES;
    let text = format!(
        "{}\n[... {omitted} bytes omitted; full output: {where_}]\n{}",
        decode_cut(&head, false, true),
        decode_cut(&tail, true, false)
    );
    Preview { text, truncated: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_cut_drops_split_characters() {
        let euro = "€".as_bytes(); // e2 82 ac
        let bytes = [&euro[1..], b"ab", &euro[..2]].concat();
        assert_eq!(decode_cut(&bytes, true, true), "ab");
        assert_eq!(decode_cut(b"a\xffb", false, false), "a\u{fffd}b");
        assert_eq!(decode_cut("x€".as_bytes(), false, true), "x€");
    }

    #[test]
    fn previews() {
        let dir = std::env::temp_dir().join(format!("bgshell-preview-{}", crate::store::ids::new_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = crate::store::paths_in(&dir, "t");
        let mut rec = crate::store::record::sample("t");
        rec.exit_code = Some(0);
        std::fs::write(&paths.stdout, "short\n").unwrap();
        std::fs::write(&paths.stderr, "").unwrap();
        assert_eq!(preview(&rec, &paths), Preview { text: "short\n".into(), truncated: false });

        let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&paths.stdout, &long).unwrap();
        let p = preview(&rec, &paths);
        assert!(p.truncated && p.text.ends_with("line 999\n") && p.text.contains("omitted"));
        assert!(p.text.len() < 800);

        rec.exit_code = Some(1);
        std::fs::write(&paths.stderr, "the error\n").unwrap();
        let p = preview(&rec, &paths);
        assert!(p.truncated && p.text.starts_with("line 0\n") && p.text.ends_with("the error\n"));
        assert!(p.text.contains(&paths.stdout.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
