//! The task metadata record (schema 4 of FORMAT.md) and the rules that guard it.

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 4;
/// Versions this reader accepts; anything else is quarantined.
pub const READABLE_VERSIONS: [u32; 3] = [2, 3, 4];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Starting,
    Running,
    Killing,
    Completed,
    Failed,
    Killed,
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 7] =
        [Status::Starting, Status::Running, Status::Killing, Status::Completed, Status::Failed, Status::Killed, Status::TimedOut];

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Killed | Status::TimedOut)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Killing => "killing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Killed => "killed",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Pipes,
    Pty,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pipes => "pipes",
            Mode::Pty => "pty",
        }
    }
}

fn yes() -> bool {
    true
}

/// One task's `<id>.json`. Fields after `status_reason` are bgshell's own additions: optional
/// with defaults, so a schema-4 reader (which ignores unknown fields) still accepts the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub schema_version: u32,
    pub task_id: String,
    pub session_id: String,
    pub command: String,
    #[serde(default)]
    pub mode: Mode,
    pub workdir: String,
    #[serde(default)]
    pub project_root: Option<String>,
    pub status: Status,
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub child_pid: Option<u32>,
    pub pgid: Option<i32>,
    pub completion_delivered: bool,
    #[serde(default = "yes")]
    pub notify_on_completion: bool,
    #[serde(default = "yes")]
    pub compressed: bool,
    #[serde(default)]
    pub pty_rows: Option<u16>,
    #[serde(default)]
    pub pty_cols: Option<u16>,
    pub status_reason: Option<String>,

    /// Harness that started the task ("default" when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<String>,
    /// Name of the signal that ended the task, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Start time of `child_pid` (field 22 of /proc/PID/stat), to refuse a reused pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_start_ticks: Option<u64>,
    /// The task's supervisor, which writes the exit marker, and its start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_start_ticks: Option<u64>,
    /// The manager process that spawned the task, and its start time: while it lives, it is the
    /// one to record the task's end (and announce it), not a process that merely looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_start_ticks: Option<u64>,
    /// Cached `project_key` so listing never has to ask git again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_key: Option<String>,
    /// A short human name given at spawn (`SpawnOptions.label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `"pipe"`: a pipes task whose stdin is a pipe held by its supervisor (`stdin: 'pipe'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Resource use of the task's process tree as its supervisor reaped it. Absent when no
    /// manager heard the supervisor's exit report (the task ended while none ran: the exit
    /// marker carries only the code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rusage: Option<Rusage>,
    /// The task's output watches (`watch`), kept with it so they survive a harness restart;
    /// emptied when the task ends. Read leniently: an entry that is not a valid watch is
    /// dropped, never the record (watch.rs validates what remains before using it).
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "lenient_watches")]
    pub watches: Vec<WatchSpec>,
}

/// One persisted output watch. Offsets are per stream (stdout, stderr; or the pty transcript).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    pub once: bool,
    pub max_per_minute: u32,
    /// Where a rescan may begin (the start of the line after the last one fully scanned).
    pub scan_from: [u64; 2],
    /// Matches ending before this offset were already reported (or counted by the rate limit).
    pub reported_to: [u64; 2],
    /// Matches reported so far.
    pub matches: u64,
}

fn lenient_watches<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WatchSpec>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let serde_json::Value::Array(items) = value else { return Ok(Vec::new()) };
    Ok(items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect())
}

/// `rusage` of a bundle: peak RSS and CPU time of the task's process tree (`wait4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rusage {
    pub max_rss_kb: u64,
    pub user_ms: u64,
    pub system_ms: u64,
}

/// How a task ended, as the manager learned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub reason: Option<String>,
    pub finished_at: u64,
}

impl TaskRecord {
    /// The task's command process as recorded (pid ≤ 1 never counts).
    pub fn child(&self) -> Option<crate::proc::Identity> {
        crate::proc::Identity::new(self.child_pid, self.child_start_ticks, self.started_at)
    }

    /// The task's supervisor as recorded.
    pub fn supervisor(&self) -> Option<crate::proc::Identity> {
        crate::proc::Identity::new(self.supervisor_pid, self.supervisor_start_ticks, self.started_at)
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The terminal transition of FORMAT.md. A record that is already terminal is left as it is:
    /// returns false then, so a late exit report never rewrites history.
    pub fn finish(&mut self, outcome: Outcome) -> bool {
        if self.is_terminal() || !outcome.status.is_terminal() {
            return false;
        }
        self.status = outcome.status;
        self.exit_code = outcome.exit_code;
        self.signal = outcome.signal;
        self.status_reason = outcome.reason;
        let finished_at = outcome.finished_at.max(self.started_at);
        self.finished_at = Some(finished_at);
        self.duration_ms = Some(finished_at - self.started_at);
        self.child_pid = None;
        self.completion_delivered = !self.notify_on_completion;
        // Watches end with their task.
        self.watches.clear();
        true
    }

    /// Applies an update under the "terminal is final" rule: once terminal, only
    /// `completion_delivered` may change (and only from false to true).
    pub fn merge_update(before: &TaskRecord, mut after: TaskRecord) -> TaskRecord {
        if before.is_terminal() {
            // Promotion of a finished foreground task queues its completion: the one case where
            // delivery goes back to pending (it was only pre-marked delivered, never shown).
            let promoted = !before.notify_on_completion && after.notify_on_completion;
            let delivered = if promoted { after.completion_delivered } else { before.completion_delivered || after.completion_delivered };
            let notify = before.notify_on_completion || promoted;
            after = before.clone();
            after.completion_delivered = delivered;
            after.notify_on_completion = notify;
        }
        after.schema_version = SCHEMA_VERSION;
        after
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Stamped with this writer's version; a copy only for a record read at an older one
        // (every index row of a replay is made from this: thousands of records).
        let stamped = if self.schema_version == SCHEMA_VERSION {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(TaskRecord { schema_version: SCHEMA_VERSION, ..self.clone() })
        };
        let mut out = serde_json::to_vec_pretty(&stamped).expect("a task record always serialises");
        out.push(b'\n');
        out
    }
}

#[derive(Debug)]
pub enum ParseError {
    Json(String),
    Version(u32),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Json(e) => write!(f, "unparsable task JSON: {e}"),
            ParseError::Version(v) => {
                write!(f, "unsupported schema_version {v} (this reader accepts 2, 3 and 4)")
            }
        }
    }
}

/// Parses a bundle JSON file. The schema version decides first: a record of an unreadable
/// version is a `Version` error whatever else it holds. One pass for a good record (the usual
/// case, thousands at a replay); the version is probed on its own only when that pass fails.
pub fn parse_record(bytes: &[u8]) -> Result<TaskRecord, ParseError> {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<u32>,
    }
    let full = serde_json::from_slice::<TaskRecord>(bytes);
    if let Ok(rec) = &full {
        if !READABLE_VERSIONS.contains(&rec.schema_version) {
            return Err(ParseError::Version(rec.schema_version));
        }
    }
    full.or_else(|full_err| {
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
        let version = probe.schema_version.ok_or_else(|| ParseError::Json("missing schema_version".into()))?;
        if !READABLE_VERSIONS.contains(&version) {
            return Err(ParseError::Version(version));
        }
        Err(ParseError::Json(full_err.to_string()))
    })
}

#[cfg(test)]
pub(crate) fn sample(task_id: &str) -> TaskRecord {
    TaskRecord {
        schema_version: SCHEMA_VERSION,
        task_id: task_id.into(),
        session_id: "s".into(),
        command: "echo hi".into(),
        mode: Mode::Pipes,
        workdir: "/tmp".into(),
        project_root: Some("/tmp".into()),
        status: Status::Running,
        started_at: 1000,
        finished_at: None,
        duration_ms: None,
        timeout_ms: Some(5000),
        exit_code: None,
        child_pid: Some(123),
        pgid: Some(123),
        completion_delivered: false,
        notify_on_completion: true,
        compressed: true,
        pty_rows: None,
        pty_cols: None,
        status_reason: None,
        harness: None,
        signal: None,
        child_start_ticks: None,
        supervisor_pid: None,
        supervisor_start_ticks: None,
        manager_pid: None,
        manager_start_ticks: None,
        project_key: None,
        label: None,
        stdin: None,
        rusage: None,
        watches: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: Status, code: i32, at: u64) -> Outcome {
        Outcome { status, exit_code: Some(code), signal: None, reason: None, finished_at: at }
    }

    #[test]
    fn terminal_transition_sets_fields() {
        let mut r = sample("bash-0000000000000001");
        assert!(r.finish(done(Status::Failed, 3, 1500)));
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.finished_at, Some(1500));
        assert_eq!(r.duration_ms, Some(500));
        assert_eq!(r.child_pid, None);
        assert!(!r.completion_delivered, "notify_on_completion leaves it undelivered");
    }

    #[test]
    fn terminal_state_is_final() {
        let mut r = sample("a");
        r.finish(done(Status::Completed, 0, 2000));
        let snapshot = r.clone();
        assert!(!r.finish(done(Status::Killed, 137, 3000)), "a late report must not rewrite");
        assert_eq!(r, snapshot);

        let mut changed = r.clone();
        changed.exit_code = Some(99);
        changed.status = Status::Running;
        changed.completion_delivered = true;
        let merged = TaskRecord::merge_update(&r, changed);
        assert_eq!(merged.status, Status::Completed);
        assert_eq!(merged.exit_code, Some(0));
        assert!(merged.completion_delivered, "only delivery may change");

        let mut undeliver = merged.clone();
        undeliver.completion_delivered = false;
        assert!(TaskRecord::merge_update(&merged, undeliver).completion_delivered);
    }

    #[test]
    fn promoting_a_finished_silent_task_queues_it() {
        let mut r = sample("a");
        r.notify_on_completion = false;
        r.finish(done(Status::Completed, 0, 2000));
        let mut p = r.clone();
        p.notify_on_completion = true;
        p.completion_delivered = false;
        let merged = TaskRecord::merge_update(&r, p);
        assert!(merged.notify_on_completion && !merged.completion_delivered);
        // A notifying task that was delivered cannot be made pending again.
        let mut undo = merged.clone();
        undo.completion_delivered = true;
        let delivered = TaskRecord::merge_update(&merged, undo);
        let mut again = delivered.clone();
        again.completion_delivered = false;
        assert!(TaskRecord::merge_update(&delivered, again).completion_delivered);
    }

    #[test]
    fn silent_notify_is_predelivered() {
        let mut r = sample("a");
        r.notify_on_completion = false;
        r.finish(done(Status::Completed, 0, 2000));
        assert!(r.completion_delivered);
    }

    #[test]
    fn versions() {
        let mut v = serde_json::to_value(sample("a")).unwrap();
        for ok in [2, 3, 4] {
            v["schema_version"] = ok.into();
            let r = parse_record(&serde_json::to_vec(&v).unwrap()).unwrap();
            assert!(r.to_json().windows(20).any(|w| w == b"\"schema_version\": 4,"));
        }
        for bad in [1, 99] {
            v["schema_version"] = bad.into();
            assert!(matches!(parse_record(&serde_json::to_vec(&v).unwrap()), Err(ParseError::Version(x)) if x == bad));
        }
        assert!(matches!(parse_record(b"{not json"), Err(ParseError::Json(_))));
        // The version decides before the shape: a future record of another shape is refused
        // for its version, a readable version of a broken shape for its JSON.
        assert!(matches!(parse_record(br#"{"schema_version": 5, "other": true}"#), Err(ParseError::Version(5))));
        assert!(matches!(parse_record(br#"{"schema_version": 4, "task_id": 3}"#), Err(ParseError::Json(_))));
        assert!(matches!(parse_record(br#"{"task_id": "a"}"#), Err(ParseError::Json(e)) if e == "missing schema_version"));
    }

    #[test]
    fn schema2_defaults() {
        let json = br#"{"schema_version":2,"task_id":"abcd1234","session_id":"s","command":"ls",
            "workdir":"/","status":"completed","started_at":1,"finished_at":2,"duration_ms":1,
            "timeout_ms":null,"exit_code":0,"child_pid":null,"pgid":null,
            "completion_delivered":false,"status_reason":null}"#;
        let r = parse_record(json).unwrap();
        assert_eq!(r.mode, Mode::Pipes);
        assert!(r.notify_on_completion);
        assert!(r.compressed);
        assert_eq!(r.project_root, None);
        assert_eq!(r.pty_rows, None);
    }

    #[test]
    fn output_omits_unset_extras() {
        let text = String::from_utf8(sample("a").to_json()).unwrap();
        for required in ["status_reason", "child_pid", "pty_rows", "project_root", "duration_ms"] {
            assert!(text.contains(&format!("\"{required}\"")), "{required} must be present");
        }
        assert!(!text.contains("supervisor_pid"));
    }
}
