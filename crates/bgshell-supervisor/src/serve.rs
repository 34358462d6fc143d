//! The request socket `<id>.sock` (0600) in the task's directory, served by the supervisor of a
//! pty task or of a pipes task spawned with `stdin: 'pipe'`. Any manager connects and sends
//! line requests (`bgshell_common::protocol`), one reply each. A client that sends `attach`
//! (pty only) then gets the screen and everything the program prints, and what it sends is
//! typed into the terminal.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::Args;
use bgshell_common::protocol::{Reply, Request};

/// An attached client further behind than this is dropped rather than buffered for.
const MAX_PENDING: usize = 8 * 1024 * 1024;

pub fn cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setting a flag on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: reading and setting the status flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `bytes` to a non-blocking descriptor, waiting (bounded) while it is full.
/// Returns how many bytes went in, and the error that stopped it early, if any.
pub fn write_bounded(fd: i32, bytes: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut done = 0;
    let give_up = Instant::now() + Duration::from_secs(5);
    while done < bytes.len() && Instant::now() < give_up {
        // SAFETY: writing from a valid slice to our own descriptor.
        let n = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::Interrupted {
            return (done, Some(err));
        }
        let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 50) };
    }
    (done, None)
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    /// `attach`ed: raw output goes out, raw input comes in.
    attached: bool,
    outbuf: Vec<u8>,
}

/// What the task's supervision does with requests.
pub trait Handler {
    fn request(&mut self, req: Request) -> Reply;
    /// `attach`: the bytes that paint the current screen, or None when this task has no terminal.
    fn attach(&mut self) -> Option<Vec<u8>>;
    /// Input typed by an attached client.
    fn input(&mut self, bytes: &[u8]);
}

pub struct Server {
    listener: Listener,
    clients: Vec<Client>,
}

impl Server {
    pub fn new(listener: Listener) -> Server {
        Server { listener, clients: Vec::new() }
    }

    /// The descriptors to poll for reading: the listener, then each client.
    pub fn fds(&self) -> Vec<Option<i32>> {
        let mut fds = vec![Some(self.listener.inner.as_raw_fd())];
        fds.extend(self.clients.iter().map(|c| Some(c.stream.as_raw_fd())));
        fds
    }

    /// Whether output waits for a slow attached client (poll then wakes up now and then).
    pub fn pending(&self) -> bool {
        self.clients.iter().any(|c| !c.outbuf.is_empty())
    }

    /// Serves what `ready` (flags for `fds()`, in order) says can be read.
    pub fn serve(&mut self, ready: &[bool], handler: &mut dyn Handler) {
        // Clients accepted below were not part of this poll: only the first `polled` have a flag.
        let polled = self.clients.len();
        if ready.first() == Some(&true) {
            while let Ok((stream, _)) = self.listener.inner.accept() {
                let _ = stream.set_nonblocking(true);
                self.clients.push(Client { stream, inbuf: Vec::new(), attached: false, outbuf: Vec::new() });
            }
        }
        let mut closed = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate().take(polled) {
            if !ready.get(1 + i).copied().unwrap_or(false) {
                continue;
            }
            let mut chunk = [0u8; 64 * 1024];
            match c.stream.read(&mut chunk) {
                Ok(0) => closed.push(i),
                Ok(n) if c.attached => handler.input(&chunk[..n]),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&chunk[..n]);
                    while let Some(nl) = c.inbuf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = c.inbuf.drain(..=nl).collect();
                        let request = Request::parse(&String::from_utf8_lossy(&line));
                        if request == Some(Request::Attach) {
                            match handler.attach() {
                                Some(paint) => {
                                    reply(&mut c.stream, &Reply::Ok(0));
                                    c.attached = true;
                                    c.outbuf = paint;
                                    // What followed the request line is already typed input.
                                    let rest = std::mem::take(&mut c.inbuf);
                                    if !rest.is_empty() {
                                        handler.input(&rest);
                                    }
                                    break;
                                }
                                None => reply(&mut c.stream, &Reply::Err("this task has no terminal to attach to".into())),
                            }
                            continue;
                        }
                        let answer = match request {
                            Some(r) => handler.request(r),
                            None => Reply::Err("unknown request".into()),
                        };
                        reply(&mut c.stream, &answer);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            self.clients.remove(i);
        }
        self.flush();
    }

    /// Sends what the program printed to every attached client.
    pub fn broadcast(&mut self, bytes: &[u8]) {
        for c in self.clients.iter_mut().filter(|c| c.attached) {
            c.outbuf.extend_from_slice(bytes);
        }
        self.flush();
    }

    fn flush(&mut self) {
        self.clients.retain_mut(|c| {
            while !c.outbuf.is_empty() {
                match c.stream.write(&c.outbuf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        c.outbuf.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            c.outbuf.len() <= MAX_PENDING
        });
    }

    /// Stops serving: the socket file goes, clients see EOF.
    pub fn close(mut self) {
        self.flush();
        let _ = self.listener.remove();
    }
}

fn reply(stream: &mut UnixStream, reply: &Reply) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(reply.render().as_bytes());
    let _ = stream.set_nonblocking(true);
}

/// The request socket `<id>.sock`, bound through the directory's descriptor so a long store
/// path never exceeds the 108-byte limit of a socket address.
pub struct Listener {
    inner: UnixListener,
    dir: OwnedFd,
    name: std::ffi::CString,
}

impl Listener {
    pub fn remove(&self) -> std::io::Result<()> {
        // SAFETY: unlinkat relative to our own directory descriptor.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

pub fn listen(args: &Args) -> std::io::Result<Listener> {
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
    // std creates the socket close-on-exec.
    let inner = bound?;
    inner.set_nonblocking(true)?;
    Ok(Listener { inner, dir, name })
}
