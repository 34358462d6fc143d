//! The SQLite index `tasks.db`: one row per task, mirroring its JSON (which stays the truth).
//! A failing index never fails a task: every write here is best effort.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::record::TaskRecord;
use super::TaskPaths;

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
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    /// Rows handed over by [`Index::defer_upserts`], written before the next use of the index.
    deferred: Mutex<Vec<Deferred>>,
    /// Writes that another process's lock refused, retried in order off the caller's thread.
    backlog: Arc<Mutex<Backlog>>,
    closed: Arc<AtomicBool>,
}

/// Reads never wait for another process (in WAL mode only an exclusive holder blocks them; the
/// JSON files answer instead). A write waits this long for another manager's transaction (held
/// for milliseconds), then is queued for the retry thread instead of holding up its caller.
const WRITE_WAIT: Duration = Duration::from_millis(100);
/// close() gives queued writes this long (it runs off the JS thread).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One statement and the rows to run it with, in one transaction.
struct Job {
    sql: String,
    rows: Vec<Vec<rusqlite::types::Value>>,
}

#[derive(Default)]
struct Backlog {
    jobs: VecDeque<Job>,
    /// A retry thread runs: new writes queue behind it, so they stay in order.
    draining: bool,
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
        Index {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            deferred: Mutex::new(Vec::new()),
            backlog: Default::default(),
            closed: Default::default(),
        }
    }

    /// Runs `f` on the connection, (re)opening it when needed. Waits at most `wait` for another
    /// process's lock (reads pass zero), then answers BUSY.
    fn on_conn<T>(&self, wait: Duration, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let unavailable = || rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), None);
        if self.closed.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        let mut guard = self.conn.lock().map_err(|_| unavailable())?;
        if guard.is_none() {
            // The store may have become usable since (or another process created the file).
            *guard = Some(open_connection(&self.path)?);
        }
        let conn = guard.as_ref().ok_or_else(unavailable)?;
        conn.busy_timeout(wait)?;
        f(conn)
    }

    /// A read. `None` when the index cannot answer now (missing, locked by another process, or
    /// behind on writes it still has to retry): callers then read the JSON bundles, the truth.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        // Deferred rows go first: every read sees them.
        self.flush();
        if self.backlog.lock().map_or(true, |b| b.draining) {
            return None;
        }
        self.on_conn(Duration::ZERO, f).map_err(|e| log_index_error(&self.path, &e)).ok()
    }

    /// A write: done now when the index is free, else queued for the retry thread (in order;
    /// every later write queues behind it). The caller never waits for another process.
    fn write(&self, job: Job) {
        let Ok(mut backlog) = self.backlog.lock() else { return };
        self.write_locked(&mut backlog, job);
    }

    /// `write`, under the backlog lock the caller holds (writes stay in order).
    fn write_locked(&self, backlog: &mut Backlog, job: Job) {
        if job.rows.is_empty() {
            return;
        }
        if !backlog.draining {
            match self.on_conn(WRITE_WAIT, |c| execute_all(c, &job.sql, job.rows.iter().cloned())) {
                Ok(()) => return,
                Err(e) if is_busy(&e) => {}
                Err(e) => return log_index_error(&self.path, &e),
            }
        }
        backlog.jobs.push_back(job);
        if !backlog.draining {
            backlog.draining = true;
            let (queue, closed, path) = (self.backlog.clone(), self.closed.clone(), self.path.clone());
            let spawned = std::thread::Builder::new().name("bgshell-index".into()).spawn(move || retry(&queue, &closed, &path));
            if spawned.is_err() {
                backlog.draining = false;
                backlog.jobs.clear();
            }
        }
    }

    /// Stops using the index: the connection is closed (its file descriptors released) and no
    /// write or read reopens it. Writes still queued get one last attempt by their thread.
    pub fn close(&self) {
        self.flush();
        // Writes still queued get an attempt now: the other process may have let go already.
        if let Ok(mut backlog) = self.backlog.lock() {
            while let Some(job) = backlog.jobs.pop_front() {
                if let Err(e) = self.on_conn(CLOSE_WAIT, |c| execute_all(c, &job.sql, job.rows.iter().cloned())) {
                    if is_busy(&e) {
                        backlog.jobs.push_front(job);
                        break;
                    }
                }
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.conn.lock() {
            c.take();
        }
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
        self.write(Job { sql: UPSERT.to_string(), rows: items.iter().map(|(rec, paths)| row_values(rec, paths)).collect() });
    }

    /// Takes rows to write later: on the next use of the index, or at [`Index::flush`]. A bulk
    /// re-index (the first replay of thousands of bundles) then need not hold up its caller,
    /// while every reader of the index still sees the rows. Lost if the process exits first;
    /// the next replay writes them again (the JSON files are the truth).
    pub fn defer_upserts(&self, items: Vec<Deferred>) {
        if let Ok(mut d) = self.deferred.lock() {
            d.extend(items);
        }
    }

    /// Writes deferred rows now (or queues them behind a retry).
    pub fn flush(&self) {
        // Taken and written under the backlog lock: a reader's flush waits for a concurrent one
        // to finish writing, so its read sees the rows.
        let Ok(mut backlog) = self.backlog.lock() else { return };
        let deferred = self.deferred.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        if !deferred.is_empty() {
            self.write_locked(&mut backlog, deferred_job(&deferred));
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
        self.write(Job { sql: "DELETE FROM bash_tasks WHERE session_id = ?1 AND task_id = ?2".into(), rows: vec![row] });
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

/// The retry thread: writes the backlog in order once the other process lets go, backing off
/// from 20 ms to 1 s; ends when the backlog is empty (or after one last try once closed).
fn retry(queue: &Mutex<Backlog>, closed: &AtomicBool, path: &Path) {
    let mut wait = Duration::from_millis(20);
    let mut conn: Option<Connection> = None;
    loop {
        std::thread::sleep(wait);
        let last = closed.load(Ordering::SeqCst);
        if conn.is_none() {
            conn = open_connection(path).ok();
        }
        if let Some(c) = &conn {
            let _ = c.busy_timeout(if last { CLOSE_WAIT } else { WRITE_WAIT });
        }
        loop {
            let Ok(mut q) = queue.lock() else { return };
            let Some(job) = q.jobs.pop_front() else {
                q.draining = false;
                return;
            };
            drop(q);
            let result = conn.as_ref().map(|c| execute_all(c, &job.sql, job.rows.iter().cloned()));
            match result {
                Some(Err(e)) if is_busy(&e) && !last => {
                    if let Ok(mut q) = queue.lock() {
                        q.jobs.push_front(job);
                    }
                    break;
                }
                None if !last => {
                    if let Ok(mut q) = queue.lock() {
                        q.jobs.push_front(job);
                    }
                    break;
                }
                Some(Err(e)) => log_index_error(path, &e),
                _ => {}
            }
        }
        if last {
            if let Ok(mut q) = queue.lock() {
                q.jobs.clear();
                q.draining = false;
            }
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked))
}

/// Runs one statement per row of parameters, all in one transaction.
fn execute_all(c: &Connection, sql: &str, rows: impl Iterator<Item = Vec<rusqlite::types::Value>>) -> rusqlite::Result<()> {
    let tx = c.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for values in rows {
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
    }
    tx.commit()
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
