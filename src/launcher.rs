//! Starts a task: the supervisor binary in a new session, the user's command under it in a new
//! process group, output straight into the bundle's files. No `pre_exec` here, so the standard
//! library keeps its vfork-style spawn even in a large harness process. Two steps, [`start`] and
//! [`Starting::go`], so that the supervisor's exec overlaps the durable `starting` write.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::{Code, Error, Result};
use crate::fsutil;
use crate::protocol::{Report, Request};
use crate::store::TaskPaths;

/// Commands longer than this run from `<id>.sh`: one argv string may not exceed 128 KiB.
pub const INLINE_COMMAND_MAX: usize = 64 * 1024;

pub struct LaunchSpec<'a> {
    pub supervisor: &'a Path,
    pub task_id: &'a str,
    pub paths: &'a TaskPaths,
    pub shell: &'a str,
    pub command: &'a str,
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub timeout_ms: u64,
    pub grace_ms: u64,
    /// Largest size of each output file; 0 = no cap.
    pub cap_bytes: u64,
    /// Rows and columns of the pseudo-terminal, for pty mode.
    pub pty: Option<(u16, u16)>,
    /// Pipes mode: the command's stdin is a pipe the supervisor holds and serves on `<id>.sock`.
    pub stdin_pipe: bool,
}

pub struct Launched {
    pub supervisor_pid: u32,
    pub supervisor_start_ticks: Option<u64>,
    pub task_pid: i32,
    pub task_start_ticks: u64,
    pub control: Control,
}

/// The read buffer on a supervisor's socket, kept for the task's whole life. Reports are short
/// single lines (a longer one is read over several fills); tokio's default of 8 KiB, zeroed,
/// was a third of what a live task cost the manager in memory (issue #15).
const REPORT_BUFFER: usize = 512;

/// The manager's end of the supervisor's socket.
pub struct Control {
    pub reports: BufReader<OwnedReadHalf>,
    pub requests: OwnedWriteHalf,
}

/// The next report from a supervisor; `None` once it has gone away.
pub async fn next_report(reports: &mut BufReader<OwnedReadHalf>) -> Option<Report> {
    let mut line = String::new();
    loop {
        line.clear();
        match reports.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Some(r) = Report::parse(&line) {
                    return Some(r);
                }
            }
        }
    }
}

pub async fn send(requests: &mut OwnedWriteHalf, request: Request) -> std::io::Result<()> {
    requests.write_all(request.render().as_bytes()).await
}

/// A supervisor that runs but waits for `go` before it starts the command.
pub struct Starting {
    supervisor: PathBuf,
    shell: String,
    supervisor_pid: u32,
    supervisor_start_ticks: Option<u64>,
    control: Control,
    /// Written by us before the supervisor ran; removed if the task never starts.
    script: Option<PathBuf>,
}

/// Runs the supervisor for a task, gated: it execs and creates the output files while the caller
/// writes the `starting` record, and starts the command only at [`Starting::go`]. Told to give up
/// instead (its socket closes), it removes those files and exits.
pub fn start(spec: LaunchSpec<'_>) -> Result<Starting> {
    let paths = spec.paths;
    let mut argv: Vec<String> = vec![spec.shell.to_string()];
    let mut script = None;
    if spec.command.len() > INLINE_COMMAND_MAX {
        fsutil::atomic_write(&paths.script, spec.command.as_bytes(), spec.task_id).map_err(|e| Error::io(&paths.script, &e))?;
        script = Some(paths.script.clone());
        argv.push(paths.script.display().to_string());
    } else {
        argv.push("-c".into());
        argv.push(spec.command.to_string());
    }

    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| spawn_error("socketpair", &e))?;
    let mut cmd = Command::new(spec.supervisor);
    cmd.arg("--id")
        .arg(spec.task_id)
        .arg("--exit")
        .arg(&paths.exit)
        .arg("--timeout-ms")
        .arg(spec.timeout_ms.to_string())
        .arg("--grace-ms")
        .arg(spec.grace_ms.to_string())
        .arg("--cap-bytes")
        .arg(spec.cap_bytes.to_string())
        .arg("--await-go");
    // The files are opened O_APPEND: past the cap the supervisor punches a hole in the middle of
    // one while the task writes; appends continue at the end. In pty mode the supervisor writes
    // the transcript itself.
    match spec.pty {
        None => cmd.arg("--out").arg(&paths.stdout).arg("--err").arg(&paths.stderr),
        Some((rows, cols)) => cmd.arg("--out").arg(&paths.pty).arg("--pty").arg(rows.to_string()).arg(cols.to_string()),
    };
    if spec.stdin_pipe && spec.pty.is_none() {
        cmd.arg("--stdin-pipe");
    }
    cmd.arg("--")
        .args(&argv)
        .current_dir(spec.cwd)
        // Node leaves fds 0-2 close-on-exec: every one is set explicitly.
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    let spawned = cmd.spawn();
    drop(cmd); // closes our copy of the supervisor's end, so EOF means it is gone
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            remove_script(&script);
            return Err(spawn_error(&format!("supervisor {}", spec.supervisor.display()), &e));
        }
    };
    let supervisor_pid = child.id();
    let supervisor_start_ticks = crate::proc::start_ticks(supervisor_pid);
    drop(child); // std's Child neither kills nor waits on drop; the watcher reaps it

    let control = ours.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(ours)).map(|stream| {
        let (read, write) = stream.into_split();
        Control { reports: BufReader::with_capacity(REPORT_BUFFER, read), requests: write }
    });
    match control {
        Ok(control) => Ok(Starting {
            supervisor: spec.supervisor.to_path_buf(),
            shell: spec.shell.to_string(),
            supervisor_pid,
            supervisor_start_ticks,
            control,
            script,
        }),
        Err(e) => {
            // Our end is gone, so the supervisor sees EOF before `go` and leaves.
            let pid = supervisor_pid;
            tokio::spawn(crate::proc::reap_child(pid));
            remove_script(&script);
            Err(spawn_error("socket", &e))
        }
    }
}

impl Starting {
    /// The supervisor's pid and start time, known before the command starts.
    pub fn supervisor(&self) -> (u32, Option<u64>) {
        (self.supervisor_pid, self.supervisor_start_ticks)
    }

    /// Lets the command start; resolves once the supervisor reports it running.
    pub async fn go(self) -> Result<Launched> {
        let Starting { supervisor, shell, supervisor_pid, supervisor_start_ticks, mut control, .. } = self;
        let report = match send(&mut control.requests, Request::Go).await {
            Ok(()) => next_report(&mut control.reports).await,
            Err(_) => None,
        };
        match report {
            Some(Report::Started { pid, start_ticks }) => {
                Ok(Launched { supervisor_pid, supervisor_start_ticks, task_pid: pid, task_start_ticks: start_ticks, control })
            }
            Some(Report::SpawnError { message, .. }) => {
                crate::proc::reap_child(supervisor_pid).await;
                Err(Error::new(Code::Spawn, format!("could not start {shell:?}: {message}")))
            }
            _ => {
                crate::proc::reap_child(supervisor_pid).await;
                Err(Error::new(Code::Spawn, format!("the supervisor {} exited before starting the command", supervisor.display())))
            }
        }
    }

    /// Gives up before `go`: the supervisor sees its socket close, starts nothing and exits.
    pub async fn abort(self) {
        let Starting { supervisor_pid, control, script, .. } = self;
        drop(control);
        crate::proc::reap_child(supervisor_pid).await;
        remove_script(&script);
    }
}

fn remove_script(script: &Option<PathBuf>) {
    if let Some(p) = script {
        let _ = std::fs::remove_file(p);
    }
}

fn spawn_error(what: &str, e: &std::io::Error) -> Error {
    Error::new(Code::Spawn, format!("could not start {what}: {e}"))
}

/// Where the supervisor binary is: `$BGSHELL_SUPERVISOR`, else `bgshell-supervisor` beside the
/// loaded `.node` file.
pub fn locate_supervisor() -> Result<PathBuf> {
    // Found once per process: the binary does not move while the addon is loaded.
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = FOUND.get() {
        return Ok(p.clone());
    }
    let p = find_supervisor()?;
    Ok(FOUND.get_or_init(|| p).clone())
}

fn find_supervisor() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BGSHELL_SUPERVISOR") {
        return Ok(PathBuf::from(p));
    }
    let lib = loaded_library_path().ok_or_else(|| {
        Error::new(Code::Spawn, "cannot locate the bgshell native module on disk to find bgshell-supervisor; set BGSHELL_SUPERVISOR")
    })?;
    let candidate = lib.with_file_name(bgshell_common::SUPERVISOR_NAME);
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(Error::new(
            Code::Spawn,
            format!("bgshell-supervisor is missing next to {} (reinstall the package, or set BGSHELL_SUPERVISOR)", lib.display()),
        ))
    }
}

fn loaded_library_path() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address of a function in this library and fills `info`;
    // dli_fname points into the loader's tables, valid while the library is loaded.
    let ok = unsafe { libc::dladdr(locate_supervisor as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
}
