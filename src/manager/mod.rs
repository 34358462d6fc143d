//! The manager: answers the API for one `TaskManager` and keeps a handle on each live task,
//! whose actor (actor.rs) watches it and drives its lifecycle (lifecycle.rs) through the store.
//! Everything here runs on the shared tokio runtime or is a short, bounded store access; no
//! thread per task.

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
use crate::fsutil;
use crate::launcher::{self, Control, LaunchSpec, Launched};
use crate::lifecycle::{decide, settle, ExitFacts, Probe, Verdict};
use crate::proc;
use crate::protocol::{Report, Request};
use crate::store::{ids, Mode, RowFilter, Status, Store, TaskPaths, TaskRecord};

mod actor;
mod adopted;
mod config;
mod foreground;
mod os;
mod reading;
use actor::{Command, End, Live, Step};
use adopted::sleep_or_forever;
mod recovery;
mod terminal;
#[cfg(test)]
mod tests;
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
    unwritten: unwritten::Unwritten,
    /// The seams to the world (os.rs): what time it is, and what processes are and get.
    clock: Arc<dyn os::Clock>,
    procs: Arc<dyn os::Processes>,
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
            unwritten: Default::default(),
            clock: Arc::new(os::SystemClock),
            procs: Arc::new(os::OsProcesses),
        }))
    }

    /// Now, in unix milliseconds.
    fn now(&self) -> u64 {
        self.clock.now_ms()
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
            started_at: self.now(),
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
            manager_start_ticks: self.procs.own_start_ticks(),
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
                    finished_at: self.now(),
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
        self.start_actor(running.clone(), Some((Control { reports, requests }, supervisor_pid)));
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

    fn facts_from_marker(&self, session_id: &str, task_id: &str) -> ExitFacts {
        ExitFacts::from_marker(self.read_marker(session_id, task_id), self.now())
    }

    /// What a task's exit marker says, if it was written (and can be read).
    fn read_marker(&self, session_id: &str, task_id: &str) -> Option<(fsutil::ExitMarker, u64)> {
        self.store.paths(session_id, task_id).ok().and_then(|p| fsutil::read_exit_marker(&p.exit).ok().flatten())
    }

    /// Forgets a task that ended: out of the live map, and its running slot released.
    fn forget(&self, live: &Arc<Live>) {
        let task_id = live.state.borrow().task_id.clone();
        {
            let mut map = self.live.locked();
            if map.get(&task_id).is_some_and(|l| Arc::ptr_eq(l, live)) {
                map.remove(&task_id);
            }
        }
        if live.owned {
            self.running.fetch_sub(1, Ordering::SeqCst);
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
            return Ok(Some(l.record()));
        }
        if let Some(kept) = self.unwritten.get(task_id) {
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
            .map(|r| self.unwritten.get(&r.task_id).unwrap_or_else(|| self.refresh(r)))
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
        if !live.state.borrow().is_terminal() {
            // The actor carries it out, and falls back on SIGKILL itself when the supervisor
            // does not (SUPERVISOR_MARGIN_MS past the grace).
            live.tell(Command::Kill { signal, grace_ms });
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
        self.unwritten.write(&self.store);
        // Every record written so far reaches the disk (the batched policy's group commit).
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            me.store.flush_durable();
            me.store.remove_spares();
            // Release what the manager holds open in the store, after a last commit of the
            // index's queued writes (which may wait for another process's lock).
            me.store.index().close();
        })
        .await;
        // And the inotify instance.
        if let Some(fe) = self.file_events.locked().take() {
            fe.stop();
        }
        let lives: Vec<Arc<Live>> = self.live.locked().drain().map(|(_, v)| v).collect();
        for live in lives {
            // Its actor lets go of the task: the supervisor carries on alone.
            let (done, detached) = tokio::sync::oneshot::channel();
            if live.tell(Command::Detach(done)) {
                let _ = detached.await;
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
