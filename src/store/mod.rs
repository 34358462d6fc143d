//! The store owns every byte on disk: layout, permissions, atomic writes, per-session locking
//! and the SQLite index. FORMAT.md is its contract.

pub mod dirs;
pub mod durable;
pub mod ids;
pub mod index;
mod par;
pub mod record;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::sync::Locked;
pub use durable::Durability;
pub use index::RowFilter;
pub use record::{Mode, Outcome, Status, TaskRecord};

#[derive(Debug, Clone)]
pub struct TaskPaths {
    pub dir: PathBuf,
    pub json: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub pty: PathBuf,
    pub exit: PathBuf,
    pub script: PathBuf,
}

impl TaskPaths {
    /// This process's spare file in the task's session directory (`fsutil::replace_via_spare`),
    /// named like a temp file of this process (`.<name>.tmp.<pid>.<id>`), so that it is cleaned
    /// up as one once the process is gone.
    pub fn spare(&self) -> PathBuf {
        self.dir.join(format!(".spare.json.tmp.{}.session", std::process::id()))
    }

    /// The files that hold a task's output, in reading order: stdout then stderr (pipes), or
    /// the terminal transcript (pty).
    pub fn streams(&self, mode: Mode) -> Vec<PathBuf> {
        self.named_streams(mode).into_iter().map(|(_, p)| p).collect()
    }

    /// `streams`, each with the name events and readers give it.
    pub fn named_streams(&self, mode: Mode) -> Vec<(&'static str, PathBuf)> {
        match mode {
            Mode::Pipes => vec![("stdout", self.stdout.clone()), ("stderr", self.stderr.clone())],
            Mode::Pty => vec![("pty", self.pty.clone())],
        }
    }
}

pub struct Store {
    root: PathBuf,
    index: index::Index,
    syncer: durable::Syncer,
    /// The spare files this store has used (`TaskPaths::spare`), removed by `remove_spares`.
    spares: Mutex<BTreeSet<PathBuf>>,
}

/// Where session directories live, below the root: the current layout, then the legacy
/// harness ones (FORMAT.md, legacy lookup).
const SESSION_BASES: [&[&str]; 3] = [&["bash-tasks"], &["opencode", "bash-tasks"], &["pi", "bash-tasks"]];
const QUARANTINE: &str = "bash-tasks-quarantine";

/// What one bundle's JSON turned out to be.
// Returned and matched at once, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub enum Bundle {
    Missing,
    Valid(TaskRecord),
    /// Unreadable as a task of this name and place: quarantined, never used.
    Invalid(String),
}

impl Store {
    /// Opens (creating, 0700) the store at `root`. Fails with E_IO when the root is unusable or
    /// not safe: see `dirs::open_root`; `tasks.db` must be ours too.
    pub fn open(root: &Path, durability: Durability) -> Result<Store> {
        let root = dirs::open_root(root)?;
        dirs::ensure(&root, &["bash-tasks"])?;
        for name in ["tasks.db", "tasks.db-wal", "tasks.db-shm"] {
            dirs::check_root_file(&root.join(name))?;
        }
        let index = index::Index::open(&root.join("tasks.db"));
        Ok(Store { root, index, syncer: durable::Syncer::new(durability), spares: Default::default() })
    }

    pub fn index(&self) -> &index::Index {
        &self.index
    }

    /// `bash-tasks/<hash>`, or the one legacy `<harness>/bash-tasks/<hash>` directory when only
    /// that exists (FORMAT.md, legacy lookup). Every level is a real directory (never a link);
    /// the directory need not exist yet.
    pub fn session_dir(&self, session_id: &str) -> Result<PathBuf> {
        let hash = ids::session_hash(session_id);
        if let Some(direct) = dirs::existing(&self.root, &["bash-tasks", &hash])? {
            return Ok(direct);
        }
        let legacy: Vec<PathBuf> =
            SESSION_BASES[1..].iter().filter_map(|base| dirs::existing(&self.root, &[base[0], base[1], &hash]).ok().flatten()).collect();
        if legacy.len() == 1 {
            return Ok(legacy.into_iter().next().unwrap_or_default());
        }
        Ok(self.root.join("bash-tasks").join(hash))
    }

    /// Paths of one task's bundle: the only way a path in the store is made, from a session's
    /// directory and a validated task id.
    pub fn paths(&self, session_id: &str, task_id: &str) -> Result<TaskPaths> {
        ids::validate_task_id(task_id)?;
        Ok(paths_in(&self.session_dir(session_id)?, task_id))
    }

    /// The paths of a new task, its session directory created when needed.
    pub fn prepare(&self, session_id: &str, task_id: &str) -> Result<TaskPaths> {
        let paths = self.paths(session_id, task_id)?;
        // An existing (legacy) directory was checked by `session_dir`; a new one is created in
        // the current layout, level by level.
        if paths.dir.symlink_metadata().is_err() {
            dirs::ensure(&self.root, &["bash-tasks", &ids::session_hash(session_id)])?;
        }
        Ok(paths)
    }

    /// Writes a new task's record whole (no other writer knows the task yet).
    pub fn create(&self, rec: &TaskRecord, paths: &TaskPaths) -> Result<()> {
        self.write(rec, paths)
    }

    fn write(&self, rec: &TaskRecord, paths: &TaskPaths) -> Result<()> {
        self.syncer.blocking(|| self.write_json(&paths.json, rec))?;
        self.index.upsert(rec, paths);
        Ok(())
    }

    /// A record's JSON, atomically (temp + rename), made durable by the store's policy.
    fn write_json(&self, path: &Path, rec: &TaskRecord) -> Result<()> {
        fsutil::atomic_replace(path, &rec.to_json(), &rec.task_id).map_err(|e| Error::io(path, &e))?;
        self.syncer.wrote(path).map_err(|e| Error::io(path, &e))
    }

    /// Removes the spare files this store used (close()); a spare of a process that died is
    /// removed by the next `load`/`sweep` like any temp file of a dead writer. A write racing
    /// this one falls back to temp + rename.
    pub fn remove_spares(&self) {
        for spare in std::mem::take(&mut *self.spares.locked()) {
            let _ = std::fs::remove_file(spare);
        }
    }

    /// Waits until every write so far is on disk (the batched policy's group commit).
    pub fn flush_durable(&self) {
        self.syncer.flush();
    }

    /// Reads a task's JSON. `Ok(None)` when there is no such file; E_IO when it is not a valid
    /// bundle of that task.
    pub fn read(&self, session_id: &str, task_id: &str) -> Result<Option<TaskRecord>> {
        let paths = self.paths(session_id, task_id)?;
        let mut bundle = read_bundle(&paths.dir, task_id).map_err(|e| Error::io(&paths.json, &e))?;
        if matches!(bundle, Bundle::Invalid(_)) {
            // Read without the lock, it may have been torn by an update (`settled_read`).
            bundle = self.settled_read(&paths.dir, task_id)?.0;
        }
        match bundle {
            Bundle::Missing => Ok(None),
            Bundle::Valid(rec) => Ok(Some(rec)),
            Bundle::Invalid(why) => Err(invalid_bundle(&paths.json, why)),
        }
    }

    /// Reads a bundle again under its session's lock, for a read made without it that found the
    /// bundle invalid. An update swaps this process's spare file in for the record and keeps the
    /// old inode as the next spare, which the next update (of any task of the session) rewrites:
    /// a reader that opened the record just before may read that rewrite, torn or another
    /// task's. Under the lock no update is under way, so what is read then is the bundle. The
    /// lock is returned with it, for a caller that acts on what it read.
    fn settled_read(&self, dir: &Path, task_id: &str) -> Result<(Bundle, SessionLock)> {
        let lock = SessionLock::acquire(dir)?;
        let bundle = read_bundle(dir, task_id).map_err(|e| Error::io(&bundle_file(dir, task_id, "json"), &e))?;
        Ok((bundle, lock))
    }

    /// Read-modify-write of one record under the session lock, so managers in several processes
    /// never lose each other's updates. The "terminal is final" rule is applied here, for every
    /// writer. Returns the record as written.
    pub fn update(&self, session_id: &str, task_id: &str, f: impl FnOnce(&mut TaskRecord)) -> Result<TaskRecord> {
        self.syncer.blocking(|| self.update_now(session_id, task_id, f))
    }

    fn update_now(&self, session_id: &str, task_id: &str, f: impl FnOnce(&mut TaskRecord)) -> Result<TaskRecord> {
        let paths = self.paths(session_id, task_id)?;
        let _lock = SessionLock::acquire(&paths.dir)?;
        let before = match read_bundle(&paths.dir, task_id).map_err(|e| Error::io(&paths.json, &e))? {
            Bundle::Missing => return Err(Error::not_found(task_id)),
            Bundle::Valid(rec) => rec,
            Bundle::Invalid(why) => return Err(invalid_bundle(&paths.json, why)),
        };
        let mut after = before.clone();
        f(&mut after);
        let after = TaskRecord::merge_update(&before, after);
        if after != before {
            // Under the lock, this process's spare file of the session takes the new content
            // and is swapped in: no file is created or freed per update.
            let (strict, spare) = (self.syncer.strict(), paths.spare());
            fsutil::replace_via_spare(&paths.json, &after.to_json(), &spare, &after.task_id, strict)
                .map_err(|e| Error::io(&paths.json, &e))?;
            self.spares.locked().insert(spare);
            self.index.upsert(&after, &paths);
            // The lock covers the read-modify-write; the fsync (strict) need not hold it.
            drop(_lock);
            self.syncer.wrote(&paths.json).map_err(|e| Error::io(&paths.json, &e))?;
        }
        Ok(after)
    }

    /// Finds a task in any session: through the index, else by scanning session directories.
    pub fn find(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        ids::validate_task_id(task_id)?;
        if let Some(session) = self.index.session_of(task_id) {
            if let Ok(Some(rec)) = self.read(&session, task_id) {
                return Ok(Some(rec));
            }
        }
        for dir in self.session_dirs() {
            if let Ok(Bundle::Valid(rec)) = read_bundle(&dir, task_id) {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// All records matching the row filter, from the index (one query, no per-task file reads).
    /// Without a usable index, the JSON files are read instead.
    pub fn list(&self, filter: &RowFilter) -> Vec<TaskRecord> {
        if let Some(rows) = self.index.records(filter) {
            return rows;
        }
        let dirs = match &filter.session_id {
            Some(s) => self.session_dir(s).into_iter().collect(),
            None => self.session_dirs(),
        };
        let mut out: Vec<TaskRecord> = dirs
            .iter()
            .flat_map(|d| bundle_ids(d).into_iter().map(move |id| (d, id)))
            .filter_map(|(d, id)| match read_bundle(d, &id) {
                Ok(Bundle::Valid(r)) => Some(r),
                _ => None,
            })
            .filter(|r| filter.session_id.as_ref().is_none_or(|s| &r.session_id == s))
            .filter(|r| filter.harness.as_ref().is_none_or(|h| r.harness.as_deref().unwrap_or("default") == h))
            .collect();
        out.sort_by(|a, b| (a.started_at, &a.task_id).cmp(&(b.started_at, &b.task_id)));
        out
    }
}

/// What loading a session found.
#[derive(Debug, Default)]
pub struct SessionLoad {
    pub records: Vec<TaskRecord>,
    pub quarantined: usize,
    pub restored: usize,
}

/// What one read worker of `load_session` made of its part of the bundles.
#[derive(Default)]
struct LoadPart {
    records: Vec<TaskRecord>,
    reindex: Vec<index::Deferred>,
    /// Bundles to quarantine.
    invalid: Vec<String>,
}

/// Extensions of the files that belong to one task's bundle.
pub const BUNDLE_EXTENSIONS: [&str; 8] = ["json", "stdout", "stderr", "pty", "exit", "sh", "sock", "lock"];

impl Store {
    /// Every bundle of a session. The index says what exists in one query; a JSON file is read
    /// only when its row could be stale (not terminal-and-delivered) or is missing. Invalid
    /// bundles (unparsable, of another task or session, a symlink or not a file) are
    /// quarantined and the rest of the session loads; a JSON file that was lost is restored
    /// from its row's metadata.
    pub fn load_session(&self, session_id: &str) -> Result<SessionLoad> {
        let dir = self.session_dir(session_id)?;
        // Rows are taken out as their bundles are met (records are moved, never copied).
        let mut rows: Vec<Option<TaskRecord>> = self
            .index
            .records(&RowFilter { session_id: Some(session_id.to_string()), harness: None })
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.session_id == session_id)
            .map(Some)
            .collect();
        let row_of: HashMap<String, usize> = rows.iter().enumerate().filter_map(|(i, r)| Some((r.as_ref()?.task_id.clone(), i))).collect();
        let mut load = SessionLoad::default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&dir, &e)),
        };
        // Bundles whose row cannot stand in for them (the row is missing, or the task may still
        // change) are read from disk.
        let mut to_read: Vec<(String, Option<TaskRecord>)> = Vec::new();
        for name in entries {
            if fsutil::is_stale_temp(&dir, &name) {
                let _ = std::fs::remove_file(dir.join(&name));
                continue;
            }
            let Some(task_id) = bundle_id(&name) else { continue };
            let row = row_of.get(task_id).and_then(|i| rows[*i].take());
            match row {
                Some(r) if r.is_terminal() && r.completion_delivered => load.records.push(r),
                row => to_read.push((task_id.to_string(), row)),
            }
        }
        // Read over the machine's cores; each worker gathers its part's records and re-index
        // rows (a copy of the record, its paths, where the index's row differs).
        let reader = DirReader::open(&dir);
        let parts = par::map_parts(&to_read, |part| {
            let mut out = LoadPart { records: Vec::with_capacity(part.len()), ..Default::default() };
            for (task_id, row) in part {
                match reader.read(task_id) {
                    Ok(Bundle::Valid(rec)) => {
                        if row.as_ref() != Some(&rec) {
                            let seen = row.as_ref().map(|r| (r.status.as_str().to_string(), r.completion_delivered));
                            out.reindex.push(index::Deferred { record: rec.clone(), paths: paths_in(&dir, task_id), seen });
                        }
                        out.records.push(rec);
                    }
                    Ok(Bundle::Invalid(_)) => out.invalid.push(task_id.clone()),
                    // Gone since the listing (gc elsewhere), or unreadable for now (EIO,
                    // EACCES): left where it is, and the rest of the session loads.
                    Ok(Bundle::Missing) | Err(_) => {}
                }
            }
            out
        });
        load.records.reserve(to_read.len() + rows.len());
        for part in parts {
            load.records.extend(part.records);
            // Rows to (re)write, as the read workers made them (a rebuild touches thousands):
            // written by the index's writer thread, off the caller's path; a read of the index
            // commits them first.
            self.index.defer_upserts(part.reindex);
            for task_id in part.invalid {
                match self.quarantine(&dir, &task_id) {
                    Ok(Bundle::Invalid(_)) => {
                        self.index.delete(session_id, &task_id);
                        load.quarantined += 1;
                    }
                    // Torn by an update when first read: what the lock let us read instead.
                    Ok(Bundle::Valid(rec)) => load.records.push(rec),
                    Ok(Bundle::Missing) | Err(_) => {}
                }
            }
        }
        // Rows whose JSON is gone: the row's metadata is a full copy, so the bundle comes back.
        for rec in rows.into_iter().flatten() {
            let paths = self.prepare(session_id, &rec.task_id)?;
            self.write_json(&paths.json, &rec)?;
            load.restored += 1;
            load.records.push(rec);
        }
        load.records.sort_by_cached_key(|r| (r.started_at, r.task_id.clone()));
        Ok(load)
    }

    /// Moves a bundle that was read as invalid aside to `bash-tasks-quarantine/<session-hash>/`,
    /// never deleting it, once it is read as invalid again under the session's lock (a read
    /// without it may have been torn by an update: `settled_read`). The files are moved as they
    /// are (a symlink stays a symlink, its target untouched). Returns what the bundle was under
    /// the lock: only an `Invalid` one was moved; a `Valid` or `Missing` one stays.
    pub fn quarantine(&self, dir: &Path, task_id: &str) -> Result<Bundle> {
        ids::validate_task_id(task_id)?;
        let hash = dir.file_name().and_then(|n| n.to_str()).filter(|h| ids::is_session_hash(h));
        let hash = hash.ok_or_else(|| Error::invalid(format!("{} is not a session directory", dir.display())))?;
        let (bundle, _lock) = self.settled_read(dir, task_id)?;
        if !matches!(bundle, Bundle::Invalid(_)) {
            return Ok(bundle);
        }
        let qdir = dirs::ensure(&self.root, &[QUARANTINE, hash])?;
        let stamp = fsutil::unix_millis();
        for ext in BUNDLE_EXTENSIONS {
            let from = bundle_file(dir, task_id, ext);
            if from.symlink_metadata().is_err() {
                continue;
            }
            let mut to = bundle_file(&qdir, task_id, ext);
            if to.symlink_metadata().is_ok() {
                to = qdir.join(format!("{task_id}.{stamp}.{ext}"));
            }
            std::fs::rename(&from, &to).map_err(|e| Error::io(&from, &e))?;
            // gc ages quarantine entries by mtime: start their 30 days now, not at their
            // original writing.
            if let Ok(f) = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&to) {
                if f.metadata().is_ok_and(|m| m.is_file()) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
            }
        }
        Ok(bundle)
    }

    /// Session directories of the store, new layout and legacy harness ones; a symlink at any
    /// level is skipped, never followed.
    pub fn session_dirs(&self) -> Vec<PathBuf> {
        SESSION_BASES
            .iter()
            .filter_map(|base| dirs::existing(&self.root, base).ok().flatten())
            .flat_map(|base| dirs::subdirs(&base))
            .filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(ids::is_session_hash))
            .collect()
    }

    /// One pass of garbage collection over every session directory: stale temp files removed;
    /// bundles for which `remove` says yes deleted; invalid bundles quarantined. `skip` names
    /// tasks to leave alone (live in this manager).
    pub fn sweep(&self, skip: impl Fn(&str) -> bool, remove: impl Fn(&TaskRecord) -> bool) -> (usize, usize) {
        let (mut removed, mut quarantined) = (0, 0);
        for dir in self.session_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if fsutil::is_stale_temp(&dir, &name) {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                let Some(task_id) = bundle_id(&name) else { continue };
                if skip(task_id) {
                    continue;
                }
                match read_bundle(&dir, task_id) {
                    Ok(Bundle::Valid(r)) => {
                        if remove(&r) && self.remove_bundle(&r.session_id, task_id, &dir).is_ok() {
                            removed += 1;
                        }
                    }
                    Ok(Bundle::Invalid(_)) => {
                        if matches!(self.quarantine(&dir, task_id), Ok(Bundle::Invalid(_))) {
                            quarantined += 1;
                        }
                    }
                    Ok(Bundle::Missing) | Err(_) => {}
                }
            }
        }
        (removed, quarantined)
    }

    /// Deletes quarantined files whose mtime is before `cutoff` (unix ms), and emptied
    /// quarantine directories. Links are removed as links; nothing outside is reached.
    pub fn sweep_quarantine(&self, cutoff: u64) {
        let Ok(Some(qroot)) = dirs::existing(&self.root, &[QUARANTINE]) else { return };
        for d in dirs::subdirs(&qroot) {
            let Ok(files) = std::fs::read_dir(&d) else { continue };
            for f in files.flatten() {
                let mtime = std::fs::symlink_metadata(f.path())
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                if mtime.is_some_and(|t| (t.as_millis() as u64) < cutoff) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
            let _ = std::fs::remove_dir(&d); // only succeeds once empty
        }
    }

    /// Deletes a task's bundle files and its row. The JSON goes first, in one rename out of
    /// sight (to a temp-file name, which replay and gc clear if we die midway): from then on no
    /// reader finds the task, so none sees part of a bundle.
    pub fn remove_bundle(&self, session_id: &str, task_id: &str, dir: &Path) -> Result<()> {
        ids::validate_task_id(task_id)?;
        let json = bundle_file(dir, task_id, "json");
        let hidden = dir.join(format!(".{task_id}.json.tmp.{}.{task_id}", std::process::id()));
        match std::fs::rename(&json, &hidden) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&json, &e)),
        }
        self.index.delete(session_id, task_id);
        let mut first_err = None;
        for ext in BUNDLE_EXTENSIONS.iter().filter(|e| **e != "json") {
            let p = bundle_file(dir, task_id, ext);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound && first_err.is_none() {
                    first_err = Some(Error::io(&p, &e));
                }
            }
        }
        if let Err(e) = std::fs::remove_file(&hidden) {
            if e.kind() != io::ErrorKind::NotFound && first_err.is_none() {
                first_err = Some(Error::io(&hidden, &e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The sizes of the output files (`TaskPaths::streams`) in a session directory, by file name, from
/// one listing of it: for snapshots of many of its tasks at once.
pub fn output_sizes(dir: &Path) -> HashMap<String, u64> {
    dirs::file_sizes(dir, &["stdout", "stderr", "pty"])
}

/// The task id a directory entry is the JSON of, if it is one.
fn bundle_id(name: &str) -> Option<&str> {
    let task_id = name.strip_suffix(".json")?;
    (!name.starts_with('.') && ids::validate_task_id(task_id).is_ok()).then_some(task_id)
}

/// Ids of the bundles in `dir`.
fn bundle_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter_map(|e| bundle_id(&e.file_name().to_string_lossy()).map(str::to_string)).collect()
}

fn invalid_bundle(path: &Path, why: String) -> Error {
    Error::io(path, &io::Error::new(io::ErrorKind::InvalidData, why))
}

/// Reads `<dir>/<task_id>.json` (no symlink, regular files only) and checks that it is that
/// task's: the file name is the authority on the id, the directory on the session (its name is
/// the session's hash). A record that says otherwise is `Invalid`, never used to build a path.
pub fn read_bundle(dir: &Path, task_id: &str) -> io::Result<Bundle> {
    bundle_of(dir, task_id, fsutil::read_nofollow(&bundle_file(dir, task_id, "json")))
}

/// What the bytes read from `<dir>/<task_id>.json` make (`read_bundle`).
fn bundle_of(dir: &Path, task_id: &str, read: io::Result<Vec<u8>>) -> io::Result<Bundle> {
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Bundle::Missing),
        Err(e) if fsutil::is_not_a_file(&e) => return Ok(Bundle::Invalid(format!("not a regular file: {e}"))),
        Err(e) => return Err(e),
    };
    let rec = match record::parse_record(&bytes) {
        Ok(r) => r,
        Err(e) => return Ok(Bundle::Invalid(e.to_string())),
    };
    let hash = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if rec.task_id != task_id {
        return Ok(Bundle::Invalid(format!("its task_id {:?} is not its file name's {task_id:?}", rec.task_id)));
    }
    if ids::session_hash(&rec.session_id) != hash {
        return Ok(Bundle::Invalid(format!("its session_id {:?} does not belong in directory {hash}", rec.session_id)));
    }
    Ok(Bundle::Valid(rec))
}

/// Reads bundles of one directory through one descriptor of it (`fsutil::open_nofollow_at`):
/// `read_bundle` without a path walked per bundle, for thousands at once.
struct DirReader<'a> {
    dir: &'a Path,
    fd: io::Result<File>,
}

impl<'a> DirReader<'a> {
    fn open(dir: &'a Path) -> DirReader<'a> {
        DirReader { dir, fd: open_dir(dir) }
    }

    fn read(&self, task_id: &str) -> io::Result<Bundle> {
        // A directory that cannot be opened (gone, or swapped for a link since it was checked)
        // leaves every bundle unread; none is read through a path instead.
        let fd = self.fd.as_ref().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.dir.display())))?;
        let bytes = fsutil::open_nofollow_at(fd.as_fd(), &bundle_file(Path::new(""), task_id, "json"))
            .and_then(|(f, meta)| fsutil::read_all(&f, &meta));
        bundle_of(self.dir, task_id, bytes)
    }
}

/// A directory opened for use as one (`openat`, `flock`), never through a symlink.
fn open_dir(dir: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(dir)
}

/// `<dir>/<task_id>.<ext>`: the one rule for the names of a bundle's files (an empty `dir`
/// gives the name alone). Built in one allocation: a replay makes tens of thousands (`join`
/// of a `format!` made two, and formatted).
fn bundle_file(dir: &Path, task_id: &str, ext: &str) -> PathBuf {
    let dir = dir.as_os_str();
    let mut path = std::ffi::OsString::with_capacity(dir.len() + task_id.len() + ext.len() + 2);
    path.push(dir);
    // As `join` does: no separator after an empty directory or one that ends in it.
    if !dir.is_empty() && !dir.as_encoded_bytes().ends_with(b"/") {
        path.push("/");
    }
    path.push(task_id);
    path.push(".");
    path.push(ext);
    PathBuf::from(path)
}

/// A bundle's file paths in `dir`. Only the store calls this, with a validated id.
pub(crate) fn paths_in(dir: &Path, task_id: &str) -> TaskPaths {
    let file = |ext: &str| bundle_file(dir, task_id, ext);
    TaskPaths {
        json: file("json"),
        stdout: file("stdout"),
        stderr: file("stderr"),
        pty: file("pty"),
        exit: file("exit"),
        script: file("sh"),
        dir: dir.to_path_buf(),
    }
}

/// How long an update waits for another process's hold on a session's lock. Managers hold it
/// for one read-modify-write (no fsync under it with the batched policy): far less than this.
/// A holder that keeps it longer is not waited for: the update fails with E_IO (a final
/// record is then kept and retried, see manager/unwritten.rs).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An exclusive flock on the session directory. flock locks belong to the open file description,
/// so this excludes other threads of this process as well as other processes.
/// Held for its Drop: closing the descriptor releases the lock.
struct SessionLock(#[allow(dead_code)] File);

impl SessionLock {
    fn acquire(dir: &Path) -> Result<SessionLock> {
        let file = open_dir(dir).map_err(|e| Error::io(dir, &e))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            // SAFETY: flock on a descriptor we own; released when `file` is closed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(SessionLock(file));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(5));
                }
                Some(libc::EWOULDBLOCK) => {
                    let why = format!("another process has held this session's lock for over {} ms", LOCK_WAIT.as_millis());
                    return Err(Error::io(dir, &io::Error::new(io::ErrorKind::WouldBlock, why)));
                }
                _ => return Err(Error::io(dir, &err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("bgshell-store-test-{}", ids::new_task_id()));
        d
    }

    fn create_new(store: &Store, rec: &TaskRecord) -> TaskPaths {
        let paths = store.prepare(&rec.session_id, &rec.task_id).unwrap();
        store.create(rec, &paths).unwrap();
        paths
    }

    #[test]
    fn create_read_update_with_permissions() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let mut rec = record::sample("bash-00000000000000aa");
        rec.session_id = "sess".into();
        let paths = create_new(&store, &rec);
        assert_eq!(paths.dir, root.join("bash-tasks").join(ids::session_hash("sess")));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&paths.dir), 0o700);
        assert_eq!(mode(&paths.json), 0o600);
        assert_eq!(mode(&root.join("tasks.db")), 0o600);
        assert_eq!(store.read("sess", &rec.task_id).unwrap(), Some(rec.clone()));

        let done = store
            .update("sess", &rec.task_id, |r| {
                r.finish(Outcome { status: Status::Completed, exit_code: Some(0), signal: None, reason: None, finished_at: 4000 });
            })
            .unwrap();
        assert_eq!(done.status, Status::Completed);
        let again = store.update("sess", &rec.task_id, |r| r.status = Status::Running).unwrap();
        assert_eq!(again.status, Status::Completed, "terminal records never change status");
        assert_eq!(store.find(&rec.task_id).unwrap().unwrap().status, Status::Completed);
        let listed = store.list(&RowFilter { session_id: Some("sess".into()), harness: None });
        assert_eq!(listed.len(), 1);
        // No temp files left behind by atomic writes: only this process's spare of the session.
        let leftovers: Vec<_> = std::fs::read_dir(&paths.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        assert_eq!(leftovers, vec![paths.spare()]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_symlinked_json() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let rec = record::sample("bash-00000000000000bb");
        let paths = create_new(&store, &rec);
        std::fs::remove_file(&paths.json).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &paths.json).unwrap();
        let err = store.read(&rec.session_id, &rec.task_id).unwrap_err();
        assert_eq!(err.code, crate::error::Code::Io);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn atomic_write_concurrent_writers() {
        let root = tmp();
        fsutil::ensure_private_dir(&root).unwrap();
        let path = root.join("t.json");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        fsutil::atomic_write(&p, format!("writer {i}").as_bytes(), &format!("task-{i}")).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("writer "));
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1, "only the target remains");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let root = tmp();
        let store = std::sync::Arc::new(Store::open(&root, Durability::Strict).unwrap());
        let rec = record::sample("bash-00000000000000cc");
        create_new(&store, &rec);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.update("s", "bash-00000000000000cc", |r| r.started_at += 1).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(store.read("s", "bash-00000000000000cc").unwrap().unwrap().started_at, 1100);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bulk_load_reads_every_bundle_in_order_and_indexes_it_before_any_read() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        // Enough bundles for the parallel read, written behind the index's back (as aft does).
        let dir = store.prepare("bulk", "bash-0000000000000000").unwrap().dir;
        let n = 700;
        for i in 0..n {
            let mut rec = record::sample(&format!("bash-{i:016x}"));
            rec.session_id = "bulk".into();
            rec.started_at = 1000 + i as u64;
            rec.command = format!("echo {i}");
            fsutil::atomic_write(&paths_in(&dir, &rec.task_id).json, &rec.to_json(), &rec.task_id).unwrap();
        }
        let load = store.load_session("bulk").unwrap();
        assert_eq!(load.records.len(), n);
        for (i, rec) in load.records.iter().enumerate() {
            assert_eq!((rec.task_id.as_str(), rec.command.as_str()), (format!("bash-{i:016x}").as_str(), format!("echo {i}").as_str()));
        }
        // The rows were deferred; the first read of the index writes them first.
        let rows = store.index().records(&RowFilter { session_id: Some("bulk".into()), harness: None }).unwrap();
        assert_eq!(rows, load.records);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_deferred_row_never_overwrites_a_newer_one_from_another_process() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let rec = record::sample("bash-00000000000000ee");
        let paths = create_new(&store, &rec);
        // Behind the index's back, the bundle ends (as a manager elsewhere might have written it).
        let mut done = rec.clone();
        done.finish(Outcome { status: Status::Completed, exit_code: Some(0), signal: None, reason: None, finished_at: 2000 });
        fsutil::atomic_write(&paths.json, &done.to_json(), &done.task_id).unwrap();
        let load = store.load_session("s").unwrap(); // defers the row: completed, undelivered
        assert_eq!(load.records, vec![done.clone()]);
        // Before the deferred row is written, another process acks the task (its own connection).
        let mut acked = done.clone();
        acked.completion_delivered = true;
        index::Index::open(&root.join("tasks.db")).upsert(&acked, &paths);
        let rows = store.index().records(&RowFilter { session_id: Some("s".into()), harness: None }).unwrap();
        assert_eq!(rows, vec![acked], "the older deferred row was not written over the newer one");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bulk_load_quarantines_links_fifos_and_directories_named_as_bundles() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let good = record::sample("bash-00000000000000f1");
        let dir = create_new(&store, &good).dir;
        // A valid bundle of that very task outside the store, linked in under its name: never read.
        let outside = root.join("outside.json");
        let linked = record::sample("bash-00000000000000f2");
        std::fs::write(&outside, linked.to_json()).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("bash-00000000000000f2.json")).unwrap();
        // A FIFO (a read would wait for a writer) and a directory under bundle names.
        assert!(std::process::Command::new("mkfifo").arg(dir.join("bash-00000000000000f3.json")).status().unwrap().success());
        std::fs::create_dir(dir.join("bash-00000000000000f4.json")).unwrap();
        let load = store.load_session("s").unwrap();
        assert_eq!(load.records, vec![good]);
        assert_eq!(load.quarantined, 3);
        let aside = root.join(QUARANTINE).join(dir.file_name().unwrap());
        assert!(aside.join("bash-00000000000000f2.json").symlink_metadata().unwrap().file_type().is_symlink(), "moved as the link it is");
        assert_eq!(std::fs::read(&outside).unwrap(), linked.to_json(), "the link's target is untouched");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_bundle_rewritten_behind_the_index_is_read_not_answered_from_its_row() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let rec = record::sample("bash-00000000000000f5");
        let paths = create_new(&store, &rec);
        assert_eq!(store.load_session("s").unwrap().records, vec![rec.clone()], "the row says running");
        // Another process ends the task through its spare file (a new inode under the name),
        // and its index write is lost: the row still says running.
        let mut done = rec.clone();
        done.finish(Outcome { status: Status::Completed, exit_code: Some(0), signal: None, reason: None, finished_at: 3000 });
        let spare = paths.dir.join(".spare.json.tmp.1.session");
        fsutil::replace_via_spare(&paths.json, &done.to_json(), &spare, &done.task_id, false).unwrap();
        let fresh = Store::open(&root, Durability::Strict).unwrap();
        assert_eq!(fresh.load_session("s").unwrap().records, vec![done.clone()], "the bundle, not the stale row");
        // And the row is brought in line with it.
        let rows = fresh.index().records(&RowFilter { session_id: Some("s".into()), harness: None }).unwrap();
        assert_eq!(rows, vec![done]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn quarantine_decides_under_the_session_lock_and_keeps_a_bundle_valid_by_then() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let rec = record::sample("bash-00000000000000f6");
        let paths = create_new(&store, &rec);
        // What a reader without the lock can see mid-update: another task's record under this
        // name (the spare file rewritten for it after being swapped out of this name).
        let other = record::sample("bash-00000000000000f7");
        std::fs::write(&paths.json, other.to_json()).unwrap();
        assert!(matches!(read_bundle(&paths.dir, &rec.task_id).unwrap(), Bundle::Invalid(_)));
        // The update holds the lock until its record is in place again.
        let lock = SessionLock::acquire(&paths.dir).unwrap();
        std::thread::scope(|scope| {
            let q = scope.spawn(|| store.quarantine(&paths.dir, &rec.task_id).unwrap());
            fsutil::atomic_replace(&paths.json, &rec.to_json(), &rec.task_id).unwrap();
            drop(lock);
            match q.join().unwrap() {
                Bundle::Valid(kept) => assert_eq!(kept, rec, "the record read under the lock"),
                _ => panic!("a bundle valid under the lock was quarantined, or not read"),
            }
        });
        assert_eq!(store.read("s", &rec.task_id).unwrap(), Some(rec.clone()));
        // Invalid under the lock too: moved aside.
        std::fs::write(&paths.json, other.to_json()).unwrap();
        assert!(matches!(store.quarantine(&paths.dir, &rec.task_id).unwrap(), Bundle::Invalid(_)));
        assert!(paths.json.symlink_metadata().is_err());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bundle_file_names_as_join_did() {
        for dir in ["/a/b", "/a/b/", "", "/"] {
            assert_eq!(bundle_file(Path::new(dir), "bash-1", "json"), Path::new(dir).join("bash-1.json"), "{dir:?}");
        }
    }

    #[test]
    fn legacy_dir_lookup() {
        let root = tmp();
        let store = Store::open(&root, Durability::Strict).unwrap();
        let legacy = root.join("pi/bash-tasks").join(ids::session_hash("old"));
        std::fs::create_dir_all(&legacy).unwrap();
        assert_eq!(store.session_dir("old").unwrap(), legacy);
        std::fs::create_dir_all(root.join("opencode/bash-tasks").join(ids::session_hash("old"))).unwrap();
        assert_eq!(store.session_dir("old").unwrap(), root.join("bash-tasks").join(ids::session_hash("old")), "ambiguous legacy -> direct");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn exit_marker_round_trip() {
        let root = tmp();
        fsutil::ensure_private_dir(&root).unwrap();
        let p = root.join("x.exit");
        assert_eq!(fsutil::read_exit_marker(&p).unwrap(), None);
        std::fs::write(&p, "  \n").unwrap();
        assert_eq!(fsutil::read_exit_marker(&p).unwrap(), None, "empty means not written yet");
        fsutil::write_exit_marker(&p, fsutil::ExitMarker::Code(3), "x", 1_700_000_000_123).unwrap();
        assert_eq!(fsutil::read_exit_marker(&p).unwrap().unwrap(), (fsutil::ExitMarker::Code(3), 1_700_000_000_123));
        std::fs::write(&p, "killed\n").unwrap();
        assert_eq!(fsutil::read_exit_marker(&p).unwrap().unwrap().0, fsutil::ExitMarker::Killed);
        std::fs::remove_dir_all(root).unwrap();
    }
}
