//! The N-API surface: converts JavaScript values to manager calls and back, and errors to JS
//! `Error`s with a stable `code`. No logic lives here.

use crate::sync::Locked;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::Notify;

use crate::error::{Code, Error as BgError, Result as BgResult};
use crate::manager::{self, Event, Manager};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use std::sync::Mutex;

mod bulk;
mod enums;
mod objects;
use bulk::{snapshots, SnapshotList};
pub use enums::*;
pub use objects::*;

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

/// Runs the future `make` builds on the runtime and settles a Promise with its result (or a
/// coded rejection). The future is built and boxed on the runtime at its first poll: what the
/// JS thread creates and hands over is only `make`'s captures. A manager call's future is
/// several KB (spawn's is about 3 KB): moved by value through napi's and tokio's wrappers, its
/// copies and fresh heap pages were about 40 % of a spawn() call's time on the JS thread, which
/// a burst of calls made in one turn felt as a stall (issue #15).
fn promise<'e, T, M, F>(env: &'e Env, make: M) -> napi::Result<PromiseRaw<'e, T>>
where
    T: ToNapiValue + Send + 'static,
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = BgResult<T>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(Box::pin(make()).await) }, |env, r| r.map_err(|e| js_error(env, e)))
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

type Listener = FunctionRef<Unknown<'static>, Unknown<'static>>;
type Listeners = Arc<Mutex<Vec<(u64, Listener)>>>;

/// Calls every listener; one that throws is skipped (the error goes to stderr), the rest run.
fn dispatch(env: &Env, listeners: &Listeners, event: Event) -> napi::Result<()> {
    let obj = event_object(env, event)?;
    let fns: Vec<Function<Unknown, Unknown>> = listeners.locked().iter().filter_map(|(_, f)| f.borrow_back(env).ok()).collect();
    for f in fns {
        if let Err(e) = f.call(obj.to_unknown()) {
            eprintln!("bgshell: an onEvent listener threw: {}", e.reason);
        }
    }
    Ok(())
}

fn spawn_request(o: SpawnOptions) -> BgResult<manager::SpawnRequest> {
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
        mode: o.mode.unwrap_or(TaskMode::Pipes).into(),
        rows: size("rows", o.rows, 500)?,
        cols: size("cols", o.cols, 1000)?,
        agent_env: o.agent_env,
        stdin_pipe: o.stdin == Some(StdinMode::Pipe),
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
                durability: o.durability.map(|d| d.as_str().to_owned()),
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
        promise(env, move || async move {
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

    #[napi(catch_unwind, ts_return_type = "Array<TaskSnapshot>")]
    pub fn list(&self, env: Env, filter: Option<ListFilter>) -> napi::Result<SnapshotList> {
        let run = || -> BgResult<SnapshotList> {
            let f = filter.unwrap_or(ListFilter { session_id: None, project_root: None, status: None, harness: None });
            let status = f.status.map(|list| list.into_iter().map(Into::into).collect());
            let filter = manager::ListFilter { session_id: f.session_id, project_root: f.project_root, status, harness: f.harness };
            Ok(snapshots(&self.inner, self.inner.list(&filter)?))
        };
        run().map_err(|e| js_error(&env, e))
    }

    /// Resolves at the terminal state; on timeout resolves with the still-running snapshot;
    /// rejects with E_ABORTED when the signal fires.
    #[napi(
        catch_unwind,
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
        promise(env, move || async move {
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
        promise(env, move || async move {
            let (signal, grace) = match options {
                Some(o) => (o.signal, count("graceMs", o.grace_ms)?),
                None => (None, None),
            };
            let signal = signal.unwrap_or(KillSignal::Sigterm).number();
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
    ) -> napi::Result<PromiseRaw<'e, SnapshotList>> {
        let m = self.inner.clone();
        promise(env, move || async move {
            let root = options.and_then(|o| o.project_root);
            let recs = m.replay(&session_id, root.as_deref()).await?;
            // A listing of the session's directory and the text of thousands of snapshots:
            // blocking work, kept off the runtime's workers.
            tokio::task::spawn_blocking(move || snapshots(&m, recs))
                .await
                .map_err(|e| BgError::new(Code::Io, format!("replay stopped: {e}")))
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
        promise(env, move || async move {
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
        promise(env, move || async move {
            let (st, offset, max) = match options {
                Some(o) => (o.stream.map(Into::into), count("offset", o.offset)?, count("maxBytes", o.max_bytes)?),
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
        promise(env, move || async move {
            let (st, bytes, lines, strip) = match options {
                Some(o) => (o.stream.map(Into::into), count("bytes", o.bytes)?, count("lines", o.lines)?, o.strip_ansi.unwrap_or(false)),
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
        self.listeners.locked().push((id, listener.create_ref()?));
        let listeners = self.listeners.clone();
        env.create_function_from_closure::<(), (), _>("unsubscribe", move |_| {
            listeners.locked().retain(|(i, _)| *i != id);
            Ok(())
        })
    }

    /// Watches the task's output for a substring (`pattern`) or a regular expression; matches
    /// arrive as `pattern_match` events. Returns the watch id.
    #[napi(catch_unwind)]
    pub fn watch(&self, env: Env, task_id: String, options: WatchOptions) -> napi::Result<String> {
        let once = options.once.unwrap_or(false);
        within_runtime_if_available(|| {
            let spec = crate::watch::Spec::new(options.pattern.as_deref(), options.regex.as_deref(), once, options.max_per_minute)?;
            self.inner.watch(&task_id, spec)
        })
        .map_err(|e| js_error(&env, e))
    }

    /// Removes a watch; false when the task has none by that id (or has ended).
    #[napi(catch_unwind)]
    pub fn unwatch(&self, env: Env, task_id: String, watch_id: String) -> napi::Result<bool> {
        within_runtime_if_available(|| self.inner.unwatch(&task_id, &watch_id)).map_err(|e| js_error(&env, e))
    }

    /// The watches set on a task, kept with it across restarts; empty once it ended.
    #[napi(catch_unwind)]
    pub fn watches(&self, env: Env, task_id: String) -> napi::Result<Vec<WatchInfo>> {
        within_runtime_if_available(|| self.inner.watches(&task_id))
            .map(|list| list.into_iter().map(WatchInfo::from).collect())
            .map_err(|e| js_error(&env, e))
    }

    /// Resolves `matched` / `exited` / `timeout`; rejects with E_ABORTED when the signal fires.
    #[napi(
        catch_unwind,
        ts_args_type = "taskId: string, options: { pattern?: string; regex?: string; timeoutMs?: number; signal?: AbortSignal }",
        ts_return_type = "Promise<WaitForResult>"
    )]
    pub fn wait_for<'e>(&self, env: &'e Env, task_id: String, options: Object) -> napi::Result<PromiseRaw<'e, WaitForResult>> {
        let m = self.inner.clone();
        let pattern = options.get::<String>("pattern")?;
        let regex = options.get::<String>("regex")?;
        let timeout = count("timeoutMs", options.get::<f64>("timeoutMs")?);
        let (abort, already_aborted) = abort_signal(env, &options)?;
        promise(env, move || async move {
            if already_aborted {
                return Err(BgError::new(Code::Aborted, format!("waitFor on {task_id} was aborted by its AbortSignal")));
            }
            let timeout = timeout?.map(Duration::from_millis);
            let r = m.wait_for(&task_id, pattern.as_deref(), regex.as_deref(), timeout, abort).await?;
            Ok(match r {
                manager::WaitForResult::Matched(mt, rec) => WaitForResult {
                    reason: WaitForReason::Matched,
                    match_text: Some(mt.match_text),
                    groups: (!mt.groups.is_empty()).then_some(mt.groups),
                    match_offset: Some(mt.match_offset as f64),
                    snapshot: snapshot(&m, rec),
                },
                manager::WaitForResult::Exited(rec) => WaitForResult {
                    reason: WaitForReason::Exited,
                    match_text: None,
                    groups: None,
                    match_offset: None,
                    snapshot: snapshot(&m, rec),
                },
                manager::WaitForResult::Timeout(rec) => WaitForResult {
                    reason: WaitForReason::Timeout,
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
    #[napi(
        catch_unwind,
        ts_args_type = "options: SpawnOptions & { waitMs: number; signal?: AbortSignal }",
        ts_return_type = "Promise<RunResult>"
    )]
    pub fn run<'e>(&self, env: &'e Env, options: Object) -> napi::Result<PromiseRaw<'e, RunResult>> {
        let m = self.inner.clone();
        let wait_ms = count("waitMs", options.get::<f64>("waitMs")?);
        let (abort, already_aborted) = abort_signal(env, &options)?;
        // SAFETY: `options` is a live object of this env; SpawnOptions reads its fields.
        let options = unsafe { SpawnOptions::from_napi_value(env.raw(), options.raw())? };
        promise(env, move || async move {
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
        promise(env, move || async move { m.screen(&task_id).await })
    }

    /// Stop watching; tasks keep running unless killRunning.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env, options: Option<CloseOptions>) -> napi::Result<PromiseRaw<'e, ()>> {
        let m = self.inner.clone();
        let kill_running = options.and_then(|o| o.kill_running).unwrap_or(false);
        promise(env, move || async move {
            m.close(kill_running).await;
            Ok(())
        })
    }
}

/// The default store location (manager::storage_dir_in) as JS sees the environment; None
/// leaves the choice to the native environment.
fn js_default_storage_dir(env: &Env) -> Option<String> {
    let global = env.get_global().ok()?;
    let process: Option<Object> = napi::bindgen_prelude::JsObjectValue::get_named_property(&global, "process").ok()?;
    let process = process?;
    let vars: Object = process.get("env").ok()??;
    let dir = manager::storage_dir_in(|k| vars.get::<String>(k).ok().flatten().map(std::path::PathBuf::from))?;
    Some(dir.display().to_string())
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
