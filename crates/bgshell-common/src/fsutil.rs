//! Private, symlink-refusing file primitives shared by the addon's store and the supervisor:
//! 0700/0600 modes, O_NOFOLLOW opens, atomic writes, and the exit marker of FORMAT.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Creates `dir` and missing parents with mode 0700. An existing path must be a real directory:
/// a symlink anywhere we create is refused so the store never writes through one.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to use a symlink as a store directory"))
        }
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent)?;
                }
            }
            match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {
                    // The umask may have narrowed the mode; widen it back to exactly 0700.
                    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_private_dir(dir),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Opens a regular file for reading without following a symlink at its last component. The
/// open never blocks (O_NONBLOCK: a FIFO planted under a bundle's name would otherwise wait for a
/// writer), and anything but a regular file is refused, so a reader never hangs on one.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// True when an open failed because the last component is a symlink (O_NOFOLLOW's ELOOP) or
/// is not a regular file: the bundle is not what it claims to be.
pub fn is_not_a_file(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP) || err.kind() == io::ErrorKind::InvalidInput
}

pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_nofollow(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Creates (or truncates) a private file for writing; never through a symlink.
pub fn create_private(path: &Path, append: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if append {
        opts.append(true);
    } else {
        opts.write(true).truncate(true);
    }
    opts.open(path)
}

/// Keeps only `[A-Za-z0-9_-]`, as FORMAT.md asks for temp file names.
pub fn sanitize_id(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A temp file of `atomic_write` (`.<name>.tmp.<pid>.<id>`) left by a writer that died: its
/// process is gone, or it is older than ten minutes. Live writers' files are never touched.
pub fn is_stale_temp(dir: &Path, name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.split_once(".tmp.")).map(|(_, r)| r) else { return false };
    let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
    let writer_alive = pid.is_some_and(|p| p > 0 && crate::proc::is_same_process(p as u32, None));
    let old = std::fs::symlink_metadata(dir.join(name))
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 600);
    !writer_alive || old
}

/// Writes `content` to `path` atomically: `.<name>.tmp.<pid>.<id>` in the same directory,
/// fsynced, renamed over the target. Readers see the old or the new file, never half of one.
pub fn atomic_write(path: &Path, content: &[u8], id: &str) -> io::Result<()> {
    atomic_write_at(path, content, id, None)
}

/// `atomic_write` without the fsync: the rename alone survives any process crash; the caller
/// makes it durable against power loss later (the store's group commit).
pub fn atomic_replace(path: &Path, content: &[u8], id: &str) -> io::Result<()> {
    write_then_rename(path, content, id, None, false)
}

/// fsyncs a file (opened without following links) and the directory that holds it.
pub fn sync_file_and_dir(path: &Path) -> io::Result<()> {
    sync_path(path, false)?;
    sync_path(path.parent().unwrap_or_else(|| Path::new(".")), true)
}

/// fsyncs one file or directory, opened without following links.
pub fn sync_path(path: &Path, dir: bool) -> io::Result<()> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | if dir { libc::O_DIRECTORY } else { 0 };
    OpenOptions::new().read(true).custom_flags(flags).open(path)?.sync_all()
}

/// `atomic_write`, stamping the file's mtime with `mtime_ms` (unix ms) when given: the
/// filesystem's own timestamp comes from a coarse clock that can lag by several milliseconds.
pub fn atomic_write_at(path: &Path, content: &[u8], id: &str, mtime_ms: Option<u64>) -> io::Result<()> {
    write_then_rename(path, content, id, mtime_ms, true)
}

fn write_then_rename(path: &Path, content: &[u8], id: &str, mtime_ms: Option<u64>, sync: bool) -> io::Result<()> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}.tmp.{}.{}", std::process::id(), sanitize_id(id)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(content)?;
        if let Some(ms) = mtime_ms {
            file.set_modified(UNIX_EPOCH + std::time::Duration::from_millis(ms))?;
        }
        if sync {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The exit marker of FORMAT.md: the exit code as text, or `killed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitMarker {
    Code(i32),
    Killed,
}

impl ExitMarker {
    pub fn parse(text: &str) -> Option<ExitMarker> {
        let text = text.trim();
        if text == "killed" {
            return Some(ExitMarker::Killed);
        }
        text.parse::<i32>().ok().map(ExitMarker::Code)
    }

    pub fn render(&self) -> String {
        match self {
            ExitMarker::Code(code) => code.to_string(),
            ExitMarker::Killed => "killed".to_string(),
        }
    }
}

/// Reads a marker and the time it was written (its mtime, which survives the rename).
/// Missing, empty or unparsable means "not written yet".
pub fn read_exit_marker(path: &Path) -> io::Result<Option<(ExitMarker, u64)>> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mtime = file
        .metadata()?
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or_else(unix_millis);
    let mut text = String::new();
    (&file).read_to_string(&mut text)?;
    Ok(ExitMarker::parse(&text).map(|m| (m, mtime)))
}

/// Writes the marker with its mtime set to `finished_at`, the moment the task really ended.
pub fn write_exit_marker(path: &Path, marker: ExitMarker, id: &str, finished_at: u64) -> io::Result<()> {
    atomic_write_at(path, marker.render().as_bytes(), id, Some(finished_at))
}
