//! Reading what a task printed: exit-aware previews for completions. Reads only the bytes it
//! shows (seek + bounded read), so a 1 GiB log costs the same as a 1 KiB one.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::store::{TaskPaths, TaskRecord};

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
pub fn preview(rec: &TaskRecord, paths: &TaskPaths, cap: u64) -> Preview {
    let files = paths.streams(rec.mode);
    let sizes: Vec<u64> = files.iter().map(|f| len(f)).collect();
    let mut p = preview_of(&files, &sizes, rec.exit_code == Some(0));
    // A stream at its cap had its later output dropped by the supervisor: say so.
    let capped: Vec<String> = files
        .iter()
        .zip(&sizes)
        .filter(|(_, &size)| cap > 0 && size >= cap)
        .map(|(f, _)| f.display().to_string())
        .collect();
    if !capped.is_empty() {
        if !p.text.is_empty() && !p.text.ends_with('\n') {
            p.text.push('\n');
        }
        p.text.push_str(&format!("[output cap of {cap} bytes reached; later output was dropped from {}]", capped.join(", ")));
        p.truncated = true;
    }
    p
}

fn preview_of(files: &[PathBuf], sizes: &[u64], success: bool) -> Preview {
    let total: u64 = sizes.iter().sum();
    let where_ = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    if success {
        if total <= SUCCESS_TAIL_BYTES {
            return Preview { text: decode_cut(&read_concat(files, sizes, 0, total), false, false), truncated: false };
        }
        let tail = read_concat(files, sizes, total - SUCCESS_TAIL_BYTES, SUCCESS_TAIL_BYTES);
        let omitted = total - SUCCESS_TAIL_BYTES;
        let text = format!("[... {omitted} earlier bytes omitted; full output: {where_}]\n{}", decode_cut(&tail, true, false));
        return Preview { text, truncated: true };
    }
    if total <= FAILURE_HEAD_BYTES + FAILURE_TAIL_BYTES {
        return Preview { text: decode_cut(&read_concat(files, sizes, 0, total), false, false), truncated: false };
    }
    let head = read_concat(files, sizes, 0, FAILURE_HEAD_BYTES);
    let tail = read_concat(files, sizes, total - FAILURE_TAIL_BYTES, FAILURE_TAIL_BYTES);
    let omitted = total - FAILURE_HEAD_BYTES - FAILURE_TAIL_BYTES;
    let text = format!(
        "{}\n[... {omitted} bytes omitted; full output: {where_}]\n{}",
        decode_cut(&head, false, true),
        decode_cut(&tail, true, false)
    );
    Preview { text, truncated: true }
}

/// The largest page `readOutput` returns.
pub const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// What `tail` reads at most when counting lines backwards: enough for any sane last lines, and
/// a minified bundle or base64 blob on one line costs no more than this (well under 1 ms).
pub const MAX_TAIL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub data: String,
    pub offset: u64,
    pub next_offset: u64,
    pub eof: bool,
    pub total_bytes: u64,
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence.
fn complete_prefix(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let mut i = n;
    while i > 0 && n - i < 4 {
        i -= 1;
        let b = bytes[i];
        if b & 0xC0 != 0x80 {
            let need = if b >= 0xF0 { 4 } else if b >= 0xE0 { 3 } else if b >= 0xC0 { 2 } else { 1 };
            return if n - i < need { i } else { n };
        }
    }
    n
}

/// One page of a stream. `next_offset` never stops inside a character unless the task has
/// ended (then the stray bytes become U+FFFD). `eof`: everything written so far was read and
/// the task has ended, so nothing more will come.
pub fn read_page(path: &Path, offset: u64, max_bytes: u64, task_ended: bool) -> std::io::Result<Page> {
    let total = match crate::fsutil::open_nofollow(path) {
        Ok(f) => f.metadata()?.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let start = offset.min(total);
    let mut want = max_bytes.min(MAX_PAGE_BYTES).min(total - start);
    if want > 0 && want < 4 {
        // A page always makes progress: a character wider than `max_bytes` is returned whole.
        let head = read_concat(&[path.to_path_buf()], &[total], start, 1);
        let width = head.first().map_or(1, |b| match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        });
        want = want.max(width).min(total - start);
    }
    let bytes = read_concat(&[path.to_path_buf()], &[total], start, want);
    let at_end = start + bytes.len() as u64 >= total;
    let keep = if task_ended && at_end { bytes.len() } else { complete_prefix(&bytes) };
    let next = start + keep as u64;
    Ok(Page {
        data: String::from_utf8_lossy(&bytes[..keep]).into_owned(),
        offset: start,
        next_offset: next,
        eof: task_ended && next >= total,
        total_bytes: total,
    })
}

/// The end of one or more streams (read as one, in order): the last `bytes` bytes, or the last
/// `lines` lines. Seeks from the end, so the cost does not grow with the file.
pub fn tail(files: &[PathBuf], bytes: Option<u64>, lines: Option<u64>) -> (Vec<u8>, bool) {
    let sizes: Vec<u64> = files.iter().map(|f| len(f)).collect();
    let total: u64 = sizes.iter().sum();
    if let Some(lines) = lines {
        // Read backwards in growing chunks until enough newlines are seen.
        let mut chunk = 8 * 1024u64;
        loop {
            let take = chunk.min(total).min(MAX_TAIL_BYTES);
            let buf = read_concat(files, &sizes, total - take, take);
            // A final newline ends the last line; it does not start another one.
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let cut = usize::try_from(lines)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| memchr::memrchr_iter(b'\n', body).nth(n))
                .map(|i| i + 1);
            match cut {
                Some(c) => return (buf[c..].to_vec(), true),
                None if take >= total || take >= MAX_TAIL_BYTES => return (buf, take < total),
                None => chunk *= 4,
            }
        }
    }
    let want = bytes.unwrap_or(4096).min(total).min(MAX_PAGE_BYTES);
    (read_concat(files, &sizes, total - want, want), want < total)
}

/// Removes CSI and OSC escape sequences (and other two-byte escapes) and collapses carriage
/// return redraws, so a progress bar shows only its last state.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' && c != '\u{9b}' {
            out.push(c);
            continue;
        }
        let kind = if c == '\u{9b}' { Some('[') } else { chars.next() };
        match kind {
            Some('[') => {
                // CSI: parameters and intermediates up to a final byte in @..~.
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
            Some(']') | Some('P') | Some('_') | Some('^') => {
                // OSC/DCS/APC/PM: up to BEL or ST (ESC \\).
                while let Some(n) = chars.next() {
                    if n == '\u{7}' {
                        break;
                    }
                    if n == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {} // a two-byte escape such as ESC ( B or ESC =: dropped
        }
    }
    collapse_redraws(&out)
}

/// `\r` moves the cursor back to the start of the line: only what was written last stays.
fn collapse_redraws(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut current: Vec<char> = Vec::new();
        for segment in line.split('\r') {
            // Overwrite from column 0, keeping what the shorter redraw did not cover.
            for (col, ch) in segment.chars().enumerate() {
                if col < current.len() {
                    current[col] = ch;
                } else {
                    current.push(ch);
                }
            }
        }
        out.extend(current);
    }
    out
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
    fn strip_ansi_and_redraws() {
        assert_eq!(strip_ansi("\u{1b}[1;31merror\u{1b}[0m: x"), "error: x");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}ok\u{1b}]8;;http://x\u{1b}\\link"), "oklink");
        assert_eq!(strip_ansi(" 10%\r 50%\r100%\ndone\r\n"), "100%\ndone\n");
        assert_eq!(strip_ansi("abcdef\rXY"), "XYcdef");
    }

    #[test]
    fn pages_stop_before_split_characters() {
        let dir = std::env::temp_dir().join(format!("bgshell-page-{}", crate::store::ids::new_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out");
        std::fs::write(&p, "a€b").unwrap(); // 61 e2 82 ac 62
        let page = read_page(&p, 0, 3, false).unwrap();
        assert_eq!((page.data.as_str(), page.next_offset, page.eof), ("a", 1, false));
        let page = read_page(&p, 1, 1, false).unwrap();
        assert_eq!((page.data.as_str(), page.next_offset), ("€", 4), "a character wider than maxBytes comes whole");
        let page = read_page(&p, 1, 100, true).unwrap();
        assert_eq!((page.data.as_str(), page.next_offset, page.eof, page.total_bytes), ("€b", 5, true, 5));
        std::fs::write(&p, b"x\xe2\x82").unwrap();
        assert_eq!(read_page(&p, 0, 10, false).unwrap().next_offset, 1, "a running task may still finish the character");
        assert_eq!(read_page(&p, 0, 10, true).unwrap().data, "x\u{fffd}", "an ended task never will");
        let lines: String = (0..100).map(|i| format!("{i}\n")).collect();
        std::fs::write(&p, &lines).unwrap();
        assert_eq!(tail(&[p.clone()], None, Some(2)), (b"98\n99\n".to_vec(), true));
        assert_eq!(tail(&[p.clone()], Some(3), None), (b"99\n".to_vec(), true));
        std::fs::remove_dir_all(dir).unwrap();
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
        assert_eq!(preview(&rec, &paths, 0), Preview { text: "short\n".into(), truncated: false });

        let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&paths.stdout, &long).unwrap();
        let p = preview(&rec, &paths, 0);
        assert!(p.truncated && p.text.ends_with("line 999\n") && p.text.contains("omitted"));
        assert!(p.text.len() < 800);

        rec.exit_code = Some(1);
        std::fs::write(&paths.stderr, "the error\n").unwrap();
        let p = preview(&rec, &paths, 0);
        assert!(p.truncated && p.text.starts_with("line 0\n") && p.text.ends_with("the error\n"));
        assert!(p.text.contains(&paths.stdout.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
