//! Reading what a task printed: exit-aware previews for completions. Reads only the bytes it
//! shows (seek + bounded read), so a 1 GiB log costs the same as a 1 KiB one.

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

/// The byte ranges of a file that hold data, in order: everything but the holes the output cap
/// punched (API.md "Output cap"), found with SEEK_DATA/SEEK_HOLE, so no extra state is needed.
/// A filesystem that cannot tell reports the whole file as data.
pub fn data_ranges(file: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        if out.len() >= 64 {
            out.push((pos, size)); // not a file the cap shaped: take the rest as it is
            break;
        }
        // SAFETY: lseek on our own descriptor; it moves only this descriptor's offset.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole from `pos` to the end
            }
            return vec![(0, size)];
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size } else { (hole as u64).min(size) };
        if hole <= data {
            return vec![(0, size)];
        }
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// The data range that holds `at`, or the next one after it: `(start, end)`; `(size, size)`
/// when only a hole follows. Readers that walk a file forwards skip what the cap dropped with it.
pub fn data_span(file: &std::fs::File, at: u64, size: u64) -> (u64, u64) {
    data_ranges(file, size).into_iter().find(|(_, end)| *end > at).map_or((size, size), |(s, e)| (s.max(at), e))
}

/// One range of data in a [`View`].
#[derive(Debug, Clone)]
struct Part {
    file: usize,
    start: u64,
    end: u64,
    /// Bytes dropped by the cap just before this range, in the same file.
    dropped_before: u64,
}

/// One or more streams read as one, in order, over their data only: the ranges the output cap
/// dropped are left out (positions in a view count kept bytes) and remembered.
struct View {
    files: Vec<Option<std::fs::File>>,
    parts: Vec<Part>,
}

impl View {
    fn open(paths: &[PathBuf]) -> View {
        let mut files = Vec::new();
        let mut parts = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let f = crate::fsutil::open_nofollow(p).ok();
            if let Some(f) = &f {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut prev = 0;
                for (start, end) in data_ranges(f, size) {
                    parts.push(Part { file: i, start, end, dropped_before: start - prev });
                    prev = end;
                }
            }
            files.push(f);
        }
        View { files, parts }
    }

    fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.end - p.start).sum()
    }

    fn dropped(&self) -> u64 {
        self.parts.iter().map(|p| p.dropped_before).sum()
    }

    /// Where the last dropped range sits (in view positions) and its length.
    fn last_gap(&self) -> Option<(u64, u64)> {
        let mut pos = 0;
        let mut gap = None;
        for p in &self.parts {
            if p.dropped_before > 0 {
                gap = Some((pos, p.dropped_before));
            }
            pos += p.end - p.start;
        }
        gap
    }

    /// The first dropped range's view position, or the total.
    fn first_gap_at(&self) -> u64 {
        let mut pos = 0;
        for p in &self.parts {
            if p.dropped_before > 0 {
                return pos;
            }
            pos += p.end - p.start;
        }
        pos
    }

    /// `count` bytes from view position `offset`.
    fn read(&self, mut offset: u64, mut count: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(count.min(MAX_PAGE_BYTES) as usize);
        for p in &self.parts {
            if count == 0 {
                break;
            }
            let len = p.end - p.start;
            if offset >= len {
                offset -= len;
                continue;
            }
            let take = (len - offset).min(count);
            if let Some(f) = &self.files[p.file] {
                let mut buf = vec![0u8; take as usize];
                let n = read_full_at(f, &mut buf, p.start + offset);
                out.extend_from_slice(&buf[..n]);
            }
            count -= take;
            offset = 0;
        }
        out
    }
}

fn read_full_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> usize {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    done
}

/// The one-line note of what the output cap dropped.
fn dropped_note(bytes: u64) -> String {
    format!("[... {bytes} bytes dropped here by the output cap (outputCapBytes): the first and the latest output are kept ...]")
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
                let need = if b >= 0xF0 {
                    4
                } else if b >= 0xE0 {
                    3
                } else if b >= 0xC0 {
                    2
                } else {
                    1
                };
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
/// failure, with a line saying how much was left out and where the full output is, and one
/// saying what the output cap dropped, if it did.
pub fn preview(rec: &TaskRecord, paths: &TaskPaths, cap: u64) -> Preview {
    let files = paths.streams(rec.mode);
    let view = View::open(&files);
    let mut p = preview_of(&files, &view, rec.exit_code == Some(0));
    let dropped = view.dropped();
    // A file exactly at the cap with nothing dropped: a filesystem without hole punching, where
    // the supervisor keeps the first `cap` bytes only.
    let cut: Vec<String> = files
        .iter()
        .filter(|f| cap > 0 && dropped == 0 && std::fs::symlink_metadata(f).map(|m| m.len() == cap).unwrap_or(false))
        .map(|f| f.display().to_string())
        .collect();
    let note = if dropped > 0 {
        Some(format!(
            "[output cap of {cap} bytes reached: {dropped} bytes in the middle were dropped; the first and the latest output are kept]"
        ))
    } else if !cut.is_empty() {
        Some(format!("[output cap of {cap} bytes reached; later output was dropped from {}]", cut.join(", ")))
    } else {
        None
    };
    if let Some(note) = note {
        if !p.text.is_empty() && !p.text.ends_with('\n') {
            p.text.push('\n');
        }
        p.text.push_str(&note);
        p.truncated = true;
    }
    p
}

fn preview_of(files: &[PathBuf], view: &View, success: bool) -> Preview {
    let total = view.total();
    let where_ = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    // The tail never reaches back over a dropped range; the head never reaches into one.
    let floor = view.last_gap().map_or(0, |(at, _)| at);
    let head_end = view.first_gap_at();
    let whole = view.dropped() == 0;
    if success {
        if total <= SUCCESS_TAIL_BYTES && whole {
            return Preview { text: decode_cut(&view.read(0, total), false, false), truncated: false };
        }
        let from = total.saturating_sub(SUCCESS_TAIL_BYTES).max(floor);
        let tail = view.read(from, total - from);
        let text = format!("[... {from} earlier bytes omitted; full output: {where_}]\n{}", decode_cut(&tail, true, false));
        return Preview { text, truncated: true };
    }
    if total <= FAILURE_HEAD_BYTES + FAILURE_TAIL_BYTES && whole {
        return Preview { text: decode_cut(&view.read(0, total), false, false), truncated: false };
    }
    let head = view.read(0, FAILURE_HEAD_BYTES.min(head_end));
    let from = total.saturating_sub(FAILURE_TAIL_BYTES).max(floor).max(head.len() as u64);
    let tail = view.read(from, total - from);
    let omitted = from - head.len() as u64;
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
    /// Bytes the output cap dropped between the requested offset and `offset`.
    pub dropped_bytes: u64,
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence.
fn complete_prefix(bytes: &[u8]) -> usize {
    let n = bytes.len();
    let mut i = n;
    while i > 0 && n - i < 4 {
        i -= 1;
        let b = bytes[i];
        if b & 0xC0 != 0x80 {
            let need = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else if b >= 0xC0 {
                2
            } else {
                1
            };
            return if n - i < need { i } else { n };
        }
    }
    n
}

/// One page of a stream. `next_offset` never stops inside a character unless the task has
/// ended (then the stray bytes become U+FFFD). `eof`: everything written so far was read and
/// the task has ended, so nothing more will come. A page never spans a range the output cap
/// dropped: one that starts in (or just before) such a range skips it, says how many bytes it
/// skipped in `dropped_bytes`, and `offset` is where its data starts.
pub fn read_page(path: &Path, offset: u64, max_bytes: u64, task_ended: bool) -> std::io::Result<Page> {
    let file = match crate::fsutil::open_nofollow(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let total = match &file {
        Some(f) => f.metadata()?.len(),
        None => 0,
    };
    let mut start = offset.min(total);
    let mut limit = total;
    let mut dropped = 0;
    if let Some(f) = &file {
        let ranges = data_ranges(f, total);
        match ranges.iter().find(|(_, end)| *end > start) {
            Some(&(s, e)) => {
                if s > start {
                    dropped = s - start;
                    start = s;
                }
                limit = e;
            }
            None => limit = start,
        }
    }
    let read = |at: u64, n: u64| -> Vec<u8> {
        let mut buf = vec![0u8; n as usize];
        let got = file.as_ref().map_or(0, |f| read_full_at(f, &mut buf, at));
        buf.truncate(got);
        buf
    };
    let mut want = max_bytes.min(MAX_PAGE_BYTES).min(limit - start);
    if want > 0 && want < 4 {
        // A page always makes progress: a character wider than `max_bytes` is returned whole.
        let width = read(start, 1).first().map_or(1, |b| match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        });
        want = want.max(width).min(limit - start);
    }
    let bytes = read(start, want);
    let reached = start + bytes.len() as u64 >= limit;
    // A character cut by a dropped range will never be completed: its bytes become U+FFFD.
    let keep = if (task_ended || limit < total) && reached { bytes.len() } else { complete_prefix(&bytes) };
    let next = start + keep as u64;
    Ok(Page {
        data: String::from_utf8_lossy(&bytes[..keep]).into_owned(),
        offset: start,
        next_offset: next,
        eof: task_ended && next >= total,
        total_bytes: total,
        dropped_bytes: dropped,
    })
}

/// What [`tail`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    pub bytes: Vec<u8>,
    /// Earlier output exists that is not in `bytes`.
    pub truncated: bool,
    /// `bytes` starts right after a range the output cap dropped, of this many bytes.
    pub dropped_before: Option<u64>,
}

impl Tail {
    /// The text, with the one-line note of what the cap dropped first, when it did.
    pub fn text(&self, strip: bool) -> String {
        let text = decode_cut(&self.bytes, self.truncated, false);
        let text = if strip { strip_ansi(&text) } else { text };
        match self.dropped_before {
            Some(n) => format!("{}\n{text}", dropped_note(n)),
            None => text,
        }
    }
}

/// The end of one or more streams (read as one, in order): the last `bytes` bytes, or the last
/// `lines` lines. Seeks from the end, so the cost does not grow with the file. Never reaches
/// back over a range the output cap dropped: the end stops there, and says so.
pub fn tail(files: &[PathBuf], bytes: Option<u64>, lines: Option<u64>) -> Tail {
    let view = View::open(files);
    let total = view.total();
    let (floor, gap) = match view.last_gap() {
        Some((at, len)) => (at, Some(len)),
        None => (0, None),
    };
    let done = |buf: Vec<u8>, from: u64| Tail { truncated: from > 0, dropped_before: if from == floor { gap } else { None }, bytes: buf };
    let avail = total - floor;
    if let Some(lines) = lines {
        // Read backwards in growing chunks until enough newlines are seen.
        let mut chunk = 8 * 1024u64;
        loop {
            let take = chunk.min(avail).min(MAX_TAIL_BYTES);
            let buf = view.read(total - take, take);
            // A final newline ends the last line; it does not start another one.
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let cut = usize::try_from(lines)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| memchr::memrchr_iter(b'\n', body).nth(n))
                .map(|i| i + 1);
            match cut {
                Some(c) => {
                    let from = total - take + c as u64;
                    return Tail { bytes: buf[c..].to_vec(), truncated: true, dropped_before: None }.tap_floor(from, floor, gap);
                }
                None if take >= avail || take >= MAX_TAIL_BYTES => return done(buf, total - take),
                None => chunk *= 4,
            }
        }
    }
    let want = bytes.unwrap_or(4096).min(avail).min(MAX_PAGE_BYTES);
    done(view.read(total - want, want), total - want)
}

impl Tail {
    fn tap_floor(mut self, from: u64, floor: u64, gap: Option<u64>) -> Tail {
        if from == floor {
            self.dropped_before = gap;
        }
        self
    }
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
        assert_eq!(tail(std::slice::from_ref(&p), None, Some(2)).bytes, b"98\n99\n".to_vec());
        assert_eq!(tail(std::slice::from_ref(&p), Some(3), None).bytes, b"99\n".to_vec());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file shaped as the supervisor's head + tail cap leaves it: a hole in the middle.
    #[test]
    fn dropped_ranges_are_skipped_and_reported() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("bgshell-hole-{}", crate::store::ids::new_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = crate::store::paths_in(&dir, "t");
        let lines: String = (0..20_000).map(|i| format!("line {i:05}\n")).collect(); // 11 bytes each
        std::fs::write(&paths.stdout, &lines).unwrap();
        std::fs::write(&paths.stderr, "").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&paths.stdout).unwrap();
        let (a, b) = (8192u64, 200_704u64);
        // SAFETY: punching a hole in our own test file.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, a as i64, (b - a) as i64) };
        if r != 0 {
            eprintln!("this filesystem cannot punch holes; skipped");
            return;
        }
        let total = lines.len() as u64;
        assert_eq!(data_ranges(&f, total), vec![(0, a), (b, total)]);

        let p1 = read_page(&paths.stdout, 0, 1 << 20, true).unwrap();
        assert_eq!((p1.offset, p1.next_offset, p1.dropped_bytes, p1.eof), (0, a, 0, false), "a page stops at the dropped range");
        assert_eq!(p1.data, lines[..a as usize]);
        let p2 = read_page(&paths.stdout, p1.next_offset, 1 << 20, true).unwrap();
        assert_eq!((p2.offset, p2.dropped_bytes, p2.next_offset, p2.eof), (b, b - a, total, true));
        assert_eq!(p2.data, lines[b as usize..]);
        assert_eq!(read_page(&paths.stdout, 100_000, 10, true).unwrap().dropped_bytes, b - 100_000);

        let t = tail(std::slice::from_ref(&paths.stdout), None, Some(2));
        assert_eq!((t.bytes.as_slice(), t.dropped_before), (b"line 19998\nline 19999\n".as_slice(), None));
        let t = tail(std::slice::from_ref(&paths.stdout), Some(1 << 20), None);
        assert_eq!((t.bytes.len() as u64, t.dropped_before, t.truncated), (total - b, Some(b - a), true));
        assert!(t.text(false).starts_with("[... 192512 bytes dropped here by the output cap"));
        assert!(t.text(false).ends_with("line 19999\n"));
        let t = tail(&[paths.stdout.clone(), paths.stderr.clone()], None, Some(1_000_000));
        assert_eq!(t.dropped_before, Some(b - a), "lines stop at the dropped range too");

        let mut rec = crate::store::record::sample("t");
        rec.exit_code = Some(1);
        let p = preview(&rec, &paths, 100_000);
        assert!(p.truncated && p.text.starts_with("line 00000\n") && p.text.contains("line 19999\n"));
        assert!(p.text.contains("192512 bytes in the middle were dropped"), "{}", p.text);
        assert!(!p.text.contains('\0'));
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
