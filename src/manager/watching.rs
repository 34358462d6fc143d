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
    pub fn watch(self: &Arc<Self>, task_id: &str, pattern: Option<&str>, regex: Option<&str>, once: bool) -> Result<String> {
        self.check_open()?;
        let re = crate::watch::compile(pattern, regex)?;
        let live = match self.lookup(task_id)? {
            Lookup::Terminal(r) => {
                return Err(Error::new(
                    Code::Exited,
                    format!("task {} has already ended ({}); read its output with tail or readOutput", r.task_id, r.status.as_str()),
                ))
            }
            Lookup::Live(l) => l,
        };
        let id = live.watches.add(re, once, None)?;
        self.ensure_scanner(&live);
        Ok(id)
    }

    pub fn unwatch(self: &Arc<Self>, task_id: &str, watch_id: &str) -> Result<bool> {
        ids::validate_task_id(task_id)?;
        let live = self.live.locked().get(task_id).cloned();
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
                w.scan(&rec, &self.paths(&rec)?);
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
