//! Terminal records the store could not take (disk full, I/O error). The outcome is never lost:
//! it is kept here, readers (`get`, `list`, `drainCompletions`, `ackCompletions`) see it, and it
//! is written as soon as the store accepts it. Meanwhile the supervisor's exit marker keeps it
//! for any later manager. No OS event tells that space came back, so the writes are retried on a
//! backoff timer, by one task for all records.

use super::*;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

impl Manager {
    pub(super) fn keep_unwritten(self: &Arc<Self>, rec: &TaskRecord) {
        let first = {
            let mut kept = self.unwritten.locked();
            let first = kept.is_empty();
            kept.insert(rec.task_id.clone(), rec.clone());
            first
        };
        if first {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut wait = FIRST_RETRY;
                loop {
                    tokio::time::sleep(wait).await;
                    let Some(m) = me.upgrade() else { return };
                    if m.write_unwritten() {
                        return;
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
            });
        }
    }

    /// Writes every kept record the store now takes; true when none is left.
    pub(super) fn write_unwritten(&self) -> bool {
        let kept: Vec<TaskRecord> = self.unwritten.locked().values().cloned().collect();
        for rec in kept {
            let outcome = crate::store::Outcome {
                status: rec.status,
                exit_code: rec.exit_code,
                signal: rec.signal.clone(),
                reason: rec.status_reason.clone(),
                finished_at: rec.finished_at.unwrap_or_else(unix_millis),
            };
            let written = self.store.update(&rec.session_id, &rec.task_id, |r| {
                r.finish(outcome);
                r.completion_delivered |= rec.completion_delivered;
            });
            let mut kept = self.unwritten.locked();
            // Gone from disk (gc, another manager's removal) counts as done; a copy changed
            // meanwhile (acked) is written on the next round.
            let done = written.is_ok() || matches!(&written, Err(e) if e.code == Code::NotFound);
            if done && kept.get(&rec.task_id) == Some(&rec) {
                kept.remove(&rec.task_id);
            }
        }
        self.unwritten.locked().is_empty()
    }

    /// The kept record of a task, if its end is not on disk yet.
    pub(super) fn unwritten(&self, task_id: &str) -> Option<TaskRecord> {
        self.unwritten.locked().get(task_id).cloned()
    }

    /// Kept records of a session whose completion is not delivered.
    pub(super) fn unwritten_undelivered(&self, session_id: &str) -> Vec<TaskRecord> {
        let kept = self.unwritten.locked();
        kept.values().filter(|r| r.session_id == session_id && !r.completion_delivered).cloned().collect()
    }

    /// Acks a kept record (in memory; written with it). False when the task is not kept here.
    pub(super) fn ack_unwritten(&self, session_id: &str, task_id: &str) -> bool {
        let mut kept = self.unwritten.locked();
        match kept.get_mut(task_id) {
            Some(r) if r.session_id == session_id => {
                r.completion_delivered = true;
                true
            }
            _ => false,
        }
    }
}
