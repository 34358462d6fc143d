//! Foreground runs: `run` with auto-promote, and `promote`.

use super::*;

impl Manager {
    /// Turns notification on (foreground -> background), durably. A finished task's completion
    /// is queued at once. With `only_if_running`, a finished task is left as it is.
    fn promote_inner(self: &Arc<Self>, task_id: &str, only_if_running: bool) -> Result<TaskRecord> {
        ids::validate_task_id(task_id)?;
        let current = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        let mut queued_finished = false;
        let promote = |r: &mut TaskRecord| {
            if r.notify_on_completion || (only_if_running && r.is_terminal()) {
                return;
            }
            queued_finished = r.is_terminal();
            r.notify_on_completion = true;
            r.completion_delivered = false;
        };
        let live = self.live.locked().get(task_id).cloned();
        let after = match live {
            Some(l) => self.commit(&l, promote)?,
            None => self.store.update(&current.session_id, task_id, promote)?,
        };
        if queued_finished {
            self.emit_completion(&after);
        }
        Ok(after)
    }

    pub fn promote(self: &Arc<Self>, task_id: &str) -> Result<TaskRecord> {
        self.check_open()?;
        self.promote_inner(task_id, false)
    }

    /// Foreground with auto-promote: inline result if the task ends within `wait_ms`, else it
    /// carries on in the background and will notify.
    /// When `abort` fires while it waits, the task is killed (its group, with the grace) and
    /// the call rejects with E_ABORTED: the foreground command was cancelled.
    pub async fn run(self: &Arc<Self>, mut req: SpawnRequest, wait_ms: u64, abort: Option<Arc<Notify>>) -> Result<RunOutcome> {
        req.notify_on_completion = Some(false);
        let started = self.spawn(req).await?;
        let done = match self.wait(&started.task_id, Some(Duration::from_millis(wait_ms)), abort).await {
            Err(e) if e.code == Code::Aborted => {
                let killed = self.kill(&started.task_id, libc::SIGTERM, None).await?;
                return Err(Error::new(
                    Code::Aborted,
                    format!("run of task {} was aborted by its AbortSignal; the task was {}", killed.task_id, killed.status.as_str()),
                ));
            }
            other => other?,
        };
        let rec = if done.is_terminal() { done } else { self.promote_inner(&started.task_id, true)? };
        if rec.is_terminal() && !rec.notify_on_completion {
            let preview = self.preview(&rec);
            let mut output = preview.text;
            if rec.exit_code != Some(0) {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                let code = rec.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                output.push_str(&format!("[exit code {code}; status {}]", rec.status.as_str()));
            }
            return Ok(RunOutcome { record: rec, promoted: false, output });
        }
        let label = rec.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
        let output = format!(
            "Still running after {wait_ms} ms; moved to the background as task {}{label}. Its completion will be reported.",
            rec.task_id
        );
        Ok(RunOutcome { record: rec, promoted: true, output })
    }
}
