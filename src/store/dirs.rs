//! The store's directories: who may own them, and walking them without ever following a link.
//!
//! The root is checked once when the store opens (ours, private, not reachable through a
//! directory another user could swap); below it, every directory is checked with `lstat` before
//! use, level by level, and created 0700 where missing. Nothing below the root is writable by
//! anyone but its owner, so no other user can replace a checked directory in between.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{DIR_MODE, FILE_MODE};

fn refused(path: &Path, why: impl Into<String>) -> Error {
    Error::io(path, &io::Error::new(io::ErrorKind::PermissionDenied, why.into()))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes `root` usable as a store root and returns its resolved absolute path: it is created
/// 0700 when missing; it must be a real directory (not a symlink) owned by this user, and is
/// tightened to 0700 when its mode is looser; every directory above it must belong to this user
/// or to root and must not be writable by others unless sticky (as OpenSSH's StrictModes asks).
pub fn open_root(root: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent).map_err(|e| Error::io(parent, &e))?;
            }
            match fs::DirBuilder::new().mode(DIR_MODE).create(root) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(root, &e)),
            }
        }
        Err(e) => return Err(Error::io(root, &e)),
        Ok(_) => {}
    }
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = root.file_name().ok_or_else(|| Error::invalid(format!("storageDir {} names no directory", root.display())))?;
    let resolved = fs::canonicalize(parent).map_err(|e| Error::io(parent, &e))?.join(name);
    let meta = fs::symlink_metadata(&resolved).map_err(|e| Error::io(&resolved, &e))?;
    if meta.file_type().is_symlink() {
        return Err(refused(&resolved, "the store root is a symlink; bgshell never follows one"));
    }
    if !meta.is_dir() {
        return Err(refused(&resolved, "the store root exists and is not a directory"));
    }
    if meta.uid() != euid() {
        return Err(refused(
            &resolved,
            format!("the store root belongs to uid {}, not to this user (uid {}); refusing to use it", meta.uid(), euid()),
        ));
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        tighten(&resolved, DIR_MODE, true)?;
    }
    for ancestor in resolved.ancestors().skip(1) {
        let m = fs::metadata(ancestor).map_err(|e| Error::io(ancestor, &e))?;
        if m.uid() != euid() && m.uid() != 0 {
            return Err(refused(
                ancestor,
                format!("a directory above the store root belongs to uid {}: its owner could replace the store", m.uid()),
            ));
        }
        let sticky = m.mode() & libc::S_ISVTX != 0;
        if m.mode() & 0o002 != 0 && !sticky {
            return Err(refused(ancestor, "a directory above the store root is writable by every user and not sticky"));
        }
    }
    Ok(resolved)
}

/// A file of the root (tasks.db and its -wal/-shm): when present it must be a regular file of
/// this user; a looser mode is tightened to 0600. A symlink there is removed (the link, never
/// its target): SQLite would otherwise write through it.
pub fn check_root_file(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, &e)),
    };
    if meta.file_type().is_symlink() {
        return fs::remove_file(path).map_err(|e| Error::io(path, &e));
    }
    if !meta.is_file() {
        return Err(refused(path, "exists and is not a regular file"));
    }
    if meta.uid() != euid() {
        return Err(refused(path, format!("belongs to uid {}, not to this user (uid {}); refusing to use it", meta.uid(), euid())));
    }
    if meta.mode() & 0o7777 != FILE_MODE {
        tighten(path, FILE_MODE, false)?;
    }
    Ok(())
}

/// chmod through a descriptor opened without following links.
fn tighten(path: &Path, mode: u32, dir: bool) -> Result<()> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | if dir { libc::O_DIRECTORY } else { 0 };
    let f = fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| Error::io(path, &e))?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, &e))
}

/// What `lstat` says of one directory level.
fn level(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(refused(path, "is a symlink; bgshell never follows one in its store")),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(refused(path, "is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, &e)),
    }
}

/// `root/a/b/...` when every level exists as a real directory; `None` when one is missing; an
/// error when one is a symlink or not a directory.
pub fn existing(root: &Path, levels: &[&str]) -> Result<Option<PathBuf>> {
    let mut path = root.to_path_buf();
    for name in levels {
        path.push(name);
        if !level(&path)? {
            return Ok(None);
        }
    }
    Ok(Some(path))
}

/// `root/a/b/...`, each missing level created 0700, each existing one checked as above.
pub fn ensure(root: &Path, levels: &[&str]) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for name in levels {
        path.push(name);
        if level(&path)? {
            continue;
        }
        match fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(DIR_MODE)).map_err(|e| Error::io(&path, &e))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                level(&path)?;
            }
            Err(e) => return Err(Error::io(&path, &e)),
        }
    }
    Ok(path)
}

/// The real subdirectories of `dir` (symlinks and files left out), by name.
pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

/// The size of each entry of `dir` whose name ends in `.<ext>` for one of `exts`, by name: one
/// pass over the directory, each entry's `lstat` taken relative to it (no path walked per file,
/// no link followed: a link's size is its own).
pub fn file_sizes(dir: &Path, exts: &[&str]) -> HashMap<String, u64> {
    let Ok(entries) = fs::read_dir(dir) else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let ext = name.rsplit_once('.')?.1;
            exts.contains(&ext).then_some(())?;
            Some((name, e.metadata().ok()?.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_refuse_symlinks_and_create_privately() {
        let root = std::env::temp_dir().join(format!("bgshell-dirs-{}", crate::store::ids::new_task_id()));
        let root = open_root(&root).unwrap();
        let made = ensure(&root, &["a", "b"]).unwrap();
        assert_eq!(fs::metadata(&made).unwrap().mode() & 0o777, 0o700);
        assert_eq!(existing(&root, &["a", "b"]).unwrap(), Some(made.clone()));
        assert_eq!(existing(&root, &["a", "c"]).unwrap(), None);
        let outside = std::env::temp_dir().join(format!("bgshell-dirs-out-{}", crate::store::ids::new_task_id()));
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert!(existing(&root, &["link"]).is_err());
        assert!(ensure(&root, &["link", "x"]).is_err());
        assert!(!outside.join("x").exists(), "nothing was created through the link");
        assert!(subdirs(&root).iter().all(|p| p.file_name().unwrap() != "link"));
        fs::write(made.join("t.stdout"), "four").unwrap();
        fs::write(made.join("t.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", made.join("u.stdout")).unwrap();
        let sizes = file_sizes(&made, &["stdout", "pty"]);
        assert_eq!(sizes.get("t.stdout"), Some(&4));
        assert_eq!(sizes.get("u.stdout"), Some(&("/etc/passwd".len() as u64)), "the link's own size, never its target's");
        assert_eq!(sizes.len(), 2);
        // A loose root of ours is tightened.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        open_root(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
