//! Private, symlink-refusing file primitives shared by the addon's store and the supervisor:
//! 0700/0600 modes, O_NOFOLLOW opens, atomic writes, and the exit marker of FORMAT.md.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// How every read-only open here is made: never through a symlink at the last component, and
/// never blocking (O_NONBLOCK: a FIFO planted under a bundle's name would otherwise wait for a
/// writer).
const READ_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens a regular file for reading without following a symlink at its last component. The
/// open never blocks, and anything but a regular file is refused, so a reader never hangs on one.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    open_regular(path).map(|(f, _)| f)
}

/// `open_nofollow`, with the file's metadata.
fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    regular(OpenOptions::new().read(true).custom_flags(READ_FLAGS).open(path)?)
}

/// `open_nofollow` of the entry `name` of the directory open as `dir`: for reading many files
/// of one directory (a replay), no path is walked per file, and the directory itself cannot be
/// swapped in between. Returns the file's metadata too (one `fstat` for the check and the size).
pub fn open_nofollow_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<(File, fs::Metadata)> {
    let name = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name with a NUL byte"))?;
    // SAFETY: openat with a descriptor borrowed for the call and a NUL-terminated name; the
    // descriptor it returns is new and owned by nobody else.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | READ_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    regular(unsafe { File::from_raw_fd(fd) })
}

/// The file and its metadata when it is a regular file.
fn regular(file: File) -> io::Result<(File, fs::Metadata)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta))
}

/// All of a regular file whose metadata `meta` gave, read to its end: two reads for a file of
/// that size (the second meets the end), without the second `fstat` and the `lseek` that
/// `File::read_to_end` spends on a size hint. A file that grew since is read on.
pub fn read_all(mut file: &File, meta: &fs::Metadata) -> io::Result<Vec<u8>> {
    // One byte more than the size, so that a file of that size ends before the buffer does;
    // the first allocation is bounded whatever the size claims.
    let mut buf = vec![0; meta.len().min(1 << 20) as usize + 1];
    let mut filled = 0;
    loop {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// True when an open failed because the last component is a symlink (O_NOFOLLOW's ELOOP) or
/// is not a regular file: the bundle is not what it claims to be.
pub fn is_not_a_file(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP) || err.kind() == io::ErrorKind::InvalidInput
}

pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path)?;
    read_all(&file, &meta)
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
    write_then_rename(path, content, id, None, true)
}

/// `atomic_write` without the fsync: the rename alone survives any process crash; the caller
/// makes it durable against power loss later (the store's group commit).
pub fn atomic_replace(path: &Path, content: &[u8], id: &str) -> io::Result<()> {
    write_then_rename(path, content, id, None, false)
}

/// `atomic_replace` of an existing file without creating a file: `content` goes into `spare`
/// (a file of ours in the same directory, created the first time), which is then exchanged
/// with `path` in one atomic step, so `spare` keeps the old content for the next write. On a
/// filesystem that skips recently freed inodes when it allocates one (ext4 without a journal
/// scans past every inode freed in the last minutes), a create costs far more than a rewrite,
/// and temp + rename creates one file and frees another per write. `sync_first`: fsync the new
/// content before the exchange (the exchange, unlike a rename over a file, does not make ext4
/// flush it). The caller serialises the writers of `spare` (the store's session lock).
/// `spare` is trusted only when it is a regular file of ours with no other link (else it is
/// replaced), so it can never be a way to write outside the directory. Falls back to temp +
/// rename where the exchange is unsupported or fails.
pub fn replace_via_spare(path: &Path, content: &[u8], spare: &Path, id: &str, sync_first: bool) -> io::Result<()> {
    let written = (|| {
        let (file, old_len) = open_spare(spare)?;
        // Written over the old content in place, then cut to length only if it was longer:
        // truncating to zero frees the file's block and waits for any writeback of it (0.26 ms
        // in a trace, beside a supervisor's fsync in the same directory); an overwrite does not.
        file.write_all_at(content, 0)?;
        if old_len > content.len() as u64 {
            file.set_len(content.len() as u64)?;
        }
        if sync_first {
            file.sync_all()?;
        }
        bgshell_sys::exchange(spare, path)
    })();
    match written {
        Ok(()) => Ok(()),
        Err(_) => write_then_rename(path, content, id, None, sync_first),
    }
}

/// Opens (or creates) a spare for `replace_via_spare`: a regular file, ours, with one link;
/// with its length.
fn open_spare(spare: &Path) -> io::Result<(File, u64)> {
    let open = |create_new: bool| {
        OpenOptions::new()
            .write(true)
            .create(!create_new)
            .create_new(create_new)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(spare)
    };
    let file = match open(false) {
        Ok(f) => f,
        // A symlink (or anything not openable as a file) in its place: removed, never followed.
        Err(e) if is_not_a_file(&e) => {
            fs::remove_file(spare)?;
            return Ok((open(true)?, 0));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let ours = meta.file_type().is_file() && meta.nlink() == 1 && meta.uid() == unsafe { libc::geteuid() };
    if ours {
        return Ok((file, meta.len()));
    }
    drop(file);
    fs::remove_file(spare)?;
    Ok((open(true)?, 0))
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

/// The temp file an atomic write of `path` by this process goes through (FORMAT.md's rule).
fn temp_path(path: &Path, id: &str) -> std::path::PathBuf {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    parent.join(format!(".{name}.tmp.{}.{}", std::process::id(), sanitize_id(id)))
}

/// Opens (creating it if need be) the temp file of an atomic write, empty.
fn open_temp(tmp: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(tmp)
}

fn write_then_rename(path: &Path, content: &[u8], id: &str, mtime_ms: Option<u64>, sync: bool) -> io::Result<()> {
    let tmp = temp_path(path, id);
    let result = (|| {
        let mut file = open_temp(&tmp)?;
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

/// Creates, empty, the temp file `write_exit_marker` will write the marker into, ahead of time:
/// creating a file is the slow part of that write on some filesystems (ext4 without a journal
/// scans past recently freed inodes), and the supervisor does it when its manager goes away, so
/// that the end of an unwatched task does not wait for it. Left behind if the writer dies, it is a
/// temp file of a dead process, which `load` and `gc` remove.
pub fn prepare_exit_marker(path: &Path, id: &str) -> io::Result<()> {
    open_temp(&temp_path(path, id)).map(drop)
}

/// Writes the marker with its mtime set to `finished_at`, the moment the task really ended
/// (the filesystem's own timestamp comes from a coarse clock that can lag by milliseconds).
/// It is renamed into place first and made durable after (file, then directory, fsynced)
/// before this returns: a manager watching for it acts on the rename without waiting for the
/// disk, while its writer (the supervisor, which exits next) still leaves it on disk. A power
/// loss in between leaves no marker or an empty one, which readers take as not yet written.
pub fn write_exit_marker(path: &Path, marker: ExitMarker, id: &str, finished_at: u64) -> io::Result<()> {
    let write = || write_then_rename(path, marker.render().as_bytes(), id, Some(finished_at), false);
    match write() {
        // A temp file prepared over 10 minutes ago may be taken for stale and removed by a
        // sweep while we write it: once more, through a new one.
        Err(e) if e.kind() == io::ErrorKind::NotFound => write()?,
        other => other?,
    }
    sync_file_and_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bgshell-fsutil-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_in_a_directory_refuse_links_and_fifos_and_read_a_grown_file_whole() {
        let d = tmp("at");
        let dir = File::open(&d).unwrap();
        fs::write(d.join("f"), b"abc").unwrap();
        let (file, meta) = open_nofollow_at(dir.as_fd(), Path::new("f")).unwrap();
        // Written to after its size was taken: read to its end all the same.
        fs::OpenOptions::new().append(true).open(d.join("f")).unwrap().write_all(&[b'x'; 5000]).unwrap();
        let bytes = read_all(&file, &meta).unwrap();
        assert_eq!((bytes.len(), &bytes[..4]), (5003, &b"abcx"[..]));
        assert_eq!(read_nofollow(&d.join("f")).unwrap(), bytes);
        std::os::unix::fs::symlink(d.join("f"), d.join("link")).unwrap();
        let err = open_nofollow_at(dir.as_fd(), Path::new("link")).unwrap_err();
        assert!(is_not_a_file(&err), "a link is not followed: {err}");
        // A FIFO with no writer: refused at once, never waited on.
        assert!(std::process::Command::new("mkfifo").arg(d.join("fifo")).status().unwrap().success());
        let err = open_nofollow_at(dir.as_fd(), Path::new("fifo")).unwrap_err();
        assert!(is_not_a_file(&err), "a FIFO is not a regular file: {err}");
        fs::create_dir(d.join("sub")).unwrap();
        assert!(is_not_a_file(&open_nofollow_at(dir.as_fd(), Path::new("sub")).unwrap_err()));
        assert_eq!(open_nofollow_at(dir.as_fd(), Path::new("none")).unwrap_err().kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_prepared_exit_marker_is_written_through_its_file_and_a_removed_one_is_not_missed() {
        let d = tmp("marker");
        let marker = d.join("bash-1.exit");
        prepare_exit_marker(&marker, "bash-1").unwrap();
        let temps = || {
            fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .filter(|n| n.starts_with('.'))
                .collect::<Vec<_>>()
        };
        let prepared = temps();
        assert_eq!(prepared.len(), 1);
        let inode = fs::metadata(d.join(&prepared[0])).unwrap().ino();
        assert_eq!(fs::metadata(d.join(&prepared[0])).unwrap().mode() & 0o777, FILE_MODE);
        write_exit_marker(&marker, ExitMarker::Code(7), "bash-1", 1_700_000_000_000).unwrap();
        assert_eq!(fs::metadata(&marker).unwrap().ino(), inode, "the prepared file became the marker");
        assert_eq!(read_exit_marker(&marker).unwrap(), Some((ExitMarker::Code(7), 1_700_000_000_000)));
        assert!(temps().is_empty());
        // Prepared, then removed by someone else: the write makes its own.
        fs::remove_file(&marker).unwrap();
        prepare_exit_marker(&marker, "bash-1").unwrap();
        fs::remove_file(d.join(&temps()[0])).unwrap();
        write_exit_marker(&marker, ExitMarker::Killed, "bash-1", 1_700_000_000_001).unwrap();
        assert_eq!(read_exit_marker(&marker).unwrap().unwrap().0, ExitMarker::Killed);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn replace_via_spare_swaps_two_files_and_creates_none() {
        let d = tmp("spare");
        let (target, spare) = (d.join("t.json"), d.join(".spare.tmp"));
        atomic_replace(&target, b"v0", "t").unwrap();
        let mut inodes = std::collections::BTreeSet::new();
        for i in 1..=4 {
            replace_via_spare(&target, format!("v{i}").as_bytes(), &spare, "t", i % 2 == 0).unwrap();
            assert_eq!(fs::read(&target).unwrap(), format!("v{i}").as_bytes());
            assert_eq!(fs::read(&spare).unwrap(), format!("v{}", i - 1).as_bytes(), "the spare keeps the previous content");
            inodes.insert(fs::metadata(&target).unwrap().ino());
            assert_eq!(fs::metadata(&spare).unwrap().mode() & 0o777, FILE_MODE);
        }
        assert_eq!(inodes.len(), 2, "the two files alternate: no file was created after the spare");
        // The spare is written over in place: a shorter content after a longer one is cut to length.
        replace_via_spare(&target, b"a much longer content", &spare, "t", false).unwrap();
        replace_via_spare(&target, b"mid", &spare, "t", false).unwrap();
        replace_via_spare(&target, b"x", &spare, "t", false).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"x");
        assert_eq!(fs::read(&spare).unwrap(), b"mid");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_planted_spare_is_never_written_through() {
        let d = tmp("planted");
        let (target, spare, victim) = (d.join("t.json"), d.join(".spare.tmp"), d.join("victim"));
        atomic_replace(&target, b"old", "t").unwrap();
        fs::write(&victim, b"keep").unwrap();
        // A hard link to a file elsewhere: replaced by a file of our own.
        fs::hard_link(&victim, &spare).unwrap();
        replace_via_spare(&target, b"new", &spare, "t", false).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::metadata(&spare).unwrap().nlink(), 1);
        // A symlink: never followed (O_NOFOLLOW), replaced by a file of our own.
        fs::remove_file(&spare).unwrap();
        std::os::unix::fs::symlink(&victim, &spare).unwrap();
        replace_via_spare(&target, b"newer", &spare, "t", false).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        assert!(fs::symlink_metadata(&spare).unwrap().file_type().is_file());
        fs::remove_dir_all(d).unwrap();
    }
}
