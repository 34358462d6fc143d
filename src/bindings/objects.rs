//! The JavaScript objects of the API (`#[napi(object)]`, typed in index.d.ts) and the conversion
//! of the manager's records and events into them.

use std::collections::HashMap;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::enums::{Durability, KillSignal, OutputStream, StdinMode, TailStream, TaskMode, TaskStatus, WaitForReason};
use crate::manager::{self, Event, Manager};
use crate::store::{Mode, TaskRecord};

#[napi(object)]
#[derive(Default)]
pub struct ManagerOptions {
    /// Default: $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell, else ~/.local/state/bgshell.
    pub storage_dir: Option<String>,
    /// "opencode" | "pi" | any [a-z0-9_-]+; recorded on rows. Default "default".
    pub harness: Option<String>,
    /// Running tasks allowed in this manager; beyond -> E_LIMIT. Default 16.
    pub max_running: Option<f64>,
    /// Kill deadline when a spawn gives none; 0 = none. Default 1 800 000.
    pub default_timeout_ms: Option<f64>,
    /// SIGTERM -> SIGKILL grace. Default 2000.
    pub kill_grace_ms: Option<f64>,
    /// Default: $BASH if it exists, else `bash` on PATH, else /bin/sh.
    pub shell: Option<String>,
    /// Delivered terminal tasks older than this are removed by gc(). Default 24 h.
    pub retention_ms: Option<f64>,
    /// 'long_running' event interval; 0 = off. Default 600 000.
    pub long_running_interval_ms: Option<f64>,
    /// Default for SpawnOptions.agentEnv. Default false.
    pub agent_env: Option<bool>,
    /// Cap per output file (stdout, stderr, pty transcript); 0 = no cap. Default 100 MiB.
    pub output_cap_bytes: Option<f64>,
    /// fsync policy (FORMAT.md): 'batched' (default) fsyncs in a group commit within 1 s,
    /// flushed by close(); 'strict' fsyncs every write before it counts.
    pub durability: Option<Durability>,
}

#[napi(object)]
pub struct SpawnOptions {
    /// Harness session; 1..512 bytes, no NUL.
    pub session_id: String,
    /// Shell text, run with `shell -c` semantics; up to 1 MiB; no NUL.
    pub command: String,
    /// Default process.cwd(); must exist and be a directory.
    pub cwd: Option<String>,
    /// Overrides on top of the manager process's environment.
    pub env: Option<HashMap<String, String>>,
    /// 0 = none; default options.defaultTimeoutMs.
    pub timeout_ms: Option<f64>,
    /// Default true; false = completion pre-marked delivered (foreground use).
    pub notify_on_completion: Option<bool>,
    /// Stored flag for the harness's output compressor. Default true.
    pub compressed: Option<bool>,
    /// Recorded (canonicalised); default cwd.
    pub project_root: Option<String>,
    pub mode: Option<TaskMode>,
    pub rows: Option<f64>,
    pub cols: Option<f64>,
    /// NO_COLOR=1, TERM=dumb, PAGER=cat, ... so programs neither page nor buffer.
    pub agent_env: Option<bool>,
    /// Pipes mode. Default 'null'. 'pipe': the command reads a pipe its supervisor holds (so it
    /// outlives the manager); `write()` feeds it and `closeStdin()` sends EOF.
    pub stdin: Option<StdinMode>,
    /// A short human name (1..128 bytes, no control characters): stored, listed, shown in
    /// reminders and by the CLI.
    pub label: Option<String>,
}

/// Resource use of a task's process tree as its supervisor reaped it (`wait4`).
#[napi(object)]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRusage {
    /// Peak resident set size of the largest process, in KiB.
    pub max_rss_kb: f64,
    /// CPU time in user mode, in ms, summed over the command and the descendants it waited for.
    pub user_ms: f64,
    /// CPU time in the kernel, in ms, likewise.
    pub system_ms: f64,
}

fn rusage(r: Option<crate::store::record::Rusage>) -> Option<TaskRusage> {
    r.map(|r| TaskRusage { max_rss_kb: r.max_rss_kb as f64, user_ms: r.user_ms as f64, system_ms: r.system_ms as f64 })
}

// Serialize: many at once go over as one JSON text (bulk.rs), which must give the very objects
// napi's own conversion gives: names in camelCase, a `None` left out.
#[napi(object)]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSnapshot {
    pub task_id: String,
    pub session_id: String,
    pub harness: String,
    pub command: String,
    pub mode: TaskMode,
    pub status: TaskStatus,
    pub cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_root: Option<String>,
    pub project_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// Unix ms.
    pub started_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub notify_on_completion: bool,
    pub completion_delivered: bool,
    pub compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cols: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// 'pipe' when the task was spawned with `stdin: 'pipe'`.
    #[napi(ts_type = "'pipe'")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Of the task's process tree, once it ended. Absent while it runs, and for a task that
    /// ended while no manager listened to its supervisor (its exit marker holds only the code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rusage: Option<TaskRusage>,
}

#[napi(object)]
pub struct ListFilter {
    pub session_id: Option<String>,
    pub project_root: Option<String>,
    pub status: Option<Vec<TaskStatus>>,
    pub harness: Option<String>,
}

#[napi(object)]
pub struct KillOptions {
    pub signal: Option<KillSignal>,
    pub grace_ms: Option<f64>,
}

#[napi(object)]
pub struct Completion {
    pub task_id: String,
    pub session_id: String,
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub command: String,
    pub duration_ms: Option<f64>,
    /// Exit-aware: a short tail on success; head + longer tail on failure (see README).
    pub output_preview: String,
    pub output_truncated: bool,
    pub label: Option<String>,
    pub rusage: Option<TaskRusage>,
}

#[napi(object)]
pub struct ReadOutputOptions {
    pub stream: Option<OutputStream>,
    pub offset: Option<f64>,
    /// Default 64 KiB, at most 16 MiB.
    pub max_bytes: Option<f64>,
}

#[napi(object)]
pub struct OutputPage {
    pub data: String,
    pub offset: f64,
    pub next_offset: f64,
    /// Everything written so far was read and the task has ended.
    pub eof: bool,
    pub total_bytes: f64,
    /// Bytes the output cap dropped between the requested offset and `offset` (where `data`
    /// starts); absent when none were skipped.
    pub dropped_bytes: Option<f64>,
}

#[napi(object)]
pub struct TailOptions {
    pub bytes: Option<f64>,
    /// Default 50 when neither bytes nor lines is given.
    pub lines: Option<f64>,
    pub stream: Option<TailStream>,
    pub strip_ansi: Option<bool>,
}

#[napi(object)]
pub struct TailResult {
    pub text: String,
    pub truncated: bool,
}

#[napi(object)]
pub struct WatchOptions {
    pub pattern: Option<String>,
    pub regex: Option<String>,
    /// End at the first match (default false: repeat, rate-limited).
    pub once: Option<bool>,
    /// A repeating watch sends at most this many matches a minute (1..1000, default 10); the
    /// rest are counted into one `rate_limited` event when the minute ends (or the task does).
    pub max_per_minute: Option<u32>,
}

/// A watch as `watches()` lists it.
#[napi(object)]
pub struct WatchInfo {
    pub watch_id: String,
    pub pattern: Option<String>,
    pub regex: Option<String>,
    pub once: bool,
    pub max_per_minute: u32,
    /// Matches found so far (sent or counted by the rate limit).
    pub matches: f64,
    /// Matches counted past the rate limit this minute, not sent yet.
    pub suppressed: f64,
}

impl From<crate::watch::Info> for WatchInfo {
    fn from(i: crate::watch::Info) -> WatchInfo {
        let (pattern, regex) = match i.source {
            crate::watch::Source::Pattern(p) => (Some(p), None),
            crate::watch::Source::Regex(r) => (None, Some(r)),
        };
        WatchInfo {
            watch_id: i.watch_id,
            pattern,
            regex,
            once: i.once,
            max_per_minute: i.max_per_minute,
            matches: i.matches as f64,
            suppressed: i.suppressed as f64,
        }
    }
}

#[napi(object)]
pub struct WaitForResult {
    pub reason: WaitForReason,
    pub match_text: Option<String>,
    /// Capture groups of a regex match.
    pub groups: Option<Vec<String>>,
    pub match_offset: Option<f64>,
    pub snapshot: TaskSnapshot,
}

#[napi(object)]
pub struct KeyInput {
    /// enter, return, tab, space, backspace, esc, escape, up, down, left, right, home, end,
    /// page-up, page-down, delete, insert, f1..f12, ctrl-a..ctrl-z (case-insensitive).
    pub key: String,
}

#[napi(object)]
pub struct ReplayOptions {
    pub project_root: Option<String>,
}

#[napi(object)]
pub struct GcOptions {
    pub older_than_ms: Option<f64>,
}

#[napi(object)]
pub struct GcResult {
    pub removed: u32,
    pub quarantined: u32,
}

#[napi(object)]
pub struct CloseOptions {
    pub kill_running: Option<bool>,
}

pub(super) fn snapshot(m: &Manager, rec: TaskRecord) -> TaskSnapshot {
    let paths = m.paths(&rec).ok();
    snapshot_at(rec, paths, file_size)
}

/// An output file's own size (a link is not followed), or None when there is no such file.
pub(super) fn file_size(p: &std::path::Path) -> Option<u64> {
    std::fs::symlink_metadata(p).ok().map(|md| md.len())
}

/// A path as the text JavaScript gets: moved, not copied, when it is UTF-8 (as the store's are).
fn path_text(path: std::path::PathBuf) -> String {
    path.into_os_string().into_string().unwrap_or_else(|p| p.to_string_lossy().into_owned())
}

/// The snapshot of `rec`, whose bundle is at `paths`; `size` gives an output file's size (None
/// when there is no such file).
pub(super) fn snapshot_at(
    rec: TaskRecord,
    paths: Option<crate::store::TaskPaths>,
    size: impl Fn(&std::path::Path) -> Option<u64>,
) -> TaskSnapshot {
    let (stdout_path, stderr_path, pty_path, output_bytes) = match (rec.mode, paths) {
        (_, None) => (None, None, None, None),
        (Mode::Pipes, Some(paths)) => {
            let bytes = match (size(&paths.stdout), size(&paths.stderr)) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            (Some(path_text(paths.stdout)), Some(path_text(paths.stderr)), None, bytes)
        }
        (Mode::Pty, Some(paths)) => {
            let bytes = size(&paths.pty);
            (None, None, Some(path_text(paths.pty)), bytes)
        }
    };
    TaskSnapshot {
        harness: rec.harness.clone().unwrap_or_else(|| "default".into()),
        mode: rec.mode.into(),
        status: rec.status.into(),
        cwd: rec.workdir,
        project_key: rec.project_key.unwrap_or_default(),
        project_root: rec.project_root,
        pid: rec.child_pid,
        pgid: rec.pgid,
        started_at: rec.started_at as f64,
        finished_at: rec.finished_at.map(|v| v as f64),
        duration_ms: rec.duration_ms.map(|v| v as f64),
        timeout_ms: rec.timeout_ms.map(|v| v as f64),
        exit_code: rec.exit_code,
        signal: rec.signal,
        status_reason: rec.status_reason,
        notify_on_completion: rec.notify_on_completion,
        completion_delivered: rec.completion_delivered,
        compressed: rec.compressed,
        stdout_path,
        stderr_path,
        pty_path,
        output_bytes: output_bytes.map(|v| v as f64),
        rows: rec.pty_rows.map(u32::from),
        cols: rec.pty_cols.map(u32::from),
        label: rec.label,
        stdin: rec.stdin,
        rusage: rusage(rec.rusage),
        task_id: rec.task_id,
        session_id: rec.session_id,
        command: rec.command,
    }
}

pub(super) fn completion(c: manager::Completion) -> Completion {
    Completion {
        status: c.record.status.into(),
        exit_code: c.record.exit_code,
        signal: c.record.signal,
        duration_ms: c.record.duration_ms.map(|d| d as f64),
        output_preview: c.preview.text,
        output_truncated: c.preview.truncated,
        label: c.record.label,
        rusage: rusage(c.record.rusage),
        task_id: c.record.task_id,
        session_id: c.record.session_id,
        command: c.record.command,
    }
}

/// `RunResult extends TaskSnapshot`: the snapshot's fields plus `promoted` and `output`.
pub struct RunResult {
    pub(super) snapshot: TaskSnapshot,
    pub(super) promoted: bool,
    pub(super) output: String,
}

impl ToNapiValue for RunResult {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> napi::Result<napi::sys::napi_value> {
        // SAFETY: called by napi on the JS thread with a live env.
        let raw = unsafe { TaskSnapshot::to_napi_value(env, val.snapshot)? };
        let mut obj = Object::from_raw(env, raw);
        obj.set("promoted", val.promoted)?;
        obj.set("output", val.output)?;
        Ok(raw)
    }
}

/// The JS object for one event, shaped like the `TaskEvent` union in index.d.ts.
pub(super) fn event_object<'e>(env: &'e Env, event: Event) -> napi::Result<Object<'e>> {
    let mut o = Object::new(env)?;
    match event {
        Event::Completion(c) => {
            o.set("type", "completion")?;
            o.set("completion", completion(c))?;
        }
        Event::LongRunning { task_id, session_id, command, elapsed_ms } => {
            o.set("type", "long_running")?;
            o.set("taskId", task_id)?;
            o.set("sessionId", session_id)?;
            o.set("command", command)?;
            o.set("elapsedMs", elapsed_ms as f64)?;
        }
        Event::PatternMatch(m) => {
            o.set("type", "pattern_match")?;
            o.set("taskId", m.task_id)?;
            o.set("sessionId", m.session_id)?;
            o.set("watchId", m.watch_id)?;
            o.set("matchText", m.match_text)?;
            if !m.groups.is_empty() {
                o.set("groups", m.groups)?;
            }
            o.set("matchOffset", m.match_offset as f64)?;
            o.set("context", m.context)?;
            o.set("reason", m.reason.as_str())?;
            if m.reason == crate::watch::Reason::RateLimited {
                o.set("suppressed", m.suppressed as f64)?;
            }
            if !m.stream.is_empty() {
                o.set("stream", m.stream)?;
            }
        }
    }
    Ok(o)
}
