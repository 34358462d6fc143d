//! The manager's deciding logic, without real processes, clocks or disks: fakes of the seams in
//! os.rs stand in for them.

use super::actor::{kill_fallback_at, long_running};
use super::os::{kill_directly, probe, Clock, Processes, Records};
use super::unwritten::{write_end, EndWrite, Unwritten};
use super::*;
use crate::proc::Identity;
use crate::store::record::sample;

/// Processes as scripted: exactly `alive` run (pid and start time), `groups` maps a leader's
/// pid to the group it leads; every signal sent is recorded.
#[derive(Default)]
struct FakeProcs {
    alive: Vec<(u32, u64)>,
    groups: Vec<(u32, i32)>,
    owners: Vec<u32>,
    sent: Mutex<Vec<(&'static str, i32, i32)>>,
}

impl FakeProcs {
    fn sent(&self) -> Vec<(&'static str, i32, i32)> {
        self.sent.locked().clone()
    }
}

impl Processes for FakeProcs {
    fn is_alive(&self, id: &Identity) -> bool {
        self.alive.iter().any(|(pid, ticks)| *pid == id.pid && Some(*ticks) == id.start_ticks)
    }
    fn is_same_process(&self, pid: u32, _ticks: Option<u64>) -> bool {
        self.owners.contains(&pid)
    }
    fn own_start_ticks(&self) -> Option<u64> {
        Some(1)
    }
    fn proven_group(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32> {
        let leads = self.groups.iter().find(|(pid, _)| *pid == leader.pid).map(|(_, g)| *g);
        (self.is_alive(leader) && leads.is_some() && leads == pgid).then(|| pgid.unwrap())
    }
    fn group_after_leader(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32> {
        self.proven_group(leader, pgid)
    }
    fn signal_group(&self, pgid: i32, signal: i32) -> std::io::Result<()> {
        self.sent.locked().push(("group", pgid, signal));
        Ok(())
    }
    fn signal_process(&self, id: &Identity, signal: i32) -> std::io::Result<()> {
        self.sent.locked().push(("process", id.pid as i32, signal));
        Ok(())
    }
    fn task_of_supervisor(&self, _: &Identity) -> Option<(u32, u64)> {
        None
    }
    fn find_supervisor(&self, _: &str, _: u64) -> Option<Identity> {
        None
    }
}

struct FixedClock(u64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// One record on a "disk" that can be made to refuse writes.
struct FakeStore {
    rec: Mutex<TaskRecord>,
    failing: AtomicBool,
}

impl FakeStore {
    fn new(rec: &TaskRecord) -> FakeStore {
        FakeStore { rec: Mutex::new(rec.clone()), failing: AtomicBool::new(false) }
    }
    fn on_disk(&self) -> TaskRecord {
        self.rec.locked().clone()
    }
}

impl Records for FakeStore {
    fn update_record(&self, _: &str, _: &str, f: &mut dyn FnMut(&mut TaskRecord)) -> Result<TaskRecord> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Io, "No space left on device"));
        }
        let mut rec = self.rec.locked();
        let mut after = rec.clone();
        f(&mut after);
        *rec = TaskRecord::merge_update(&rec, after);
        Ok(rec.clone())
    }
}

fn running(ticks: u64) -> TaskRecord {
    let mut rec = sample("task-a");
    rec.child_pid = Some(4242);
    rec.pgid = Some(4242);
    rec.child_start_ticks = Some(ticks);
    rec
}

fn exit(code: i32, signal: Option<i32>, at: u64, timed_out: bool) -> End {
    End::Facts(ExitFacts { code: Some(code), signal, finished_at: at, timed_out, marker_killed: false })
}

#[test]
fn kill_requested_then_exit_is_killed() {
    let rec = running(7);
    let store = FakeStore::new(&rec);
    let end = exit(143, Some(libc::SIGTERM), 2000, false);
    let EndWrite { rec: written, transitioned, written: on_disk, first_kept } =
        write_end(&store, &Unwritten::default(), &rec, &|r| end.outcome(r, true), None);
    assert!(transitioned && on_disk && !first_kept);
    assert_eq!((written.status, written.exit_code, written.signal.as_deref()), (Status::Killed, Some(143), Some("SIGTERM")));
    assert_eq!(written.status_reason.as_deref(), Some("killed by SIGTERM"));
    assert_eq!(store.on_disk(), written);
    // The same exit without a kill asked for is a failure by that signal.
    let alone = end.outcome(&rec, false);
    assert_eq!((alone.status, alone.signal.as_deref()), (Status::Failed, Some("SIGTERM")));
    // A second end (a late report) never rewrites the first.
    let EndWrite { rec: again, transitioned, written, .. } =
        write_end(&store, &Unwritten::default(), &rec, &|r| exit(0, None, 3000, false).outcome(r, false), None);
    assert!(!transitioned && written, "the end another write made is on disk");
    assert_eq!(again.status, Status::Killed);
}

#[test]
fn exit_facts_with_timeout_are_timed_out() {
    let rec = running(7); // timeout_ms 5000
    for kill_requested in [false, true] {
        let o = exit(124, Some(libc::SIGTERM), 6000, true).outcome(&rec, kill_requested);
        assert_eq!((o.status, o.exit_code), (Status::TimedOut, Some(124)), "kill_requested {kill_requested}");
        assert_eq!(o.reason.as_deref(), Some("timed out after 5000 ms"));
    }
    // The orphan rule's outcome is taken as decided.
    let orphan = End::Outcome(crate::lifecycle::orphan_outcome(true, 9000)).outcome(&rec, false);
    assert_eq!((orphan.status, orphan.exit_code), (Status::Killed, Some(137)));
}

#[test]
fn store_refusing_the_end_keeps_it_and_the_retry_writes_it() {
    let rec = running(7);
    let store = FakeStore::new(&rec);
    store.failing.store(true, Ordering::SeqCst);
    let unwritten = Unwritten::default();
    let rusage = Some(crate::store::record::Rusage { max_rss_kb: 10, user_ms: 1, system_ms: 2 });
    let end = exit(0, None, 2000, false);
    let EndWrite { rec: kept_rec, transitioned, written, first_kept } =
        write_end(&store, &unwritten, &rec, &|r| end.outcome(r, false), rusage);
    assert!(transitioned && !written && first_kept, "the end is decided in memory and a retry is due");
    assert_eq!(kept_rec.status, Status::Completed);
    assert_eq!(unwritten.get("task-a"), Some(kept_rec.clone()));
    assert_eq!(unwritten.undelivered("s").len(), 1);
    assert_eq!(store.on_disk().status, Status::Running, "nothing reached the disk");
    // Acked while kept: written with it.
    assert!(unwritten.ack("s", "task-a"));
    assert!(!unwritten.ack("other-session", "task-a"));
    assert!(!unwritten.write(&store), "still failing: kept");
    assert!(unwritten.get("task-a").is_some());
    store.failing.store(false, Ordering::SeqCst);
    assert!(unwritten.write(&store), "the store takes it now");
    assert_eq!(unwritten.get("task-a"), None);
    let disk = store.on_disk();
    assert_eq!((disk.status, disk.exit_code, disk.completion_delivered), (Status::Completed, Some(0), true));
    assert_eq!(disk.rusage, rusage);
}

#[tokio::test]
async fn adopted_task_whose_identity_no_longer_matches_is_not_signalled() {
    let rec = running(7);
    // The pid was reused: a process 4242 runs, started at another time, leading group 4242.
    let reused = FakeProcs { alive: vec![(4242, 8)], groups: vec![(4242, 4242)], ..Default::default() };
    kill_directly(&reused, &rec, libc::SIGTERM, 0).await;
    assert_eq!(reused.sent(), [], "a reused pid is never signalled, nor its group");
    // Gone altogether: nothing either.
    let gone = FakeProcs::default();
    kill_directly(&gone, &rec, libc::SIGKILL, 0).await;
    assert_eq!(gone.sent(), []);
    // The recorded process, leading its group: the group, SIGTERM then SIGKILL after the grace.
    let same = FakeProcs { alive: vec![(4242, 7)], groups: vec![(4242, 4242)], ..Default::default() };
    kill_directly(&same, &rec, libc::SIGTERM, 0).await;
    assert_eq!(same.sent(), [("group", 4242, libc::SIGTERM), ("group", 4242, libc::SIGKILL)]);
    // The recorded process in a group not provably its own: only that process.
    let elsewhere = FakeProcs { alive: vec![(4242, 7)], groups: vec![(4242, 77)], ..Default::default() };
    kill_directly(&elsewhere, &rec, libc::SIGINT, 0).await;
    assert_eq!(elsewhere.sent(), [("process", 4242, libc::SIGINT), ("process", 4242, libc::SIGKILL)]);
}

#[test]
fn probe_sees_processes_by_identity() {
    let clock = FixedClock(50_000);
    let mut rec = running(7);
    rec.manager_pid = Some(999_999);
    rec.manager_start_ticks = Some(3);
    rec.supervisor_pid = Some(500);
    rec.supervisor_start_ticks = Some(1);
    // Supervisor pid reused, command gone, manager gone, no marker: vanished.
    let procs = FakeProcs { alive: vec![(500, 2)], ..Default::default() };
    let p = probe(&procs, &rec, false, clock.now_ms(), true, None);
    assert!(!p.owner_alive && !p.supervisor_alive && !p.child_alive);
    let Verdict::Ended(facts) = decide(&rec, &p) else { panic!("{:?}", decide(&rec, &p)) };
    let o = settle(&rec, &facts, false);
    assert_eq!((o.status, o.reason.as_deref(), o.finished_at), (Status::Failed, Some("process exited without exit marker"), 50_000));
    // The same supervisor alive: watched. Its manager alive: that manager's business.
    let procs = FakeProcs { alive: vec![(500, 1)], ..Default::default() };
    assert_eq!(decide(&rec, &probe(&procs, &rec, false, clock.now_ms(), true, None)), Verdict::Watch { finish_kill: false });
    let procs = FakeProcs { alive: vec![(500, 1)], owners: vec![999_999], ..Default::default() };
    assert_eq!(decide(&rec, &probe(&procs, &rec, false, clock.now_ms(), true, None)), Verdict::Owned);
    // A kill recorded by a manager that died is carried out, unless this one asked for it.
    rec.status = Status::Killing;
    let procs = FakeProcs { alive: vec![(500, 1)], ..Default::default() };
    assert_eq!(decide(&rec, &probe(&procs, &rec, false, clock.now_ms(), true, None)), Verdict::Watch { finish_kill: true });
    assert_eq!(decide(&rec, &probe(&procs, &rec, true, clock.now_ms(), true, None)), Verdict::Watch { finish_kill: false });
}

#[test]
fn long_running_only_while_a_notifying_task_runs() {
    let clock = FixedClock(61_000);
    let mut rec = running(7);
    match long_running(&rec, clock.now_ms()) {
        Some(Event::LongRunning { elapsed_ms, task_id, .. }) => assert_eq!((elapsed_ms, task_id.as_str()), (60_000, "task-a")),
        other => panic!("{other:?}"),
    }
    rec.notify_on_completion = false;
    assert!(long_running(&rec, clock.now_ms()).is_none(), "a silent foreground task");
    rec.notify_on_completion = true;
    rec.finish(crate::lifecycle::orphan_outcome(false, 2000));
    assert!(long_running(&rec, clock.now_ms()).is_none(), "an ended task");
}

#[test]
fn kill_fallback_is_the_earliest_asked() {
    let now = tokio::time::Instant::now();
    let first = kill_fallback_at(None, now, 2000);
    assert_eq!(first - now, Duration::from_millis(2000 + SUPERVISOR_MARGIN_MS));
    assert_eq!(kill_fallback_at(Some(first), now, 0) - now, Duration::from_millis(SUPERVISOR_MARGIN_MS), "a shorter grace wins");
    assert_eq!(kill_fallback_at(Some(first), now, 60_000), first, "a longer one does not delay it");
}
