//! `bgshell-supervisor`: the small process that sits between a manager and one task.
//!
//! It outlives the manager, so it is what records the truth about the task: it starts the command
//! in a new process group, waits for it (pidfd, no polling), enforces the deadline, reports the
//! exit, and writes the exit marker when no manager recorded the end (see `Lifecycle::finish`).
//! Its stdin is one end of a socketpair with the manager (see `bgshell_common::protocol`); when
//! the manager goes away the socket closes and the supervisor carries on alone. It is its own session leader so the
//! harness's terminal signals never reach it.
//!
//! usage: bgshell-supervisor --id ID --exit PATH --timeout-ms N --grace-ms N --cap-bytes N
//!        [--await-go] [--out PATH] [--err PATH] [--pty ROWS COLS | --stdin-pipe] -- PROGRAM [ARGS...]
//!
//! `--out`/`--err`: the task's output files, created 0600 O_APPEND and put on our fd 1/2 (else
//! fd 1/2 are used as given). `--await-go`: start nothing until the manager sends `go` (it writes
//! the task's `starting` record meanwhile, so our own start overlaps that write); a socket that
//! closes first means the manager gave up: we remove the output files and leave.

// The entry point is entry.rs's `main`; a test build keeps the test harness's own.
#![cfg_attr(not(test), no_main)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod cap;
#[cfg(not(test))]
mod entry;
mod pty;
mod serve;

use bgshell_common::fsutil::{self, ExitMarker};
use bgshell_common::proc;
use bgshell_common::protocol::{self, Report, Request};

/// How long the exit report waits for the manager's `recorded` before the marker is written.
const RECORDED_WAIT: Duration = Duration::from_secs(5);

struct Args {
    id: String,
    exit_path: PathBuf,
    timeout_ms: u64,
    grace_ms: u64,
    cap_bytes: u64,
    /// `--pty ROWS COLS`: run the command on a new pseudo-terminal of that size.
    pty: Option<(u16, u16)>,
    await_go: bool,
    /// `--stdin-pipe`: the command reads a pipe we hold (pipes mode); `<id>.sock` takes writes.
    stdin_pipe: bool,
    out: Option<PathBuf>,
    err: Option<PathBuf>,
    argv: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut id, mut exit_path, mut timeout_ms, mut grace_ms, mut cap_bytes) = (None, None, 0u64, 2000u64, 0u64);
    let mut pty = None;
    let (mut await_go, mut out, mut err) = (false, None, None);
    let mut stdin_pipe = false;
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--id" => id = Some(value()?),
            "--exit" => exit_path = Some(PathBuf::from(value()?)),
            "--timeout-ms" => timeout_ms = value()?.parse().map_err(|_| "bad --timeout-ms")?,
            "--grace-ms" => grace_ms = value()?.parse().map_err(|_| "bad --grace-ms")?,
            "--cap-bytes" => cap_bytes = value()?.parse().map_err(|_| "bad --cap-bytes")?,
            "--await-go" => await_go = true,
            "--stdin-pipe" => stdin_pipe = true,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--err" => err = Some(PathBuf::from(value()?)),
            "--pty" => {
                let rows = value()?.parse().map_err(|_| "bad --pty rows")?;
                let cols = it.next().ok_or("--pty needs rows and cols")?.parse().map_err(|_| "bad --pty cols")?;
                pty = Some((rows, cols));
            }
            "--" => break,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let argv: Vec<String> = it.collect();
    if argv.is_empty() {
        return Err("no program after --".into());
    }
    Ok(Args {
        id: id.ok_or("--id is required")?,
        exit_path: exit_path.ok_or("--exit is required")?,
        timeout_ms,
        grace_ms,
        cap_bytes,
        pty,
        await_go,
        stdin_pipe,
        out,
        err,
        argv,
    })
}

/// Takes the manager's socket off fd 0 (to a close-on-exec fd) and puts /dev/null there.
fn take_control_socket() -> Option<UnixStream> {
    let sock = dup_cloexec(0).ok();
    // SAFETY: open and dup2 on descriptors this process owns; fd 0 was set up by the manager.
    // If either fails, fd 0 stays as it was: the command never inherits it (its stdin is
    // /dev/null or the terminal).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
    }
    close_inherited_fds(sock.as_ref().map_or(-1, |s| s.as_raw_fd()));
    let sock = sock?;
    // SAFETY: fstat into a zeroed stat we own, on a descriptor we own.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(sock.as_raw_fd(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    is_socket.then(|| UnixStream::from(sock))
}

/// Closes every descriptor above 2 except `keep`: the harness may have leaked pipes without
/// close-on-exec, and a background task holding one would keep its reader from seeing EOF.
/// Called before any descriptor above 2 is owned by a Rust object.
fn close_inherited_fds(keep: i32) {
    let ranges = if keep >= 3 { [(3, keep - 1), (keep + 1, i32::MAX)] } else { [(3, i32::MAX), (1, 0)] };
    for (lo, hi) in ranges {
        bgshell_sys::close_range(lo, hi);
    }
}

/// The command's start time (0 when it cannot be read), reported to the manager.
fn start_ticks(pid: i32) -> u64 {
    proc::start_ticks(pid as u32).unwrap_or(0)
}

/// A close-on-exec duplicate of our descriptor `fd`, numbered above 2.
fn dup_cloexec(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number; it fails (EBADF) if `fd` is not open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn send(sock: &mut Option<UnixStream>, report: &Report) {
    if let Some(s) = sock.as_mut() {
        if s.write_all(report.render().as_bytes()).is_err() {
            *sock = None; // the manager is gone; carry on alone
        }
    }
}

/// The shorter of two optional waits (`None`: no limit).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    a.into_iter().chain(b).min()
}

/// Waits until one of `fds` is readable or `timeout` passes; says which are readable.
fn poll_readable(fds: &[Option<i32>], timeout: Option<Duration>) -> Vec<bool> {
    let mut set: Vec<libc::pollfd> = fds.iter().flatten().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.map(|t| t.as_millis().min(i32::MAX as u128) as i32).unwrap_or(-1);
    // SAFETY: `set` is a valid array of pollfd for its length.
    let n = unsafe { libc::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, ms) };
    let mut ready = set.iter().map(|p| n > 0 && p.revents != 0);
    fds.iter().map(|fd| fd.is_some() && ready.next().unwrap_or(false)).collect()
}

/// What every task's supervision shares, pipes or pty: the deadline, kill requests from the
/// manager, the SIGKILL after the grace, and reaping the command.
struct Lifecycle {
    pid: i32,
    /// Readable once the command has exited; without one (none could be opened), `tick`
    /// checks every 20 ms.
    exit: Option<bgshell_sys::ProcessHandle>,
    control: Option<UnixStream>,
    inbuf: Vec<u8>,
    deadline: Option<Instant>,
    grace: Duration,
    timed_out: bool,
    killing: bool,
    sigkill_at: Option<Instant>,
    /// `wait4`'s resource use of the command once reaped.
    usage: Option<protocol::Usage>,
}

impl Lifecycle {
    fn new(pid: i32, control: Option<UnixStream>, args: &Args) -> Lifecycle {
        Lifecycle {
            pid,
            exit: bgshell_sys::ProcessHandle::open(pid as u32).ok(),
            control,
            inbuf: Vec::new(),
            deadline: (args.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(args.timeout_ms)),
            grace: Duration::from_millis(args.grace_ms),
            timed_out: false,
            killing: false,
            sigkill_at: None,
            usage: None,
        }
    }

    /// The command's wait status once it has ended (and its resource use, in `usage`).
    fn reap(&mut self) -> Option<libc::c_int> {
        let reaped = proc::reap(self.pid as u32)?;
        self.usage = Some(reaped.usage);
        Some(reaped.status)
    }

    /// Signals the command's group, under the addon's refusal rules (`proc::signal_group`); a
    /// failure is not worth reporting. Its leader is our own unreaped child until `reap` says it
    /// ended, so its pid (= the group id) cannot have been reused before; after, only the group's
    /// own members keep the id taken.
    fn signal_group(&self, signal: i32) {
        let _ = proc::signal_group(self.pid, signal);
    }

    /// Fires due timers; returns how long poll may sleep.
    fn tick(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self.sigkill_at.is_some_and(|at| now >= at) {
            self.signal_group(libc::SIGKILL);
            self.sigkill_at = None;
        }
        if self.deadline.is_some_and(|d| now >= d) && !self.timed_out && !self.killing {
            self.timed_out = true;
            self.signal_group(libc::SIGTERM);
            self.sigkill_at = Some(now + self.grace);
        }
        let next = [self.sigkill_at, self.deadline.filter(|_| !self.timed_out && !self.killing)]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        // Without an exit handle nothing notifies us of the exit: check every 20 ms.
        match self.exit {
            Some(_) => next,
            None => Some(next.map_or(Duration::from_millis(20), |n| n.min(Duration::from_millis(20)))),
        }
    }

    fn fds(&self) -> [Option<i32>; 2] {
        [self.exit.as_ref().map(|h| h.as_raw_fd()), self.control.as_ref().map(|s| s.as_raw_fd())]
    }

    /// Reads kill requests from the manager; a closed socket means we carry on alone, and will
    /// write the exit marker: its file is created now (`fsutil::prepare_exit_marker`).
    fn on_control(&mut self, args: &Args) {
        for request in self.read_control() {
            if let Request::Kill { signal, grace_ms } = request {
                self.kill(signal, Duration::from_millis(grace_ms));
            }
        }
        if self.control.is_none() {
            let _ = fsutil::prepare_exit_marker(&args.exit_path, &args.id);
        }
    }

    /// The requests the manager sent that are complete now (one read); a closed or failed
    /// socket is dropped.
    fn read_control(&mut self) -> Vec<Request> {
        let mut buf = [0u8; 512];
        match self.control.as_mut().map(|s| s.read(&mut buf)) {
            Some(Ok(n)) if n > 0 => self.inbuf.extend_from_slice(&buf[..n]),
            _ => {
                self.control = None;
                return Vec::new();
            }
        }
        let mut requests = Vec::new();
        while let Some(nl) = self.inbuf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=nl).collect();
            requests.extend(Request::parse(&String::from_utf8_lossy(&line)));
        }
        requests
    }

    /// After the exit report: true once the manager says the end is in its record. A manager
    /// that closes the socket (it died, or could not write), or does not answer within
    /// `RECORDED_WAIT` (stopped, stuck), leaves the exit marker to us.
    fn await_recorded(&mut self) -> bool {
        let deadline = Instant::now() + RECORDED_WAIT;
        while let Some(fd) = self.control.as_ref().map(|s| s.as_raw_fd()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !poll_readable(&[Some(fd)], Some(left))[0] {
                return false;
            }
            if self.read_control().contains(&Request::Recorded) {
                return true;
            }
        }
        false
    }

    fn kill(&mut self, signal: i32, grace: Duration) {
        self.killing = true;
        self.signal_group(signal);
        if signal != libc::SIGKILL {
            self.sigkill_at = Some(Instant::now() + grace);
        }
    }

    /// Records the end: the report to the manager, which writes the final record and answers
    /// `recorded`; the exit marker only when it does not (no manager, or one that failed,
    /// died or stopped first). Either one holds the truth: if we die before the answer, the
    /// manager has the report; if it dies, we write the marker.
    fn finish(mut self, status: libc::c_int, args: &Args) -> ExitStatus {
        let finished_at = fsutil::unix_millis();
        if self.killing || self.timed_out {
            // The leader is gone; take whatever it left in its group (it was asked to stop).
            self.signal_group(libc::SIGKILL);
        }
        let (mut code, signal) = if libc::WIFEXITED(status) {
            (libc::WEXITSTATUS(status), None)
        } else if libc::WIFSIGNALED(status) {
            (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
        } else {
            (1, None)
        };
        if self.timed_out {
            code = protocol::TIMEOUT_EXIT_CODE;
        }
        send(&mut self.control, &Report::Exit { code, signal, finished_at, timed_out: self.timed_out, usage: self.usage });
        if !self.await_recorded() {
            write_marker(args, ExitMarker::Code(code), finished_at);
        }
        0
    }
}

/// Writes the exit marker. While the disk is full (or failing) we are the only holder of the
/// exit code once the manager is gone, so we stay and retry, backing off to one try every 10 s,
/// until it lands; any other failure (the bundle was removed) ends the attempts.
fn write_marker(args: &Args, marker: ExitMarker, finished_at: u64) {
    let mut wait = Duration::from_millis(50);
    loop {
        match fsutil::write_exit_marker(&args.exit_path, marker, &args.id, finished_at) {
            Ok(()) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EINTR | libc::EAGAIN)) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(_) => return,
        }
    }
}

fn spawn_failed(args: &Args, control: &mut Option<UnixStream>, e: &std::io::Error) -> ExitStatus {
    write_marker(args, ExitMarker::Code(protocol::SPAWN_FAILED_EXIT_CODE), fsutil::unix_millis());
    send(control, &Report::SpawnError { errno: e.raw_os_error().unwrap_or(0), message: e.to_string() });
    1
}

/// Reads the manager's `go` line, one byte at a time so that nothing after it is consumed.
/// False when the socket closes (or says anything else) first.
fn await_go(control: &mut Option<UnixStream>) -> bool {
    let Some(sock) = control.as_mut() else { return false };
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match sock.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return matches!(Request::parse(&String::from_utf8_lossy(&line)), Some(Request::Go)),
            Ok(1) if line.len() < 64 => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// Creates the task's output files (0600, O_APPEND, no symlink) and puts them on fd 1 and 2,
/// where the command inherits them.
fn open_outputs(args: &Args) -> std::io::Result<()> {
    for (path, fd) in [(&args.out, 1), (&args.err, 2)] {
        let Some(path) = path else { continue };
        let file = fsutil::create_private(path, true)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
        // SAFETY: dup2 onto our own stdout/stderr; `file` stays owned and is closed on drop.
        if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Points our own stdout and stderr at /dev/null (the task's files are not ours to hold).
fn release_stdio() {
    // SAFETY: replacing our own descriptors 1 and 2.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

/// The process's exit status: 0, or 1 when the command could not be started, 2 for bad arguments.
type ExitStatus = u8;

/// The supervisor's work, from `entry::main`.
#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitStatus {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bgshell-supervisor: {e}");
            return 2;
        }
    };
    // SAFETY: setsid has no preconditions; it fails harmlessly if we already lead a group.
    unsafe {
        libc::setsid();
    }
    let mut control = take_control_socket();
    // The output files are created before `go`, while the manager is still writing the record.
    let opened = open_outputs(&args);
    if args.await_go && !await_go(&mut control) {
        // The manager gave up before the command was due to start: leave no trace.
        for path in [&args.out, &args.err].into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        return 0;
    }
    if let Err(e) = opened {
        return spawn_failed(&args, &mut control, &e);
    }
    match args.pty {
        Some(size) => pty::run(&args, control, size),
        None => run_pipes(&args, control),
    }
}

fn run_pipes(args: &Args, mut control: Option<UnixStream>) -> ExitStatus {
    // `--stdin-pipe`: the command reads a pipe whose write end we hold (and serve on `<id>.sock`),
    // so its input outlives the manager like a terminal does.
    let mut stdin = Stdio::null();
    let mut input = None;
    let mut server = None;
    if args.stdin_pipe {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 fills two descriptors, both close-on-exec (the child gets a dup2'd copy).
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return spawn_failed(args, &mut control, &std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors from pipe2, owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if let Err(e) = serve::nonblocking(&write) {
            return spawn_failed(args, &mut control, &e);
        }
        match serve::listen(args) {
            Ok(l) => server = Some(serve::Server::new(l)),
            Err(e) => return spawn_failed(args, &mut control, &e),
        }
        stdin = Stdio::from(read);
        input = Some(write);
    }
    let spawned = Command::new(&args.argv[0])
        .args(&args.argv[1..])
        .stdin(stdin)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(s) = server {
                s.close();
            }
            return spawn_failed(args, &mut control, &e);
        }
    };
    let pid = child.id() as i32;
    let mut cap = cap::OutputCap::new(args.cap_bytes);
    release_stdio();
    send(&mut control, &Report::Started { pid, start_ticks: start_ticks(pid) });
    let mut life = Lifecycle::new(pid, control, args);
    let mut pipe = StdinPipe { input, kill: None };
    let status = loop {
        if let Some(status) = life.reap() {
            break status;
        }
        let wait = earliest(life.tick(), cap.tick());
        let [pidfd, ctl] = life.fds();
        let mut fds = vec![pidfd, ctl, cap.fd()];
        if let Some(s) = &server {
            fds.extend(s.fds());
        }
        let ready = poll_readable(&fds, wait);
        if ready[1] {
            life.on_control(args);
        }
        if ready[2] {
            cap.enforce();
        }
        if let Some(s) = server.as_mut() {
            s.serve(&ready[3..], &mut pipe);
        }
        if let Some((signal, grace)) = pipe.kill.take() {
            life.kill(signal, grace);
        }
    };
    cap.enforce();
    if let Some(s) = server {
        s.close();
    }
    life.finish(status, args)
}

/// The write end of a `--stdin-pipe` task's input, served on `<id>.sock`.
struct StdinPipe {
    input: Option<OwnedFd>,
    kill: Option<(i32, Duration)>,
}

impl serve::Handler for StdinPipe {
    fn request(&mut self, req: Request) -> protocol::Reply {
        use protocol::Reply;
        match req {
            Request::Write(bytes) => match &self.input {
                None => Reply::Err("closed: its stdin was closed (closeStdin); it takes no more input".into()),
                Some(fd) => match serve::write_bounded(fd.as_raw_fd(), &bytes) {
                    (0, Some(e)) if e.raw_os_error() == Some(libc::EPIPE) => {
                        Reply::Err("closed: the program no longer reads its stdin (EPIPE)".into())
                    }
                    (n, _) => Reply::Ok(n as u64),
                },
            },
            Request::CloseStdin => {
                self.input = None; // the program reads EOF once it has read what is buffered
                Reply::Ok(0)
            }
            Request::Kill { signal, grace_ms } => {
                self.kill = Some((signal, Duration::from_millis(grace_ms)));
                Reply::Ok(0)
            }
            _ => Reply::Err("not a terminal: a pipes task takes only write, close-stdin and kill".into()),
        }
    }

    fn attach(&mut self) -> Option<Vec<u8>> {
        None
    }

    fn input(&mut self, _bytes: &[u8]) {}
}
