//! Terminal records the store could not take (disk full, I/O error). The outcome is never lost:
//! it is kept here, readers (`get`, `list`, `drainCompletions`, `ackCompletions`) see it, and it
//! is written as soon as the store accepts it. Meanwhile the supervisor's exit marker keeps it
//! for any later manager. No OS event tells that space came back, so the writes are retried on a
//! backoff timer, by one task for all records.

use super::*;
use os::Records;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The kept records, by task id.
#[derive(Default)]
pub(super) struct Unwritten {
    kept: Mutex<HashMap<String, TaskRecord>>,
}

impl Unwritten {
    /// Keeps `rec`; true when it is the first kept record (the retry timer is to be started).
    pub(super) fn keep(&self, rec: &TaskRecord) -> bool {
        let mut kept = self.kept.locked();
        let first = kept.is_empty();
        kept.insert(rec.task_id.clone(), rec.clone());
        first
    }

    /// Writes every kept record the store now takes; true when none is left.
    pub(super) fn write(&self, store: &dyn Records) -> bool {
        let kept: Vec<TaskRecord> = self.kept.locked().values().cloned().collect();
        for rec in kept {
            let outcome = crate::store::Outcome {
                status: rec.status,
                exit_code: rec.exit_code,
                signal: rec.signal.clone(),
                reason: rec.status_reason.clone(),
                finished_at: rec.finished_at.unwrap_or(rec.started_at),
            };
            let written = store.update_record(&rec.session_id, &rec.task_id, &mut |r| {
                if r.finish(outcome.clone()) {
                    r.rusage = rec.rusage;
                }
                r.completion_delivered |= rec.completion_delivered;
            });
            let mut kept = self.kept.locked();
            // Gone from disk (gc, another manager's removal) counts as done; a copy changed
            // meanwhile (acked) is written on the next round.
            let done = written.is_ok() || matches!(&written, Err(e) if e.code == Code::NotFound);
            if done && kept.get(&rec.task_id) == Some(&rec) {
                kept.remove(&rec.task_id);
            }
        }
        self.kept.locked().is_empty()
    }

    /// The kept record of a task, if its end is not on disk yet.
    pub(super) fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.kept.locked().get(task_id).cloned()
    }

    /// Kept records of a session whose completion is not delivered.
    pub(super) fn undelivered(&self, session_id: &str) -> Vec<TaskRecord> {
        let kept = self.kept.locked();
        kept.values().filter(|r| r.session_id == session_id && !r.completion_delivered).cloned().collect()
    }

    /// Acks a kept record (in memory; written with it). False when the task is not kept here.
    pub(super) fn ack(&self, session_id: &str, task_id: &str) -> bool {
        let mut kept = self.kept.locked();
        match kept.get_mut(task_id) {
            Some(r) if r.session_id == session_id => {
                r.completion_delivered = true;
                true
            }
            _ => false,
        }
    }
}

/// What the terminal write of a task did.
pub(super) struct EndWrite {
    /// The terminal record, as written or as kept.
    pub(super) rec: TaskRecord,
    /// This write made the transition (another manager had not finalised first).
    pub(super) transitioned: bool,
    /// The end is in the record on disk (else kept in `unwritten`).
    pub(super) written: bool,
    /// The first record kept: the retry timer is to be started.
    pub(super) first_kept: bool,
}

/// The terminal write of a task: `outcome` decides the end from the record as it is on disk
/// (another manager may have finalised first; then its record stands). When the store refuses
/// the write, the end is decided from `current` (the record in memory) and kept in `unwritten`.
pub(super) fn write_end(
    store: &dyn Records,
    unwritten: &Unwritten,
    current: &TaskRecord,
    outcome: &dyn Fn(&TaskRecord) -> crate::store::Outcome,
    rusage: Option<crate::store::record::Rusage>,
) -> EndWrite {
    let mut transitioned = false;
    let written = store.update_record(&current.session_id, &current.task_id, &mut |r| {
        transitioned = r.finish(outcome(r));
        if transitioned {
            r.rusage = rusage;
        }
    });
    match written {
        Ok(rec) => EndWrite { rec, transitioned, written: true, first_kept: false },
        Err(_) => {
            let mut rec = current.clone();
            let transitioned = rec.finish(outcome(&rec));
            if transitioned {
                rec.rusage = rusage;
            }
            let first_kept = unwritten.keep(&rec);
            EndWrite { rec, transitioned, written: false, first_kept }
        }
    }
}

impl Manager {
    /// Starts the retry timer (one for all kept records) when `first` says none ran.
    pub(super) fn retry_unwritten(self: &Arc<Self>, first: bool) {
        if !first {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = FIRST_RETRY;
            loop {
                tokio::time::sleep(wait).await;
                let Some(m) = me.upgrade() else { return };
                if m.unwritten.write(&m.store) {
                    return;
                }
                wait = (wait * 2).min(LAST_RETRY);
            }
        });
    }
}
