//! PTY mode: the supervisor holds the terminal master, so a terminal session outlives the
//! manager. It copies everything the program writes into `<id>.pty`, keeps a live screen with a
//! terminal emulator (vt100) to answer cursor-position queries, and serves write/resize/screen
//! requests on `<id>.sock` in the task's directory (0600) for whichever manager asks.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::protocol::{Reply, Report, Request};
use super::{dup_cloexec, poll_readable, release_stdio, send, spawn_failed, start_ticks, Args, Lifecycle};

/// Answers to terminal queries found in the output, written back to the program.
#[derive(Default)]
struct Answers(Vec<u8>);

impl vt100::Callbacks for Answers {
    fn unhandled_csi(&mut self, screen: &mut vt100::Screen, i1: Option<u8>, _i2: Option<u8>, params: &[&[u16]], c: char) {
        match (i1, c, params.first().and_then(|p| p.first()).copied()) {
            // DSR 6: cursor position report, 1-based.
            (None, 'n', Some(6)) => {
                let (row, col) = screen.cursor_position();
                self.0.extend_from_slice(format!("\x1b[{};{}R", row + 1, col + 1).as_bytes());
            }
            // DSR 5: "terminal OK".
            (None, 'n', Some(5)) => self.0.extend_from_slice(b"\x1b[0n"),
            // Primary device attributes: a VT100 with advanced video.
            (None, 'c', None | Some(0)) => self.0.extend_from_slice(b"\x1b[?1;2c"),
            _ => {}
        }
    }
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
}

fn cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setting a flag on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: reading and setting the status flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `bytes` to the master, waiting (bounded) while the terminal's input buffer is
/// full. Returns how many bytes went in.
fn write_master(master: &OwnedFd, bytes: &[u8]) -> usize {
    let mut done = 0;
    let give_up = Instant::now() + Duration::from_secs(5);
    while done < bytes.len() && Instant::now() < give_up {
        // SAFETY: writing from a valid slice to our own descriptor.
        let n = unsafe { libc::write(master.as_raw_fd(), bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        let mut p = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 50) };
    }
    done
}

pub fn run(args: &Args, mut control: Option<UnixStream>, (rows, cols): (u16, u16)) -> ExitCode {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty fills two descriptors; the name and termios pointers may be null.
    if unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &size) } != 0 {
        return spawn_failed(args, &mut control, &std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from openpty, owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    // The master is ours alone and read without blocking (the slave is a separate open file).
    if let Err(e) = cloexec(&master).and_then(|_| cloexec(&slave)).and_then(|_| nonblocking(&master)) {
        return spawn_failed(args, &mut control, &e);
    }
    // The transcript is our stdout (`--out`, O_APPEND); keep it, drop the rest once started.
    let mut transcript = match dup_cloexec(1) {
        Ok(fd) => File::from(fd),
        Err(e) => return spawn_failed(args, &mut control, &e),
    };

    let listener = match listen(args) {
        Ok(l) => l,
        Err(e) => return spawn_failed(args, &mut control, &e),
    };
    let stdio = || slave.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (stdio(), stdio(), stdio()) else {
        return spawn_failed(args, &mut control, &std::io::Error::last_os_error());
    };
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]).stdin(i).stdout(o).stderr(e);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and ioctl. This runs in
    // the small supervisor, never in the harness process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = listener.remove();
            return spawn_failed(args, &mut control, &e);
        }
    };
    drop(cmd);
    drop(slave); // only the program holds the terminal's slave side now
    let pid = child.id() as i32;
    release_stdio();
    send(&mut control, &Report::Started { pid, start_ticks: start_ticks(pid) });

    let mut life = Lifecycle::new(pid, control, args);
    let mut screen = vt100::Parser::new_with_callbacks(rows, cols, 0, Answers::default());
    let mut written = 0u64;
    let mut master_open = true;
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];

    let mut pump = |master: &OwnedFd, screen: &mut vt100::Parser<Answers>, open: &mut bool| {
        // Everything the program wrote: to the transcript (up to the cap) and the live screen.
        loop {
            // SAFETY: reading into our own buffer from our own descriptor.
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                let err = std::io::Error::last_os_error();
                if n == 0 || (err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::Interrupted) {
                    *open = false; // EIO: no process holds the terminal any more
                }
                return;
            }
            let chunk = &buf[..n as usize];
            let room = if args.cap_bytes == 0 { chunk.len() } else { args.cap_bytes.saturating_sub(written).min(chunk.len() as u64) as usize };
            if room > 0 && transcript.write_all(&chunk[..room]).is_ok() {
                written += room as u64;
            }
            screen.process(chunk);
            let answers = std::mem::take(&mut screen.callbacks_mut().0);
            if !answers.is_empty() {
                write_master(master, &answers);
            }
        }
    };

    let status = loop {
        if let Some(status) = life.reap() {
            break status;
        }
        let wait = life.tick();
        let [pidfd, ctl] = life.fds();
        let mut fds = vec![pidfd, ctl, master_open.then(|| master.as_raw_fd()), Some(listener.fd())];
        fds.extend(clients.iter().map(|c| Some(c.stream.as_raw_fd())));
        let ready = poll_readable(&fds, wait);
        if ready[1] {
            life.on_control();
        }
        if ready[2] {
            pump(&master, &mut screen, &mut master_open);
        }
        // Clients accepted below were not part of this poll: only the first `polled` have a flag.
        let polled = clients.len();
        if ready[3] {
            while let Ok((stream, _)) = listener.inner.accept() {
                let _ = stream.set_nonblocking(true);
                clients.push(Client { stream, inbuf: Vec::new() });
            }
        }
        let mut closed = Vec::new();
        for (i, c) in clients.iter_mut().enumerate().take(polled) {
            if !ready[4 + i] {
                continue;
            }
            let mut chunk = [0u8; 64 * 1024];
            match c.stream.read(&mut chunk) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&chunk[..n]);
                    while let Some(nl) = c.inbuf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = c.inbuf.drain(..=nl).collect();
                        let reply = match Request::parse(&String::from_utf8_lossy(&line)) {
                            Some(Request::Write(bytes)) => Reply::Ok(write_master(&master, &bytes) as u64),
                            Some(Request::Resize { rows, cols }) => {
                                let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                                // SAFETY: TIOCSWINSZ on our master with a valid winsize; the
                                // kernel sends SIGWINCH to the terminal's foreground group.
                                if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } == 0 {
                                    screen.screen_mut().set_size(rows, cols);
                                    Reply::Ok(0)
                                } else {
                                    Reply::Err(std::io::Error::last_os_error().to_string())
                                }
                            }
                            Some(Request::Screen) => {
                                pump(&master, &mut screen, &mut master_open);
                                Reply::Screen(screen.screen().contents())
                            }
                            Some(Request::Kill { signal, grace_ms }) => {
                                life.kill(signal, Duration::from_millis(grace_ms));
                                Reply::Ok(0)
                            }
                            Some(Request::Go) | None => Reply::Err("unknown request".into()),
                        };
                        let _ = c.stream.set_nonblocking(false);
                        let _ = c.stream.set_write_timeout(Some(Duration::from_secs(5)));
                        let _ = c.stream.write_all(reply.render().as_bytes());
                        let _ = c.stream.set_nonblocking(true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            clients.remove(i);
        }
    };
    // What the program printed just before it ended is still in the terminal: take it.
    pump(&master, &mut screen, &mut master_open);
    let _ = listener.remove();
    drop(clients);
    life.finish(status, args)
}

/// The request socket `<id>.sock`, bound through the directory's descriptor so a long store
/// path never exceeds the 108-byte limit of a socket address.
struct Listener {
    inner: UnixListener,
    dir: OwnedFd,
    name: std::ffi::CString,
}

impl Listener {
    fn fd(&self) -> i32 {
        self.inner.as_raw_fd()
    }

    fn remove(&self) -> std::io::Result<()> {
        // SAFETY: unlinkat relative to our own directory descriptor.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

fn listen(args: &Args) -> std::io::Result<Listener> {
    use std::os::unix::ffi::OsStrExt;
    let dir_path = args.exit_path.parent().unwrap_or(std::path::Path::new("."));
    let c_dir = std::ffi::CString::new(dir_path.as_os_str().as_bytes())?;
    // SAFETY: opening a directory by a valid C path.
    let dfd = unsafe { libc::open(c_dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if dfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let dir = unsafe { OwnedFd::from_raw_fd(dfd) };
    let name = std::ffi::CString::new(format!("{}.sock", args.id))?;
    // SAFETY: unlinkat relative to our directory descriptor (a stale socket from a crash).
    unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) };
    // Only the owner may connect: the socket is created 0600 under a 0177 umask.
    // SAFETY: umask has no preconditions; restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = bgshell_sys::bind_in(dir.as_fd(), &format!("{}.sock", args.id));
    // SAFETY: restoring the previous umask.
    unsafe { libc::umask(old) };
    let inner = bound?;
    inner.set_nonblocking(true)?;
    Ok(Listener { inner, dir, name })
}
