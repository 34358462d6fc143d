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
    let signal = facts.signal.or_else(|| facts.code.filter(|c| (129..=128 + 64).contains(c) && !facts.timed_out).map(|c| c - 128));
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

/// Tasks running longer than this, with no manager of their own alive, are ended as orphans.
pub const ORPHAN_AFTER_MS: u64 = 24 * 3600 * 1000;
/// A `starting` record that names no manager (written by aft) is taken for a spawn in flight
/// elsewhere for this long.
pub const STARTING_STALE_MS: u64 = 10_000;

/// What is known, now, of a task whose record is not terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub now: u64,
    /// The manager that spawned it is alive (another process; or, for a spawn in flight, this
    /// one) and will record and announce the end itself.
    pub owner_alive: bool,
    /// Its supervisor and its command: alive and provably the recorded processes.
    pub supervisor_alive: bool,
    pub child_alive: bool,
    /// What its exit marker says, if it was written.
    pub marker: Option<(crate::fsutil::ExitMarker, u64)>,
    /// This manager asked for the kill.
    pub kill_requested: bool,
}

/// What a non-terminal record means now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Its own manager lives (or its spawn is in flight): leave the record to it.
    Owned,
    /// Something of the task runs: watch it. `finish_kill`: a kill was recorded by a manager
    /// that died before it was sure to land; carry it out.
    Watch { finish_kill: bool },
    /// It ended: record what these facts settle to.
    Ended(ExitFacts),
    /// Running for more than a day with no manager: stop its (proven) group if it runs, and
    /// record the outcome.
    Orphan(Outcome),
}

/// The one decision of what a non-terminal record found on disk has become; refresh (get,
/// list), replay and the watch of an adopted task all ask it. Pure: the probe holds every fact.
///
/// A `starting` record tells what happened through its supervisor (recorded before `go`): the
/// marker means the command ran (its code is the truth); a live supervisor means it runs or is
/// about to; neither means nothing ran ("spawn aborted").
pub fn decide(rec: &TaskRecord, p: &Probe) -> Verdict {
    debug_assert!(!rec.is_terminal());
    if p.owner_alive {
        return Verdict::Owned;
    }
    let age = p.now.saturating_sub(rec.started_at);
    if rec.status == Status::Starting && rec.manager_pid.is_none() && rec.supervisor_pid.is_none() && age < STARTING_STALE_MS {
        return Verdict::Owned;
    }
    if p.marker.is_some() {
        let mut facts = ExitFacts::from_marker(p.marker, p.now);
        facts.marker_killed |= p.kill_requested && facts.code.is_none();
        return Verdict::Ended(facts);
    }
    if p.child_alive && age > ORPHAN_AFTER_MS {
        return Verdict::Orphan(orphan_outcome(true, p.now));
    }
    if p.supervisor_alive || p.child_alive {
        return Verdict::Watch { finish_kill: rec.status == Status::Killing && !p.kill_requested };
    }
    if age > ORPHAN_AFTER_MS && rec.status != Status::Starting {
        return Verdict::Orphan(orphan_outcome(false, p.now));
    }
    Verdict::Ended(ExitFacts::from_marker(None, p.now))
}

/// The record of an orphan: killed (its group was signalled) or failed (nothing was left).
pub fn orphan_outcome(killed: bool, now: u64) -> Outcome {
    Outcome {
        status: if killed { Status::Killed } else { Status::Failed },
        exit_code: killed.then_some(128 + 9),
        signal: killed.then(|| "SIGKILL".to_string()),
        reason: Some("orphaned (>24h)".into()),
        finished_at: now,
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
    fn decide_table() {
        use crate::fsutil::ExitMarker;
        let now = 100_000_000;
        let day = ORPHAN_AFTER_MS;
        let probe = |owner, sup, child, marker: Option<ExitMarker>| Probe {
            now,
            owner_alive: owner,
            supervisor_alive: sup,
            child_alive: child,
            marker: marker.map(|m| (m, now - 5)),
            kill_requested: false,
        };
        let rec = |status: Status, age: u64, ours: bool| {
            let mut r = sample("a");
            r.status = status;
            r.started_at = now - age;
            if ours {
                r.manager_pid = Some(42);
                r.supervisor_pid = Some(43);
            }
            r
        };
        let code = |c| Some(ExitMarker::Code(c));
        let ended = |code: Option<i32>| {
            Verdict::Ended(ExitFacts {
                code,
                signal: None,
                finished_at: if code.is_some() { now - 5 } else { now },
                timed_out: false,
                marker_killed: false,
            })
        };
        use Status::*;
        let table: Vec<(&str, TaskRecord, Probe, Verdict)> = vec![
            ("owner alive: its business", rec(Running, 1000, true), probe(true, true, true, None), Verdict::Owned),
            ("owner alive, even ended", rec(Running, 1000, true), probe(true, false, false, code(0)), Verdict::Owned),
            ("spawn in flight in a live manager", rec(Starting, 1000, true), probe(true, true, false, None), Verdict::Owned),
            ("aft starting, young", rec(Starting, 1000, false), probe(false, false, false, None), Verdict::Owned),
            ("aft starting, stale: aborted", rec(Starting, 60_000, false), probe(false, false, false, None), ended(None)),
            ("mid-spawn crash, command ran to the end", rec(Starting, 60_000, true), probe(false, false, false, code(0)), ended(Some(0))),
            (
                "mid-spawn crash, command runs",
                rec(Starting, 60_000, true),
                probe(false, true, true, None),
                Verdict::Watch { finish_kill: false },
            ),
            (
                "mid-spawn crash, supervisor waits for go",
                rec(Starting, 60_000, true),
                probe(false, true, false, None),
                Verdict::Watch { finish_kill: false },
            ),
            ("mid-spawn crash before go: nothing ran", rec(Starting, 60_000, true), probe(false, false, false, None), ended(None)),
            ("ended unwatched: marker", rec(Running, 1000, true), probe(false, false, false, code(3)), ended(Some(3))),
            ("marker beats liveness of leftovers", rec(Running, 1000, true), probe(false, false, true, code(3)), ended(Some(3))),
            ("still running", rec(Running, 1000, true), probe(false, true, true, None), Verdict::Watch { finish_kill: false }),
            (
                "supervisor killed, command runs",
                rec(Running, 1000, true),
                probe(false, false, true, None),
                Verdict::Watch { finish_kill: false },
            ),
            ("unfinished kill", rec(Killing, 1000, true), probe(false, true, true, None), Verdict::Watch { finish_kill: true }),
            ("vanished", rec(Running, 1000, true), probe(false, false, false, None), ended(None)),
            ("orphan running", rec(Running, day + 1, true), probe(false, true, true, None), Verdict::Orphan(orphan_outcome(true, now))),
            ("orphan gone", rec(Running, day + 1, true), probe(false, false, false, None), Verdict::Orphan(orphan_outcome(false, now))),
            ("old but ended with a code", rec(Running, day + 1, true), probe(false, false, false, code(0)), ended(Some(0))),
        ];
        for (what, r, p, want) in table {
            assert_eq!(decide(&r, &p), want, "{what}");
        }
        // What the verdicts settle to.
        let starting = rec(Starting, 60_000, true);
        let Verdict::Ended(f) = decide(&starting, &probe(false, false, false, None)) else { panic!() };
        assert_eq!(settle(&starting, &f, false).reason.as_deref(), Some("spawn aborted"));
        let Verdict::Ended(f) = decide(&starting, &probe(false, false, false, code(0))) else { panic!() };
        assert_eq!(settle(&starting, &f, false).status, Status::Completed, "a command that ran is never 'spawn aborted'");
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
