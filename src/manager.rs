//! The manager: owns the live tasks of one `TaskManager`, drives the lifecycle (lifecycle.rs)
//! through the store, and answers the API. Everything here runs on the shared tokio runtime or
//! is a short, bounded store access; no thread per task.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Notify};

use crate::error::{Code, Error, Result};
use crate::fsutil::{self, unix_millis};
use crate::launcher::{self, Control, LaunchSpec, Launched};
use crate::lifecycle::{settle, ExitFacts};
use crate::proc;
use crate::protocol::{Report, Request};
use crate::store::{ids, Mode, RowFilter, Status, Store, TaskPaths, TaskRecord};

pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// Largest input one `write` takes.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_ROWS: u16 = 24;
pub const DEFAULT_COLS: u16 = 80;
pub const MAX_SESSION_ID_BYTES: usize = 512;

/// Variables set by `agentEnv: true` so programs neither page, prompt, colour nor buffer.
pub const AGENT_ENV: &[(&str, &str)] = &[
    ("NO_COLOR", "1"),
    ("FORCE_COLOR", "0"),
    ("CLICOLOR", "0"),
    ("TERM", "dumb"),
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("MANPAGER", "cat"),
    ("SYSTEMD_PAGER", ""),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("PYTHONUNBUFFERED", "1"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("npm_config_progress", "false"),
    ("npm_config_fund", "false"),
];

#[derive(Debug, Clone)]
pub struct Config {
    pub storage_dir: PathBuf,
    pub harness: String,
    pub max_running: usize,
    pub default_timeout_ms: u64,
    pub kill_grace_ms: u64,
    pub shell: String,
    pub retention_ms: u64,
    pub long_running_interval_ms: u64,
    pub agent_env: bool,
    pub output_cap_bytes: u64,
}

/// Manager options as given (all optional); `Config::resolve` applies API.md's defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub storage_dir: Option<String>,
    pub harness: Option<String>,
    pub max_running: Option<u64>,
    pub default_timeout_ms: Option<u64>,
    pub kill_grace_ms: Option<u64>,
    pub shell: Option<String>,
    pub retention_ms: Option<u64>,
    pub long_running_interval_ms: Option<u64>,
    pub agent_env: Option<bool>,
    pub output_cap_bytes: Option<u64>,
}

impl Config {
    pub fn resolve(o: Options) -> Result<Config> {
        let storage_dir = match o.storage_dir {
            Some(d) if d.is_empty() => return Err(Error::invalid("storageDir must not be empty")),
            Some(d) => absolute(Path::new(&d)),
            None => default_storage_dir()?,
        };
        let harness = o.harness.unwrap_or_else(|| "default".into());
        if harness.is_empty() || !harness.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return Err(Error::invalid(format!("harness {harness:?} must match [a-z0-9_-]+")));
        }
        let max_running = o.max_running.unwrap_or(16) as usize;
        if max_running == 0 {
            return Err(Error::invalid("maxRunning must be at least 1"));
        }
        let shell = match o.shell {
            Some(s) if s.is_empty() => return Err(Error::invalid("shell must not be empty")),
            Some(s) => s,
            None => default_shell(),
        };
        Ok(Config {
            storage_dir,
            harness,
            max_running,
            default_timeout_ms: o.default_timeout_ms.unwrap_or(1_800_000),
            kill_grace_ms: o.kill_grace_ms.unwrap_or(2000),
            shell,
            retention_ms: o.retention_ms.unwrap_or(24 * 3600 * 1000),
            long_running_interval_ms: o.long_running_interval_ms.unwrap_or(600_000),
            agent_env: o.agent_env.unwrap_or(false),
            output_cap_bytes: o.output_cap_bytes.unwrap_or(100 * 1024 * 1024),
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|c| c.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell, else ~/.local/state/bgshell.
pub fn default_storage_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(h) = var("BGSHELL_HOME") {
        return Ok(absolute(&h));
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return Ok(absolute(&x).join("bgshell"));
    }
    var("HOME")
        .map(|h| h.join(".local/state/bgshell"))
        .ok_or_else(|| Error::invalid("no storageDir given and neither BGSHELL_HOME, XDG_STATE_HOME nor HOME is set"))
}

/// $BASH if it exists, else `bash` on PATH, else /bin/sh.
fn default_shell() -> String {
    if let Some(b) = std::env::var_os("BASH").map(PathBuf::from).filter(|p| p.is_file()) {
        return b.display().to_string();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bash");
            if candidate.is_file() {
                return candidate.display().to_string();
            }
        }
    }
    "/bin/sh".into()
}

#[derive(Debug, Clone, Default)]
pub struct SpawnRequest {
    pub session_id: String,
    pub command: String,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout_ms: Option<u64>,
    pub notify_on_completion: Option<bool>,
    pub compressed: Option<bool>,
    pub project_root: Option<String>,
    pub mode: Mode,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
    pub agent_env: Option<bool>,
}

pub fn validate_session_id(session_id: &str) -> Result<()> {
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_BYTES || session_id.contains('\0') {
        return Err(Error::invalid(format!(
            "sessionId must be 1 to {MAX_SESSION_ID_BYTES} bytes without NUL (got {} bytes)",
            session_id.len()
        )));
    }
    Ok(())
}

impl SpawnRequest {
    /// Checks everything that can be checked without touching the disk.
    pub fn validate(&self) -> Result<()> {
        validate_session_id(&self.session_id)?;
        if self.command.trim().is_empty() {
            return Err(Error::invalid("command is empty; give the shell text to run"));
        }
        if self.command.contains('\0') {
            return Err(Error::invalid("command contains a NUL byte, which no shell can run"));
        }
        if self.command.len() > MAX_COMMAND_BYTES {
            return Err(Error::invalid(format!(
                "command is {} bytes; the limit is {MAX_COMMAND_BYTES} (1 MiB)",
                self.command.len()
            )));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid(format!("env entry {k:?} is not a valid variable (no '=', no NUL, not empty)")));
            }
        }
        if let Some(cwd) = &self.cwd {
            if cwd.contains('\0') {
                return Err(Error::invalid("cwd contains a NUL byte"));
            }
        }
        Ok(())
    }
}

/// What `onEvent` listeners receive.
#[derive(Debug, Clone)]
pub enum Event {
    Completion(Completion),
    LongRunning { task_id: String, session_id: String, command: String, elapsed_ms: u64 },
    PatternMatch(crate::watch::Match),
}

pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
    Combined,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub record: TaskRecord,
    pub promoted: bool,
    pub output: String,
}

/// A task this manager is watching: spawned here, or adopted from the store.
struct Live {
    session_id: String,
    owned: bool,
    state: watch::Sender<TaskRecord>,
    requests: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    kill_requested: AtomicBool,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
    ticker: Mutex<Option<tokio::task::AbortHandle>>,
    supervisor_pid: Option<u32>,
    watches: crate::watch::Watches,
    /// Wakes this task's scanner (new watch, or its output grew).
    scan_notify: Arc<Notify>,
    scanning: AtomicBool,
}

enum Lookup {
    Terminal(TaskRecord),
    Live(Arc<Live>),
}

pub struct Manager {
    cfg: Config,
    store: Store,
    live: Mutex<HashMap<String, Arc<Live>>>,
    running: AtomicUsize,
    closed: AtomicBool,
    /// Flips to true on close(), so pending waits settle with E_CLOSED.
    shutdown: watch::Sender<bool>,
    project_keys: Mutex<HashMap<PathBuf, String>>,
    sink: Mutex<Option<EventSink>>,
    file_events: Mutex<Option<Arc<crate::fileevents::FileEvents>>>,
}

/// Releases a reserved running slot unless the spawn went through.
struct Slot<'a> {
    running: &'a AtomicUsize,
    armed: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Manager {
    /// Opens the store; never spawns anything and never looks at existing tasks.
    pub fn new(cfg: Config) -> Result<Arc<Manager>> {
        let store = Store::open(&cfg.storage_dir)?;
        Ok(Arc::new(Manager {
            cfg,
            store,
            live: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            project_keys: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            file_events: Mutex::new(None),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    pub fn paths(&self, rec: &TaskRecord) -> TaskPaths {
        self.store.paths(&rec.session_id, &rec.task_id)
    }

    fn reserve_slot(&self) -> Result<Slot<'_>> {
        let max = self.cfg.max_running;
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|n| {
                Error::new(
                    Code::Limit,
                    format!("maxRunning reached: {n} of {max} tasks are running in this manager; wait for one to end or kill one"),
                )
            })?;
        Ok(Slot { running: &self.running, armed: true })
    }

    pub async fn spawn(self: &Arc<Self>, req: SpawnRequest) -> Result<TaskRecord> {
        self.check_open()?;
        req.validate()?;
        let cwd = match &req.cwd {
            Some(c) => absolute(Path::new(c)),
            None => std::env::current_dir().map_err(|e| Error::invalid(format!("the current directory is unusable: {e}")))?,
        };
        if !cwd.is_dir() {
            return Err(Error::invalid(format!("cwd {} does not exist or is not a directory", cwd.display())));
        }
        let project_root = req.project_root.as_ref().map(|p| absolute(Path::new(p))).unwrap_or_else(|| cwd.clone());
        let project_root = std::fs::canonicalize(&project_root).unwrap_or(project_root);
        let mut slot = self.reserve_slot()?;
        let supervisor = launcher::locate_supervisor()?;
        let project_key = self.project_key(&project_root).await;

        let timeout_ms = req.timeout_ms.unwrap_or(self.cfg.default_timeout_ms);
        let notify = req.notify_on_completion.unwrap_or(true);
        let task_id = ids::new_task_id();
        let rec = TaskRecord {
            schema_version: crate::store::record::SCHEMA_VERSION,
            task_id: task_id.clone(),
            session_id: req.session_id.clone(),
            command: req.command.clone(),
            mode: req.mode,
            workdir: cwd.display().to_string(),
            project_root: Some(project_root.display().to_string()),
            status: Status::Starting,
            started_at: unix_millis(),
            finished_at: None,
            duration_ms: None,
            timeout_ms: (timeout_ms > 0).then_some(timeout_ms),
            exit_code: None,
            child_pid: None,
            pgid: None,
            completion_delivered: !notify,
            notify_on_completion: notify,
            compressed: req.compressed.unwrap_or(true),
            pty_rows: (req.mode == Mode::Pty).then(|| req.rows.unwrap_or(DEFAULT_ROWS)),
            pty_cols: (req.mode == Mode::Pty).then(|| req.cols.unwrap_or(DEFAULT_COLS)),
            status_reason: None,
            harness: Some(self.cfg.harness.clone()),
            signal: None,
            child_start_ticks: None,
            supervisor_pid: None,
            supervisor_start_ticks: None,
            manager_pid: Some(std::process::id()),
            manager_start_ticks: proc::start_ticks(std::process::id()),
            project_key: Some(project_key),
        };
        // `starting` is durable before anything runs: a crash from here on is recognisable.
        let paths = self.store.create(&rec)?;
        let env = self.task_env(&req, &task_id);
        let launched = launcher::launch(LaunchSpec {
            supervisor: &supervisor,
            task_id: &task_id,
            paths: &paths,
            shell: &self.cfg.shell,
            command: &req.command,
            cwd: &cwd,
            env: &env,
            timeout_ms,
            grace_ms: self.cfg.kill_grace_ms,
            cap_bytes: self.cfg.output_cap_bytes,
            pty: rec.pty_rows.zip(rec.pty_cols),
        })
        .await;
        let launched = match launched {
            Ok(l) => l,
            Err(err) => {
                let reason = format!("spawn failed: {}", err.message);
                let _ = self.store.update(&rec.session_id, &task_id, |r| {
                    r.finish(crate::store::Outcome {
                        status: Status::Failed,
                        exit_code: Some(crate::protocol::SPAWN_FAILED_EXIT_CODE),
                        signal: None,
                        reason: Some(reason),
                        finished_at: unix_millis(),
                    });
                });
                return Err(err);
            }
        };
        let running = self.store.update(&rec.session_id, &task_id, |r| {
            r.status = Status::Running;
            r.child_pid = Some(launched.task_pid as u32);
            r.pgid = Some(launched.task_pid);
            r.child_start_ticks = Some(launched.task_start_ticks);
            r.supervisor_pid = Some(launched.supervisor_pid);
            r.supervisor_start_ticks = launched.supervisor_start_ticks;
        });
        let Launched { control, supervisor_pid, .. } = launched;
        let Control { reports, mut requests } = control;
        let running = match running {
            Ok(r) => r,
            Err(err) => {
                // The store failed under us: do not leave an unrecorded process behind.
                let kill = Request::Kill { signal: libc::SIGKILL, grace_ms: 0 };
                let _ = launcher::send(&mut requests, kill).await;
                tokio::spawn(proc::reap_child(supervisor_pid));
                return Err(err);
            }
        };
        slot.armed = false; // released when the task ends
        let live = Arc::new(Live {
            session_id: running.session_id.clone(),
            owned: true,
            state: watch::channel(running.clone()).0,
            requests: tokio::sync::Mutex::new(Some(requests)),
            kill_requested: AtomicBool::new(false),
            watcher: Mutex::new(None),
            ticker: Mutex::new(None),
            supervisor_pid: Some(supervisor_pid),
            watches: Default::default(),
            scan_notify: Arc::new(Notify::new()),
            scanning: AtomicBool::new(false),
        });
        self.live.lock().unwrap().insert(task_id.clone(), live.clone());
        let me = self.clone();
        let live2 = live.clone();
        let handle = tokio::spawn(async move { me.watch_owned(live2, task_id, reports, supervisor_pid).await });
        *live.watcher.lock().unwrap() = Some(handle.abort_handle());
        self.start_ticker(&live, &running);
        Ok(running)
    }

    fn task_env(&self, req: &SpawnRequest, task_id: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if req.agent_env.unwrap_or(self.cfg.agent_env) {
            env.extend(AGENT_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        if req.mode == Mode::Pty {
            // A terminal program needs a real terminal type (agentEnv's TERM=dumb is for pipes).
            env.push(("TERM".into(), "xterm-256color".into()));
        }
        env.extend(req.env.iter().cloned());
        env.push(("BGSHELL_TASK_ID".into(), task_id.into()));
        env
    }

    /// First 16 hex of SHA-256 of the project's git root commit id, else of its canonical path.
    /// Asked of git once per project root per manager.
    async fn project_key(&self, root: &Path) -> String {
        if let Some(k) = self.project_keys.lock().unwrap().get(root) {
            return k.clone();
        }
        let dir = root.to_path_buf();
        let key = tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("git")
                .args(["rev-list", "--max-parents=0", "HEAD"])
                .current_dir(&dir)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output();
            let root_commit = out
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_string))
                .filter(|l| !l.is_empty());
            match root_commit {
                Some(commit) => ids::sha256_prefix16(commit.as_bytes()),
                None => ids::sha256_prefix16(dir.display().to_string().as_bytes()),
            }
        })
        .await
        .unwrap_or_default();
        self.project_keys.lock().unwrap().insert(root.to_path_buf(), key.clone());
        key
    }

    async fn watch_owned(self: Arc<Self>, live: Arc<Live>, task_id: String, mut reports: BufReader<OwnedReadHalf>, sup: u32) {
        let facts = loop {
            match launcher::next_report(&mut reports).await {
                Some(Report::Exit { code, signal, finished_at, timed_out }) => {
                    break ExitFacts { code: Some(code), signal, finished_at, timed_out, marker_killed: false }
                }
                Some(_) => continue,
                None => {
                    // The supervisor went away without a report: its marker is the truth, if any.
                    proc::wait_gone(sup, None).await;
                    break self.facts_from_marker(&live.session_id, &task_id);
                }
            }
        };
        tokio::spawn(proc::reap_child(sup));
        self.finalize(&live, &task_id, facts);
    }

    fn facts_from_marker(&self, session_id: &str, task_id: &str) -> ExitFacts {
        let paths = self.store.paths(session_id, task_id);
        let marker = fsutil::read_exit_marker(&paths.exit).ok().flatten();
        ExitFacts::from_marker(marker, unix_millis())
    }

    /// The terminal transition: settle the outcome, write it under the store's lock (another
    /// manager may have finalised first; then its record stands), wake waiters.
    fn finalize(&self, live: &Arc<Live>, task_id: &str, facts: ExitFacts) -> TaskRecord {
        let kill_requested = live.kill_requested.load(Ordering::SeqCst);
        if let Some(h) = live.ticker.lock().unwrap().take() {
            h.abort();
        }
        let mut transitioned = false;
        let written = self.store.update(&live.session_id, task_id, |r| {
            let outcome = settle(r, &facts, kill_requested);
            transitioned = r.finish(outcome);
        });
        let rec = written.unwrap_or_else(|_| {
            // The store is failing: waiters still learn the truth from memory.
            let mut r = live.state.borrow().clone();
            let outcome = settle(&r, &facts, kill_requested);
            r.finish(outcome);
            r
        });
        {
            let mut map = self.live.lock().unwrap();
            if map.get(task_id).is_some_and(|l| Arc::ptr_eq(l, live)) {
                map.remove(task_id);
            }
        }
        if live.owned {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        // Output printed just before the exit is scanned before the completion is announced.
        let paths = self.store.paths(&rec.session_id, &rec.task_id);
        for m in live.watches.finish(&rec, &paths) {
            self.emit(Event::PatternMatch(m));
        }
        live.state.send_replace(rec.clone());
        if transitioned && rec.notify_on_completion {
            self.emit_completion(&rec);
        }
        rec
    }

    pub fn set_sink(&self, sink: Option<EventSink>) {
        *self.sink.lock().unwrap() = sink;
    }

    fn emit(&self, event: Event) {
        let sink = self.sink.lock().unwrap().clone();
        if let Some(sink) = sink {
            sink(event);
        }
    }

    fn emit_completion(&self, rec: &TaskRecord) {
        if self.sink.lock().unwrap().is_none() {
            return; // nobody listens: skip reading the output for a preview
        }
        let paths = self.paths(rec);
        let preview = crate::output::preview(rec, &paths, self.cfg.output_cap_bytes);
        self.emit(Event::Completion(Completion { record: rec.clone(), preview }));
    }

    /// `long_running` every interval while a notifying task runs (timers on the runtime).
    fn start_ticker(self: &Arc<Self>, live: &Arc<Live>, rec: &TaskRecord) {
        let every = self.cfg.long_running_interval_ms;
        if every == 0 || rec.is_terminal() {
            return;
        }
        let me = Arc::downgrade(self);
        let l = Arc::downgrade(live);
        let period = Duration::from_millis(every);
        let handle = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticks.tick().await;
                let (Some(m), Some(l)) = (me.upgrade(), l.upgrade()) else { return };
                let r = l.state.borrow().clone();
                if r.is_terminal() {
                    return;
                }
                if r.notify_on_completion {
                    m.emit(Event::LongRunning {
                        elapsed_ms: unix_millis().saturating_sub(r.started_at),
                        task_id: r.task_id,
                        session_id: r.session_id,
                        command: r.command,
                    });
                }
            }
        });
        *live.ticker.lock().unwrap() = Some(handle.abort_handle());
    }

    /// A task known to this manager, or adopted from the store when another manager (or a dead
    /// one) started it and it is still running.
    fn lookup(self: &Arc<Self>, task_id: &str) -> Result<Lookup> {
        ids::validate_task_id(task_id)?;
        if let Some(l) = self.live.lock().unwrap().get(task_id) {
            return Ok(Lookup::Live(l.clone()));
        }
        let rec = self.store.find(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        if rec.is_terminal() {
            return Ok(Lookup::Terminal(rec));
        }
        Ok(Lookup::Live(self.adopt(rec)))
    }

    /// Watches a task this manager did not spawn: its supervisor's exit (pidfd, verified start
    /// time) means the exit marker is written. Used by `wait`/`kill` on foreign tasks and replay.
    pub(crate) fn adopt(self: &Arc<Self>, rec: TaskRecord) -> Arc<Live> {
        let task_id = rec.task_id.clone();
        let mut map = self.live.lock().unwrap();
        if let Some(l) = map.get(&task_id) {
            return l.clone();
        }
        let live = Arc::new(Live {
            session_id: rec.session_id.clone(),
            owned: false,
            state: watch::channel(rec.clone()).0,
            requests: tokio::sync::Mutex::new(None),
            kill_requested: AtomicBool::new(false),
            watcher: Mutex::new(None),
            ticker: Mutex::new(None),
            supervisor_pid: rec.supervisor_pid,
            watches: Default::default(),
            scan_notify: Arc::new(Notify::new()),
            scanning: AtomicBool::new(false),
        });
        map.insert(task_id.clone(), live.clone());
        drop(map);
        let me = self.clone();
        let l2 = live.clone();
        let handle = tokio::spawn(async move {
            let facts = me.watch_foreign(&rec).await;
            me.finalize(&l2, &task_id, facts);
        });
        *live.watcher.lock().unwrap() = Some(handle.abort_handle());
        let rec_now = live.state.borrow().clone();
        self.start_ticker(&live, &rec_now);
        live
    }

    async fn watch_foreign(&self, rec: &TaskRecord) -> ExitFacts {
        if rec.status == Status::Starting {
            // Another manager may be mid-spawn; its record moves on within a moment. Re-read a
            // few times (nothing to wait on yet: no pid is known), then call it aborted.
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match self.store.read(&rec.session_id, &rec.task_id) {
                    Ok(Some(r)) if r.status != Status::Starting => return Box::pin(self.watch_foreign(&r)).await,
                    _ => {}
                }
            }
            return ExitFacts { code: None, signal: None, finished_at: unix_millis(), timed_out: false, marker_killed: false };
        }
        let sup_alive = rec.supervisor_pid.is_some_and(|p| proc::is_same_process(p, rec.supervisor_start_ticks));
        let child_alive = rec.child_pid.is_some_and(|p| proc::is_same_process(p, rec.child_start_ticks));
        let owner_alive = || rec.manager_pid.is_some_and(|p| p != std::process::id() && proc::is_same_process(p, rec.manager_start_ticks));
        if !sup_alive && !child_alive && owner_alive() {
            // The task just ended and its own manager is about to record it: let it (it also
            // announces the completion). Nothing can be waited on here, so look a few times.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if self.store.read(&rec.session_id, &rec.task_id).ok().flatten().is_some_and(|r| r.is_terminal()) || !owner_alive() {
                    break;
                }
            }
        }
        if sup_alive {
            proc::wait_gone(rec.supervisor_pid.unwrap(), rec.supervisor_start_ticks).await;
        } else if let Some(pid) = rec.child_pid.filter(|p| proc::is_same_process(*p, rec.child_start_ticks)) {
            // No supervisor (killed, or an aft bundle): only the process itself can be watched,
            // and its deadline is ours to keep.
            let deadline = rec.timeout_ms.map(|t| rec.started_at + t);
            let remaining = deadline.map(|d| Duration::from_millis(d.saturating_sub(unix_millis())));
            tokio::select! {
                _ = proc::wait_gone(pid, rec.child_start_ticks) => {}
                _ = sleep_or_forever(remaining) => {
                    kill_directly(rec.clone(), libc::SIGTERM, self.cfg.kill_grace_ms).await;
                    proc::wait_gone(pid, rec.child_start_ticks).await;
                    return ExitFacts { code: Some(crate::protocol::TIMEOUT_EXIT_CODE), signal: None, finished_at: unix_millis(), timed_out: true, marker_killed: false };
                }
            }
        }
        self.facts_from_marker(&rec.session_id, &rec.task_id)
    }

    pub fn get(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        ids::validate_task_id(task_id)?;
        if let Some(l) = self.live.lock().unwrap().get(task_id) {
            return Ok(Some(l.state.borrow().clone()));
        }
        Ok(self.store.find(task_id)?.map(|r| self.refresh(r)))
    }

    /// A record read from disk that says "running" may be stale: its manager died and nobody
    /// has looked since. When no process of the task is left and no live manager owns it,
    /// settle it now from its exit marker, so `get`/`list` tell the truth.
    fn refresh(&self, rec: TaskRecord) -> TaskRecord {
        if rec.is_terminal() || self.live.lock().unwrap().contains_key(&rec.task_id) {
            return rec;
        }
        let now = unix_millis();
        if rec.status == Status::Starting && now.saturating_sub(rec.started_at) < STARTING_STALE_MS {
            return rec;
        }
        let owner_alive = rec.manager_pid.is_some_and(|p| p != std::process::id() && proc::is_same_process(p, rec.manager_start_ticks));
        let sup_alive = rec.supervisor_pid.is_some_and(|p| proc::is_same_process(p, rec.supervisor_start_ticks));
        let child_alive = rec.child_pid.is_some_and(|p| proc::is_same_process(p, rec.child_start_ticks));
        if owner_alive || sup_alive || child_alive {
            return rec;
        }
        let facts = self.facts_from_marker(&rec.session_id, &rec.task_id);
        self.settle_now(&rec, facts, None)
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<TaskRecord>> {
        if let Some(s) = &filter.session_id {
            validate_session_id(s)?;
        }
        let project_root = filter.project_root.as_deref().map(canonical_string);
        let rows = self.store.list(&RowFilter { session_id: filter.session_id.clone(), harness: filter.harness.clone() });
        Ok(rows
            .into_iter()
            .filter(|r| project_root.as_ref().is_none_or(|p| r.project_root.as_deref() == Some(p.as_str())))
            .map(|r| self.refresh(r))
            .filter(|r| filter.status.as_ref().is_none_or(|s| s.contains(&r.status)))
            .collect())
    }

    pub async fn wait(self: &Arc<Self>, task_id: &str, timeout: Option<Duration>, abort: Option<Arc<Notify>>) -> Result<TaskRecord> {
        self.check_open()?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(r) => return Ok(r),
            Lookup::Live(l) => l,
        };
        let mut rx = live.state.subscribe();
        let terminal = async {
            match rx.wait_for(|r| r.is_terminal()).await {
                Ok(r) => Ok(r.clone()),
                Err(_) => Err(Error::closed()),
            }
        };
        let mut shutdown = self.shutdown.subscribe();
        let closed = async move {
            let _ = shutdown.wait_for(|c| *c).await;
        };
        let aborted = async {
            match &abort {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = terminal => r,
            _ = closed => Err(Error::closed()),
            _ = aborted => Err(Error::new(Code::Aborted, format!("wait for {task_id} was aborted by its AbortSignal"))),
            _ = timer => Ok(live.state.borrow().clone()),
        }
    }

    pub async fn kill(self: &Arc<Self>, task_id: &str, signal: i32, grace_ms: Option<u64>) -> Result<TaskRecord> {
        self.check_open()?;
        self.kill_inner(task_id, signal, grace_ms).await
    }

    async fn kill_inner(self: &Arc<Self>, task_id: &str, signal: i32, grace_ms: Option<u64>) -> Result<TaskRecord> {
        let grace_ms = grace_ms.unwrap_or(self.cfg.kill_grace_ms);
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(r) => return Ok(r),
            Lookup::Live(l) => l,
        };
        let mut rx = live.state.subscribe();
        if live.state.borrow().is_terminal() {
            return Ok(live.state.borrow().clone());
        }
        live.kill_requested.store(true, Ordering::SeqCst);
        if let Ok(r) = self.store.update(&live.session_id, task_id, |r| {
            if r.status == Status::Running {
                r.status = Status::Killing;
            }
        }) {
            live.state.send_if_modified(|cur| {
                let changed = !cur.is_terminal() && r.status == Status::Killing && cur.status != Status::Killing;
                if changed {
                    cur.status = Status::Killing;
                }
                changed
            });
        }
        let sent = {
            let mut guard = live.requests.lock().await;
            match guard.as_mut() {
                Some(w) => launcher::send(w, Request::Kill { signal, grace_ms }).await.is_ok(),
                None => false,
            }
        };
        if !sent {
            let rec = live.state.borrow().clone();
            tokio::spawn(kill_directly(rec, signal, grace_ms));
        }
        let result = match rx.wait_for(|r| r.is_terminal()).await {
            Ok(r) => Ok(r.clone()),
            Err(_) => Err(Error::closed()),
        };
        result
    }

    pub async fn close(self: &Arc<Self>, kill_running: bool) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let lives: Vec<(String, Arc<Live>)> = self.live.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if kill_running {
            let kills = lives.iter().filter(|(_, l)| l.owned).map(|(id, _)| {
                let me = self.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let _ = me.kill_inner(&id, libc::SIGTERM, None).await;
                })
            });
            let handles: Vec<_> = kills.collect();
            for h in handles {
                let _ = h.await;
            }
        }
        self.shutdown.send_replace(true);
        let lives: Vec<Arc<Live>> = self.live.lock().unwrap().drain().map(|(_, v)| v).collect();
        for live in lives {
            if let Some(h) = live.watcher.lock().unwrap().take() {
                h.abort();
            }
            // Dropping our end of the socket lets the supervisor carry on alone; we still reap
            // it when it ends, so no zombie is left in the harness process.
            live.requests.lock().await.take();
            if let (true, Some(pid)) = (live.owned, live.supervisor_pid) {
                tokio::spawn(proc::reap_child(pid));
            }
        }
    }
}

/// Tasks running longer than this when replayed are ended as orphans.
pub const ORPHAN_AFTER_MS: u64 = 24 * 3600 * 1000;
/// A `starting` record older than this, found by replay, is a spawn that never finished.
pub const STARTING_STALE_MS: u64 = 10_000;
/// Quarantined bundles are kept this long before gc deletes them.
pub const QUARANTINE_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

/// A completion as drainCompletions returns it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub record: TaskRecord,
    pub preview: crate::output::Preview,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: usize,
    pub quarantined: usize,
}

impl Manager {
    /// Loads a session's tasks after a restart: adopts the running ones, finalises those that
    /// ended unwatched from their exit marker, fails the vanished. Never runs a command again.
    pub async fn replay(self: &Arc<Self>, session_id: &str, project_root: Option<&str>) -> Result<Vec<TaskRecord>> {
        self.check_open()?;
        validate_session_id(session_id)?;
        let root_filter = project_root.map(canonical_string);
        let load = self.store.load_session(session_id)?;
        let now = unix_millis();
        let mut out = Vec::with_capacity(load.records.len());
        for rec in load.records {
            if root_filter.as_ref().is_some_and(|r| rec.project_root.as_deref() != Some(r.as_str())) {
                continue;
            }
            if rec.is_terminal() {
                out.push(rec);
                continue;
            }
            if let Some(l) = self.live.lock().unwrap().get(&rec.task_id) {
                out.push(l.state.borrow().clone());
                continue;
            }
            out.push(self.recover(rec, now).await);
        }
        Ok(out)
    }

    /// Decides what a non-terminal record found on disk has become.
    async fn recover(self: &Arc<Self>, rec: TaskRecord, now: u64) -> TaskRecord {
        let sup_alive = rec.supervisor_pid.is_some_and(|p| proc::is_same_process(p, rec.supervisor_start_ticks));
        let child_alive = rec.child_pid.is_some_and(|p| proc::is_same_process(p, rec.child_start_ticks));
        if rec.status == Status::Starting {
            if now.saturating_sub(rec.started_at) < STARTING_STALE_MS {
                return self.adopt(rec).state.borrow().clone(); // another manager may be mid-spawn
            }
            return self.settle_now(&rec, ExitFacts::from_marker(None, now), None);
        }
        if now.saturating_sub(rec.started_at) > ORPHAN_AFTER_MS {
            if child_alive {
                if let Some(pgid) = rec.pgid {
                    let _ = proc::killpg(pgid, libc::SIGKILL);
                }
            }
            let facts = ExitFacts { code: None, signal: child_alive.then_some(libc::SIGKILL), finished_at: now, timed_out: false, marker_killed: false };
            let orphan = crate::store::Outcome {
                status: if child_alive { Status::Killed } else { Status::Failed },
                exit_code: child_alive.then_some(128 + libc::SIGKILL),
                signal: child_alive.then(|| "SIGKILL".to_string()),
                reason: Some("orphaned (>24h)".into()),
                finished_at: now,
            };
            return self.settle_now(&rec, facts, Some(orphan));
        }
        let owner_alive = rec.manager_pid.is_some_and(|p| p != std::process::id() && proc::is_same_process(p, rec.manager_start_ticks));
        if sup_alive || child_alive || owner_alive {
            // Still running, or its own manager lives and will record (and announce) the end.
            return self.adopt(rec).state.borrow().clone();
        }
        let facts = self.facts_from_marker(&rec.session_id, &rec.task_id);
        self.settle_now(&rec, facts, None)
    }

    /// Writes a terminal state decided without watching anything (replay of an ended task).
    fn settle_now(&self, rec: &TaskRecord, facts: ExitFacts, forced: Option<crate::store::Outcome>) -> TaskRecord {
        let decide = |r: &TaskRecord| forced.clone().unwrap_or_else(|| settle(r, &facts, false));
        match self.store.update(&rec.session_id, &rec.task_id, |r| {
            let o = decide(r);
            r.finish(o);
        }) {
            Ok(r) => r,
            Err(_) => {
                let mut r = rec.clone();
                r.finish(decide(rec));
                r
            }
        }
    }

    /// Undelivered completions of a session, oldest first. A peek: nothing changes until ack.
    pub fn drain(&self, session_id: &str) -> Result<Vec<Completion>> {
        validate_session_id(session_id)?;
        let mut pending: Vec<TaskRecord> = Vec::new();
        let candidates = self.store.index().undelivered(session_id);
        let records = match candidates {
            Some(ids) => {
                let mut v = Vec::new();
                for id in ids {
                    if let Some(r) = self.store.read(session_id, &id)? {
                        v.push(r);
                    }
                }
                v
            }
            // No index: the JSON files are the truth, read them all.
            None => self.store.load_session(session_id)?.records,
        };
        for r in records {
            if r.session_id == session_id && r.is_terminal() && !r.completion_delivered {
                pending.push(r);
            }
        }
        pending.sort_by_key(|r| (r.finished_at.unwrap_or(0), r.started_at));
        Ok(pending
            .into_iter()
            .map(|record| {
                let paths = self.paths(&record);
                let preview = crate::output::preview(&record, &paths, self.cfg.output_cap_bytes);
                Completion { record, preview }
            })
            .collect())
    }

    /// Marks completions delivered, durably. Returns the ids that are now delivered (already
    /// delivered ones included, so a retried ack gives the same answer); ids of other sessions,
    /// unknown or unfinished tasks are left out.
    pub fn ack(&self, session_id: &str, task_ids: &[String]) -> Result<Vec<String>> {
        validate_session_id(session_id)?;
        for id in task_ids {
            ids::validate_task_id(id)?;
        }
        let mut acked = Vec::new();
        for id in task_ids {
            match self.store.read(session_id, id)? {
                Some(r) if r.session_id == session_id && r.is_terminal() => {}
                _ => continue,
            }
            let r = self.store.update(session_id, id, |r| {
                if r.is_terminal() {
                    r.completion_delivered = true;
                }
            })?;
            if r.completion_delivered && !acked.contains(id) {
                acked.push(id.clone());
            }
        }
        Ok(acked)
    }

    /// Removes delivered terminal tasks older than the retention, quarantines unreadable
    /// bundles, and deletes quarantine entries older than 30 days. One failure does not stop
    /// the rest.
    pub async fn gc(self: &Arc<Self>, older_than_ms: Option<u64>) -> Result<GcReport> {
        self.check_open()?;
        let retention = older_than_ms.unwrap_or(self.cfg.retention_ms);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.gc_blocking(retention))
            .await
            .map_err(|e| Error::new(Code::Io, format!("gc stopped: {e}")))
    }

    fn gc_blocking(&self, retention: u64) -> GcReport {
        let now = unix_millis();
        let cutoff = now.saturating_sub(retention);
        let mut report = GcReport::default();
        for dir in self.store.session_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(task_id) = name.strip_suffix(".json") else { continue };
                if name.starts_with('.') || ids::validate_task_id(task_id).is_err() {
                    continue;
                }
                if self.live.lock().unwrap().contains_key(task_id) {
                    continue;
                }
                match crate::store::read_record(&entry.path()) {
                    Ok(Some(r)) => {
                        let old = r.finished_at.is_some_and(|f| f <= cutoff);
                        if r.is_terminal() && r.completion_delivered && old && self.store.remove_bundle(&r, &dir).is_ok() {
                            report.removed += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        if self.store.quarantine(&dir, task_id).is_ok() {
                            report.quarantined += 1;
                        }
                    }
                }
            }
        }
        let qroot = self.store.root().join("bash-tasks-quarantine");
        let qcutoff = now.saturating_sub(QUARANTINE_RETENTION_MS);
        if let Ok(dirs) = std::fs::read_dir(&qroot) {
            for d in dirs.flatten() {
                let Ok(files) = std::fs::read_dir(d.path()) else { continue };
                for f in files.flatten() {
                    let mtime = f.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    if mtime.is_some_and(|t| (t.as_millis() as u64) < qcutoff) {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
                let _ = std::fs::remove_dir(d.path()); // only succeeds once empty
            }
        }
        report
    }
}

impl Manager {
    /// Turns notification on (foreground -> background), durably. A finished task's completion
    /// is queued at once. With `only_if_running`, a finished task is left as it is.
    fn promote_inner(self: &Arc<Self>, task_id: &str, only_if_running: bool) -> Result<TaskRecord> {
        ids::validate_task_id(task_id)?;
        let current = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        let mut queued_finished = false;
        let after = self.store.update(&current.session_id, task_id, |r| {
            if r.notify_on_completion || (only_if_running && r.is_terminal()) {
                return;
            }
            queued_finished = r.is_terminal();
            r.notify_on_completion = true;
            r.completion_delivered = false;
        })?;
        if let Some(l) = self.live.lock().unwrap().get(task_id) {
            l.state.send_if_modified(|cur| {
                let changed = !cur.notify_on_completion && after.notify_on_completion;
                if changed && !cur.is_terminal() {
                    cur.notify_on_completion = true;
                    cur.completion_delivered = false;
                }
                changed
            });
        }
        if queued_finished {
            self.emit_completion(&after);
        }
        Ok(after)
    }

    pub fn promote(self: &Arc<Self>, task_id: &str) -> Result<TaskRecord> {
        self.check_open()?;
        self.promote_inner(task_id, false)
    }

    /// Foreground with auto-promote: inline result if the task ends within `wait_ms`, else it
    /// carries on in the background and will notify.
    pub async fn run(self: &Arc<Self>, mut req: SpawnRequest, wait_ms: u64) -> Result<RunOutcome> {
        req.notify_on_completion = Some(false);
        let started = self.spawn(req).await?;
        let done = self.wait(&started.task_id, Some(Duration::from_millis(wait_ms)), None).await?;
        let rec = if done.is_terminal() { done } else { self.promote_inner(&started.task_id, true)? };
        if rec.is_terminal() && !rec.notify_on_completion {
            let preview = crate::output::preview(&rec, &self.paths(&rec), self.cfg.output_cap_bytes);
            let mut output = preview.text;
            if rec.exit_code != Some(0) {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                let code = rec.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                output.push_str(&format!("[exit code {code}; status {}]", rec.status.as_str()));
            }
            return Ok(RunOutcome { record: rec, promoted: false, output });
        }
        let output = format!(
            "Still running after {wait_ms} ms; moved to the background as task {}. Its completion will be reported.",
            rec.task_id
        );
        Ok(RunOutcome { record: rec, promoted: true, output })
    }

    fn stream_path(&self, rec: &TaskRecord, stream: Option<Stream>) -> Result<PathBuf> {
        let paths = self.paths(rec);
        match (rec.mode, stream) {
            (Mode::Pipes, None | Some(Stream::Stdout)) => Ok(paths.stdout),
            (Mode::Pipes, Some(Stream::Stderr)) => Ok(paths.stderr),
            (Mode::Pty, None | Some(Stream::Pty)) => Ok(paths.pty),
            (mode, Some(s)) => Err(Error::invalid(format!(
                "stream {:?} does not exist for {} task {}",
                format!("{s:?}").to_lowercase(),
                mode.as_str(),
                rec.task_id
            ))),
        }
    }

    pub async fn read_output(self: &Arc<Self>, task_id: &str, stream: Option<Stream>, offset: u64, max_bytes: u64) -> Result<crate::output::Page> {
        let rec = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        if stream == Some(Stream::Combined) {
            return Err(Error::invalid("readOutput pages one stream: 'stdout', 'stderr' or 'pty'"));
        }
        let path = self.stream_path(&rec, stream)?;
        let ended = rec.is_terminal();
        tokio::task::spawn_blocking(move || crate::output::read_page(&path, offset, max_bytes, ended).map_err(|e| Error::io(&path, &e)))
            .await
            .map_err(|e| Error::new(Code::Io, e.to_string()))?
    }

    pub async fn tail(self: &Arc<Self>, task_id: &str, stream: Option<Stream>, bytes: Option<u64>, lines: Option<u64>, strip: bool) -> Result<(String, bool)> {
        let rec = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        let files = match stream {
            Some(Stream::Combined) => {
                let p = self.paths(&rec);
                match rec.mode {
                    Mode::Pipes => vec![p.stdout, p.stderr],
                    Mode::Pty => vec![p.pty],
                }
            }
            other => vec![self.stream_path(&rec, other)?],
        };
        let lines = if bytes.is_none() && lines.is_none() { Some(50) } else { lines };
        tokio::task::spawn_blocking(move || {
            let (buf, truncated) = crate::output::tail(&files, bytes, lines);
            let text = crate::output::decode_cut(&buf, truncated, false);
            (if strip { crate::output::strip_ansi(&text) } else { text }, truncated)
        })
        .await
        .map_err(|e| Error::new(Code::Io, e.to_string()))
    }
}

/// How `waitFor` ended.
#[derive(Debug, Clone)]
pub enum WaitForResult {
    Matched(crate::watch::Match, TaskRecord),
    Exited(TaskRecord),
    Timeout(TaskRecord),
}

impl Manager {
    /// Adds a watch; matches arrive as `pattern_match` events. Must run inside the runtime.
    pub fn watch(self: &Arc<Self>, task_id: &str, pattern: Option<&str>, regex: Option<&str>, once: bool) -> Result<String> {
        self.check_open()?;
        let re = crate::watch::compile(pattern, regex)?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(r) => {
                return Err(Error::new(Code::Exited, format!("task {} has already ended ({}); read its output with tail or readOutput", r.task_id, r.status.as_str())))
            }
            Lookup::Live(l) => l,
        };
        let id = live.watches.add(re, once, None)?;
        self.ensure_scanner(&live);
        Ok(id)
    }

    pub fn unwatch(self: &Arc<Self>, task_id: &str, watch_id: &str) -> Result<bool> {
        ids::validate_task_id(task_id)?;
        let live = self.live.lock().unwrap().get(task_id).cloned();
        Ok(live.is_some_and(|l| l.watches.remove(watch_id)))
    }

    pub async fn wait_for(
        self: &Arc<Self>,
        task_id: &str,
        pattern: Option<&str>,
        regex: Option<&str>,
        timeout: Option<Duration>,
        abort: Option<Arc<Notify>>,
    ) -> Result<WaitForResult> {
        self.check_open()?;
        let re = crate::watch::compile(pattern, regex)?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(rec) => {
                // Everything it will ever print is on disk: one scan answers.
                let w = crate::watch::Watches::default();
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                w.add(re, true, Some(tx))?;
                w.scan(&rec, &self.paths(&rec));
                return Ok(match rx.try_recv() {
                    Ok(m) => WaitForResult::Matched(m, rec),
                    Err(_) => WaitForResult::Exited(rec),
                });
            }
            Lookup::Live(l) => l,
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let watch_id = live.watches.add(re, true, Some(tx))?;
        self.ensure_scanner(&live);
        let mut state = live.state.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        let result = tokio::select! {
            biased;
            m = &mut rx => match m {
                Ok(m) => Ok(WaitForResult::Matched(m, live.state.borrow().clone())),
                Err(_) => Ok(WaitForResult::Exited(live.state.borrow().clone())),
            },
            r = state.wait_for(|r| r.is_terminal()) => {
                let rec = r.map(|r| r.clone()).map_err(|_| Error::closed())?;
                // The final scan ran before the terminal state was published.
                match rx.try_recv() {
                    Ok(m) => Ok(WaitForResult::Matched(m, rec)),
                    Err(_) => Ok(WaitForResult::Exited(rec)),
                }
            }
            _ = sleep_or_forever(timeout) => Ok(WaitForResult::Timeout(live.state.borrow().clone())),
            _ = async { match &abort { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                Err(Error::new(Code::Aborted, format!("waitFor on {task_id} was aborted by its AbortSignal")))
            }
            _ = shutdown.wait_for(|c| *c) => Err(Error::closed()),
        };
        live.watches.remove(&watch_id);
        result
    }

    /// One scanner per watched task: scans at once (output printed before the watch counts),
    /// then whenever inotify says a stream grew, until no watch is left or the task ended.
    fn ensure_scanner(self: &Arc<Self>, live: &Arc<Live>) {
        if live.scanning.swap(true, Ordering::SeqCst) {
            live.scan_notify.notify_one();
            return;
        }
        let events = {
            let mut fe = self.file_events.lock().unwrap();
            if fe.is_none() {
                *fe = crate::fileevents::FileEvents::start().ok();
            }
            fe.clone()
        };
        let me = self.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let rec = live.state.borrow().clone();
            let paths = me.paths(&rec);
            let files = match rec.mode {
                Mode::Pipes => vec![paths.stdout.clone(), paths.stderr.clone()],
                Mode::Pty => vec![paths.pty.clone()],
            };
            let wds: Vec<i32> = match &events {
                Some(fe) => files.iter().filter_map(|f| fe.subscribe(f, live.scan_notify.clone()).ok()).collect(),
                None => Vec::new(),
            };
            let mut state = live.state.subscribe();
            loop {
                let rec = live.state.borrow().clone();
                if rec.is_terminal() {
                    break;
                }
                for m in live.watches.scan(&rec, &paths) {
                    me.emit(Event::PatternMatch(m));
                }
                if live.watches.is_empty() {
                    break;
                }
                // Without inotify (non-Linux) nothing would wake us: fall back to a slow check.
                let fallback = events.is_none().then(|| Duration::from_millis(250));
                tokio::select! {
                    _ = live.scan_notify.notified() => {}
                    _ = state.changed() => {}
                    _ = sleep_or_forever(fallback) => {}
                }
            }
            if let Some(fe) = &events {
                for wd in wds {
                    fe.unsubscribe(wd);
                }
            }
            live.scanning.store(false, Ordering::SeqCst);
            if !live.watches.is_empty() && !live.state.borrow().is_terminal() {
                me.ensure_scanner(&live); // a watch was added while we were leaving
            }
        });
    }
}

/// One piece of `write` input: text as given, or a named key.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Key(String),
}

impl Manager {
    /// A running pty task's record, or the error API.md names for every other case.
    fn running_pty(&self, task_id: &str) -> Result<TaskRecord> {
        let rec = self.get_any(task_id)?;
        if rec.mode != Mode::Pty {
            return Err(Error::new(Code::NotPty, format!("task {task_id} runs with pipes, not a terminal; only pty tasks take input")));
        }
        if rec.is_terminal() {
            return Err(Error::new(Code::Exited, format!("task {task_id} has ended ({}); it takes no more input", rec.status.as_str())));
        }
        Ok(rec)
    }

    fn get_any(&self, task_id: &str) -> Result<TaskRecord> {
        self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))
    }

    /// One request to the task's supervisor over its socket (short, local, bounded by a timeout).
    fn pty_request(&self, rec: &TaskRecord, request: &Request) -> Result<crate::protocol::Reply> {
        use std::io::{BufRead, Write};
        let paths = self.paths(rec);
        let gone = || Error::new(Code::Exited, format!("task {} has ended; its terminal is closed", rec.task_id));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&paths.dir)
            .map_err(|e| Error::io(&paths.dir, &e))?;
        let addr = format!("/proc/self/fd/{}/{}.sock", std::os::fd::AsRawFd::as_raw_fd(&dir), rec.task_id);
        let mut stream = std::os::unix::net::UnixStream::connect(&addr).map_err(|_| gone())?;
        drop(dir);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        stream.write_all(request.render().as_bytes()).map_err(|_| gone())?;
        let mut line = String::new();
        std::io::BufReader::new(&stream).read_line(&mut line).map_err(|_| gone())?;
        crate::protocol::Reply::parse(&line).ok_or_else(gone)
    }

    /// Types into a pty task: text as given, keys as a terminal sends them, in one write.
    pub fn write(&self, task_id: &str, input: &[Input]) -> Result<u64> {
        self.check_open()?;
        let mut bytes = Vec::new();
        for part in input {
            match part {
                Input::Text(t) => bytes.extend_from_slice(t.as_bytes()),
                Input::Key(k) => bytes.extend(crate::keys::key_bytes(k)?),
            }
            if bytes.len() > MAX_WRITE_BYTES {
                return Err(Error::new(Code::TooLarge, format!("input is over {MAX_WRITE_BYTES} bytes (1 MiB); send it in parts")));
            }
        }
        let rec = self.running_pty(task_id)?;
        match self.pty_request(&rec, &Request::Write(bytes))? {
            crate::protocol::Reply::Ok(n) => Ok(n),
            other => Err(Error::new(Code::Io, format!("writing to task {task_id} failed: {other:?}"))),
        }
    }

    pub fn resize(&self, task_id: &str, rows: u16, cols: u16) -> Result<()> {
        self.check_open()?;
        let rec = self.running_pty(task_id)?;
        match self.pty_request(&rec, &Request::Resize { rows, cols })? {
            crate::protocol::Reply::Ok(_) => {}
            other => return Err(Error::new(Code::Io, format!("resizing task {task_id} failed: {other:?}"))),
        }
        let updated = self.store.update(&rec.session_id, task_id, |r| {
            r.pty_rows = Some(rows);
            r.pty_cols = Some(cols);
        })?;
        if let Some(l) = self.live.lock().unwrap().get(task_id) {
            l.state.send_modify(|cur| {
                cur.pty_rows = updated.pty_rows;
                cur.pty_cols = updated.pty_cols;
            });
        }
        Ok(())
    }

    /// The visible screen: the supervisor's live emulator while the task runs, else the
    /// transcript replayed through one. Rows right-trimmed, trailing blank rows dropped.
    pub async fn screen(self: &Arc<Self>, task_id: &str) -> Result<String> {
        let rec = self.get_any(task_id)?;
        if rec.mode != Mode::Pty {
            return Err(Error::new(Code::NotPty, format!("task {task_id} runs with pipes; use tail or readOutput for its output")));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if !rec.is_terminal() {
                if let Ok(crate::protocol::Reply::Screen(text)) = me.pty_request(&rec, &Request::Screen) {
                    return Ok(tidy_screen(&text));
                }
            }
            let path = me.paths(&rec).pty;
            let bytes = match fsutil::read_nofollow(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(&path, &e)),
            };
            let (rows, cols) = (rec.pty_rows.unwrap_or(DEFAULT_ROWS), rec.pty_cols.unwrap_or(DEFAULT_COLS));
            let rendered = std::panic::catch_unwind(|| {
                let mut parser = vt100::Parser::new(rows, cols, 0);
                parser.process(&bytes);
                parser.screen().contents()
            });
            Ok(match rendered {
                Ok(text) => tidy_screen(&text),
                Err(_) => {
                    let tail = &bytes[bytes.len().saturating_sub(4096)..];
                    format!("[screen could not be rendered; raw end of the transcript follows]\n{}", String::from_utf8_lossy(tail))
                }
            })
        })
        .await
        .map_err(|e| Error::new(Code::Io, e.to_string()))?
    }
}

fn tidy_screen(text: &str) -> String {
    let mut lines: Vec<&str> = text.split('\n').map(|l| l.trim_end()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

fn canonical_string(p: &str) -> String {
    let p = absolute(Path::new(p));
    std::fs::canonicalize(&p).unwrap_or(p).display().to_string()
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub session_id: Option<String>,
    pub project_root: Option<String>,
    pub status: Option<Vec<Status>>,
    pub harness: Option<String>,
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Kill without a supervisor to ask (adopted tasks whose supervisor is gone, aft bundles):
/// signal the group only while its leader is provably the process that was started.
async fn kill_directly(rec: TaskRecord, signal: i32, grace_ms: u64) {
    let (Some(pid), Some(pgid)) = (rec.child_pid, rec.pgid) else { return };
    if !proc::is_same_process(pid, rec.child_start_ticks) {
        return;
    }
    let _ = proc::killpg(pgid, signal);
    if signal != libc::SIGKILL {
        tokio::time::sleep(Duration::from_millis(grace_ms)).await;
        // The leader may be gone while the rest of its group lingers; only a pid now held by a
        // different process means the number was reused, and then nothing is sent.
        if proc::is_same_process(pid, rec.child_start_ticks) || proc::start_ticks(pid).is_none() {
            let _ = proc::killpg(pgid, libc::SIGKILL);
        }
    }
}
