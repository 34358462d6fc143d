//! The string unions of the API as Rust enums. `napi build` writes each into index.d.ts as a
//! type-only union (`export type TaskStatus = 'starting' | ...`, since `napi.constEnum` is false)
//! and the addon exports each as an object of its values, which guard.js reads to refuse a bad
//! value with our own sentence before napi's conversion refuses it with its own. The store and
//! the manager keep their own enums, free of napi; the conversions live here.

use napi_derive::napi;

use crate::manager::Stream;
use crate::store::{Mode, Status};

/// A task's state: `starting`, `running` and `killing` are live, the others are terminal.
#[napi(string_enum = "snake_case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Starting,
    Running,
    Killing,
    Completed,
    Failed,
    Killed,
    TimedOut,
}

impl From<Status> for TaskStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Starting => TaskStatus::Starting,
            Status::Running => TaskStatus::Running,
            Status::Killing => TaskStatus::Killing,
            Status::Completed => TaskStatus::Completed,
            Status::Failed => TaskStatus::Failed,
            Status::Killed => TaskStatus::Killed,
            Status::TimedOut => TaskStatus::TimedOut,
        }
    }
}

impl From<TaskStatus> for Status {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Starting => Status::Starting,
            TaskStatus::Running => Status::Running,
            TaskStatus::Killing => Status::Killing,
            TaskStatus::Completed => Status::Completed,
            TaskStatus::Failed => Status::Failed,
            TaskStatus::Killed => Status::Killed,
            TaskStatus::TimedOut => Status::TimedOut,
        }
    }
}

/// How a task's output is captured: two pipes (stdout, stderr) or one terminal (pty).
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskMode {
    Pipes,
    Pty,
}

impl From<Mode> for TaskMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Pipes => TaskMode::Pipes,
            Mode::Pty => TaskMode::Pty,
        }
    }
}

impl From<TaskMode> for Mode {
    fn from(m: TaskMode) -> Self {
        match m {
            TaskMode::Pipes => Mode::Pipes,
            TaskMode::Pty => Mode::Pty,
        }
    }
}

/// A pipes task's stdin: `/dev/null`, or a pipe its supervisor holds (`write()`, `closeStdin()`).
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    Null,
    Pipe,
}

/// One output stream, as `readOutput` pages it.
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
    Pty,
}

impl From<OutputStream> for Stream {
    fn from(s: OutputStream) -> Self {
        match s {
            OutputStream::Stdout => Stream::Stdout,
            OutputStream::Stderr => Stream::Stderr,
            OutputStream::Pty => Stream::Pty,
        }
    }
}

/// What `tail` reads: one stream, or stdout and stderr together (`combined`).
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailStream {
    Stdout,
    Stderr,
    Pty,
    Combined,
}

impl From<TailStream> for Stream {
    fn from(s: TailStream) -> Self {
        match s {
            TailStream::Stdout => Stream::Stdout,
            TailStream::Stderr => Stream::Stderr,
            TailStream::Pty => Stream::Pty,
            TailStream::Combined => Stream::Combined,
        }
    }
}

/// The signals `kill` sends to a task's process group.
#[napi(string_enum = "UPPERCASE")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSignal {
    Sigterm,
    Sigint,
    Sighup,
    Sigkill,
}

impl KillSignal {
    pub fn number(self) -> i32 {
        match self {
            KillSignal::Sigterm => libc::SIGTERM,
            KillSignal::Sigint => libc::SIGINT,
            KillSignal::Sighup => libc::SIGHUP,
            KillSignal::Sigkill => libc::SIGKILL,
        }
    }
}

/// The fsync policy of a store (FORMAT.md).
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Batched,
    Strict,
}

impl Durability {
    /// The name the manager's options take (`store::Durability::parse`).
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Batched => "batched",
            Durability::Strict => "strict",
        }
    }
}

/// Why `waitFor` resolved.
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitForReason {
    Matched,
    Exited,
    Timeout,
}

/// index.d.ts against the Rust enums: the unions napi generated from the enums above must hold
/// exactly the names the store, the manager and the signal table use; in the hand-written header,
/// `ErrorCode` exactly the codes of `error::Code` (plus guard.js's `E_INTERNAL`), as must
/// guard.js's list of codes, and TaskEvent's `reason` and `stream` those of watch.rs and the store. A union missing here, or one that is not a plain union of
/// string literals, fails too. The committed index.d.ts is what is checked, so a build that
/// was not run after an enum changed fails as well.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use std::collections::BTreeSet;

    /// Every variant of a fieldless enum; the match stops the build when the enum gains one.
    macro_rules! all {
        ($e:ident: $($v:ident),+ $(,)?) => {{
            let _exhaustive = |x: $e| match x { $($e::$v)|+ => () };
            [$($e::$v),+]
        }};
    }

    fn read(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Removes `/* ... */` and `// ...` comments.
    fn strip_comments(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("/*") {
                rest = after.find("*/").map_or("", |i| &after[i + 2..]);
            } else if rest.starts_with("//") {
                rest = rest.find('\n').map_or("", |i| &rest[i..]);
            } else {
                let c = rest.chars().next().unwrap();
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }

    /// The string literals of a union written out in `body`; each member must be one.
    fn literals(body: &str, what: &str) -> BTreeSet<String> {
        let mut values = BTreeSet::new();
        for m in strip_comments(body).split('|').map(str::trim).filter(|m| !m.is_empty()) {
            let literal = m.strip_prefix('\'').and_then(|m| m.strip_suffix('\''));
            let literal = literal.unwrap_or_else(|| panic!("{what} has a member that is not a string literal: {m}"));
            assert!(values.insert(literal.to_owned()), "{what} lists '{literal}' twice");
        }
        values
    }

    /// The members of `export type NAME = 'a' | 'b'`, on one line as napi writes a string enum
    /// or over several as the header writes one.
    fn union(dts: &str, name: &str) -> BTreeSet<String> {
        let start = format!("export type {name} =");
        let mut found = dts.match_indices(&start).map(|(i, _)| i);
        let at = found.next().unwrap_or_else(|| panic!("no `{start} ...`"));
        assert!(found.next().is_none(), "{name} is declared more than once");
        let body = &dts[at + start.len()..];
        literals(&body[..body.find("\n\n").unwrap_or(body.len())], name)
    }

    /// The members of the one property `name: 'a' | 'b'` (on one line) in `dts`.
    fn property(dts: &str, name: &str) -> BTreeSet<String> {
        let mut found = dts.lines().filter_map(|l| l.trim().strip_prefix(name));
        let body = found.next().unwrap_or_else(|| panic!("no property `{name} ...`"));
        assert!(found.next().is_none(), "more than one property `{name}`");
        literals(body, name)
    }

    fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        names.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn task_status_is_the_stores_status() {
        let statuses = all!(Status: Starting, Running, Killing, Completed, Failed, Killed, TimedOut);
        assert_eq!(statuses, Status::ALL);
        assert_eq!(union(&read("index.d.ts"), "TaskStatus"), set(Status::ALL.map(Status::as_str)));
        for s in Status::ALL {
            assert_eq!(Status::from(TaskStatus::from(s)), s);
        }
    }

    #[test]
    fn task_mode_is_the_stores_mode() {
        let modes = all!(Mode: Pipes, Pty);
        assert_eq!(union(&read("index.d.ts"), "TaskMode"), set(modes.map(Mode::as_str)));
        for m in modes {
            assert_eq!(Mode::from(TaskMode::from(m)), m);
        }
    }

    #[test]
    fn kill_signal_names_the_signals_it_sends() {
        let signals = all!(KillSignal: Sigterm, Sigint, Sighup, Sigkill);
        let names: BTreeSet<String> = signals.iter().map(|s| crate::protocol::signal_name(s.number())).collect();
        assert_eq!(names.len(), signals.len(), "two KillSignals send the same signal");
        assert_eq!(union(&read("index.d.ts"), "KillSignal"), names);
    }

    #[test]
    fn durability_is_the_stores_policy() {
        use crate::store::Durability as Policy;
        let policies = all!(Durability: Batched, Strict);
        assert_eq!(union(&read("index.d.ts"), "Durability"), set(policies.map(Durability::as_str)));
        // Each name is the store's name of the same policy, and the store has no other.
        assert_eq!(policies.map(|d| Policy::parse(d.as_str())), all!(Policy: Batched, Strict).map(Some));
    }

    #[test]
    fn streams_are_the_stores_stream_names() {
        let dts = read("index.d.ts");
        let paths = crate::store::paths_in(std::path::Path::new("/"), "bash-0000000000000000");
        let names = set(all!(Mode: Pipes, Pty).iter().flat_map(|&m| paths.named_streams(m)).map(|(name, _)| name));
        assert_eq!(union(&dts, "OutputStream"), names);
        let mut with_combined = names.clone();
        with_combined.insert("combined".into());
        assert_eq!(union(&dts, "TailStream"), with_combined);
        // The header's pattern_match event names its stream the same way.
        assert_eq!(property(&read("types/header.d.ts"), "stream?:"), names, "TaskEvent's stream in types/header.d.ts");
        let output = all!(OutputStream: Stdout, Stderr, Pty);
        let tail = all!(TailStream: Stdout, Stderr, Pty, Combined);
        assert!(output.iter().all(|&s| Stream::from(s) != Stream::Combined), "readOutput pages one stream");
        let streams = all!(Stream: Stdout, Stderr, Pty, Combined);
        assert!(streams.iter().all(|s| tail.iter().any(|&t| Stream::from(t) == *s)), "tail reads every stream");
        assert_eq!(union(&dts, "StdinMode"), set(["null", "pipe"]));
        assert_eq!(union(&dts, "WaitForReason"), set(["matched", "exited", "timeout"]));
    }

    #[test]
    fn the_headers_watch_reasons_are_watch_rs_reasons() {
        use crate::watch::Reason;
        let reasons = all!(Reason: PatternMatch, RateLimited, TaskExit);
        assert_eq!(property(&read("types/header.d.ts"), "reason:"), set(reasons.map(Reason::as_str)), "types/header.d.ts");
    }

    #[test]
    fn error_codes_are_the_codes_of_error_rs() {
        let codes = all!(Code: Invalid, NotFound, Limit, Spawn, Io, NotPty, Exited, TooLarge, Closed, Aborted);
        // E_INTERNAL is guard.js's: a Rust panic caught at the boundary.
        let expected = set(codes.map(Code::as_str).into_iter().chain(["E_INTERNAL"]));
        assert_eq!(union(&read("types/header.d.ts"), "ErrorCode"), expected, "types/header.d.ts");
        assert_eq!(union(&read("index.d.ts"), "ErrorCode"), expected, "index.d.ts");
        let guard = read("guard.js");
        let list = guard.split("const CODES = new Set([").nth(1).and_then(|s| s.split("])").next()).expect("guard.js has no CODES");
        let in_guard: BTreeSet<String> = list.split(',').map(|c| c.trim().trim_matches('\'').to_owned()).collect();
        assert_eq!(in_guard, expected, "guard.js's CODES");
    }
}
