//! The SQLite index `tasks.db`: one row per task, mirroring its JSON (which stays the truth).
//! A failing index never fails a task: every write here is best effort.
//!
//! Writes never run on their caller's thread: they are queued, in order, for the index's one
//! writer thread, which commits everything queued in one transaction (a burst of task ends is
//! one commit). A read first writes what is still queued itself, on its own thread, so every
//! read sees every write made before it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::record::TaskRecord;
use super::TaskPaths;
use crate::sync::Locked;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bash_tasks (
  harness TEXT NOT NULL,
  session_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  project_key TEXT NOT NULL,
  command TEXT NOT NULL,
  cwd TEXT NOT NULL,
  status TEXT NOT NULL,
  exit_code INTEGER,
  pid INTEGER,
  pgid INTEGER,
  started_at INTEGER NOT NULL,
  completed_at INTEGER,
  stdout_path TEXT,
  stderr_path TEXT,
  compressed INTEGER NOT NULL,
  timeout_ms INTEGER,
  completion_delivered INTEGER NOT NULL,
  output_bytes INTEGER,
  metadata TEXT NOT NULL,
  PRIMARY KEY (harness, session_id, task_id)
);
CREATE INDEX IF NOT EXISTS bash_tasks_task_id ON bash_tasks (task_id);
CREATE INDEX IF NOT EXISTS bash_tasks_session ON bash_tasks (session_id, status);
";

pub struct Index {
    shared: Arc<Shared>,
}

/// What the callers and the writer thread share.
struct Shared {
    path: PathBuf,
    /// The connection, for the writer thread and readers alike (queued writes are taken from
    /// the queue only under this lock, so they are committed in the order queued).
    conn: Mutex<Conn>,
    queue: Mutex<Queue>,
    /// Wakes the writer thread (new work, close) and close() (the writer ended).
    wake: Condvar,
}

#[derive(Default)]
struct Conn {
    conn: Option<Connection>,
    /// close() was called: nothing opens the index again.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Work>,
    /// The writer thread runs (it ends after `LINGER` without work, or at close()).
    writer: bool,
    /// The writer thread waits for work: the next write wakes it. Otherwise it is gathering or
    /// committing, and a write just joins the queue (no wake-up).
    idle: bool,
    closing: bool,
}

/// Queued work, committed in order.
enum Work {
    Job(Job),
    /// Rows of a re-index, turned into their conditional upsert only when written.
    Deferred(Vec<Deferred>),
}

/// Reads never wait for another process (in WAL mode only an exclusive holder blocks them; the
/// JSON files answer instead). The writer waits this long for another manager's transaction
/// (held for milliseconds), then backs off from 20 ms to 1 s and tries again.
const WRITE_WAIT: Duration = Duration::from_millis(20);
/// close() gives queued writes this long (it runs off the JS thread).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The writer thread ends after this long without work; the next write starts another.
const LINGER: Duration = Duration::from_secs(2);
/// Woken by a write, the writer lets this long pass before it commits: the writes of a task's
/// end (and of the tasks ending with it) make one commit, and the commit's CPU is not taken
/// while the caller is still on its way to announcing that end (2 cores are often all a
/// machine has). Reads do not wait for it: they commit what is queued themselves.
const GATHER: Duration = Duration::from_millis(5);

/// One statement and the rows to run it with.
struct Job {
    sql: String,
    rows: Vec<Vec<rusqlite::types::Value>>,
}

/// A row to write later, and what the index held for it when the bundle was read: the write
/// happens only if that is still so, so a newer row from another process is never overwritten.
pub struct Deferred {
    pub record: TaskRecord,
    pub paths: TaskPaths,
    /// (status, completion_delivered) of the row then; None: there was no row.
    pub seen: Option<(String, bool)>,
}

/// What `list` may filter on in SQL; the rest is filtered by the caller.
#[derive(Debug, Default, Clone)]
pub struct RowFilter {
    pub session_id: Option<String>,
    pub harness: Option<String>,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.close();
    }
}

impl Index {
    pub fn open(path: &Path) -> Index {
        let conn = match open_connection(path) {
            Ok(c) => Some(c),
            Err(e) if is_corrupt(&e) => {
                // The JSON bundles are the truth: set the broken file aside (never delete it)
                // and start a fresh index; replay fills it again from the bundles.
                let aside = path.with_extension(format!("db.corrupt.{}", crate::fsutil::unix_millis()));
                let _ = std::fs::rename(path, &aside);
                for ext in ["db-wal", "db-shm"] {
                    let _ = std::fs::remove_file(path.with_extension(ext));
                }
                open_connection(path).map_err(|e| log_index_error(path, &e)).ok()
            }
            Err(e) => {
                log_index_error(path, &e);
                None
            }
        };
        let shared = Shared {
            path: path.to_path_buf(),
            conn: Mutex::new(Conn { conn, closed: false }),
            queue: Default::default(),
            wake: Condvar::new(),
        };
        Index { shared: Arc::new(shared) }
    }

    /// A read, after the queued writes (so it sees them). `None` when the index cannot answer
    /// now (missing, closed, or another process's lock holds up the queued writes): callers
    /// then read the JSON bundles, the truth. Never waits for another process; on a runtime
    /// worker (a `wait` or `kill` looking a task up) it runs `off_worker`.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let sh = &self.shared;
        super::durable::off_worker(|| {
            let mut conn = sh.conn.locked();
            if sh.commit_queued(&mut conn, Duration::ZERO) == Commit::Blocked {
                return None;
            }
            let result = sh.connection(&mut conn).and_then(|c| {
                c.busy_timeout(Duration::ZERO)?;
                f(c)
            });
            result.map_err(|e| log_index_error(&sh.path, &e)).ok()
        })
    }

    /// Queues a write for the writer thread (started when none runs). The caller never waits
    /// for the disk or for another process.
    fn write(&self, work: Work) {
        let sh = &self.shared;
        let mut q = sh.queue.locked();
        if q.closing {
            return;
        }
        q.jobs.push_back(work);
        if q.writer {
            if q.idle {
                q.idle = false;
                sh.wake.notify_all();
            }
            return;
        }
        let shared = sh.clone();
        // Without a thread the work stays queued: the next read or close() writes it.
        q.writer = std::thread::Builder::new().name("bgshell-index".into()).spawn(move || writer(&shared)).is_ok();
    }

    /// Stops using the index: the writer thread ends, what is still queued gets one last
    /// commit here (close() runs off the JS thread), and the connection is closed (its file
    /// descriptors released); no later write or read opens it again.
    pub fn close(&self) {
        let sh = &self.shared;
        let mut q = sh.queue.locked();
        q.closing = true;
        sh.wake.notify_all();
        // The writer ends after its current commit at most.
        while q.writer {
            q = sh.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        drop(q);
        let mut conn = sh.conn.locked();
        sh.commit_queued(&mut conn, CLOSE_WAIT);
        sh.queue.locked().jobs.clear();
        conn.closed = true;
        conn.conn = None;
    }

    pub fn upsert(&self, rec: &TaskRecord, paths: &TaskPaths) {
        self.upsert_all(&[(rec, paths)]);
    }

    /// Upserts rows in one transaction (replay re-indexing thousands of bundles at once).
    /// The row's harness and project key come from the record.
    pub fn upsert_all(&self, items: &[(&TaskRecord, &TaskPaths)]) {
        if items.is_empty() {
            return;
        }
        self.write(Work::Job(Job { sql: UPSERT.to_string(), rows: items.iter().map(|(rec, paths)| row_values(rec, paths)).collect() }));
    }

    /// Queues the rows of a re-index (the first replay of thousands of bundles), each written
    /// only if the index still holds what it held when its bundle was read, and only while the
    /// bundle exists (both checked when written). Lost if the process exits first; the next
    /// replay queues them again (the JSON files are the truth).
    pub fn defer_upserts(&self, items: Vec<Deferred>) {
        if !items.is_empty() {
            self.write(Work::Deferred(items));
        }
    }

    /// The session of a task id, for `get` across sessions.
    pub fn session_of(&self, task_id: &str) -> Option<String> {
        self.read(|c| c.query_row("SELECT session_id FROM bash_tasks WHERE task_id = ?1 LIMIT 1", [task_id], |r| r.get(0)).optional())
            .flatten()
    }

    /// Full records from the `metadata` column, oldest first. Thousands of rows are parsed over
    /// the machine's cores and sorted here (SQLite would sort the whole rows, metadata and all).
    pub fn records(&self, filter: &RowFilter) -> Option<Vec<TaskRecord>> {
        let rows = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT task_id, session_id, metadata FROM bash_tasks
                 WHERE (?1 IS NULL OR session_id = ?1) AND (?2 IS NULL OR harness = ?2)",
            )?;
            let rows = stmt.query_map(params![filter.session_id, filter.harness], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut out: Vec<TaskRecord> = super::par::map(&rows, |(task_id, session_id, metadata)| row_record(task_id, session_id, metadata))
            .into_iter()
            .flatten()
            .collect();
        // The keys sort, then the records move once (each is hundreds of bytes).
        out.sort_by_cached_key(|r| (r.started_at, r.task_id.clone()));
        Some(out)
    }

    /// Ids of a session's terminal tasks whose completion is not delivered. None: no index.
    pub fn undelivered(&self, session_id: &str) -> Option<Vec<String>> {
        self.read(|c| {
            // Which statuses are terminal is Status's to say, not this query's.
            let mut stmt = c.prepare_cached("SELECT task_id, status FROM bash_tasks WHERE session_id = ?1 AND completion_delivered = 0")?;
            let rows = stmt.query_map([session_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let rows: Vec<(String, String)> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(rows
                .into_iter()
                .filter(|(_, status)| super::Status::parse(status).is_some_and(|s| s.is_terminal()))
                .map(|(id, _)| id)
                .collect())
        })
    }

    pub fn delete(&self, session_id: &str, task_id: &str) {
        use rusqlite::types::Value;
        let row = vec![Value::Text(session_id.into()), Value::Text(task_id.into())];
        self.write(Work::Job(Job { sql: "DELETE FROM bash_tasks WHERE session_id = ?1 AND task_id = ?2".into(), rows: vec![row] }));
    }
}

/// A row's record, only when its metadata names the very task and session of its key columns
/// and the id is valid: a crafted row is ignored (the JSON bundles stay the truth).
fn row_record(task_id: &str, session_id: &str, metadata: &str) -> Option<TaskRecord> {
    let rec = super::record::parse_record(metadata.as_bytes()).ok()?;
    let ok = rec.task_id == task_id && rec.session_id == session_id && super::ids::validate_task_id(task_id).is_ok();
    ok.then_some(rec)
}

const UPSERT: &str = "INSERT INTO bash_tasks (harness, session_id, task_id, project_key, command, cwd, status,
       exit_code, pid, pgid, started_at, completed_at, stdout_path, stderr_path, compressed,
       timeout_ms, completion_delivered, output_bytes, metadata)
     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)
     ON CONFLICT (harness, session_id, task_id) DO UPDATE SET
       project_key=excluded.project_key, command=excluded.command, cwd=excluded.cwd,
       status=excluded.status, exit_code=excluded.exit_code, pid=excluded.pid,
       pgid=excluded.pgid, started_at=excluded.started_at, completed_at=excluded.completed_at,
       stdout_path=excluded.stdout_path, stderr_path=excluded.stderr_path,
       compressed=excluded.compressed, timeout_ms=excluded.timeout_ms,
       completion_delivered=excluded.completion_delivered,
       output_bytes=excluded.output_bytes, metadata=excluded.metadata";

/// The columns of a row, in the order of `UPSERT`'s ?1..?19.
fn row_values(rec: &TaskRecord, paths: &TaskPaths) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    let metadata = String::from_utf8(rec.to_json()).unwrap_or_default();
    let (stdout_path, stderr_path, output_bytes) = match rec.mode {
        super::record::Mode::Pipes => {
            (paths.stdout.display().to_string(), Some(paths.stderr.display().to_string()), sum_sizes(&[&paths.stdout, &paths.stderr]))
        }
        super::record::Mode::Pty => (paths.pty.display().to_string(), None, sum_sizes(&[&paths.pty])),
    };
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    vec![
        Value::Text(rec.harness.clone().unwrap_or_else(|| "default".into())),
        Value::Text(rec.session_id.clone()),
        Value::Text(rec.task_id.clone()),
        Value::Text(rec.project_key.clone().unwrap_or_default()),
        Value::Text(rec.command.clone()),
        Value::Text(rec.workdir.clone()),
        Value::Text(rec.status.as_str().into()),
        int(rec.exit_code.map(i64::from)),
        int(rec.child_pid.map(i64::from)),
        int(rec.pgid.map(i64::from)),
        Value::Integer(rec.started_at as i64),
        int(rec.finished_at.map(|v| v as i64)),
        Value::Text(stdout_path),
        stderr_path.map_or(Value::Null, Value::Text),
        Value::Integer(rec.compressed.into()),
        int(rec.timeout_ms.map(|v| v as i64)),
        Value::Integer(rec.completion_delivered.into()),
        int(output_bytes),
        Value::Text(metadata),
    ]
}

/// Deferred rows, each only if the index still holds what it held when the bundle was read (no
/// row, or the same status and delivery), and only while the bundle still exists: a row written
/// since by another process, or deleted by `gc` with its bundle, is left alone.
fn deferred_job(items: &[Deferred]) -> Job {
    use rusqlite::types::Value;
    let sql = format!("{UPSERT} WHERE ?20 IS NOT NULL AND bash_tasks.status = ?20 AND bash_tasks.completion_delivered = ?21");
    let rows = items.iter().filter(|d| d.paths.json.symlink_metadata().is_ok()).map(|d| {
        let mut values = row_values(&d.record, &d.paths);
        match &d.seen {
            Some((status, delivered)) => {
                values.push(Value::Text(status.clone()));
                values.push(Value::Integer((*delivered).into()));
            }
            None => values.extend([Value::Null, Value::Null]),
        }
        values
    });
    Job { sql, rows: rows.collect() }
}

/// What became of the queued writes.
#[derive(PartialEq, Eq)]
enum Commit {
    /// Committed, or given up on an error that retrying would not cure (logged).
    Done,
    /// Another process's lock refused them; they are queued again, first.
    Blocked,
}

impl Shared {
    /// The connection, (re)opened when needed: the store may have become usable since, or
    /// another process created the file.
    fn connection<'c>(&self, conn: &'c mut Conn) -> rusqlite::Result<&'c Connection> {
        let unavailable = || rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), None);
        if conn.closed {
            return Err(unavailable());
        }
        if conn.conn.is_none() {
            conn.conn = Some(open_connection(&self.path)?);
        }
        conn.conn.as_ref().ok_or_else(unavailable)
    }

    /// Commits everything queued, in order and in one transaction, waiting at most `wait` for
    /// another process's lock. Taken from the queue under the connection lock the caller
    /// holds, so two committers never reorder writes.
    fn commit_queued(&self, conn: &mut Conn, wait: Duration) -> Commit {
        let work: Vec<Work> = self.queue.locked().jobs.drain(..).collect();
        if work.is_empty() {
            return Commit::Done;
        }
        let result = self.connection(conn).and_then(|c| {
            c.busy_timeout(wait)?;
            execute_work(c, &work, &self.path)
        });
        match result {
            Err(e) if is_busy(&e) => {
                let mut q = self.queue.locked();
                for w in work.into_iter().rev() {
                    q.jobs.push_front(w);
                }
                Commit::Blocked
            }
            other => {
                if let Err(e) = other {
                    log_index_error(&self.path, &e);
                }
                Commit::Done
            }
        }
    }
}

/// The writer thread: commits what is queued, all of it at once, `GATHER` after the write that
/// woke it (writes queued meanwhile join that commit); backs off from 20 ms to 1 s while
/// another process holds the lock; ends after `LINGER` without work, or at close() (which
/// commits what is left).
fn writer(sh: &Shared) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut q = sh.queue.locked();
        let idle_until = Instant::now() + LINGER;
        while q.jobs.is_empty() && !q.closing {
            let left = idle_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q.idle = true;
            q = sh.wake.wait_timeout(q, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        q.idle = false;
        if q.closing || q.jobs.is_empty() {
            q.writer = false;
            sh.wake.notify_all();
            return;
        }
        let q = sh.wake.wait_timeout_while(q, GATHER, |q| !q.closing).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        drop(q);
        let outcome = sh.commit_queued(&mut sh.conn.locked(), WRITE_WAIT);
        if outcome == Commit::Blocked {
            let q = sh.queue.locked();
            let _ = sh.wake.wait_timeout_while(q, backoff, |q| !q.closing);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(20);
        }
    }
}

/// Runs the queued work in one transaction. On an error other than another process's lock,
/// each piece is tried alone, so one failing piece does not take the others with it.
fn execute_work(c: &Connection, work: &[Work], path: &Path) -> rusqlite::Result<()> {
    let all = || -> rusqlite::Result<()> {
        let tx = c.unchecked_transaction()?;
        for w in work {
            execute_one(&tx, w)?;
        }
        tx.commit()
    };
    match all() {
        Err(e) if !is_busy(&e) && work.len() > 1 => {
            for w in work {
                let alone = c.unchecked_transaction().and_then(|tx| {
                    execute_one(&tx, w)?;
                    tx.commit()
                });
                match alone {
                    Err(e) if is_busy(&e) => return Err(e),
                    Err(e) => log_index_error(path, &e),
                    Ok(()) => {}
                }
            }
            Ok(())
        }
        other => other,
    }
}

fn execute_one(c: &Connection, work: &Work) -> rusqlite::Result<()> {
    let deferred;
    let job = match work {
        Work::Job(job) => job,
        Work::Deferred(items) => {
            // Built when written: whether each bundle still exists is checked now.
            deferred = deferred_job(items);
            &deferred
        }
    };
    let mut stmt = c.prepare_cached(&job.sql)?;
    for values in &job.rows {
        stmt.execute(rusqlite::params_from_iter(values.iter()))?;
    }
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked))
}

fn sum_sizes(paths: &[&PathBuf]) -> Option<i64> {
    let sizes: Vec<u64> = paths.iter().filter_map(|p| std::fs::symlink_metadata(p).ok()).map(|m| m.len()).collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum::<u64>() as i64)
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    // Create the file ourselves so it is 0600 from the start; SQLite gives -wal/-shm the same mode.
    if let Err(e) = crate::fsutil::create_private(path, true) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("{}: {e}", path.display())),
        ));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)?;
    // Zero: a lock held by another process is answered at once (BUSY), never waited for on the
    // caller's thread; writes are then retried by the index's own thread.
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL: a commit is durable against a process crash without an fsync per write.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt))
}

fn log_index_error(path: &Path, err: &dyn std::fmt::Display) {
    if std::env::var_os("BGSHELL_DEBUG").is_some() {
        eprintln!("bgshell: index {} unavailable: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{self, Status};

    fn setup() -> (PathBuf, Index, TaskPaths, TaskRecord) {
        let root = std::env::temp_dir().join(format!("bgshell-index-test-{}", crate::store::ids::new_task_id()));
        crate::fsutil::ensure_private_dir(&root).unwrap();
        let index = Index::open(&root.join("tasks.db"));
        let rec = record::sample("bash-00000000000000c1");
        let paths = crate::store::paths_in(&root, &rec.task_id);
        (root, index, paths, rec)
    }

    /// The row's status as another connection (another process) sees it.
    fn status_seen_elsewhere(root: &Path, task_id: &str) -> Option<String> {
        let c = Connection::open(root.join("tasks.db")).unwrap();
        c.query_row("SELECT status FROM bash_tasks WHERE task_id = ?1", [task_id], |r| r.get(0)).optional().unwrap()
    }

    #[test]
    fn the_writer_thread_commits_without_any_read() {
        let (root, index, paths, rec) = setup();
        index.upsert(&rec, &paths);
        // Nothing here reads through `index`: only its writer thread can commit the row.
        let deadline = Instant::now() + Duration::from_secs(20);
        while status_seen_elsewhere(&root, &rec.task_id).is_none() {
            assert!(Instant::now() < deadline, "the queued row was never committed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(status_seen_elsewhere(&root, &rec.task_id).as_deref(), Some(rec.status.as_str()));
        drop(index);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn writes_queue_behind_another_process_lock_in_order_and_close_commits_them() {
        let (root, index, paths, rec) = setup();
        // Another process holds the write lock: writes are queued (the calls return), reads
        // answer None rather than wait, and the order of the queued writes is kept.
        let holder = Connection::open(root.join("tasks.db")).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE; UPDATE bash_tasks SET command = command;").unwrap();
        index.upsert(&rec, &paths);
        let mut done = rec.clone();
        done.finish(crate::store::Outcome { status: Status::Completed, exit_code: Some(0), signal: None, reason: None, finished_at: 2 });
        let mut other = record::sample("bash-00000000000000c2");
        other.session_id = rec.session_id.clone();
        let other_paths = crate::store::paths_in(&root, &other.task_id);
        index.upsert(&other, &other_paths);
        index.upsert(&done, &paths);
        index.delete(&other.session_id, &other.task_id);
        assert_eq!(index.session_of(&rec.task_id), None, "a read waited for the lock or skipped the queue");
        holder.execute_batch("COMMIT").unwrap();
        // close() commits whatever the writer thread has not yet.
        index.close();
        assert_eq!(status_seen_elsewhere(&root, &rec.task_id).as_deref(), Some("completed"));
        assert_eq!(status_seen_elsewhere(&root, &other.task_id), None, "the delete ran before the upsert it followed");
        index.upsert(&rec, &paths);
        assert_eq!(status_seen_elsewhere(&root, &rec.task_id).as_deref(), Some("completed"), "a write after close() landed");
        std::fs::remove_dir_all(root).unwrap();
    }
}
