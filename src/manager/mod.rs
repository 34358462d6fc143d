//! The manager: owns the live tasks of one `TaskManager`, drives the lifecycle (lifecycle.rs)
//! through the store, and answers the API. Everything here runs on the shared tokio runtime or
//! is a short, bounded store access; no thread per task.

use crate::sync::Locked;
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
use crate::lifecycle::{decide, settle, ExitFacts, Probe, Verdict};
use crate::proc;
use crate::protocol::{Report, Request};
use crate::store::{ids, Mode, RowFilter, Status, Store, TaskPaths, TaskRecord};

mod adopted;
mod config;
mod foreground;
mod reading;
use adopted::{kill_directly, sleep_or_forever, End};
mod recovery;
mod terminal;
mod unwritten;
mod watching;

pub use config::*;
pub use recovery::Completion;
pub use terminal::Input;
pub use watching::WaitForResult;

/// How long past the kill grace `kill()` waits for the supervisor before acting itself.
const SUPERVISOR_MARGIN_MS: u64 = 1000;

/// What `onEvent` listeners receive.
// Events are passed one at a time to the listener, never stored in bulk: boxing the large
// variant would buy nothing.
#[allow(clippy::large_enum_variant)]
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

// A short-lived answer of `lookup`, never stored: its size does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Spawns in flight: close() lets them finish (and kills them with killRunning) rather than
    /// leave a started command recorded as an aborted spawn.
    spawning: watch::Sender<usize>,
    project_keys: Mutex<HashMap<PathBuf, String>>,
    sink: Mutex<Option<EventSink>>,
    file_events: Mutex<Option<Arc<crate::fileevents::FileEvents>>>,
    /// Terminal records the store could not take yet (unwritten.rs).
    unwritten: Mutex<HashMap<String, TaskRecord>>,
}

/// Counts one spawn in flight for as long as it lives.
struct InFlight<'a>(&'a watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
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
        let store = Store::open(&cfg.storage_dir, cfg.durability)?;
        Ok(Arc::new(Manager {
            cfg,
            store,
            live: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            spawning: watch::channel(0).0,
            project_keys: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            file_events: Mutex::new(None),
            unwritten: Mutex::new(HashMap::new()),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    pub fn paths(&self, rec: &TaskRecord) -> Result<TaskPaths> {
        self.store.paths(&rec.session_id, &rec.task_id)
    }

    /// The exit-aware preview of a task's output (empty when its bundle cannot be reached).
    fn preview(&self, rec: &TaskRecord) -> crate::output::Preview {
        match self.paths(rec) {
            Ok(paths) => crate::output::preview(rec, &paths, self.cfg.output_cap_bytes),
            Err(_) => crate::output::Preview { text: String::new(), truncated: false },
        }
    }

    fn reserve_slot(&self) -> Result<Slot<'_>> {
        let max = self.cfg.max_running;
        self.running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).map_err(|n| {
            Error::new(
                Code::Limit,
                format!("maxRunning reached: {n} of {max} tasks are running in this manager; wait for one to end or kill one"),
            )
        })?;
        Ok(Slot { running: &self.running, armed: true })
    }

    pub async fn spawn(self: &Arc<Self>, req: SpawnRequest) -> Result<TaskRecord> {
        self.spawning.send_modify(|n| *n += 1);
        let _in_flight = InFlight(&self.spawning);
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
            manager_start_ticks: proc::own_start_ticks(),
            project_key: Some(project_key),
            label: req.label.clone(),
            stdin: req.stdin_pipe.then(|| "pipe".to_string()),
            rusage: None,
            watches: Vec::new(),
        };
        let paths = self.store.prepare(&rec.session_id, &task_id)?;
        let env = self.task_env(&req, &task_id);
        let started = launcher::start(LaunchSpec {
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
            stdin_pipe: req.stdin_pipe,
        });
        let launched = match started {
            Ok(starting) => {
                // `starting` is written, with the supervisor's identity, before the command runs
                // (the supervisor waits for `go` meanwhile): after a crash from here on, the
                // supervisor and its marker tell whether the command ran (lifecycle::decide).
                let (sup_pid, sup_ticks) = starting.supervisor();
                let rec = TaskRecord { supervisor_pid: Some(sup_pid), supervisor_start_ticks: sup_ticks, ..rec.clone() };
                if let Err(err) = self.store.create(&rec, &paths) {
                    starting.abort().await;
                    return Err(err);
                }
                starting.go().await
            }
            Err(err) => Err(err),
        };
        let launched = match launched {
            Ok(l) => l,
            Err(err) => {
                let mut failed = rec.clone();
                failed.finish(crate::store::Outcome {
                    status: Status::Failed,
                    exit_code: Some(crate::protocol::SPAWN_FAILED_EXIT_CODE),
                    signal: None,
                    reason: Some(format!("spawn failed: {}", err.message)),
                    finished_at: unix_millis(),
                });
                // The caller hears of the failure from the rejection: nothing is left to drain.
                failed.completion_delivered = true;
                // Recorded whether or not the `starting` write happened (the supervisor itself
                // may be what could not start).
                let _ = self.store.create(&failed, &paths);
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
        self.live.locked().insert(task_id.clone(), live.clone());
        let me = self.clone();
        let live2 = live.clone();
        let handle = tokio::spawn(async move { me.watch_owned(live2, task_id, reports, supervisor_pid).await });
        *live.watcher.locked() = Some(handle.abort_handle());
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
        if let Some(k) = self.project_keys.locked().get(root) {
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
        self.project_keys.locked().insert(root.to_path_buf(), key.clone());
        key
    }

    async fn watch_owned(self: Arc<Self>, live: Arc<Live>, task_id: String, mut reports: BufReader<OwnedReadHalf>, sup: u32) {
        // The completion is announced once our own record is written; the supervisor's marker,
        // written meanwhile, is the fallback for a manager that dies first.
        let mut rusage = None;
        let facts = loop {
            match launcher::next_report(&mut reports).await {
                Some(Report::Exit { code, signal, finished_at, timed_out, usage }) => {
                    rusage = usage.map(|u| crate::store::record::Rusage {
                        max_rss_kb: u.max_rss_kb,
                        user_ms: u.user_ms,
                        system_ms: u.system_ms,
                    });
                    break ExitFacts { code: Some(code), signal, finished_at, timed_out, marker_killed: false };
                }
                Some(_) => continue,
                None => {
                    // The supervisor went away without a report: its marker is the truth, if
                    // any; else the command may still run and is watched by its own pid.
                    proc::wait_gone(sup).await;
                    proc::reap(sup);
                    let current = live.state.borrow().clone();
                    break self.after_supervisor(&current).await;
                }
            }
        };
        tokio::spawn(proc::reap_child(sup));
        let (rec, transitioned) = self.record_end(&live, &task_id, End::Facts(facts), rusage);
        self.announce_end(&live, rec, transitioned);
    }

    fn facts_from_marker(&self, session_id: &str, task_id: &str) -> ExitFacts {
        ExitFacts::from_marker(self.read_marker(session_id, task_id), unix_millis())
    }

    /// What a task's exit marker says, if it was written (and can be read).
    fn read_marker(&self, session_id: &str, task_id: &str) -> Option<(fsutil::ExitMarker, u64)> {
        self.store.paths(session_id, task_id).ok().and_then(|p| fsutil::read_exit_marker(&p.exit).ok().flatten())
    }

    /// The terminal transition: settle the outcome, write it under the store's lock (another
    /// manager may have finalised first; then its record stands), wake waiters.
    fn finalize(self: &Arc<Self>, live: &Arc<Live>, task_id: &str, end: End) {
        let (rec, transitioned) = self.record_end(live, task_id, end, None);
        self.announce_end(live, rec, transitioned);
    }

    /// First half of `finalize`: the durable write. Returns the record and whether this call
    /// made the transition (so that only one manager announces it). `rusage`, from the
    /// supervisor's report, is recorded with the transition.
    fn record_end(
        self: &Arc<Self>,
        live: &Arc<Live>,
        task_id: &str,
        end: End,
        rusage: Option<crate::store::record::Rusage>,
    ) -> (TaskRecord, bool) {
        let kill_requested = live.kill_requested.load(Ordering::SeqCst);
        if let Some(h) = live.ticker.locked().take() {
            h.abort();
        }
        let decide = |r: &TaskRecord| match &end {
            End::Facts(facts) => settle(r, facts, kill_requested),
            End::Outcome(o) => o.clone(),
        };
        let mut transitioned = false;
        let written = self.store.update(&live.session_id, task_id, |r| {
            transitioned = r.finish(decide(r));
            if transitioned {
                r.rusage = rusage;
            }
        });
        let rec = written.unwrap_or_else(|_| {
            // The store is failing (disk full, I/O error): the outcome is kept in memory, where
            // waiters and readers learn it, and written as soon as the store takes it.
            let mut r = live.state.borrow().clone();
            transitioned = r.finish(decide(&r));
            if transitioned {
                r.rusage = rusage;
            }
            self.keep_unwritten(&r);
            r
        });
        (rec, transitioned)
    }

    /// Second half of `finalize`: forget the task, scan its last output, wake waiters, announce.
    fn announce_end(&self, live: &Arc<Live>, rec: TaskRecord, transitioned: bool) {
        let task_id = rec.task_id.as_str();
        {
            let mut map = self.live.locked();
            if map.get(task_id).is_some_and(|l| Arc::ptr_eq(l, live)) {
                map.remove(task_id);
            }
        }
        if live.owned {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        // Output printed just before the exit is scanned before the completion is announced.
        if let Ok(paths) = self.paths(&rec) {
            for m in live.watches.finish(&rec, &paths, unix_millis()) {
                self.emit(Event::PatternMatch(m));
            }
        }
        live.state.send_replace(rec.clone());
        if transitioned && rec.notify_on_completion {
            self.emit_completion(&rec);
        }
    }

    pub fn set_sink(&self, sink: Option<EventSink>) {
        *self.sink.locked() = sink;
    }

    fn emit(&self, event: Event) {
        let sink = self.sink.locked().clone();
        if let Some(sink) = sink {
            sink(event);
        }
    }

    fn emit_completion(&self, rec: &TaskRecord) {
        if self.sink.locked().is_none() {
            return; // nobody listens: skip reading the output for a preview
        }
        let preview = self.preview(rec);
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
        *live.ticker.locked() = Some(handle.abort_handle());
    }

    /// A task known to this manager, or adopted from the store when another manager (or a dead
    /// one) started it and it is still running.
    fn lookup(self: &Arc<Self>, task_id: &str) -> Result<Lookup> {
        ids::validate_task_id(task_id)?;
        if let Some(l) = self.live.locked().get(task_id) {
            return Ok(Lookup::Live(l.clone()));
        }
        let rec = self.store.find(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        if rec.is_terminal() {
            return Ok(Lookup::Terminal(rec));
        }
        Ok(Lookup::Live(self.adopt(rec)))
    }

    pub fn get(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        ids::validate_task_id(task_id)?;
        if let Some(l) = self.live.locked().get(task_id) {
            return Ok(Some(l.state.borrow().clone()));
        }
        if let Some(kept) = self.unwritten(task_id) {
            return Ok(Some(kept));
        }
        Ok(self.store.find(task_id)?.map(|r| self.refresh(r)))
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
            .map(|r| self.unwritten(&r.task_id).unwrap_or_else(|| self.refresh(r)))
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

    /// `kill` with SIGTERM and the default grace, as a task of its own on the runtime.
    fn spawn_kill(self: &Arc<Self>, task_id: &str) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let id = task_id.to_string();
        tokio::spawn(async move {
            let _ = me.kill_inner(&id, libc::SIGTERM, None).await;
        })
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
        // A supervisor that does not carry the kill out (stopped, stuck) is not waited for: past
        // the grace and a margin, the proven task group is SIGKILLed directly, and so is our own
        // supervisor (identity checked, signalled through a pidfd), whose exit then ends the watch.
        let margin = Duration::from_millis(grace_ms.saturating_add(SUPERVISOR_MARGIN_MS));
        if let Ok(done) = tokio::time::timeout(margin, rx.wait_for(|r| r.is_terminal())).await {
            return done.map(|r| r.clone()).map_err(|_| Error::closed());
        }
        let rec = live.state.borrow().clone();
        kill_directly(rec.clone(), libc::SIGKILL, 0).await;
        if let Some(sup) = rec.supervisor().filter(|_| live.owned) {
            let _ = proc::signal_process(&sup, libc::SIGKILL);
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
        // Spawns already past the closed check finish first, so their tasks are known here.
        let _ = self.spawning.subscribe().wait_for(|n| *n == 0).await;
        let lives: Vec<(String, Arc<Live>)> = self.live.locked().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if kill_running {
            let handles: Vec<_> = lives.iter().filter(|(_, l)| l.owned).map(|(id, _)| self.spawn_kill(id)).collect();
            for h in handles {
                let _ = h.await;
            }
        }
        self.shutdown.send_replace(true);
        // A last attempt at ends the store refused; the supervisors' markers keep the rest.
        self.write_unwritten();
        // Every record written so far reaches the disk (the batched policy's group commit).
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.store.flush_durable()).await;
        // Release what the manager holds open in the store: the index, the inotify instance.
        self.store.index().close();
        if let Some(fe) = self.file_events.locked().take() {
            fe.stop();
        }
        let lives: Vec<Arc<Live>> = self.live.locked().drain().map(|(_, v)| v).collect();
        for live in lives {
            if let Some(h) = live.watcher.locked().take() {
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
