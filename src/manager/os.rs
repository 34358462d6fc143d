//! The manager's seams to the world, small enough to fake in unit tests (tokio's `Wait`/`Kill`
//! split is the model): the clock, what is known of processes (identity, groups) and how they
//! are signalled, and the store's read-modify-write. Waiting for an exit stays in `proc` (an OS
//! notification on the runtime); what is decided from these facts is here or in `lifecycle`.

use std::io;
use std::time::Duration;

use crate::error::Result;
use crate::lifecycle::Probe;
use crate::proc::{self, Identity};
use crate::store::{Status, Store, TaskRecord};

/// Wall-clock time, in unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::fsutil::unix_millis()
    }
}

/// Process facts and signals. Every rule about which process or group a record means stays in
/// `proc`; the real implementation only forwards to it.
pub trait Processes: Send + Sync {
    /// The recorded process is alive (not a zombie) and is the one recorded (start time).
    fn is_alive(&self, id: &Identity) -> bool;
    /// `pid` is alive and started at `ticks` (any start when None).
    fn is_same_process(&self, pid: u32, ticks: Option<u64>) -> bool;
    /// This process's start time.
    fn own_start_ticks(&self) -> Option<u64>;
    /// The group `leader` leads now, when proven to be the task's (`proc::proven_group`).
    fn proven_group(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32>;
    /// What is left of a proven group after its leader exited (`proc::group_after_leader`).
    fn group_after_leader(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32>;
    fn signal_group(&self, pgid: i32, signal: i32) -> io::Result<()>;
    /// Signals one process, race-free against pid reuse.
    fn signal_process(&self, id: &Identity, signal: i32) -> io::Result<()>;
    /// The command a live supervisor started: its pid and start time.
    fn task_of_supervisor(&self, supervisor: &Identity) -> Option<(u32, u64)>;
    /// A supervisor found by its command line (records written without its identity).
    fn find_supervisor(&self, task_id: &str, started_at_ms: u64) -> Option<Identity>;
}

pub struct OsProcesses;

impl Processes for OsProcesses {
    fn is_alive(&self, id: &Identity) -> bool {
        id.is_alive()
    }
    fn is_same_process(&self, pid: u32, ticks: Option<u64>) -> bool {
        proc::is_same_process(pid, ticks)
    }
    fn own_start_ticks(&self) -> Option<u64> {
        proc::own_start_ticks()
    }
    fn proven_group(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32> {
        proc::proven_group(leader, pgid)
    }
    fn group_after_leader(&self, leader: &Identity, pgid: Option<i32>) -> Option<i32> {
        proc::group_after_leader(leader, pgid)
    }
    fn signal_group(&self, pgid: i32, signal: i32) -> io::Result<()> {
        proc::signal_group(pgid, signal)
    }
    fn signal_process(&self, id: &Identity, signal: i32) -> io::Result<()> {
        proc::signal_process(id, signal)
    }
    fn task_of_supervisor(&self, supervisor: &Identity) -> Option<(u32, u64)> {
        proc::task_of_supervisor(supervisor).map(|(pid, st)| (pid, st.start_ticks))
    }
    fn find_supervisor(&self, task_id: &str, started_at_ms: u64) -> Option<Identity> {
        proc::find_supervisor(task_id, started_at_ms)
    }
}

/// The store's read-modify-write of one record (`Store::update`), as the write-through path
/// and the retry of unwritten ends use it.
pub trait Records: Send + Sync {
    fn update_record(&self, session_id: &str, task_id: &str, f: &mut dyn FnMut(&mut TaskRecord)) -> Result<TaskRecord>;
}

impl Records for Store {
    fn update_record(&self, session_id: &str, task_id: &str, f: &mut dyn FnMut(&mut TaskRecord)) -> Result<TaskRecord> {
        self.update(session_id, task_id, f)
    }
}

/// The supervisor a record names; for a `starting` record written without it (older
/// versions), the one found by its command line whose start matches the task's.
pub fn supervisor_of(procs: &dyn Processes, rec: &TaskRecord) -> Option<Identity> {
    rec.supervisor().or_else(|| (rec.status == Status::Starting).then(|| procs.find_supervisor(&rec.task_id, rec.started_at)).flatten())
}

/// Every fact `lifecycle::decide` needs about a non-terminal record, gathered through `procs`.
/// `watched_here`: this manager watches it (a `starting` record of this process that it does
/// not watch is a spawn still in flight in a sibling manager). `marker`: what its exit marker
/// says.
pub fn probe(
    procs: &dyn Processes,
    rec: &TaskRecord,
    kill_requested: bool,
    now: u64,
    watched_here: bool,
    marker: Option<(crate::fsutil::ExitMarker, u64)>,
) -> Probe {
    let me = std::process::id();
    // Another live process's manager records its tasks; in this process, only a spawn still
    // in flight (a sibling manager's) is someone else's business.
    let owner_alive = rec.manager_pid.is_some_and(|p| {
        if p == me {
            rec.status == Status::Starting && rec.manager_start_ticks == procs.own_start_ticks() && !watched_here
        } else {
            rec.manager_start_ticks.is_some() && procs.is_same_process(p, rec.manager_start_ticks)
        }
    });
    Probe {
        now,
        owner_alive,
        supervisor_alive: supervisor_of(procs, rec).is_some_and(|s| procs.is_alive(&s)),
        child_alive: rec.child().is_some_and(|c| procs.is_alive(&c)),
        marker,
        kill_requested,
    }
}

/// Kill without a supervisor to ask (adopted tasks, aft bundles): the group is signalled only
/// when proven the task's (`proc::proven_group`): its leader is the recorded process (or the
/// command a live supervisor of the task started), and leads that group now. A leader that is
/// no longer the recorded process (gone, or its pid reused) is never signalled.
pub async fn kill_directly(procs: &dyn Processes, rec: &TaskRecord, signal: i32, grace_ms: u64) {
    let leader = rec.child().or_else(|| {
        let (pid, start_ticks) = supervisor_of(procs, rec).and_then(|s| procs.task_of_supervisor(&s))?;
        Some(Identity { pid, start_ticks: Some(start_ticks), started_at_ms: rec.started_at })
    });
    let Some(leader) = leader else { return };
    let pgid = rec.pgid.or(Some(leader.pid as i32));
    let Some(group) = procs.proven_group(&leader, pgid) else {
        // The process is the task's but its recorded group is not provably its own (pgid 0
        // or 1, ours, or another): only that process is signalled.
        if !procs.is_alive(&leader) {
            return;
        }
        let _ = procs.signal_process(&leader, signal);
        if signal != libc::SIGKILL {
            tokio::time::sleep(Duration::from_millis(grace_ms)).await;
            let _ = procs.signal_process(&leader, libc::SIGKILL);
        }
        return;
    };
    let _ = procs.signal_group(group, signal);
    if signal != libc::SIGKILL {
        tokio::time::sleep(Duration::from_millis(grace_ms)).await;
        if let Some(group) = procs.group_after_leader(&leader, Some(group)) {
            let _ = procs.signal_group(group, libc::SIGKILL);
        }
    }
}
