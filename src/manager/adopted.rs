//! Tasks this manager did not spawn, or whose record on disk may be stale: what they have become
//! (one decision, `lifecycle::decide`, over facts gathered here), watching them until they end,
//! and signalling them only through a proven process group.

use super::*;
use os::supervisor_of;

impl Manager {
    /// Every fact `decide` needs about a non-terminal record, read now.
    pub(super) fn probe(&self, rec: &TaskRecord, kill_requested: bool, now: u64) -> Probe {
        let watched_here = self.live.locked().contains_key(&rec.task_id);
        let marker = self.read_marker(&rec.session_id, &rec.task_id);
        os::probe(&*self.procs, rec, kill_requested, now, watched_here, marker)
    }

    /// A record read from disk that says "running" may be stale: its manager died and nobody
    /// has looked since. When it has ended, settle it now, so `get`/`list` tell the truth;
    /// anything still running is left for `replay` or `wait` to watch.
    pub(super) fn refresh(&self, rec: TaskRecord) -> TaskRecord {
        if rec.is_terminal() || self.live.locked().contains_key(&rec.task_id) {
            return rec;
        }
        let now = self.now();
        match decide(&rec, &self.probe(&rec, false, now)) {
            Verdict::Ended(facts) => self.settle_now(&rec, facts, None),
            Verdict::Orphan(outcome) if outcome.status != Status::Killed => {
                self.settle_now(&rec, ExitFacts::from_marker(None, now), Some(outcome))
            }
            _ => rec,
        }
    }

    /// Watches a task this manager did not spawn, until it ends (its actor). Used by `wait`,
    /// `kill`, `watch`, `waitFor` on foreign tasks and by replay.
    pub(super) fn adopt(self: &Arc<Self>, rec: TaskRecord) -> Arc<Live> {
        if let Some(l) = self.live.locked().get(&rec.task_id) {
            return l.clone();
        }
        self.start_actor(rec, None)
    }

    /// One look at an adopted task: what `decide` makes of its record (read again from disk)
    /// now. When its own manager (alive) will write the end, this waits for that write.
    pub(super) async fn foreign_step(self: Arc<Self>, rec: TaskRecord, kill_requested: bool) -> Step {
        let rec = match self.store.read(&rec.session_id, &rec.task_id) {
            // Another manager recorded the end: its record stands.
            Ok(Some(r)) if r.is_terminal() => return Step::End(End::Facts(ExitFacts::from_marker(None, self.now())), None),
            Ok(Some(r)) => r,
            _ => rec,
        };
        match decide(&rec, &self.probe(&rec, kill_requested, self.now())) {
            Verdict::Ended(facts) => Step::End(End::Facts(facts), None),
            Verdict::Orphan(outcome) => {
                if outcome.status == Status::Killed {
                    if let Some(g) = rec.child().and_then(|c| self.procs.proven_group(&c, rec.pgid)) {
                        let _ = self.procs.signal_group(g, libc::SIGKILL);
                    }
                }
                Step::End(End::Outcome(outcome), None)
            }
            Verdict::Owned => {
                self.owner_writes(&rec).await;
                Step::Again(Some(rec))
            }
            Verdict::Watch { finish_kill } => Step::Watch { rec, finish_kill },
        }
    }

    /// Its own manager (alive, elsewhere) will write the end: wait until the record changes,
    /// told by inotify on the session directory (each write is a rename into it), or until the
    /// supervisor is gone; a slow re-check covers a manager that stopped writing.
    async fn owner_writes(&self, rec: &TaskRecord) {
        let notify = Arc::new(Notify::new());
        let events = self.file_events();
        let dir = self.paths(rec).ok().map(|p| p.dir);
        let sub = events.as_ref().zip(dir.as_ref()).and_then(|(fe, d)| fe.subscribe(d, crate::fileevents::APPEARED, notify.clone()).ok());
        let sup = supervisor_of(&*self.procs, rec).filter(|s| self.procs.is_alive(s));
        let check = if sub.is_some() { Duration::from_secs(1) } else { Duration::from_millis(100) };
        tokio::select! {
            _ = notify.notified() => {}
            _ = async { match sup { Some(s) => proc::wait_identity_gone(&s).await, None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(check) => {}
        }
        if let (Some(fe), Some(sub)) = (events, sub) {
            fe.unsubscribe(sub);
        }
    }

    /// A `starting` record whose manager died after `go`: its supervisor's child is the command.
    /// Recorded as running, so that it can be listed and killed like any task.
    pub(super) fn record_found_command(&self, live: &Live, rec: &TaskRecord) {
        let Some(sup) = supervisor_of(&*self.procs, rec) else { return };
        let Some((pid, start_ticks)) = self.procs.task_of_supervisor(&sup) else { return };
        let (sup_pid, sup_ticks) = (Some(sup.pid), sup.start_ticks);
        let update = |r: &mut TaskRecord| {
            if r.status == Status::Starting {
                r.status = Status::Running;
                r.child_pid = Some(pid);
                r.pgid = Some(pid as i32);
                r.child_start_ticks = Some(start_ticks);
                r.supervisor_pid = sup_pid;
                r.supervisor_start_ticks = sup_ticks;
            }
        };
        if self.commit(live, update).is_err() {
            // The store refused: the command is known in memory at least, so it can be killed.
            let mut r = rec.clone();
            update(&mut r);
            self.publish_read(live, &r);
        }
    }

    /// Waits on the task's processes. Its supervisor first: it writes the exit marker, and its
    /// exit (or the marker appearing) ends the wait. Without one, the command itself is watched
    /// and its deadline kept. `Some` when this wait decided the end (the deadline).
    pub(super) async fn watch_processes(&self, rec: &TaskRecord) -> Option<End> {
        if let Some(sup) = supervisor_of(&*self.procs, rec).filter(|s| self.procs.is_alive(s)) {
            self.supervisor_done(rec, &sup).await;
            return None;
        }
        let child = rec.child().filter(|c| self.procs.is_alive(c))?;
        let deadline = rec.timeout_ms.map(|t| rec.started_at + t);
        let remaining = deadline.map(|d| Duration::from_millis(d.saturating_sub(self.now())));
        tokio::select! {
            _ = proc::wait_identity_gone(&child) => None,
            _ = sleep_or_forever(remaining) => {
                os::kill_directly(&*self.procs, rec, libc::SIGTERM, self.cfg.kill_grace_ms).await;
                proc::wait_identity_gone(&child).await;
                let facts = ExitFacts { code: Some(crate::protocol::TIMEOUT_EXIT_CODE), signal: None, finished_at: self.now(), timed_out: true, marker_killed: false };
                Some(End::Facts(facts))
            }
        }
    }

    /// Waits until a task's supervisor has recorded the end: its exit marker appears (it is
    /// renamed into the directory before the supervisor exits, and that exit can take a while)
    /// or the supervisor is gone.
    async fn supervisor_done(&self, rec: &TaskRecord, sup: &proc::Identity) {
        let Ok(TaskPaths { exit: exit_path, .. }) = self.paths(rec) else {
            proc::wait_identity_gone(sup).await;
            return;
        };
        let written = || fsutil::read_exit_marker(&exit_path).ok().flatten().is_some();
        let notify = Arc::new(Notify::new());
        let events = self.file_events();
        let sub = events.as_ref().and_then(|fe| fe.subscribe(exit_path.parent()?, crate::fileevents::APPEARED, notify.clone()).ok());
        let gone = proc::wait_identity_gone(sup);
        tokio::pin!(gone);
        while !written() {
            tokio::select! {
                _ = &mut gone => break,
                _ = notify.notified() => {}
            }
        }
        if let (Some(fe), Some(sub)) = (events, sub) {
            fe.unsubscribe(sub);
        }
    }

    /// The manager's inotify instance, started on first use.
    pub(super) fn file_events(&self) -> Option<Arc<crate::fileevents::FileEvents>> {
        let mut fe = self.file_events.locked();
        if fe.is_none() && !self.closed.load(Ordering::SeqCst) {
            *fe = crate::fileevents::FileEvents::start().ok();
        }
        fe.clone()
    }

    /// Our own task's supervisor went away without a report: its marker is the truth when it
    /// wrote one; when it died first (killed) while the command still runs, watch the command
    /// itself and keep its deadline.
    pub(super) async fn after_supervisor(&self, rec: &TaskRecord) -> ExitFacts {
        let facts = self.facts_from_marker(&rec.session_id, &rec.task_id);
        if facts.code.is_some() || facts.marker_killed {
            return facts;
        }
        let mut without_supervisor = rec.clone();
        without_supervisor.supervisor_pid = None;
        match self.watch_processes(&without_supervisor).await {
            Some(End::Facts(f)) => f,
            _ => self.facts_from_marker(&rec.session_id, &rec.task_id),
        }
    }
}

pub(super) async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
