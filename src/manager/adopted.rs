//! Tasks this manager did not spawn, or whose record on disk may be stale: what they have become
//! (one decision, `lifecycle::decide`, over facts gathered here), watching them until they end,
//! and signalling them only through a proven process group.

use super::*;

/// How the end of a watched task is known.
pub(super) enum End {
    /// Exit facts, settled against the record as it is when written.
    Facts(ExitFacts),
    /// An outcome decided outright (the orphan rule).
    Outcome(crate::store::Outcome),
}

impl Manager {
    /// Every fact `decide` needs about a non-terminal record, read now.
    pub(super) fn probe(&self, rec: &TaskRecord, kill_requested: bool, now: u64) -> Probe {
        let me = std::process::id();
        let owner = |p: u32| rec.manager_start_ticks.is_some() && proc::is_same_process(p, rec.manager_start_ticks);
        // Another live process's manager records its tasks; in this process, only a spawn still
        // in flight (a sibling manager's) is someone else's business.
        let owner_alive = rec.manager_pid.is_some_and(|p| {
            if p == me {
                rec.status == Status::Starting
                    && rec.manager_start_ticks == proc::own_start_ticks()
                    && !self.live.locked().contains_key(&rec.task_id)
            } else {
                owner(p)
            }
        });
        let marker = self.read_marker(&rec.session_id, &rec.task_id);
        Probe {
            now,
            owner_alive,
            supervisor_alive: supervisor_of(rec).is_some_and(|s| s.is_alive()),
            child_alive: rec.child().is_some_and(|c| c.is_alive()),
            marker,
            kill_requested,
        }
    }

    /// A record read from disk that says "running" may be stale: its manager died and nobody
    /// has looked since. When it has ended, settle it now, so `get`/`list` tell the truth;
    /// anything still running is left for `replay` or `wait` to watch.
    pub(super) fn refresh(&self, rec: TaskRecord) -> TaskRecord {
        if rec.is_terminal() || self.live.locked().contains_key(&rec.task_id) {
            return rec;
        }
        let now = unix_millis();
        match decide(&rec, &self.probe(&rec, false, now)) {
            Verdict::Ended(facts) => self.settle_now(&rec, facts, None),
            Verdict::Orphan(outcome) if outcome.status != Status::Killed => {
                self.settle_now(&rec, ExitFacts::from_marker(None, now), Some(outcome))
            }
            _ => rec,
        }
    }

    /// Watches a task this manager did not spawn, until it ends. Used by `wait`/`kill` on
    /// foreign tasks and by replay.
    pub(super) fn adopt(self: &Arc<Self>, rec: TaskRecord) -> Arc<Live> {
        let task_id = rec.task_id.clone();
        let mut map = self.live.locked();
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
            let end = me.watch_foreign(&l2).await;
            me.finalize(&l2, &task_id, end);
        });
        *live.watcher.locked() = Some(handle.abort_handle());
        let rec_now = live.state.borrow().clone();
        self.start_ticker(&live, &rec_now);
        self.rearm_watches(&live, &rec);
        live
    }

    /// Until the task ends: ask `decide` what the record means, wait on what it names, again.
    async fn watch_foreign(self: &Arc<Self>, live: &Arc<Live>) -> End {
        let mut finished_kill = false;
        loop {
            let mut rec = live.state.borrow().clone();
            match self.store.read(&rec.session_id, &rec.task_id) {
                Ok(Some(r)) if r.is_terminal() => return End::Facts(ExitFacts::from_marker(None, unix_millis())),
                Ok(Some(r)) => {
                    rec = r;
                    live.state.send_if_modified(|cur| {
                        let changed = !cur.is_terminal() && *cur != rec;
                        if changed {
                            *cur = rec.clone();
                        }
                        changed
                    });
                }
                _ => {}
            }
            let kill_requested = live.kill_requested.load(Ordering::SeqCst);
            match decide(&rec, &self.probe(&rec, kill_requested, unix_millis())) {
                Verdict::Ended(facts) => return End::Facts(facts),
                Verdict::Orphan(outcome) => {
                    if outcome.status == Status::Killed {
                        if let Some(g) = rec.child().and_then(|c| proc::proven_group(&c, rec.pgid)) {
                            let _ = proc::signal_group(g, libc::SIGKILL);
                        }
                    }
                    return End::Outcome(outcome);
                }
                Verdict::Owned => self.owner_writes(&rec).await,
                Verdict::Watch { finish_kill } => {
                    if rec.status == Status::Starting {
                        self.record_found_command(live, &rec);
                    }
                    if finish_kill && !finished_kill {
                        finished_kill = true;
                        self.spawn_kill(&rec.task_id);
                    }
                    if let Some(end) = self.watch_processes(&rec).await {
                        return end;
                    }
                }
            }
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
        let sup = supervisor_of(rec).filter(|s| s.is_alive());
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
    pub(super) fn record_found_command(&self, live: &Arc<Live>, rec: &TaskRecord) {
        let Some(sup) = supervisor_of(rec) else { return };
        let Some((pid, st)) = proc::task_of_supervisor(&sup) else { return };
        let (sup_pid, sup_ticks) = (Some(sup.pid), sup.start_ticks);
        let update = |r: &mut TaskRecord| {
            if r.status == Status::Starting {
                r.status = Status::Running;
                r.child_pid = Some(pid);
                r.pgid = Some(pid as i32);
                r.child_start_ticks = Some(st.start_ticks);
                r.supervisor_pid = sup_pid;
                r.supervisor_start_ticks = sup_ticks;
            }
        };
        let written = self.store.update(&rec.session_id, &rec.task_id, update).unwrap_or_else(|_| {
            let mut r = rec.clone();
            update(&mut r);
            r
        });
        live.state.send_if_modified(|cur| {
            let changed = !cur.is_terminal() && *cur != written;
            if changed {
                *cur = written.clone();
            }
            changed
        });
    }

    /// Waits on the task's processes. Its supervisor first: it writes the exit marker, and its
    /// exit (or the marker appearing) ends the wait. Without one, the command itself is watched
    /// and its deadline kept. `Some` when this wait decided the end (the deadline).
    async fn watch_processes(&self, rec: &TaskRecord) -> Option<End> {
        if let Some(sup) = supervisor_of(rec).filter(|s| s.is_alive()) {
            self.supervisor_done(rec, &sup).await;
            return None;
        }
        let child = rec.child().filter(|c| c.is_alive())?;
        let deadline = rec.timeout_ms.map(|t| rec.started_at + t);
        let remaining = deadline.map(|d| Duration::from_millis(d.saturating_sub(unix_millis())));
        tokio::select! {
            _ = proc::wait_identity_gone(&child) => None,
            _ = sleep_or_forever(remaining) => {
                kill_directly(rec.clone(), libc::SIGTERM, self.cfg.kill_grace_ms).await;
                proc::wait_identity_gone(&child).await;
                let facts = ExitFacts { code: Some(crate::protocol::TIMEOUT_EXIT_CODE), signal: None, finished_at: unix_millis(), timed_out: true, marker_killed: false };
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

/// The supervisor a record names; for a `starting` record written without it (older
/// versions), the one found by its command line whose start matches the task's.
fn supervisor_of(rec: &TaskRecord) -> Option<proc::Identity> {
    rec.supervisor().or_else(|| (rec.status == Status::Starting).then(|| proc::find_supervisor(&rec.task_id, rec.started_at)).flatten())
}

pub(super) async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Kill without a supervisor to ask (adopted tasks, aft bundles): the group is signalled only
/// when proven the task's (`proc::proven_group`): its leader is the recorded process (or the
/// command a live supervisor of the task started), and leads that group now.
pub(super) async fn kill_directly(rec: TaskRecord, signal: i32, grace_ms: u64) {
    let leader = rec.child().or_else(|| {
        let (pid, st) = supervisor_of(&rec).and_then(|s| proc::task_of_supervisor(&s))?;
        Some(proc::Identity { pid, start_ticks: Some(st.start_ticks), started_at_ms: rec.started_at })
    });
    let Some(leader) = leader else { return };
    let pgid = rec.pgid.or(Some(leader.pid as i32));
    let Some(group) = proc::proven_group(&leader, pgid) else {
        // The process is the task's but its recorded group is not provably its own (pgid 0
        // or 1, ours, or another): only that process is signalled.
        let _ = proc::signal_process(&leader, signal);
        if signal != libc::SIGKILL {
            tokio::time::sleep(Duration::from_millis(grace_ms)).await;
            let _ = proc::signal_process(&leader, libc::SIGKILL);
        }
        return;
    };
    let _ = proc::signal_group(group, signal);
    if signal != libc::SIGKILL {
        tokio::time::sleep(Duration::from_millis(grace_ms)).await;
        if let Some(group) = proc::group_after_leader(&leader, Some(group)) {
            let _ = proc::signal_group(group, libc::SIGKILL);
        }
    }
}
