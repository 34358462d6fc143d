//! The task state machine in one place: which terminal state a set of exit facts leads to.
//!
//! ```text
//!  starting ──spawned──► running ──exit──► completed (code 0) | failed (code ≠ 0)
//!     │                    │  └──deadline──► timed_out (124)
//!     └─spawn failed─► failed   └──kill()──► killing ──exit──► killed
//! ```
//! Terminal states are final (enforced by `TaskRecord::finish`/`merge_update`).

use crate::protocol::{self, signal_name, TIMEOUT_EXIT_CODE};
use crate::store::{Outcome, Status, TaskRecord};

/// What is known about a task's end, from the supervisor's report or its exit marker.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitFacts {
    /// None: no marker and no report; the process vanished without telling anyone.
    pub code: Option<i32>,
    /// Signal number when the supervisor saw the death; markers do not carry it.
    pub signal: Option<i32>,
    pub finished_at: u64,
    pub timed_out: bool,
    /// The marker said `killed` (written by aft when it killed a task).
    pub marker_killed: bool,
}

impl ExitFacts {
    pub fn from_marker(marker: Option<(crate::fsutil::ExitMarker, u64)>, now: u64) -> ExitFacts {
        use crate::fsutil::ExitMarker;
        match marker {
            Some((ExitMarker::Code(code), at)) => {
                ExitFacts { code: Some(code), signal: None, finished_at: at, timed_out: false, marker_killed: false }
            }
            Some((ExitMarker::Killed, at)) => {
                ExitFacts { code: None, signal: None, finished_at: at, timed_out: false, marker_killed: true }
            }
            None => ExitFacts { code: None, signal: None, finished_at: now, timed_out: false, marker_killed: false },
        }
    }
}

/// Decides the terminal outcome of `rec` from `facts`. `kill_requested` is set when this
/// manager asked for the kill (the record may not say `killing` yet if that write failed).
pub fn settle(rec: &TaskRecord, facts: &ExitFacts, kill_requested: bool) -> Outcome {
    let killing = kill_requested || rec.status == Status::Killing;
    // A marker carries no signal: a code above 128 from a marker is read the way a shell reads it.
    let signal = facts.signal.or_else(|| {
        facts.code.filter(|c| (129..=128 + 64).contains(c) && !facts.timed_out).map(|c| c - 128)
    });
    let signal_text = signal.map(signal_name);
    let deadline_passed = match (rec.timeout_ms, facts.code) {
        (Some(t), Some(TIMEOUT_EXIT_CODE)) => facts.finished_at >= rec.started_at + t,
        _ => false,
    };
    let outcome = |status, exit_code, signal: Option<String>, reason: Option<String>| Outcome {
        status,
        exit_code,
        signal,
        reason,
        finished_at: facts.finished_at,
    };
    if facts.timed_out || (deadline_passed && !killing) {
        let reason = format!("timed out after {} ms", rec.timeout_ms.unwrap_or_default());
        return outcome(Status::TimedOut, Some(TIMEOUT_EXIT_CODE), signal_text, Some(reason));
    }
    if killing || facts.marker_killed {
        let reason = signal_text.as_ref().map(|s| format!("killed by {s}")).unwrap_or_else(|| "killed".into());
        return outcome(Status::Killed, facts.code, signal_text, Some(reason));
    }
    match facts.code {
        None if rec.status == Status::Starting => outcome(Status::Failed, None, None, Some("spawn aborted".into())),
        None => outcome(Status::Failed, None, None, Some("process exited without exit marker".into())),
        Some(0) => outcome(Status::Completed, Some(0), None, None),
        Some(protocol::SPAWN_FAILED_EXIT_CODE) if rec.status == Status::Starting => {
            outcome(Status::Failed, Some(protocol::SPAWN_FAILED_EXIT_CODE), None, Some("spawn failed".into()))
        }
        Some(code) => outcome(Status::Failed, Some(code), signal_text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::sample;

    fn facts(code: Option<i32>, signal: Option<i32>, at: u64, timed_out: bool) -> ExitFacts {
        ExitFacts { code, signal, finished_at: at, timed_out, marker_killed: false }
    }

    #[test]
    fn exit_codes() {
        let rec = sample("a");
        assert_eq!(settle(&rec, &facts(Some(0), None, 2000, false), false).status, Status::Completed);
        let failed = settle(&rec, &facts(Some(3), None, 2000, false), false);
        assert_eq!((failed.status, failed.exit_code), (Status::Failed, Some(3)));
        let sig = settle(&rec, &facts(Some(137), Some(9), 2000, false), false);
        assert_eq!((sig.status, sig.signal.as_deref()), (Status::Failed, Some("SIGKILL")));
    }

    #[test]
    fn kills_and_timeouts() {
        let mut rec = sample("a");
        let k = settle(&rec, &facts(Some(143), Some(15), 2000, false), true);
        assert_eq!((k.status, k.exit_code, k.signal.as_deref()), (Status::Killed, Some(143), Some("SIGTERM")));
        rec.status = Status::Killing;
        assert_eq!(settle(&rec, &facts(None, None, 2000, false), false).status, Status::Killed);
        rec.status = Status::Running;
        let t = settle(&rec, &facts(Some(124), Some(15), 7000, true), false);
        assert_eq!((t.status, t.exit_code), (Status::TimedOut, Some(124)));
        // From a marker alone: 124 written after the deadline is a timeout, before it is not.
        assert_eq!(settle(&rec, &facts(Some(124), None, 6000, false), false).status, Status::TimedOut);
        assert_eq!(settle(&rec, &facts(Some(124), None, 3000, false), false).status, Status::Failed);
    }

    #[test]
    fn vanished() {
        let rec = sample("a");
        let v = settle(&rec, &ExitFacts::from_marker(None, 5000), false);
        assert_eq!(v.status, Status::Failed);
        assert_eq!(v.reason.as_deref(), Some("process exited without exit marker"));
        assert_eq!(v.finished_at, 5000);
    }
}
