//! Output watches and `waitFor`, scanned when inotify says a stream grew.

use super::*;

/// How `waitFor` ended.
#[derive(Debug, Clone)]
pub enum WaitForResult {
    Matched(crate::watch::Match, TaskRecord),
    Exited(TaskRecord),
    Timeout(TaskRecord),
}

impl Manager {
    /// Adds a watch; matches arrive as `pattern_match` events. Must run inside the runtime.
    pub fn watch(self: &Arc<Self>, task_id: &str, spec: crate::watch::Spec) -> Result<String> {
        self.check_open()?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(r) => {
                return Err(Error::new(
                    Code::Exited,
                    format!("task {} has already ended ({}); read its output with tail or readOutput", r.task_id, r.status.as_str()),
                ))
            }
            Lookup::Live(l) => l,
        };
        let id = live.watches.add(spec, None)?;
        self.persist_watches(&live);
        live.tell(Command::Scan);
        Ok(id)
    }

    /// Removes a watch; false when the task has none by that id, has ended, or is unknown.
    /// After `close()` nothing is adopted: the watch kept with the task is removed in the store.
    pub fn unwatch(self: &Arc<Self>, task_id: &str, watch_id: &str) -> Result<bool> {
        ids::validate_task_id(task_id)?;
        if self.closed.load(Ordering::SeqCst) {
            let Some(rec) = self.store.find(task_id)?.filter(|r| !r.is_terminal()) else { return Ok(false) };
            let mut removed = false;
            self.store.update(&rec.session_id, task_id, |r| {
                let before = r.watches.len();
                r.watches.retain(|w| w.id != watch_id);
                removed = r.watches.len() != before;
            })?;
            return Ok(removed);
        }
        let live = match self.lookup(task_id) {
            Ok(Lookup::Live(live)) => live,
            Ok(Lookup::Terminal(_)) => return Ok(false),
            Err(e) if e.code == Code::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let removed = live.watches.remove(watch_id);
        self.persist_watches(&live);
        Ok(removed)
    }

    /// The watches set on a task (empty once it ended: watches end with their task). After
    /// `close()`, the ones kept with it in the store, without adopting it.
    pub fn watches(self: &Arc<Self>, task_id: &str) -> Result<Vec<crate::watch::Info>> {
        if self.closed.load(Ordering::SeqCst) {
            ids::validate_task_id(task_id)?;
            let rec = self.store.find(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
            let kept = crate::watch::Watches::default();
            kept.restore(&rec.watches);
            return Ok(kept.list());
        }
        match self.lookup(task_id)? {
            Lookup::Terminal(_) => Ok(Vec::new()),
            Lookup::Live(live) => Ok(live.watches.list()),
        }
    }

    /// Keeps the task's watches with it in the store, when they changed, so that they survive
    /// a restart (through the write-through path). Never over a terminal record (`merge_update`
    /// keeps those as they are).
    pub(super) fn persist_watches(&self, live: &Live) {
        let Some(kept) = live.watches.to_persist() else { return };
        // A failing store loses only the watches' progress: a restart rescans from the last
        // position written, and `reported_to` keeps what was reported from being sent again.
        let _ = self.commit(live, |r| r.watches = kept);
    }

    /// Re-arms the watches kept with a task this manager adopts; its actor scans them.
    pub(super) fn rearm_watches(&self, live: &Live, rec: &TaskRecord) {
        if rec.watches.is_empty() || rec.is_terminal() {
            return;
        }
        live.watches.restore(&rec.watches);
        if !live.watches.is_empty() {
            live.tell(Command::Scan);
        }
    }

    /// The last word of the watches kept with a task that ended while no manager watched it:
    /// one final scan (matches printed meanwhile, rate-limit summaries, `task_exit`).
    pub(super) fn finish_kept_watches(&self, kept: &TaskRecord, ended: &TaskRecord) {
        if kept.watches.is_empty() || !ended.is_terminal() || kept.is_terminal() {
            return;
        }
        let w = crate::watch::Watches::default();
        w.restore(&kept.watches);
        if let Ok(paths) = self.paths(ended) {
            for m in w.finish(ended, &paths, self.now()) {
                self.emit(Event::PatternMatch(m));
            }
        }
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
        let spec = crate::watch::Spec::new(pattern, regex, true, None)?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(rec) => {
                // Everything it will ever print is on disk: one scan answers.
                let w = crate::watch::Watches::default();
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                w.add(spec, Some(tx))?;
                w.scan(&rec, &self.paths(&rec)?, self.now());
                return Ok(match rx.try_recv() {
                    Ok(m) => WaitForResult::Matched(m, rec),
                    Err(_) => WaitForResult::Exited(rec),
                });
            }
            Lookup::Live(l) => l,
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let watch_id = live.watches.add(spec, Some(tx))?;
        live.tell(Command::Scan);
        let mut state = live.state.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        let result = tokio::select! {
            biased;
            m = &mut rx => match m {
                Ok(m) => Ok(WaitForResult::Matched(m, live.record())),
                Err(_) => Ok(WaitForResult::Exited(live.record())),
            },
            r = state.wait_for(|r| r.is_terminal()) => {
                let rec = r.map(|r| r.clone()).map_err(|_| Error::closed())?;
                // The final scan ran before the terminal state was published.
                match rx.try_recv() {
                    Ok(m) => Ok(WaitForResult::Matched(m, rec)),
                    Err(_) => Ok(WaitForResult::Exited(rec)),
                }
            }
            _ = sleep_or_forever(timeout) => Ok(WaitForResult::Timeout(live.record())),
            _ = async { match &abort { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                Err(Error::new(Code::Aborted, format!("waitFor on {task_id} was aborted by its AbortSignal")))
            }
            _ = shutdown.wait_for(|c| *c) => Err(Error::closed()),
        };
        live.watches.remove(&watch_id);
        result
    }
}
