//! One actor per live task (spawned here, or adopted): a task on the runtime that owns
//! everything that watches the task (the supervisor's socket, the exit watch, the
//! `long_running` ticker, the output scanner and a kill's fallback timer) and takes commands
//! over a channel. The manager keeps a `Live` handle: the command sender, the watches, and the
//! record as last published, which readers and waiters use. Every state change goes through
//! one path, disk first, then memory, then events (`Manager::commit`; `Actor::finish` for the
//! end).

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval};

use super::*;
use crate::fileevents::{FileEvents, Subscription};
use crate::store::record::Rusage;

/// What the manager keeps of a task it watches.
pub(super) struct Live {
    pub(super) session_id: String,
    pub(super) owned: bool,
    /// The record as last published: written only by `Manager::commit` and the actor's end.
    pub(super) state: watch::Sender<TaskRecord>,
    /// Orders publications, so that memory follows disk in the order written.
    publishing: Mutex<()>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    /// Output watches: added and removed by the API, scanned by the actor.
    pub(super) watches: crate::watch::Watches,
}

impl Live {
    pub(super) fn record(&self) -> TaskRecord {
        self.state.borrow().clone()
    }

    /// Asks the actor for something; false when it has stopped (the task ended, or close()).
    pub(super) fn tell(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }
}

pub(super) enum Command {
    /// Send `signal` (through the supervisor, or directly to a proven group), SIGKILL after the
    /// grace; past the grace and a margin, SIGKILL the proven group directly.
    Kill { signal: i32, grace_ms: u64 },
    /// The watches changed: scan now (output printed before a watch counts), then on each write.
    Scan,
    /// close(): let go of the task (its supervisor carries on alone), then answer.
    Detach(oneshot::Sender<()>),
}

/// What the exit watch found.
pub(super) enum Step {
    /// The task ended; `rusage` from its supervisor's report.
    End(End, Option<Rusage>),
    /// Adopted: `decide` says something of it runs; watch its processes.
    Watch { rec: TaskRecord, finish_kill: bool },
    /// Adopted: decide again (its owner wrote, or its processes were watched to no end); the
    /// record as read from disk, if it was.
    Again(Option<TaskRecord>),
}

/// How the end of a watched task is known.
pub(super) enum End {
    /// Exit facts, settled against the record as it is when written.
    Facts(ExitFacts),
    /// An outcome decided outright (the orphan rule).
    Outcome(crate::store::Outcome),
}

impl End {
    /// The terminal outcome of `rec`; `kill_requested`: this manager asked for the kill.
    pub(super) fn outcome(&self, rec: &TaskRecord, kill_requested: bool) -> crate::store::Outcome {
        match self {
            End::Facts(facts) => settle(rec, facts, kill_requested),
            End::Outcome(o) => o.clone(),
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Step> + Send>>;

/// The `long_running` event due at a tick, if any: only while a notifying task runs.
pub(super) fn long_running(rec: &TaskRecord, now: u64) -> Option<Event> {
    (!rec.is_terminal() && rec.notify_on_completion).then(|| Event::LongRunning {
        elapsed_ms: now.saturating_sub(rec.started_at),
        task_id: rec.task_id.clone(),
        session_id: rec.session_id.clone(),
        command: rec.command.clone(),
    })
}

/// When a kill the supervisor was asked to carry out is done directly instead: past the grace
/// and a margin (a supervisor stopped or stuck is not waited for), the earliest one asked.
pub(super) fn kill_fallback_at(earlier: Option<Instant>, now: Instant, grace_ms: u64) -> Instant {
    let at = now + Duration::from_millis(grace_ms.saturating_add(SUPERVISOR_MARGIN_MS));
    earlier.map_or(at, |t| t.min(at))
}

struct Scanner {
    paths: TaskPaths,
    notify: Arc<Notify>,
    events: Option<Arc<FileEvents>>,
    subs: Vec<Subscription>,
}

pub(super) struct Actor {
    m: Arc<Manager>,
    live: Arc<Live>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Our end of an owned task's supervisor socket (the exit watch reads its reports).
    requests: Option<OwnedWriteHalf>,
    supervisor_pid: Option<u32>,
    kill_requested: bool,
    /// A kill's recorded-but-unfinished carry-out was done (adopted tasks).
    finished_kill: bool,
    kill_fallback: Option<Instant>,
    ticker: Option<Interval>,
    scanner: Option<Scanner>,
    /// When a rate limit holding matches back sends its summary (its window ends).
    summary_at: Option<Instant>,
}

// What woke the actor: matched at once, never stored.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Step(Step),
    Command(Option<Command>),
    Tick,
    Scan,
    Fallback,
}

impl Manager {
    /// Starts the actor of a task this manager spawned (`control`: its supervisor's socket) or
    /// adopted (`None`), and registers its handle. Returns the handle already registered when
    /// another call adopted the task first.
    pub(super) fn start_actor(self: &Arc<Self>, rec: TaskRecord, control: Option<(Control, u32)>) -> Arc<Live> {
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = control.is_some();
        let live = Arc::new(Live {
            session_id: rec.session_id.clone(),
            owned,
            state: watch::channel(rec.clone()).0,
            publishing: Mutex::new(()),
            commands: tx,
            watches: Default::default(),
        });
        {
            let mut map = self.live.locked();
            if let Some(l) = map.get(&rec.task_id).filter(|_| !owned) {
                return l.clone();
            }
            map.insert(rec.task_id.clone(), live.clone());
        }
        if !owned {
            // Watches kept with the task in its bundle (set before a restart) carry on here.
            self.rearm_watches(&live, &rec);
        }
        let (requests, pending, supervisor_pid) = match control {
            Some((Control { reports, requests }, sup)) => {
                let pending: Pending = Box::pin(owned_exit(self.clone(), reports, sup, live.state.subscribe()));
                (Some(requests), pending, Some(sup))
            }
            None => (None, Box::pin(self.clone().foreign_step(rec.clone(), false)) as Pending, None),
        };
        let every = self.cfg.long_running_interval_ms;
        let ticker = (every > 0 && !rec.is_terminal()).then(|| {
            let period = Duration::from_millis(every);
            tokio::time::interval_at(Instant::now() + period, period)
        });
        let actor = Actor {
            m: self.clone(),
            live: live.clone(),
            commands: rx,
            requests,
            supervisor_pid,
            kill_requested: false,
            finished_kill: false,
            kill_fallback: None,
            ticker,
            scanner: None,
            summary_at: None,
        };
        tokio::spawn(actor.run(pending));
        live
    }

    /// The one write-through path of a live task's state change: the store first (under its
    /// session lock; another manager's changes are kept), then the record in memory, in the
    /// order written. A terminal record is published only by the task's end (after its last
    /// output was scanned); the caller announces what the change means.
    pub(super) fn commit(&self, live: &Live, change: impl FnOnce(&mut TaskRecord)) -> Result<TaskRecord> {
        let _order = live.publishing.locked();
        let task_id = live.state.borrow().task_id.clone();
        let rec = self.store.update(&live.session_id, &task_id, change)?;
        publish(live, &rec);
        Ok(rec)
    }

    /// A record read from disk (another manager wrote it): into memory, unless it is terminal.
    pub(super) fn publish_read(&self, live: &Live, rec: &TaskRecord) {
        let _order = live.publishing.locked();
        publish(live, rec);
    }
}

fn publish(live: &Live, rec: &TaskRecord) {
    live.state.send_if_modified(|cur| {
        let changed = !cur.is_terminal() && !rec.is_terminal() && cur != rec;
        if changed {
            *cur = rec.clone();
        }
        changed
    });
}

/// An owned task's exit: the supervisor's report; the completion is announced once our own
/// record is written (then the supervisor is told `recorded` and writes no marker; its marker
/// is the fallback for a manager that dies, fails or stalls first). A supervisor gone without
/// a report leaves its marker as the truth, if any; else the command may still run and is
/// watched by its own pid.
async fn owned_exit(m: Arc<Manager>, mut reports: BufReader<OwnedReadHalf>, sup: u32, state: watch::Receiver<TaskRecord>) -> Step {
    loop {
        match launcher::next_report(&mut reports).await {
            Some(Report::Exit { code, signal, finished_at, timed_out, usage }) => {
                let rusage = usage.map(|u| Rusage { max_rss_kb: u.max_rss_kb, user_ms: u.user_ms, system_ms: u.system_ms });
                let facts = ExitFacts { code: Some(code), signal, finished_at, timed_out, marker_killed: false };
                return Step::End(End::Facts(facts), rusage);
            }
            Some(_) => continue,
            None => {
                proc::wait_gone(sup).await;
                proc::reap(sup);
                let current = state.borrow().clone();
                return Step::End(End::Facts(m.after_supervisor(&current).await), None);
            }
        }
    }
}

async fn next_tick(ticker: Option<&mut Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_scan(scanner: Option<&Scanner>) {
    match scanner {
        Some(Scanner { events: Some(_), notify, .. }) => notify.notified().await,
        // Without inotify (non-Linux) nothing would wake us: fall back to a slow check.
        Some(Scanner { events: None, .. }) => tokio::time::sleep(Duration::from_millis(250)).await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, mut pending: Pending) {
        let detached = loop {
            // Biased: an exit already reported is taken before a command that came meanwhile
            // (a kill asked for after the task ended on its own does not make it "killed").
            let wake = tokio::select! {
                biased;
                step = &mut pending => Wake::Step(step),
                command = self.commands.recv() => Wake::Command(command),
                _ = next_tick(self.ticker.as_mut()) => Wake::Tick,
                _ = next_scan(self.scanner.as_ref()) => Wake::Scan,
                _ = until(self.summary_at) => Wake::Scan,
                _ = until(self.kill_fallback) => Wake::Fallback,
            };
            match wake {
                Wake::Step(Step::End(end, rusage)) => {
                    drop(pending);
                    self.finish(end, rusage);
                    return;
                }
                Wake::Step(Step::Watch { rec, finish_kill }) => pending = self.watch(rec, finish_kill).await,
                Wake::Step(Step::Again(rec)) => {
                    if let Some(rec) = rec {
                        self.m.publish_read(&self.live, &rec);
                    }
                    pending = Box::pin(self.m.clone().foreign_step(self.live.record(), self.kill_requested));
                }
                Wake::Command(Some(Command::Kill { signal, grace_ms })) => self.kill(signal, grace_ms).await,
                Wake::Command(Some(Command::Scan)) => self.scan(),
                Wake::Command(Some(Command::Detach(done))) => break Some(done),
                Wake::Command(None) => break None,
                Wake::Tick => {
                    if let Some(event) = long_running(&self.live.state.borrow(), self.m.now()) {
                        self.m.emit(event);
                    }
                }
                Wake::Scan => self.scan(),
                Wake::Fallback => self.kill_fallback().await,
            }
        };
        // Dropping our end of the socket (the exit watch holds the reports half) lets the
        // supervisor carry on alone; we still reap it when it ends, so no zombie is left in the
        // harness process.
        drop(pending);
        self.requests.take();
        if let Some(pid) = self.supervisor_pid {
            tokio::spawn(proc::reap_child(pid));
        }
        self.stop_scanner();
        if let Some(done) = detached {
            let _ = done.send(());
        }
    }

    /// An adopted task that `decide` says runs: record the command its supervisor started (a
    /// `starting` record whose manager died after `go`), carry out a kill its manager recorded
    /// but died before it was sure to land, then wait on its processes.
    async fn watch(&mut self, rec: TaskRecord, finish_kill: bool) -> Pending {
        self.m.publish_read(&self.live, &rec);
        if rec.status == Status::Starting {
            self.m.record_found_command(&self.live, &rec);
        }
        if finish_kill && !self.finished_kill {
            self.finished_kill = true;
            self.kill(libc::SIGTERM, self.m.cfg.kill_grace_ms).await;
        }
        let m = self.m.clone();
        let rec = self.live.record();
        Box::pin(async move {
            match m.watch_processes(&rec).await {
                Some(end) => Step::End(end, None),
                None => Step::Again(None),
            }
        })
    }

    async fn kill(&mut self, signal: i32, grace_ms: u64) {
        if self.live.state.borrow().is_terminal() {
            return;
        }
        self.kill_requested = true;
        let _ = self.m.commit(&self.live, |r| {
            if r.status == Status::Running {
                r.status = Status::Killing;
            }
        });
        let sent = match self.requests.as_mut() {
            Some(w) => launcher::send(w, Request::Kill { signal, grace_ms }).await.is_ok(),
            None => false,
        };
        if !sent {
            let (procs, rec) = (self.m.procs.clone(), self.live.record());
            tokio::spawn(async move { os::kill_directly(&*procs, &rec, signal, grace_ms).await });
        }
        self.kill_fallback = Some(kill_fallback_at(self.kill_fallback, Instant::now(), grace_ms));
    }

    /// A supervisor that did not carry the kill out (stopped, stuck) is not waited for: the
    /// proven task group is SIGKILLed directly, and so is our own supervisor (identity checked,
    /// signalled through a pidfd), whose exit then ends the exit watch.
    async fn kill_fallback(&mut self) {
        self.kill_fallback = None;
        let rec = self.live.record();
        let procs = self.m.procs.clone();
        os::kill_directly(&*procs, &rec, libc::SIGKILL, 0).await;
        if let Some(sup) = rec.supervisor().filter(|_| self.live.owned) {
            let _ = procs.signal_process(&sup, libc::SIGKILL);
        }
    }

    /// Scans the watches over what was written since the last scan; subscribes to the task's
    /// output files while any watch is left.
    fn scan(&mut self) {
        let rec = self.live.record();
        if rec.is_terminal() {
            return;
        }
        if self.scanner.is_none() {
            if self.live.watches.is_empty() {
                return;
            }
            let Ok(paths) = self.m.paths(&rec) else { return };
            let notify = Arc::new(Notify::new());
            let events = self.m.file_events();
            let subs = match &events {
                Some(fe) => paths
                    .streams(rec.mode)
                    .iter()
                    .filter_map(|f| fe.subscribe(f, crate::fileevents::MODIFIED, notify.clone()).ok())
                    .collect(),
                None => Vec::new(),
            };
            self.scanner = Some(Scanner { paths, notify, events, subs });
        }
        let Some(scanner) = &self.scanner else { return };
        let now = self.m.now();
        let mut found = self.live.watches.summaries(now);
        found.extend(self.live.watches.scan(&rec, &scanner.paths, now));
        self.m.persist_watches(&self.live);
        for found in found {
            self.m.emit(Event::PatternMatch(found));
        }
        self.summary_at = self.live.watches.next_summary_at().map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now)));
        if self.live.watches.is_empty() {
            self.stop_scanner();
        }
    }

    fn stop_scanner(&mut self) {
        self.summary_at = None;
        if let Some(Scanner { events: Some(fe), subs, .. }) = self.scanner.take() {
            for sub in subs {
                fe.unsubscribe(sub);
            }
        }
    }

    /// Tells an owned task's supervisor that its end is in the record on disk, so it writes no
    /// exit marker. Not sent (the socket just closes) when the end was kept unwritten: the
    /// marker then keeps it for any later manager. A few bytes on an idle socket: never blocks.
    fn recorded(&self) {
        if let Some(w) = &self.requests {
            let _ = w.try_write(Request::Recorded.render().as_bytes());
        }
    }

    /// The end: the durable write (or, when the store refuses it, the record kept and retried),
    /// the task forgotten, its last output scanned, then the terminal record published and the
    /// completion announced (by the manager that made the transition only).
    fn finish(mut self, end: End, rusage: Option<Rusage>) {
        let m = self.m.clone();
        if let Some(pid) = self.supervisor_pid {
            tokio::spawn(proc::reap_child(pid));
        }
        self.ticker = None;
        let kill_requested = self.kill_requested;
        let current = self.live.record();
        let outcome = |r: &TaskRecord| end.outcome(r, kill_requested);
        let unwritten::EndWrite { rec, transitioned, written, first_kept } =
            unwritten::write_end(&m.store, &m.unwritten, &current, &outcome, rusage);
        if written {
            self.recorded();
        }
        m.retry_unwritten(first_kept);
        m.forget(&self.live);
        // Output printed just before the exit is scanned before the completion is announced.
        if let Ok(paths) = m.paths(&rec) {
            for found in self.live.watches.finish(&rec, &paths, m.now()) {
                m.emit(Event::PatternMatch(found));
            }
        }
        self.stop_scanner();
        {
            let _order = self.live.publishing.locked();
            self.live.state.send_replace(rec.clone());
        }
        if transitioned && rec.notify_on_completion {
            m.emit_completion(&rec);
        }
    }
}
