//! After a restart: replay a session, drain and ack completions, collect garbage.

use super::*;

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
        // Rows the load re-indexed are written off the caller's path; any use of the index
        // meanwhile writes them first.
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.store.index().flush());
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
        let sup_alive = Alive::supervisor(&rec);
        let child_alive = Alive::child(&rec);
        if rec.status == Status::Starting {
            if now.saturating_sub(rec.started_at) < STARTING_STALE_MS {
                return self.adopt(rec).state.borrow().clone(); // another manager may be mid-spawn
            }
            // Its manager died mid-spawn. The command may have started all the same: find its
            // supervisor by command line and stop its group, so nothing runs untracked.
            let mut reason = "spawn aborted".to_string();
            if let Some(sup) = proc::find_supervisor(&rec.task_id) {
                for child in proc::children_of(sup) {
                    let _ = proc::killpg(child as i32, libc::SIGKILL);
                }
                reason = "spawn aborted (its process group was killed)".to_string();
            }
            let aborted = crate::store::Outcome { status: Status::Failed, exit_code: None, signal: None, reason: Some(reason), finished_at: now };
            return self.settle_now(&rec, ExitFacts::from_marker(None, now), Some(aborted));
        }
        // A task whose own manager still lives is that manager's business, however old.
        if now.saturating_sub(rec.started_at) > ORPHAN_AFTER_MS && !Alive::other_owner(&rec) {
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
        let owner_alive = Alive::other_owner(&rec);
        if sup_alive || child_alive || owner_alive {
            // Still running, or its own manager lives and will record (and announce) the end.
            let unfinished_kill = rec.status == Status::Killing && !owner_alive;
            let snapshot = self.adopt(rec).state.borrow().clone();
            if unfinished_kill {
                // A kill was recorded, but its manager died before the signal was sure to reach
                // the task: carry it out (SIGTERM, then SIGKILL after the grace).
                self.spawn_kill(&snapshot.task_id);
            }
            return snapshot;
        }
        let facts = self.facts_from_marker(&rec.session_id, &rec.task_id);
        self.settle_now(&rec, facts, None)
    }

    /// Writes a terminal state decided without watching anything (replay of an ended task).
    pub(super) fn settle_now(&self, rec: &TaskRecord, facts: ExitFacts, forced: Option<crate::store::Outcome>) -> TaskRecord {
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
                if fsutil::is_stale_temp(&dir, &name) {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
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
