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
        spec.source.compile()?;
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
        self.ensure_scanner(&live);
        Ok(id)
    }

    /// Removes a watch; false when the task has none by that id (or has ended).
    pub fn unwatch(self: &Arc<Self>, task_id: &str, watch_id: &str) -> Result<bool> {
        let Lookup::Live(live) = self.lookup(task_id)? else { return Ok(false) };
        let removed = live.watches.remove(watch_id);
        self.persist_watches(&live);
        Ok(removed)
    }

    /// The watches set on a task (empty once it ended: watches end with their task).
    pub fn watches(self: &Arc<Self>, task_id: &str) -> Result<Vec<crate::watch::Info>> {
        match self.lookup(task_id)? {
            Lookup::Terminal(_) => Ok(Vec::new()),
            Lookup::Live(live) => Ok(live.watches.list()),
        }
    }

    /// Keeps the task's watches with it in the store, when they changed, so that they survive
    /// a restart. Never over a terminal record (`merge_update` keeps those as they are).
    fn persist_watches(&self, live: &Live) {
        let Some(kept) = live.watches.to_persist() else { return };
        let task_id = live.state.borrow().task_id.clone();
        // A failing store loses only the watches' progress: a restart rescans from the last
        // position written, and `reported_to` keeps what was reported from being sent again.
        let _ = self.store.update(&live.session_id, &task_id, |r| r.watches = kept);
    }

    /// Re-arms the watches kept with a task this manager adopts.
    pub(super) fn rearm_watches(self: &Arc<Self>, live: &Arc<Live>, rec: &TaskRecord) {
        if rec.watches.is_empty() || rec.is_terminal() {
            return;
        }
        live.watches.restore(&rec.watches);
        if !live.watches.is_empty() {
            self.ensure_scanner(live);
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
            for m in w.finish(ended, &paths, unix_millis()) {
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
        spec.source.compile()?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(rec) => {
                // Everything it will ever print is on disk: one scan answers.
                let w = crate::watch::Watches::default();
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                w.add(spec, Some(tx))?;
                w.scan(&rec, &self.paths(&rec)?, unix_millis());
                return Ok(match rx.try_recv() {
                    Ok(m) => WaitForResult::Matched(m, rec),
                    Err(_) => WaitForResult::Exited(rec),
                });
            }
            Lookup::Live(l) => l,
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let watch_id = live.watches.add(spec, Some(tx))?;
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
        let events = self.file_events();
        let me = self.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let rec = live.state.borrow().clone();
            let Ok(paths) = me.paths(&rec) else { return };
            let files = paths.streams(rec.mode);
            let subs: Vec<crate::fileevents::Subscription> = match &events {
                Some(fe) => {
                    files.iter().filter_map(|f| fe.subscribe(f, crate::fileevents::MODIFIED, live.scan_notify.clone()).ok()).collect()
                }
                None => Vec::new(),
            };
            let mut state = live.state.subscribe();
            loop {
                let rec = live.state.borrow().clone();
                if rec.is_terminal() {
                    break;
                }
                let now = unix_millis();
                let mut found = live.watches.summaries(now);
                found.extend(live.watches.scan(&rec, &paths, now));
                me.persist_watches(&live);
                for m in found {
                    me.emit(Event::PatternMatch(m));
                }
                if live.watches.is_empty() {
                    break;
                }
                // Without inotify (non-Linux) nothing would wake us: fall back to a slow check.
                let fallback = events.is_none().then(|| Duration::from_millis(250));
                // A rate limit holding matches back sends its summary when its window ends.
                let summary = live.watches.next_summary_at().map(|at| Duration::from_millis(at.saturating_sub(now)));
                let wake = match (fallback, summary) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokio::select! {
                    _ = live.scan_notify.notified() => {}
                    _ = state.changed() => {}
                    _ = sleep_or_forever(wake) => {}
                }
            }
            if let Some(fe) = &events {
                for sub in subs {
                    fe.unsubscribe(sub);
                }
            }
            live.scanning.store(false, Ordering::SeqCst);
            if !live.watches.is_empty() && !live.state.borrow().is_terminal() {
                me.ensure_scanner(&live); // a watch was added while we were leaving
            }
        });
    }
}
