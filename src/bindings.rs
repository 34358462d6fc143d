//! The N-API surface: converts JavaScript values to manager calls and back, and errors to JS
//! `Error`s with a stable `code`. No logic lives here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::Notify;

use crate::error::{Code, Error as BgError, Result as BgResult};
use crate::manager::{self, Event, Manager, Stream};
use crate::protocol;
use crate::store::{Mode, Status as TaskStatus, TaskRecord};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use std::sync::Mutex;

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
    #[napi(ts_type = "'batched' | 'strict'")]
    pub durability: Option<String>,
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
    #[napi(ts_type = "'pipes' | 'pty'")]
    pub mode: Option<String>,
    pub rows: Option<f64>,
    pub cols: Option<f64>,
    /// NO_COLOR=1, TERM=dumb, PAGER=cat, ... so programs neither page nor buffer.
    pub agent_env: Option<bool>,
    /// Pipes mode. Default 'null'. 'pipe': the command reads a pipe its supervisor holds (so it
    /// outlives the manager); `write()` feeds it and `closeStdin()` sends EOF.
    #[napi(ts_type = "'null' | 'pipe'")]
    pub stdin: Option<String>,
    /// A short human name (1..128 bytes, no control characters): stored, listed, shown in
    /// reminders and by the CLI.
    pub label: Option<String>,
}

/// Resource use of a task's process tree as its supervisor reaped it (`wait4`).
#[napi(object)]
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

#[napi(object)]
pub struct TaskSnapshot {
    pub task_id: String,
    pub session_id: String,
    pub harness: String,
    pub command: String,
    #[napi(ts_type = "'pipes' | 'pty'")]
    pub mode: String,
    #[napi(ts_type = "TaskStatus")]
    pub status: String,
    pub cwd: String,
    pub project_root: Option<String>,
    pub project_key: String,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    /// Unix ms.
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub duration_ms: Option<f64>,
    pub timeout_ms: Option<f64>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub status_reason: Option<String>,
    pub notify_on_completion: bool,
    pub completion_delivered: bool,
    pub compressed: bool,
    pub stdout_path: Option<String>,
    pub stderr_path: Option<String>,
    pub pty_path: Option<String>,
    pub output_bytes: Option<f64>,
    pub rows: Option<u32>,
    pub cols: Option<u32>,
    pub label: Option<String>,
    /// 'pipe' when the task was spawned with `stdin: 'pipe'`.
    #[napi(ts_type = "'pipe'")]
    pub stdin: Option<String>,
    /// Of the task's process tree, once it ended. Absent while it runs, and for a task that
    /// ended while no manager listened to its supervisor (its exit marker holds only the code).
    pub rusage: Option<TaskRusage>,
}

#[napi(object)]
pub struct ListFilter {
    pub session_id: Option<String>,
    pub project_root: Option<String>,
    #[napi(ts_type = "TaskStatus[]")]
    pub status: Option<Vec<String>>,
    pub harness: Option<String>,
}

#[napi(object)]
pub struct KillOptions {
    #[napi(ts_type = "'SIGTERM' | 'SIGINT' | 'SIGHUP' | 'SIGKILL'")]
    pub signal: Option<String>,
    pub grace_ms: Option<f64>,
}

#[napi(object)]
pub struct Completion {
    pub task_id: String,
    pub session_id: String,
    #[napi(ts_type = "TaskStatus")]
    pub status: String,
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
    #[napi(ts_type = "'stdout' | 'stderr' | 'pty'")]
    pub stream: Option<String>,
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
    #[napi(ts_type = "'stdout' | 'stderr' | 'pty' | 'combined'")]
    pub stream: Option<String>,
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
    pub once: Option<bool>,
}

#[napi(object)]
pub struct WaitForResult {
    #[napi(ts_type = "'matched' | 'exited' | 'timeout'")]
    pub reason: String,
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

/// Builds a JS `Error` whose `code` is the stable code of API.md.
fn js_error(env: &Env, e: BgError) -> napi::Error {
    match env.create_error(napi::Error::new(Status::GenericFailure, e.message)) {
        Ok(mut obj) => {
            let _ = obj.set("code", e.code.as_str());
            napi::Error::from(obj.to_unknown())
        }
        Err(err) => err,
    }
}

/// Runs `fut` on the runtime and settles a Promise with its result (or a coded rejection).
fn promise<'e, T, F>(env: &'e Env, fut: F) -> napi::Result<PromiseRaw<'e, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = BgResult<T>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, r| r.map_err(|e| js_error(env, e)))
}

/// A non-negative whole number of milliseconds/bytes/counts.
fn count(name: &str, v: Option<f64>) -> BgResult<Option<u64>> {
    match v {
        None => Ok(None),
        Some(x) if (0.0..=9.007_199_254_740_991e15).contains(&x) => Ok(Some(x.trunc() as u64)),
        Some(x) => Err(BgError::invalid(format!("{name} must be a non-negative number (got {x})"))),
    }
}

fn size(name: &str, v: Option<f64>, max: u64) -> BgResult<Option<u16>> {
    match count(name, v)? {
        None => Ok(None),
        Some(n) if (1..=max).contains(&n) => Ok(Some(n as u16)),
        Some(n) => Err(BgError::invalid(format!("{name} must be between 1 and {max} (got {n})"))),
    }
}

fn snapshot(m: &Manager, rec: TaskRecord) -> TaskSnapshot {
    let paths = m.paths(&rec).ok();
    snapshot_at(rec, paths)
}

/// Snapshots of many records: each session's directory is looked up once, not per task.
fn snapshots(m: &Manager, recs: Vec<TaskRecord>) -> Vec<TaskSnapshot> {
    let mut dirs: std::collections::HashMap<String, Option<std::path::PathBuf>> = Default::default();
    recs.into_iter()
        .map(|rec| {
            let dir = dirs.entry(rec.session_id.clone()).or_insert_with(|| m.paths(&rec).ok().map(|p| p.dir));
            let paths = dir.as_deref().map(|d| crate::store::paths_in(d, &rec.task_id));
            snapshot_at(rec, paths)
        })
        .collect()
}

fn snapshot_at(rec: TaskRecord, paths: Option<crate::store::TaskPaths>) -> TaskSnapshot {
    let size = |p: &std::path::Path| std::fs::symlink_metadata(p).ok().map(|md| md.len());
    let (stdout_path, stderr_path, pty_path, output_bytes) = match (rec.mode, paths) {
        (_, None) => (None, None, None, None),
        (Mode::Pipes, Some(paths)) => {
            let bytes = match (size(&paths.stdout), size(&paths.stderr)) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            (Some(paths.stdout.display().to_string()), Some(paths.stderr.display().to_string()), None, bytes)
        }
        (Mode::Pty, Some(paths)) => (None, None, Some(paths.pty.display().to_string()), size(&paths.pty)),
    };
    TaskSnapshot {
        harness: rec.harness.clone().unwrap_or_else(|| "default".into()),
        mode: rec.mode.as_str().into(),
        status: rec.status.as_str().into(),
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

fn stream(name: Option<&str>) -> BgResult<Option<Stream>> {
    match name {
        None => Ok(None),
        Some("stdout") => Ok(Some(Stream::Stdout)),
        Some("stderr") => Ok(Some(Stream::Stderr)),
        Some("pty") => Ok(Some(Stream::Pty)),
        Some("combined") => Ok(Some(Stream::Combined)),
        Some(other) => Err(BgError::invalid(format!("stream must be 'stdout', 'stderr', 'pty' or 'combined' (got {other:?})"))),
    }
}

fn completion(c: manager::Completion) -> Completion {
    Completion {
        status: c.record.status.as_str().into(),
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
    snapshot: TaskSnapshot,
    promoted: bool,
    output: String,
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
fn event_object<'e>(env: &'e Env, event: Event) -> napi::Result<Object<'e>> {
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
            o.set("reason", if m.reason == crate::watch::Reason::TaskExit { "task_exit" } else { "pattern_match" })?;
            if !m.stream.is_empty() {
                o.set("stream", m.stream)?;
            }
        }
    }
    Ok(o)
}

type Listener = FunctionRef<Unknown<'static>, Unknown<'static>>;
type Listeners = Arc<Mutex<Vec<(u64, Listener)>>>;

/// Calls every listener; one that throws is skipped (the error goes to stderr), the rest run.
fn dispatch(env: &Env, listeners: &Listeners, event: Event) -> napi::Result<()> {
    let obj = event_object(env, event)?;
    let fns: Vec<Function<Unknown, Unknown>> = listeners.lock().unwrap().iter().filter_map(|(_, f)| f.borrow_back(env).ok()).collect();
    for f in fns {
        if let Err(e) = f.call(obj.to_unknown()) {
            eprintln!("bgshell: an onEvent listener threw: {}", e.reason);
        }
    }
    Ok(())
}

fn spawn_request(o: SpawnOptions) -> BgResult<manager::SpawnRequest> {
    let mode = match o.mode.as_deref() {
        None | Some("pipes") => Mode::Pipes,
        Some("pty") => Mode::Pty,
        Some(other) => return Err(BgError::invalid(format!("mode must be 'pipes' or 'pty' (got {other:?})"))),
    };
    let stdin_pipe = match o.stdin.as_deref() {
        None | Some("null") => false,
        Some("pipe") => true,
        Some(other) => return Err(BgError::invalid(format!("stdin must be 'null' or 'pipe' (got {other:?})"))),
    };
    let mut env: Vec<(String, String)> = o.env.unwrap_or_default().into_iter().collect();
    env.sort();
    Ok(manager::SpawnRequest {
        session_id: o.session_id,
        command: o.command,
        cwd: o.cwd,
        env,
        timeout_ms: count("timeoutMs", o.timeout_ms)?,
        notify_on_completion: o.notify_on_completion,
        compressed: o.compressed,
        project_root: o.project_root,
        mode,
        rows: size("rows", o.rows, 500)?,
        cols: size("cols", o.cols, 1000)?,
        agent_env: o.agent_env,
        stdin_pipe,
        label: o.label,
    })
}

/// Durable background shell tasks. See API.md.
#[napi]
pub struct TaskManager {
    inner: Arc<Manager>,
    listeners: Listeners,
    next_listener: u64,
    /// The manager's event sink (a weak threadsafe function) is installed at the first onEvent.
    events_started: bool,
}

#[napi]
impl TaskManager {
    #[napi(catch_unwind, constructor)]
    pub fn new(env: Env, options: Option<ManagerOptions>) -> napi::Result<Self> {
        let mut o = options.unwrap_or_default();
        if o.storage_dir.is_none() {
            // Read the default location from JS `process.env`: Bun does not pass later edits of
            // it down to the native environment, and a harness may set BGSHELL_HOME at run time.
            o.storage_dir = js_default_storage_dir(&env);
        }
        let build = || -> BgResult<Arc<Manager>> {
            let opts = manager::Options {
                storage_dir: o.storage_dir,
                harness: o.harness,
                max_running: count("maxRunning", o.max_running)?,
                default_timeout_ms: count("defaultTimeoutMs", o.default_timeout_ms)?,
                kill_grace_ms: count("killGraceMs", o.kill_grace_ms)?,
                shell: o.shell,
                retention_ms: count("retentionMs", o.retention_ms)?,
                long_running_interval_ms: count("longRunningIntervalMs", o.long_running_interval_ms)?,
                agent_env: o.agent_env,
                output_cap_bytes: count("outputCapBytes", o.output_cap_bytes)?,
                durability: o.durability,
            };
            Manager::new(manager::Config::resolve(opts)?)
        };
        build()
            .map(|inner| TaskManager { inner, listeners: Default::default(), next_listener: 0, events_started: false })
            .map_err(|e| js_error(&env, e))
    }

    /// The resolved absolute store root.
    #[napi(catch_unwind, getter)]
    pub fn storage_dir(&self) -> String {
        self.inner.config().storage_dir.display().to_string()
    }

    /// Resolves once the task runs and its "running" record is durable.
    #[napi(catch_unwind, ts_return_type = "Promise<TaskSnapshot>")]
    pub fn spawn<'e>(&self, env: &'e Env, options: SpawnOptions) -> napi::Result<PromiseRaw<'e, TaskSnapshot>> {
        let m = self.inner.clone();
        promise(env, async move {
            let req = spawn_request(options)?;
            let rec = m.spawn(req).await?;
            Ok(snapshot(&m, rec))
        })
    }

    /// Any session, any manager process, after restarts too. Null when there is no such task.
    #[napi(catch_unwind)]
    pub fn get(&self, env: Env, task_id: String) -> napi::Result<Option<TaskSnapshot>> {
        match self.inner.get(&task_id) {
            Ok(r) => Ok(r.map(|r| snapshot(&self.inner, r))),
            Err(e) => Err(js_error(&env, e)),
        }
    }

    #[napi(catch_unwind)]
    pub fn list(&self, env: Env, filter: Option<ListFilter>) -> napi::Result<Vec<TaskSnapshot>> {
        let run = || -> BgResult<Vec<TaskSnapshot>> {
            let f = filter.unwrap_or(ListFilter { session_id: None, project_root: None, status: None, harness: None });
            let status = match f.status {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .map(|s| TaskStatus::parse(s).ok_or_else(|| BgError::invalid(format!("unknown status {s:?} in filter"))))
                        .collect::<BgResult<Vec<_>>>()?,
                ),
            };
            let filter = manager::ListFilter { session_id: f.session_id, project_root: f.project_root, status, harness: f.harness };
            Ok(snapshots(&self.inner, self.inner.list(&filter)?))
        };
        run().map_err(|e| js_error(&env, e))
    }

    /// Resolves at the terminal state; on timeout resolves with the still-running snapshot;
    /// rejects with E_ABORTED when the signal fires.
    #[napi(catch_unwind, 
        ts_args_type = "taskId: string, options?: { timeoutMs?: number; signal?: AbortSignal }",
        ts_return_type = "Promise<TaskSnapshot>"
    )]
    pub fn wait<'e>(&self, env: &'e Env, task_id: String, options: Option<Object>) -> napi::Result<PromiseRaw<'e, TaskSnapshot>> {
        let m = self.inner.clone();
        let mut timeout = Ok(None);
        let (mut abort, mut already_aborted) = (None, false);
        if let Some(opts) = options {
            timeout = count("timeoutMs", opts.get::<f64>("timeoutMs")?);
            (abort, already_aborted) = abort_signal(env, &opts)?;
        }
        promise(env, async move {
            if already_aborted {
                return Err(BgError::new(Code::Aborted, format!("wait for {task_id} was aborted by its AbortSignal")));
            }
            let timeout = timeout?.map(Duration::from_millis);
            Ok(snapshot(&m, m.wait(&task_id, timeout, abort).await?))
        })
    }

    /// Sends the signal to the task's whole process group, SIGKILLs the group after the grace.
    /// A finished task is returned unchanged.
    #[napi(catch_unwind, ts_return_type = "Promise<TaskSnapshot>")]
    pub fn kill<'e>(&self, env: &'e Env, task_id: String, options: Option<KillOptions>) -> napi::Result<PromiseRaw<'e, TaskSnapshot>> {
        let m = self.inner.clone();
        promise(env, async move {
            let (signal, grace) = match options {
                Some(o) => (o.signal, count("graceMs", o.grace_ms)?),
                None => (None, None),
            };
            let signal = match signal.as_deref() {
                None => libc::SIGTERM,
                Some(name @ ("SIGTERM" | "SIGINT" | "SIGHUP" | "SIGKILL")) => protocol::signal_number(name).unwrap_or(libc::SIGTERM),
                Some(other) => return Err(BgError::invalid(format!("signal must be SIGTERM, SIGINT, SIGHUP or SIGKILL (got {other:?})"))),
            };
            Ok(snapshot(&m, m.kill(&task_id, signal, grace).await?))
        })
    }

    /// Loads the session's tasks from the store: reattaches to those still running, finalises
    /// those that ended while no manager watched, fails those that vanished. Never re-runs.
    #[napi(catch_unwind, ts_return_type = "Promise<TaskSnapshot[]>")]
    pub fn replay<'e>(
        &self,
        env: &'e Env,
        session_id: String,
        options: Option<ReplayOptions>,
    ) -> napi::Result<PromiseRaw<'e, Vec<TaskSnapshot>>> {
        let m = self.inner.clone();
        promise(env, async move {
            let root = options.and_then(|o| o.project_root);
            let recs = m.replay(&session_id, root.as_deref()).await?;
            Ok(snapshots(&m, recs))
        })
    }

    /// Peek: undelivered completions of that session, oldest first.
    #[napi(catch_unwind)]
    pub fn drain_completions(&self, env: Env, session_id: String) -> napi::Result<Vec<Completion>> {
        let list = self.inner.drain(&session_id).map_err(|e| js_error(&env, e))?;
        Ok(list.into_iter().map(completion).collect())
    }

    /// Durable; returns the ids acked; idempotent.
    #[napi(catch_unwind)]
    pub fn ack_completions(&self, env: Env, session_id: String, task_ids: Vec<String>) -> napi::Result<Vec<String>> {
        self.inner.ack(&session_id, &task_ids).map_err(|e| js_error(&env, e))
    }

    /// Removes delivered terminal tasks older than retentionMs (or olderThanMs), quarantines
    /// unreadable bundles, deletes quarantine entries older than 30 days.
    #[napi(catch_unwind, ts_return_type = "Promise<GcResult>")]
    pub fn gc<'e>(&self, env: &'e Env, options: Option<GcOptions>) -> napi::Result<PromiseRaw<'e, GcResult>> {
        let m = self.inner.clone();
        promise(env, async move {
            let older = count("olderThanMs", options.and_then(|o| o.older_than_ms))?;
            let r = m.gc(older).await?;
            Ok(GcResult { removed: r.removed as u32, quarantined: r.quarantined as u32 })
        })
    }

    /// Pages through stdout, stderr or the pty transcript by byte offset.
    #[napi(catch_unwind, ts_return_type = "Promise<OutputPage>")]
    pub fn read_output<'e>(
        &self,
        env: &'e Env,
        task_id: String,
        options: Option<ReadOutputOptions>,
    ) -> napi::Result<PromiseRaw<'e, OutputPage>> {
        let m = self.inner.clone();
        promise(env, async move {
            let (st, offset, max) = match options {
                Some(o) => (stream(o.stream.as_deref())?, count("offset", o.offset)?, count("maxBytes", o.max_bytes)?),
                None => (None, None, None),
            };
            let p = m.read_output(&task_id, st, offset.unwrap_or(0), max.unwrap_or(64 * 1024)).await?;
            Ok(OutputPage {
                data: p.data,
                offset: p.offset as f64,
                next_offset: p.next_offset as f64,
                eof: p.eof,
                total_bytes: p.total_bytes as f64,
                dropped_bytes: (p.dropped_bytes > 0).then_some(p.dropped_bytes as f64),
            })
        })
    }

    /// The end of a stream, read from the end of the file (cost independent of its size).
    #[napi(catch_unwind, ts_return_type = "Promise<TailResult>")]
    pub fn tail<'e>(&self, env: &'e Env, task_id: String, options: Option<TailOptions>) -> napi::Result<PromiseRaw<'e, TailResult>> {
        let m = self.inner.clone();
        promise(env, async move {
            let (st, bytes, lines, strip) = match options {
                Some(o) => {
                    (stream(o.stream.as_deref())?, count("bytes", o.bytes)?, count("lines", o.lines)?, o.strip_ansi.unwrap_or(false))
                }
                None => (None, None, None, false),
            };
            let (text, truncated) = m.tail(&task_id, st, bytes, lines, strip).await?;
            Ok(TailResult { text, truncated })
        })
    }

    /// Subscribes to task events; returns the unsubscribe function. Never keeps the process
    /// alive; a listener that throws does not stop the others.
    #[napi(catch_unwind, ts_args_type = "listener: (event: TaskEvent) => void", ts_return_type = "() => void")]
    pub fn on_event<'e>(
        &mut self,
        env: &'e Env,
        listener: Function<'e, Unknown<'static>, Unknown<'static>>,
    ) -> napi::Result<Function<'e, (), ()>> {
        if !self.events_started {
            let listeners = self.listeners.clone();
            let noop = env.create_function_from_closure::<(), (), _>("bgshellEvents", |_| Ok(()))?;
            let tsfn = noop
                .build_threadsafe_function::<Event>()
                .weak::<true>()
                .callee_handled::<false>()
                .build_callback(move |ctx| dispatch(&ctx.env, &listeners, ctx.value))?;
            self.inner.set_sink(Some(Arc::new(move |event| {
                tsfn.call(event, ThreadsafeFunctionCallMode::NonBlocking);
            })));
            self.events_started = true;
        }
        self.next_listener += 1;
        let id = self.next_listener;
        self.listeners.lock().unwrap().push((id, listener.create_ref()?));
        let listeners = self.listeners.clone();
        env.create_function_from_closure::<(), (), _>("unsubscribe", move |_| {
            listeners.lock().unwrap().retain(|(i, _)| *i != id);
            Ok(())
        })
    }

    /// Watches the task's output for a substring (`pattern`) or a regular expression; matches
    /// arrive as `pattern_match` events. Returns the watch id.
    #[napi(catch_unwind)]
    pub fn watch(&self, env: Env, task_id: String, options: WatchOptions) -> napi::Result<String> {
        let once = options.once.unwrap_or(false);
        within_runtime_if_available(|| self.inner.watch(&task_id, options.pattern.as_deref(), options.regex.as_deref(), once))
            .map_err(|e| js_error(&env, e))
    }

    #[napi(catch_unwind)]
    pub fn unwatch(&self, env: Env, task_id: String, watch_id: String) -> napi::Result<bool> {
        self.inner.unwatch(&task_id, &watch_id).map_err(|e| js_error(&env, e))
    }

    /// Resolves `matched` / `exited` / `timeout`; rejects with E_ABORTED when the signal fires.
    #[napi(catch_unwind, 
        ts_args_type = "taskId: string, options: { pattern?: string; regex?: string; timeoutMs?: number; signal?: AbortSignal }",
        ts_return_type = "Promise<WaitForResult>"
    )]
    pub fn wait_for<'e>(&self, env: &'e Env, task_id: String, options: Object) -> napi::Result<PromiseRaw<'e, WaitForResult>> {
        let m = self.inner.clone();
        let pattern = options.get::<String>("pattern")?;
        let regex = options.get::<String>("regex")?;
        let timeout = count("timeoutMs", options.get::<f64>("timeoutMs")?);
        let (abort, already_aborted) = abort_signal(env, &options)?;
        promise(env, async move {
            if already_aborted {
                return Err(BgError::new(Code::Aborted, format!("waitFor on {task_id} was aborted by its AbortSignal")));
            }
            let timeout = timeout?.map(Duration::from_millis);
            let r = m.wait_for(&task_id, pattern.as_deref(), regex.as_deref(), timeout, abort).await?;
            Ok(match r {
                manager::WaitForResult::Matched(mt, rec) => WaitForResult {
                    reason: "matched".into(),
                    match_text: Some(mt.match_text),
                    groups: (!mt.groups.is_empty()).then_some(mt.groups),
                    match_offset: Some(mt.match_offset as f64),
                    snapshot: snapshot(&m, rec),
                },
                manager::WaitForResult::Exited(rec) => WaitForResult {
                    reason: "exited".into(),
                    match_text: None,
                    groups: None,
                    match_offset: None,
                    snapshot: snapshot(&m, rec),
                },
                manager::WaitForResult::Timeout(rec) => WaitForResult {
                    reason: "timeout".into(),
                    match_text: None,
                    groups: None,
                    match_offset: None,
                    snapshot: snapshot(&m, rec),
                },
            })
        })
    }

    /// Turns on notifyOnCompletion (foreground -> background); a finished task's completion is
    /// queued at once.
    #[napi(catch_unwind)]
    pub fn promote(&self, env: Env, task_id: String) -> napi::Result<TaskSnapshot> {
        self.inner.promote(&task_id).map(|r| snapshot(&self.inner, r)).map_err(|e| js_error(&env, e))
    }

    /// Foreground with auto-promote: inline result if it ends within waitMs, else it carries on
    /// in the background and notifies.
    /// `signal`: aborting it while the command runs in the foreground kills the task and
    /// rejects with E_ABORTED.
    #[napi(catch_unwind, ts_args_type = "options: SpawnOptions & { waitMs: number; signal?: AbortSignal }", ts_return_type = "Promise<RunResult>")]
    pub fn run<'e>(&self, env: &'e Env, options: Object) -> napi::Result<PromiseRaw<'e, RunResult>> {
        let m = self.inner.clone();
        let wait_ms = count("waitMs", options.get::<f64>("waitMs")?);
        let (abort, already_aborted) = abort_signal(env, &options)?;
        // SAFETY: `options` is a live object of this env; SpawnOptions reads its fields.
        let options = unsafe { SpawnOptions::from_napi_value(env.raw(), options.raw())? };
        promise(env, async move {
            let wait_ms =
                wait_ms?.ok_or_else(|| BgError::invalid("run needs waitMs: how long to wait before moving the task to the background"))?;
            if already_aborted {
                return Err(BgError::new(Code::Aborted, "run was aborted by its AbortSignal before it started"));
            }
            let req = spawn_request(options)?;
            let r = m.run(req, wait_ms, abort).await?;
            Ok(RunResult { snapshot: snapshot(&m, r.record), promoted: r.promoted, output: r.output })
        })
    }

    /// Types into a pty task, or writes to the stdin pipe of a pipes task spawned with
    /// `stdin: 'pipe'`: strings as given, `{ key }` objects as a terminal sends them, all in one
    /// write. Returns the bytes written.
    #[napi(catch_unwind, ts_args_type = "taskId: string, input: string | Array<string | { key: string }>")]
    pub fn write(&self, env: Env, task_id: String, input: Either<String, Vec<Either<String, KeyInput>>>) -> napi::Result<f64> {
        let parts: Vec<manager::Input> = match input {
            Either::A(text) => vec![manager::Input::Text(text)],
            Either::B(list) => list
                .into_iter()
                .map(|p| match p {
                    Either::A(text) => manager::Input::Text(text),
                    Either::B(k) => manager::Input::Key(k.key),
                })
                .collect(),
        };
        self.inner.write(&task_id, &parts).map(|n| n as f64).map_err(|e| js_error(&env, e))
    }

    /// Sends EOF to a pipes task spawned with `stdin: 'pipe'` (its supervisor closes the pipe).
    /// Idempotent while the task runs.
    #[napi(catch_unwind)]
    pub fn close_stdin(&self, env: Env, task_id: String) -> napi::Result<()> {
        self.inner.close_stdin(&task_id).map_err(|e| js_error(&env, e))
    }

    /// Resizes a pty task's terminal; the program gets SIGWINCH and the new size.
    #[napi(catch_unwind)]
    pub fn resize(&self, env: Env, task_id: String, rows: f64, cols: f64) -> napi::Result<()> {
        let run = || -> BgResult<()> {
            let rows = size("rows", Some(rows), 500)?.unwrap_or(manager::DEFAULT_ROWS);
            let cols = size("cols", Some(cols), 1000)?.unwrap_or(manager::DEFAULT_COLS);
            self.inner.resize(&task_id, rows, cols)
        };
        run().map_err(|e| js_error(&env, e))
    }

    /// The visible screen of a pty task as text, rendered by a terminal emulator; works after
    /// the task ended too.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn screen<'e>(&self, env: &'e Env, task_id: String) -> napi::Result<PromiseRaw<'e, String>> {
        let m = self.inner.clone();
        promise(env, async move { m.screen(&task_id).await })
    }

    /// Stop watching; tasks keep running unless killRunning.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env, options: Option<CloseOptions>) -> napi::Result<PromiseRaw<'e, ()>> {
        let m = self.inner.clone();
        let kill_running = options.and_then(|o| o.kill_running).unwrap_or(false);
        promise(env, async move {
            m.close(kill_running).await;
            Ok(())
        })
    }
}

/// $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell, else $HOME/.local/state/bgshell, as JS sees
/// the environment; None leaves the choice to the native environment.
fn js_default_storage_dir(env: &Env) -> Option<String> {
    let global = env.get_global().ok()?;
    let process: Option<Object> = napi::bindgen_prelude::JsObjectValue::get_named_property(&global, "process").ok()?;
    let process = process?;
    let vars: Object = process.get("env").ok()??;
    let var = |k: &str| vars.get::<String>(k).ok().flatten().filter(|v| !v.is_empty());
    if let Some(h) = var("BGSHELL_HOME") {
        return Some(h);
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return Some(format!("{}/bgshell", x.trim_end_matches('/')));
    }
    var("HOME").map(|h| format!("{}/.local/state/bgshell", h.trim_end_matches('/')))
}

/// Reads `options.signal`: a Notify that fires on abort, and whether it had already fired.
fn abort_signal(env: &Env, options: &Object) -> napi::Result<(Option<Arc<Notify>>, bool)> {
    match options.get::<Object>("signal")? {
        None => Ok((None, false)),
        Some(signal) => {
            if signal.get::<bool>("aborted")?.unwrap_or(false) {
                return Ok((None, true));
            }
            Ok((Some(on_abort(env, &signal)?), false))
        }
    }
}

/// `signal.addEventListener(type, listener)` as seen from Rust.
type AddEventListener<'a> = Function<'a, FnArgs<(&'a str, Function<'a, (), ()>)>, Unknown<'a>>;

/// Subscribes to an AbortSignal's `abort` event; the returned Notify fires when it does.
fn on_abort(env: &Env, signal: &Object) -> napi::Result<Arc<Notify>> {
    let notify = Arc::new(Notify::new());
    let fire = notify.clone();
    let listener = env.create_function_from_closure::<(), (), _>("onabort", move |_ctx| {
        fire.notify_one();
        Ok(())
    })?;
    let add: AddEventListener = signal
        .get("addEventListener")?
        .ok_or_else(|| napi::Error::new(Status::InvalidArg, "signal is not an AbortSignal (no addEventListener)"))?;
    add.apply(signal, FnArgs::from(("abort", listener)))?;
    Ok(notify)
}
