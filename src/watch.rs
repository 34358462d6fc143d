//! Output watches: patterns scanned over a task's output as it grows (`watch`, `waitFor`).
//! Matching is pure and incremental: each scan reads only the bytes written since the last one,
//! plus the unfinished line before them, so a match may span two writes.

use crate::sync::Locked;
use std::sync::Mutex;

use regex::bytes::{Regex, RegexBuilder};
use tokio::sync::oneshot;

use crate::error::{Code, Error, Result};
use crate::store::record::WatchSpec;
use crate::store::{TaskPaths, TaskRecord};

pub const MAX_WATCHES_PER_TASK: usize = 8;
const MAX_PATTERN_BYTES: usize = 4096;
/// How much of an unfinished line is kept for matches that span writes.
const CARRY_BYTES: usize = 64 * 1024;
/// How much one scan step reads.
const SCAN_CHUNK: u64 = 1024 * 1024;
/// Characters of context around a match.
const CONTEXT_BYTES: usize = 200;
/// The rate limit's window: a repeating watch reports at most `max_per_minute` matches in it.
pub const RATE_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_MAX_PER_MINUTE: u32 = 10;
pub const MAX_MAX_PER_MINUTE: u32 = 1000;
/// A persisted watch's scan position is written again once it lags by this much (else only
/// when a match is reported), so a restart rescans little.
const PERSIST_LAG_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    PatternMatch,
    /// The rate limit's summary: `suppressed` matches were counted, not sent; the match shown is
    /// the last of them.
    RateLimited,
    TaskExit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PatternMatch => "pattern_match",
            Reason::RateLimited => "rate_limited",
            Reason::TaskExit => "task_exit",
        }
    }
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
    /// `RateLimited`: how many matches the summary stands for.
    pub suppressed: u64,
}

/// What a watch looks for: a plain substring (`pattern`) or a linear-time regular expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pattern(String),
    Regex(String),
}

impl Source {
    pub fn new(pattern: Option<&str>, regex: Option<&str>) -> Result<Source> {
        match (pattern, regex) {
            (Some(p), None) if !p.is_empty() => Ok(Source::Pattern(p.to_string())),
            (None, Some(r)) if !r.is_empty() => Ok(Source::Regex(r.to_string())),
            (Some(_), Some(_)) => Err(Error::invalid("give either pattern or regex, not both")),
            _ => Err(Error::invalid("a watch needs a non-empty pattern or regex")),
        }
    }

    fn compile(&self) -> Result<Regex> {
        let source = match self {
            Source::Pattern(p) => regex::escape(p),
            Source::Regex(r) => r.clone(),
        };
        if source.len() > MAX_PATTERN_BYTES {
            return Err(Error::invalid(format!("pattern is {} bytes; the limit is {MAX_PATTERN_BYTES}", source.len())));
        }
        let shown = match self {
            Source::Regex(r) => r.as_str(),
            Source::Pattern(_) => "",
        };
        RegexBuilder::new(&source)
            .multi_line(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| Error::invalid(format!("bad regex {shown:?}: {}", e.to_string().lines().last().unwrap_or(""))))
    }
}

/// A new watch's settings, checked and compiled.
#[derive(Debug, Clone)]
pub struct Spec {
    pub source: Source,
    re: Regex,
    /// Ends at its first match; else it repeats, rate-limited.
    pub once: bool,
    pub max_per_minute: u32,
}

impl Spec {
    pub fn new(pattern: Option<&str>, regex: Option<&str>, once: bool, max_per_minute: Option<u32>) -> Result<Spec> {
        let max_per_minute = max_per_minute.unwrap_or(DEFAULT_MAX_PER_MINUTE);
        if !(1..=MAX_MAX_PER_MINUTE).contains(&max_per_minute) {
            return Err(Error::invalid(format!("maxPerMinute must be 1..{MAX_MAX_PER_MINUTE}, not {max_per_minute}")));
        }
        let source = Source::new(pattern, regex)?;
        let re = source.compile()?;
        Ok(Spec { source, re, once, max_per_minute })
    }
}

/// A watch as `watches()` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub watch_id: String,
    pub source: Source,
    pub once: bool,
    pub max_per_minute: u32,
    pub matches: u64,
    /// Matches counted past the rate limit in the current window, not sent yet.
    pub suppressed: u64,
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
    /// `carry_start` as last persisted.
    persisted_from: u64,
}

struct Watch {
    id: String,
    source: Source,
    re: Regex,
    once: bool,
    matched: bool,
    /// `waitFor` watches answer one waiter instead of emitting events, and are not persisted.
    waiter: Option<oneshot::Sender<Match>>,
    cursors: Vec<Cursor>,
    max_per_minute: u32,
    matches: u64,
    window_start: u64,
    in_window: u32,
    suppressed: u64,
    last_suppressed: Option<Match>,
}

impl Watch {
    /// A watch that has seen nothing yet.
    fn new(id: String, spec: Spec, waiter: Option<oneshot::Sender<Match>>) -> Watch {
        Watch {
            id,
            source: spec.source,
            re: spec.re,
            once: spec.once,
            matched: false,
            waiter,
            cursors: vec![Cursor::default(); 2],
            max_per_minute: spec.max_per_minute,
            matches: 0,
            window_start: 0,
            in_window: 0,
            suppressed: 0,
            last_suppressed: None,
        }
    }

    fn persisted(&self) -> bool {
        self.waiter.is_none() && !(self.once && self.matched)
    }

    fn spec(&self) -> WatchSpec {
        let (pattern, regex) = match &self.source {
            Source::Pattern(p) => (Some(p.clone()), None),
            Source::Regex(r) => (None, Some(r.clone())),
        };
        WatchSpec {
            id: self.id.clone(),
            pattern,
            regex,
            once: self.once,
            max_per_minute: self.max_per_minute,
            scan_from: [self.cursors[0].carry_start, self.cursors[1].carry_start],
            reported_to: [self.cursors[0].reported_to, self.cursors[1].reported_to],
            matches: self.matches,
        }
    }

    /// The rate limit's summary of the window, if it held matches back.
    fn summary(&mut self) -> Option<Match> {
        let mut m = self.last_suppressed.take()?;
        m.reason = Reason::RateLimited;
        m.suppressed = std::mem::take(&mut self.suppressed);
        Some(m)
    }

    /// A match of a repeating watch, through the rate limit: sent, or counted for the summary.
    fn limited(&mut self, found: Match, now: u64, events: &mut Vec<Match>) {
        if now >= self.window_start.saturating_add(RATE_WINDOW_MS) {
            events.extend(self.summary());
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < self.max_per_minute {
            self.in_window += 1;
            self.matches += 1;
            events.push(found);
        } else {
            self.suppressed += 1;
            self.matches += 1;
            self.last_suppressed = Some(found);
        }
    }
}

#[derive(Default)]
pub struct Watches {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    list: Vec<Watch>,
    next: u64,
    /// A persisted watch changed in a way worth writing (added, removed, matched, far scanned).
    dirty: bool,
}

/// A persisted watch id: `watch-<n>`, n a decimal number that fits in a u64.
fn watch_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("watch-")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Watches {
    pub fn add(&self, spec: Spec, waiter: Option<oneshot::Sender<Match>>) -> Result<String> {
        let mut st = self.inner.locked();
        if st.list.len() >= MAX_WATCHES_PER_TASK {
            return Err(Error::new(Code::Limit, format!("a task may have at most {MAX_WATCHES_PER_TASK} watches; unwatch one first")));
        }
        st.next += 1;
        let id = format!("watch-{}", st.next);
        st.dirty |= waiter.is_none();
        st.list.push(Watch::new(id.clone(), spec, waiter));
        Ok(id)
    }

    /// Re-arms the watches kept with a task (after a restart). The store's content is not
    /// trusted: an entry with a malformed id, a duplicate id, a bad pattern or limit, or past
    /// the per-task limit is dropped.
    pub fn restore(&self, kept: &[WatchSpec]) {
        let mut st = self.inner.locked();
        for k in kept {
            let Some(n) = watch_number(&k.id) else { continue };
            if st.list.len() >= MAX_WATCHES_PER_TASK || st.list.iter().any(|w| w.id == k.id) {
                continue;
            }
            let Ok(spec) = Spec::new(k.pattern.as_deref(), k.regex.as_deref(), k.once, Some(k.max_per_minute)) else { continue };
            let mut w = Watch::new(k.id.clone(), spec, None);
            for (i, c) in w.cursors.iter_mut().enumerate() {
                (c.read_to, c.carry_start, c.persisted_from, c.reported_to) =
                    (k.scan_from[i], k.scan_from[i], k.scan_from[i], k.reported_to[i]);
            }
            w.matches = k.matches;
            st.next = st.next.max(n);
            st.list.push(w);
        }
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut st = self.inner.locked();
        let before = st.list.len();
        let persisted = st.list.iter().any(|w| w.id == id && w.waiter.is_none());
        st.list.retain(|w| w.id != id);
        st.dirty |= persisted;
        st.list.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.inner.locked().list.is_empty()
    }

    /// The watches an agent set (not `waitFor`'s), in the order they were added.
    pub fn list(&self) -> Vec<Info> {
        let st = self.inner.locked();
        st.list
            .iter()
            .filter(|w| w.waiter.is_none())
            .map(|w| Info {
                watch_id: w.id.clone(),
                source: w.source.clone(),
                once: w.once,
                max_per_minute: w.max_per_minute,
                matches: w.matches,
                suppressed: w.suppressed,
            })
            .collect()
    }

    /// The watches to keep with the task, when they changed since the last call.
    pub fn to_persist(&self) -> Option<Vec<WatchSpec>> {
        let mut st = self.inner.locked();
        let lagging = st
            .list
            .iter()
            .filter(|w| w.persisted())
            .any(|w| w.cursors.iter().any(|c| c.carry_start.saturating_sub(c.persisted_from) >= PERSIST_LAG_BYTES));
        if !std::mem::take(&mut st.dirty) && !lagging {
            return None;
        }
        for w in st.list.iter_mut() {
            for c in w.cursors.iter_mut() {
                c.persisted_from = c.carry_start;
            }
        }
        Some(st.list.iter().filter(|w| w.persisted()).map(Watch::spec).collect())
    }

    /// When the earliest rate-limit window holding matches back ends (unix ms).
    pub fn next_summary_at(&self) -> Option<u64> {
        let st = self.inner.locked();
        st.list.iter().filter(|w| w.suppressed > 0).map(|w| w.window_start.saturating_add(RATE_WINDOW_MS)).min()
    }

    /// The summaries of the rate-limit windows that ended by `now`.
    pub fn summaries(&self, now: u64) -> Vec<Match> {
        let mut st = self.inner.locked();
        let mut out = Vec::new();
        for w in st.list.iter_mut() {
            if w.suppressed > 0 && now >= w.window_start.saturating_add(RATE_WINDOW_MS) {
                out.extend(w.summary());
            }
        }
        st.dirty |= !out.is_empty();
        out
    }

    /// Scans what was written since the last scan. Returns the matches to announce as events
    /// (waitFor matches go to their waiter instead). `now` (unix ms) drives the rate limit.
    pub fn scan(&self, rec: &TaskRecord, paths: &TaskPaths, now: u64) -> Vec<Match> {
        let mut st = self.inner.locked();
        if st.list.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for (si, (name, path)) in paths.named_streams(rec.mode).into_iter().enumerate() {
            let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            for w in st.list.iter_mut() {
                if w.once && w.matched {
                    continue;
                }
                scan_stream(w, si, name, &path, size, rec, now, &mut events);
            }
        }
        let ended = st.list.iter().any(|w| w.once && w.matched && w.waiter.is_none());
        st.list.retain(|w| !(w.once && w.matched));
        // Written when something was sent (or a watch ended): matches the rate limit only
        // counted are written with their summary, so a flood of them costs no write per scan.
        st.dirty |= !events.is_empty() || ended;
        events
    }

    /// The final scan at exit; every watch that never matched reports `task_exit`, a rate
    /// limit holding matches back sends its summary, and all watches end with the task.
    pub fn finish(&self, rec: &TaskRecord, paths: &TaskPaths, now: u64) -> Vec<Match> {
        let mut events = self.scan(rec, paths, now);
        let mut st = self.inner.locked();
        for mut w in st.list.drain(..) {
            if let Some(summary) = w.summary() {
                events.push(summary);
            }
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
                    suppressed: 0,
                });
            }
        }
        events
    }
}

// The scan's state is passed apart, not bundled: one caller, and each piece is used differently.
#[allow(clippy::too_many_arguments)]
fn scan_stream(
    w: &mut Watch,
    si: usize,
    name: &'static str,
    path: &std::path::Path,
    size: u64,
    rec: &TaskRecord,
    now: u64,
    events: &mut Vec<Match>,
) {
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
        // A clone shares the compiled program (cheap), so the loop may update the watch.
        let re = w.re.clone();
        for caps in re.captures_iter(&buf) {
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
                suppressed: 0,
            };
            match w.waiter.take() {
                Some(tx) => {
                    let _ = tx.send(found);
                }
                None if w.once => {
                    w.matches += 1;
                    events.push(found);
                }
                None => w.limited(found, now, events),
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

    fn spec(pattern: &str, once: bool) -> Spec {
        Spec::new(Some(pattern), None, once, None).unwrap()
    }

    #[test]
    fn substring_across_writes_and_regex_captures() {
        let (dir, rec, paths) = setup();
        let w = Watches::default();
        w.add(spec("listening on", true), None).unwrap();
        w.add(Spec::new(None, Some(r"port (\d+)"), false, None).unwrap(), None).unwrap();
        append(&paths.stdout, "server listen");
        assert!(w.scan(&rec, &paths, 1).is_empty());
        append(&paths.stdout, "ing on port 3000\nport 4000\n");
        let m = w.scan(&rec, &paths, 2);
        let texts: Vec<_> = m.iter().map(|m| m.match_text.as_str()).collect();
        assert_eq!(texts, ["listening on", "port 3000", "port 4000"]);
        assert_eq!(m[1].groups, ["3000"]);
        assert!(m[0].groups.is_empty());
        assert_eq!(m[0].match_offset, 7);
        assert_eq!(m[0].context, "server listening on port 3000");
        assert!(w.scan(&rec, &paths, 3).is_empty(), "nothing reported twice");
        let end = w.finish(&rec, &paths, 4);
        assert!(end.is_empty(), "both watches matched: no task_exit");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn task_exit_and_limits() {
        let (dir, rec, paths) = setup();
        let w = Watches::default();
        let id = w.add(spec("never", true), None).unwrap();
        append(&paths.stderr, "other\n");
        let end = w.finish(&rec, &paths, 1);
        assert_eq!(end.len(), 1);
        assert_eq!((end[0].watch_id.as_str(), end[0].reason), (id.as_str(), Reason::TaskExit));
        for _ in 0..MAX_WATCHES_PER_TASK {
            w.add(spec("x", false), None).unwrap();
        }
        assert_eq!(w.add(spec("x", false), None).unwrap_err().code, Code::Limit);
        assert_eq!(Spec::new(None, Some("(unclosed"), true, None).unwrap_err().code, Code::Invalid);
        assert_eq!(Source::new(None, None).unwrap_err().code, Code::Invalid);
        assert_eq!(Source::new(Some("a"), Some("b")).unwrap_err().code, Code::Invalid);
        assert_eq!(Spec::new(Some("x"), None, false, Some(0)).unwrap_err().code, Code::Invalid);
        assert_eq!(Spec::new(Some("x"), None, false, Some(MAX_MAX_PER_MINUTE + 1)).unwrap_err().code, Code::Invalid);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rate_limit_counts_past_the_limit_and_summarises_when_the_window_ends() {
        let (dir, rec, paths) = setup();
        let w = Watches::default();
        let id = w.add(Spec::new(Some("ERR"), None, false, Some(2)).unwrap(), None).unwrap();
        append(&paths.stdout, "ERR 1\nERR 2\nERR 3\nERR 4\nERR 5\n");
        let t0 = 1_000_000;
        let sent = w.scan(&rec, &paths, t0);
        assert_eq!(sent.iter().map(|m| m.context.as_str()).collect::<Vec<_>>(), ["ERR 1", "ERR 2"]);
        assert!(w.to_persist().is_some());
        append(&paths.stdout, "ERR 3b\n");
        assert!(w.scan(&rec, &paths, t0 + 1).is_empty());
        assert!(w.to_persist().is_none(), "a match only counted is not written on its own");
        assert_eq!(w.next_summary_at(), Some(t0 + RATE_WINDOW_MS));
        assert!(w.summaries(t0 + RATE_WINDOW_MS - 1).is_empty(), "not before the window ends");
        let listed = w.list();
        assert_eq!((listed[0].matches, listed[0].suppressed), (6, 4));
        let summary = w.summaries(t0 + RATE_WINDOW_MS);
        assert_eq!(summary.len(), 1);
        assert_eq!((summary[0].watch_id.as_str(), summary[0].reason, summary[0].suppressed), (id.as_str(), Reason::RateLimited, 4));
        assert_eq!(summary[0].context, "ERR 3b", "the summary shows the last match it stands for");
        assert!(w.to_persist().is_some(), "the summary is written");
        assert_eq!(w.next_summary_at(), None);
        // A new window sends again; a window cut short by the exit still gets its summary.
        append(&paths.stdout, "ERR 6\nERR 7\nERR 8\n");
        let t1 = t0 + RATE_WINDOW_MS + 5;
        assert_eq!(w.scan(&rec, &paths, t1).len(), 2);
        let end = w.finish(&rec, &paths, t1 + 1);
        assert_eq!(end.len(), 1);
        assert_eq!((end[0].reason, end[0].suppressed, end[0].context.as_str()), (Reason::RateLimited, 1, "ERR 8"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn persisted_watches_resume_without_repeating_a_match() {
        let (dir, rec, paths) = setup();
        let a = Watches::default();
        let id = a.add(spec("ready", false), None).unwrap();
        a.add(spec("done", true), None).unwrap();
        assert!(a.to_persist().is_some(), "an added watch is written");
        assert!(a.to_persist().is_none(), "nothing changed since");
        append(&paths.stdout, "ready 1\nhalf a li");
        assert_eq!(a.scan(&rec, &paths, 1).len(), 1);
        let kept = a.to_persist().expect("a match is written");
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].scan_from[0], 8, "a rescan starts at the unfinished line");
        // The harness is gone; the task prints on; a new manager re-arms what was kept.
        append(&paths.stdout, "ne\nready 2\ndone\n");
        let b = Watches::default();
        b.restore(&kept);
        let again = b.scan(&rec, &paths, 2);
        let texts: Vec<_> = again.iter().map(|m| (m.watch_id.as_str(), m.context.as_str())).collect();
        assert_eq!(texts, [(id.as_str(), "ready 2"), ("watch-2", "done")], "only what was not reported yet");
        assert_eq!(b.list()[0].matches, 2);
        assert_eq!(b.add(spec("x", false), None).unwrap(), "watch-3", "ids go on from the kept ones");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn restore_drops_what_is_not_a_valid_watch() {
        let good = WatchSpec {
            id: "watch-1".into(),
            pattern: Some("ok".into()),
            regex: None,
            once: false,
            max_per_minute: 5,
            scan_from: [0, 0],
            reported_to: [0, 0],
            matches: 0,
        };
        let bad = |f: &dyn Fn(&mut WatchSpec)| {
            let mut s = good.clone();
            f(&mut s);
            s
        };
        let kept = vec![
            good.clone(),
            bad(&|s| s.id = "watch-1".into()),          // duplicate
            bad(&|s| s.id = "../../etc/passwd".into()), // not an id
            bad(&|s| s.id = "watch-".into()),
            bad(&|s| s.id = "watch-99999999999999999999".into()),
            bad(&|s| (s.id, s.regex) = ("watch-2".into(), Some("(".into()))),
            bad(&|s| (s.id, s.pattern) = ("watch-3".into(), None)),
            bad(&|s| (s.id, s.max_per_minute) = ("watch-4".into(), 0)),
            bad(&|s| (s.id, s.pattern) = ("watch-5".into(), Some("x".repeat(MAX_PATTERN_BYTES + 1)))),
        ];
        let w = Watches::default();
        w.restore(&kept);
        assert_eq!(w.list().iter().map(|i| i.watch_id.as_str()).collect::<Vec<_>>(), ["watch-1"]);
        let many: Vec<WatchSpec> = (1..=20).map(|n| bad(&|s| s.id = format!("watch-{n}"))).collect();
        let w = Watches::default();
        w.restore(&many);
        assert_eq!(w.list().len(), MAX_WATCHES_PER_TASK);
        // A record whose watches are garbage still loads, with none.
        let mut json: serde_json::Value = serde_json::from_slice(&crate::store::record::sample("t").to_json()).unwrap();
        json["watches"] = serde_json::json!([{"id": 7}, "x", {"id": "watch-1", "pattern": "a", "once": true, "max_per_minute": 1, "scan_from": [0, 0], "reported_to": [0, 0], "matches": 0}]);
        let rec: TaskRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(rec.watches.len(), 1);
        json["watches"] = serde_json::json!({"not": "a list"});
        let rec: TaskRecord = serde_json::from_value(json).unwrap();
        assert!(rec.watches.is_empty());
    }
}
