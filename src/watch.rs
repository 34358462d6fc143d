//! Output watches: patterns scanned over a task's output as it grows (`watch`, `waitFor`).
//! Matching is pure and incremental: each scan reads only the bytes written since the last one,
//! plus the unfinished line before them, so a match may span two writes.

use crate::sync::Locked;
use std::sync::Mutex;

use regex::bytes::{Regex, RegexBuilder};
use tokio::sync::oneshot;

use crate::error::{Code, Error, Result};
use crate::store::{Mode, TaskPaths, TaskRecord};

pub const MAX_WATCHES_PER_TASK: usize = 8;
const MAX_PATTERN_BYTES: usize = 4096;
/// How much of an unfinished line is kept for matches that span writes.
const CARRY_BYTES: usize = 64 * 1024;
/// How much one scan step reads.
const SCAN_CHUNK: u64 = 1024 * 1024;
/// Characters of context around a match.
const CONTEXT_BYTES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    PatternMatch,
    TaskExit,
}

#[derive(Debug, Clone)]
pub struct Match {
    pub task_id: String,
    pub session_id: String,
    pub watch_id: String,
    pub match_text: String,
    /// The regex's capture groups (empty for a substring watch); a group that did not take
    /// part in the match is an empty string.
    pub groups: Vec<String>,
    /// Byte offset of the match in its stream.
    pub match_offset: u64,
    pub context: String,
    pub reason: Reason,
    pub stream: &'static str,
}

/// Compiles a watch: `pattern` is a plain substring, `regex` a linear-time regular expression.
pub fn compile(pattern: Option<&str>, regex: Option<&str>) -> Result<Regex> {
    let source = match (pattern, regex) {
        (Some(p), None) if !p.is_empty() => regex::escape(p),
        (None, Some(r)) if !r.is_empty() => r.to_string(),
        (Some(_), Some(_)) => return Err(Error::invalid("give either pattern or regex, not both")),
        _ => return Err(Error::invalid("a watch needs a non-empty pattern or regex")),
    };
    if source.len() > MAX_PATTERN_BYTES {
        return Err(Error::invalid(format!("pattern is {} bytes; the limit is {MAX_PATTERN_BYTES}", source.len())));
    }
    RegexBuilder::new(&source)
        .multi_line(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| Error::invalid(format!("bad regex {:?}: {}", regex.unwrap_or(""), e.to_string().lines().last().unwrap_or(""))))
}

#[derive(Debug, Default, Clone)]
struct Cursor {
    /// Stream offset up to which bytes were read.
    read_to: u64,
    /// The unfinished line before `read_to`, and where it starts.
    carry: Vec<u8>,
    carry_start: u64,
    /// Matches ending before this offset were already reported.
    reported_to: u64,
}

struct Watch {
    id: String,
    re: Regex,
    once: bool,
    matched: bool,
    /// `waitFor` watches answer one waiter instead of emitting events.
    waiter: Option<oneshot::Sender<Match>>,
    cursors: Vec<Cursor>,
}

#[derive(Default)]
pub struct Watches {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    list: Vec<Watch>,
    next: u64,
}

fn streams(rec: &TaskRecord, paths: &TaskPaths) -> Vec<(&'static str, std::path::PathBuf)> {
    match rec.mode {
        Mode::Pipes => vec![("stdout", paths.stdout.clone()), ("stderr", paths.stderr.clone())],
        Mode::Pty => vec![("pty", paths.pty.clone())],
    }
}

impl Watches {
    pub fn add(&self, re: Regex, once: bool, waiter: Option<oneshot::Sender<Match>>) -> Result<String> {
        let mut st = self.inner.locked();
        if st.list.len() >= MAX_WATCHES_PER_TASK {
            return Err(Error::new(Code::Limit, format!("a task may have at most {MAX_WATCHES_PER_TASK} watches; unwatch one first")));
        }
        st.next += 1;
        let id = format!("watch-{}", st.next);
        st.list.push(Watch { id: id.clone(), re, once, matched: false, waiter, cursors: vec![Cursor::default(); 2] });
        Ok(id)
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut st = self.inner.locked();
        let before = st.list.len();
        st.list.retain(|w| w.id != id);
        st.list.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.inner.locked().list.is_empty()
    }

    /// Scans what was written since the last scan. Returns the matches to announce as events
    /// (waitFor matches go to their waiter instead).
    pub fn scan(&self, rec: &TaskRecord, paths: &TaskPaths) -> Vec<Match> {
        let mut st = self.inner.locked();
        if st.list.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for (si, (name, path)) in streams(rec, paths).into_iter().enumerate() {
            let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            for w in st.list.iter_mut() {
                if w.once && w.matched {
                    continue;
                }
                scan_stream(w, si, name, &path, size, rec, &mut events);
            }
        }
        st.list.retain(|w| !(w.once && w.matched));
        events
    }

    /// The final scan at exit; every watch that never matched reports `task_exit`, and all
    /// watches end with the task.
    pub fn finish(&self, rec: &TaskRecord, paths: &TaskPaths) -> Vec<Match> {
        let mut events = self.scan(rec, paths);
        let mut st = self.inner.locked();
        for w in st.list.drain(..) {
            if !w.matched && w.waiter.is_none() {
                events.push(Match {
                    task_id: rec.task_id.clone(),
                    session_id: rec.session_id.clone(),
                    watch_id: w.id,
                    match_text: String::new(),
                    groups: Vec::new(),
                    match_offset: 0,
                    context: String::new(),
                    reason: Reason::TaskExit,
                    stream: "",
                });
            }
        }
        events
    }
}

fn scan_stream(w: &mut Watch, si: usize, name: &'static str, path: &std::path::Path, size: u64, rec: &TaskRecord, events: &mut Vec<Match>) {
    loop {
        let cur = &mut w.cursors[si];
        if cur.read_to >= size {
            return;
        }
        let Ok(mut f) = crate::fsutil::open_nofollow(path) else { return };
        // Bytes the output cap dropped are not scanned: a match never spans them.
        let (data, data_end) = crate::output::data_span(&f, cur.read_to, size);
        if data > cur.read_to {
            cur.read_to = data;
            cur.carry.clear();
            cur.carry_start = data;
        }
        if cur.read_to >= size {
            return;
        }
        let take = (data_end - cur.read_to).min(SCAN_CHUNK);
        use std::io::{Read, Seek, SeekFrom};
        let mut fresh = Vec::with_capacity(take as usize);
        if f.seek(SeekFrom::Start(cur.read_to)).is_err() || (&mut f).take(take).read_to_end(&mut fresh).is_err() || fresh.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut cur.carry);
        let base = cur.carry_start;
        buf.extend_from_slice(&fresh);
        cur.read_to += fresh.len() as u64;
        for caps in w.re.captures_iter(&buf) {
            let m = caps.get(0).expect("group 0 is the whole match");
            let groups: Vec<String> =
                caps.iter().skip(1).map(|g| g.map(|g| String::from_utf8_lossy(g.as_bytes()).into_owned()).unwrap_or_default()).collect();
            let (start, end) = (base + m.start() as u64, base + m.end() as u64);
            if start < w.cursors[si].reported_to || m.start() == m.end() {
                continue;
            }
            w.cursors[si].reported_to = end;
            w.matched = true;
            let ctx_start =
                buf[..m.start()].iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0).max(m.start().saturating_sub(CONTEXT_BYTES));
            let ctx_end =
                buf[m.end()..].iter().position(|b| *b == b'\n').map(|i| m.end() + i).unwrap_or(buf.len()).min(m.end() + CONTEXT_BYTES);
            let found = Match {
                task_id: rec.task_id.clone(),
                session_id: rec.session_id.clone(),
                watch_id: w.id.clone(),
                match_text: String::from_utf8_lossy(m.as_bytes()).into_owned(),
                groups,
                match_offset: start,
                context: String::from_utf8_lossy(&buf[ctx_start..ctx_end]).into_owned(),
                reason: Reason::PatternMatch,
                stream: name,
            };
            match w.waiter.take() {
                Some(tx) => {
                    let _ = tx.send(found);
                }
                None => events.push(found),
            }
            if w.once {
                return;
            }
        }
        // Keep the unfinished last line (bounded) for matches that continue in the next write.
        let cut = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0).max(buf.len().saturating_sub(CARRY_BYTES));
        let cur = &mut w.cursors[si];
        cur.carry_start = base + cut as u64;
        cur.carry = buf[cut..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (std::path::PathBuf, TaskRecord, TaskPaths) {
        let dir = std::env::temp_dir().join(format!("bgshell-watch-{}", crate::store::ids::new_task_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = crate::store::paths_in(&dir, "t");
        std::fs::write(&paths.stdout, "").unwrap();
        std::fs::write(&paths.stderr, "").unwrap();
        (dir, crate::store::record::sample("t"), paths)
    }

    fn append(p: &std::path::Path, s: &str) {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn substring_across_writes_and_regex_captures() {
        let (dir, rec, paths) = setup();
        let w = Watches::default();
        w.add(compile(Some("listening on"), None).unwrap(), true, None).unwrap();
        w.add(compile(None, Some(r"port (\d+)")).unwrap(), false, None).unwrap();
        append(&paths.stdout, "server listen");
        assert!(w.scan(&rec, &paths).is_empty());
        append(&paths.stdout, "ing on port 3000\nport 4000\n");
        let m = w.scan(&rec, &paths);
        let texts: Vec<_> = m.iter().map(|m| m.match_text.as_str()).collect();
        assert_eq!(texts, ["listening on", "port 3000", "port 4000"]);
        assert_eq!(m[1].groups, ["3000"]);
        assert!(m[0].groups.is_empty());
        assert_eq!(m[0].match_offset, 7);
        assert_eq!(m[0].context, "server listening on port 3000");
        assert!(w.scan(&rec, &paths).is_empty(), "nothing reported twice");
        let end = w.finish(&rec, &paths);
        assert!(end.is_empty(), "both watches matched: no task_exit");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn task_exit_and_limits() {
        let (dir, rec, paths) = setup();
        let w = Watches::default();
        let id = w.add(compile(Some("never"), None).unwrap(), true, None).unwrap();
        append(&paths.stderr, "other\n");
        let end = w.finish(&rec, &paths);
        assert_eq!(end.len(), 1);
        assert_eq!((end[0].watch_id.as_str(), end[0].reason), (id.as_str(), Reason::TaskExit));
        for _ in 0..MAX_WATCHES_PER_TASK {
            w.add(compile(Some("x"), None).unwrap(), false, None).unwrap();
        }
        assert_eq!(w.add(compile(Some("x"), None).unwrap(), false, None).unwrap_err().code, Code::Limit);
        assert_eq!(compile(None, Some("(unclosed")).unwrap_err().code, Code::Invalid);
        assert_eq!(compile(None, None).unwrap_err().code, Code::Invalid);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
