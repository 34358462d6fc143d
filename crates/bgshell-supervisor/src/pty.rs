//! PTY mode: the supervisor holds the terminal master, so a terminal session outlives the
//! manager. It copies everything the program writes into `<id>.pty`, keeps a live screen with a
//! terminal emulator (vt100) to answer cursor-position queries, and serves write/resize/screen
//! requests on `<id>.sock` in the task's directory (0600) for whichever manager asks.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cap::{self, Capped};
use super::serve::{cloexec, listen, nonblocking, write_bounded, Handler, Server};
use super::{dup_cloexec, poll_readable, release_stdio, send, spawn_failed, start_ticks, Args, ExitStatus, Lifecycle};
use bgshell_common::protocol::{Reply, Report, Request};

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

/// Writes all of `bytes` to the master (bounded wait while the terminal's input buffer is full).
fn write_master(master: &OwnedFd, bytes: &[u8]) -> usize {
    write_bounded(master.as_raw_fd(), bytes).0
}

pub fn run(args: &Args, mut control: Option<UnixStream>, (rows, cols): (u16, u16)) -> ExitStatus {
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
    let transcript = match dup_cloexec(1) {
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
    let mut term = Terminal {
        master,
        open: true,
        screen: vt100::Parser::new_with_callbacks(rows, cols, 0, Answers::default()),
        transcript,
        capped: Capped::default(),
        cap: args.cap_bytes,
        buf: vec![0u8; 64 * 1024],
        kill: None,
        printed: Vec::new(),
    };
    let mut server = Server::new(listener);

    let status = loop {
        if let Some(status) = life.reap() {
            break status;
        }
        let mut wait = life.tick();
        if server.pending() {
            wait = Some(wait.map_or(Duration::from_millis(50), |w| w.min(Duration::from_millis(50))));
        }
        let [pidfd, ctl] = life.fds();
        let mut fds = vec![pidfd, ctl, term.open.then(|| term.master.as_raw_fd())];
        fds.extend(server.fds());
        let ready = poll_readable(&fds, wait);
        if ready[1] {
            life.on_control(args);
        }
        if ready[2] {
            term.pump();
        }
        server.serve(&ready[3..], &mut term);
        if !term.printed.is_empty() {
            server.broadcast(&std::mem::take(&mut term.printed));
        }
        if let Some((signal, grace)) = term.kill.take() {
            life.kill(signal, grace);
        }
    };
    // What the program printed just before it ended is still in the terminal: take it.
    term.pump();
    server.broadcast(&std::mem::take(&mut term.printed));
    server.close();
    life.finish(status, args)
}

/// The terminal's master side with what it feeds: the transcript, the live screen, attached
/// clients.
struct Terminal {
    master: OwnedFd,
    open: bool,
    screen: vt100::Parser<Answers>,
    transcript: File,
    capped: Capped,
    cap: u64,
    buf: Vec<u8>,
    /// A kill asked for over the socket, for the lifecycle to carry out.
    kill: Option<(i32, Duration)>,
    /// Printed since attached clients were last sent output.
    printed: Vec<u8>,
}

impl Terminal {
    /// Everything the program wrote: to the transcript (head + tail within the cap), the live
    /// screen and attached clients.
    fn pump(&mut self) {
        loop {
            // SAFETY: reading into our own buffer from our own descriptor.
            let n = unsafe { libc::read(self.master.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n <= 0 {
                let err = std::io::Error::last_os_error();
                if n == 0 || (err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::Interrupted) {
                    self.open = false; // EIO: no process holds the terminal any more
                }
                return;
            }
            let chunk = &self.buf[..n as usize];
            if self.transcript.write_all(chunk).is_ok() {
                cap::enforce(&self.transcript, self.cap, &mut self.capped);
            }
            self.printed.extend_from_slice(chunk);
            self.screen.process(chunk);
            let answers = std::mem::take(&mut self.screen.callbacks_mut().0);
            if !answers.is_empty() {
                write_master(&self.master, &answers);
            }
        }
    }
}

impl Handler for Terminal {
    fn request(&mut self, req: Request) -> Reply {
        match req {
            Request::Write(bytes) => Reply::Ok(write_master(&self.master, &bytes) as u64),
            Request::Resize { rows, cols } => {
                let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                // SAFETY: TIOCSWINSZ on our master with a valid winsize; the kernel sends
                // SIGWINCH to the terminal's foreground group.
                if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } == 0 {
                    self.screen.screen_mut().set_size(rows, cols);
                    Reply::Ok(0)
                } else {
                    Reply::Err(std::io::Error::last_os_error().to_string())
                }
            }
            Request::Screen => {
                self.pump();
                Reply::Screen(self.screen.screen().contents())
            }
            Request::Kill { signal, grace_ms } => {
                self.kill = Some((signal, Duration::from_millis(grace_ms)));
                Reply::Ok(0)
            }
            Request::CloseStdin => Reply::Err("a pty task has a terminal, not a stdin pipe; send ctrl-d to end its input".into()),
            Request::Go | Request::Recorded | Request::Attach => Reply::Err("unknown request".into()),
        }
    }

    fn attach(&mut self) -> Option<Vec<u8>> {
        // Clear the person's screen, then draw the program's as it is now.
        let mut paint = b"\x1b[H\x1b[2J".to_vec();
        paint.extend(self.screen.screen().state_formatted());
        Some(paint)
    }

    fn input(&mut self, bytes: &[u8]) {
        write_master(&self.master, bytes);
    }
}
