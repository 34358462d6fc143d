//! After a restart: replay a session, drain and ack completions, collect garbage.

use super::*;

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
        // Thousands of files may be read: on a blocking thread, not a runtime worker.
        let (me, session) = (self.clone(), session_id.to_string());
        let load = tokio::task::spawn_blocking(move || me.store.load_session(&session))
            .await
            .map_err(|e| Error::new(Code::Io, format!("replay stopped: {e}")))??;
        let now = self.now();
        let mut out = Vec::with_capacity(load.records.len());
        for rec in load.records {
            if root_filter.as_ref().is_some_and(|r| rec.project_root.as_deref() != Some(r.as_str())) {
                continue;
            }
            if rec.is_terminal() {
                out.push(rec);
                continue;
            }
            if let Some(l) = self.live.locked().get(&rec.task_id) {
                out.push(l.record());
                continue;
            }
            out.push(self.recover(rec, now).await);
        }
        Ok(out)
    }

    /// Acts on what a non-terminal record found on disk has become (lifecycle::decide).
    async fn recover(self: &Arc<Self>, rec: TaskRecord, now: u64) -> TaskRecord {
        match decide(&rec, &self.probe(&rec, false, now)) {
            // Its own manager records the end; watching it here lets `wait` work in this process.
            Verdict::Owned => self.adopt(rec).record(),
            // A kill recorded by a manager that died before the signal was sure to reach the
            // task (`finish_kill`) is carried out by the actor, which decides the same.
            Verdict::Watch { .. } => {
                let live = self.adopt(rec.clone());
                if rec.status == Status::Starting {
                    // Its manager died after `go`: the command is its supervisor's child.
                    self.record_found_command(&live, &rec);
                }
                live.record()
            }
            Verdict::Ended(facts) => self.settle_now(&rec, facts, None),
            Verdict::Orphan(outcome) => {
                if outcome.status == Status::Killed {
                    if let Some(g) = rec.child().and_then(|c| self.procs.proven_group(&c, rec.pgid)) {
                        let _ = self.procs.signal_group(g, libc::SIGKILL);
                    }
                }
                self.settle_now(&rec, ExitFacts::from_marker(None, now), Some(outcome))
            }
        }
    }

    /// Writes a terminal state decided without watching anything (replay of an ended task).
    pub(super) fn settle_now(&self, rec: &TaskRecord, facts: ExitFacts, forced: Option<crate::store::Outcome>) -> TaskRecord {
        let decide = |r: &TaskRecord| forced.clone().unwrap_or_else(|| settle(r, &facts, false));
        let mut kept = None;
        let settled = match self.store.update(&rec.session_id, &rec.task_id, |r| {
            let before = r.clone();
            if r.finish(decide(r)) {
                kept = Some(before);
            }
        }) {
            Ok(r) => r,
            Err(_) => {
                let mut r = rec.clone();
                r.finish(decide(rec));
                r
            }
        };
        // The watches it carried have their last word (only where this call ended the task).
        if let Some(kept) = kept {
            self.finish_kept_watches(&kept, &settled);
        }
        settled
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
                    // An unreadable or invalid bundle is not a completion; replay or gc
                    // quarantines it.
                    if let Ok(Some(r)) = self.store.read(session_id, &id) {
                        v.push(r);
                    }
                }
                v
            }
            // No index: the JSON files are the truth, read them all.
            None => self.store.load_session(session_id)?.records,
        };
        let kept = self.unwritten.undelivered(session_id);
        for r in records {
            if r.session_id == session_id && r.is_terminal() && !r.completion_delivered && !kept.iter().any(|k| k.task_id == r.task_id) {
                pending.push(r);
            }
        }
        pending.extend(kept);
        pending.sort_by_key(|r| (r.finished_at.unwrap_or(0), r.started_at));
        Ok(pending
            .into_iter()
            .map(|record| {
                let preview = self.preview(&record);
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
            if self.unwritten.ack(session_id, id) {
                // Its end is not on disk yet: the ack is written with it.
                if !acked.contains(id) {
                    acked.push(id.clone());
                }
                continue;
            }
            match self.store.read(session_id, id) {
                Ok(Some(r)) if r.session_id == session_id && r.is_terminal() => {}
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
        tokio::task::spawn_blocking(move || me.gc_blocking(retention)).await.map_err(|e| Error::new(Code::Io, format!("gc stopped: {e}")))
    }

    fn gc_blocking(&self, retention: u64) -> GcReport {
        let now = self.now();
        let cutoff = now.saturating_sub(retention);
        let is_live = |task_id: &str| self.live.locked().contains_key(task_id);
        let expired = |r: &TaskRecord| r.is_terminal() && r.completion_delivered && r.finished_at.is_some_and(|f| f <= cutoff);
        let (removed, quarantined) = self.store.sweep(is_live, expired);
        self.store.sweep_quarantine(now.saturating_sub(QUARANTINE_RETENTION_MS));
        GcReport { removed, quarantined }
    }
}
