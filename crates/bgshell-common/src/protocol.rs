//! The line protocol between a manager and a task's supervisor, over the socketpair the supervisor
//! gets as its stdin.
//!
//! supervisor -> manager:
//!   `started <pid> <start_ticks>`            the command runs; pid is also its process group
//!   `spawn-error <errno> <message>`          the command could not be started
//!   `exit <code> <signal|-> <finished_at_ms> <timed_out 0|1> [<max_rss_kb> <user_ms> <system_ms>]`
//!                                            the command ended. The supervisor then waits for
//!                                            `recorded`; without it (the manager closed, failed
//!                                            to write, or did not answer in time) it writes the
//!                                            exit marker.
//!                                            The resource use is `wait4`'s for the command: its
//!                                            own and that of the descendants it reaped.
//! manager -> supervisor:
//!   `go`                                     start the command (`--await-go`: the record is durable)
//!   `kill <signo> <grace_ms>`                signal the group, SIGKILL it after the grace
//!   `recorded`                               (after `exit`) the end is in the manager's record:
//!                                            no exit marker is needed
//!
//! pty tasks, and pipes tasks spawned with `stdin: 'pipe'`: the supervisor also listens on
//! `<id>.sock` in the task's directory (0600). Any manager connects, sends one request and reads
//! one reply:
//!   `write <hex bytes>` -> `ok <bytes written>`;  `resize <rows> <cols>` -> `ok 0` (pty);
//!   `screen` -> `screen <hex utf-8 text>` (pty);  `close-stdin` -> `ok 0` (pipes: EOF to the
//!   program; idempotent);  `kill <signo> <grace_ms>` -> `ok 0`;  any failure -> `err <message>`
//!   `attach` (pty) -> `ok 0`, then the connection is a terminal: the supervisor sends the screen
//!   as it is now (escape sequences that clear and paint it), then every byte the program prints;
//!   every byte the client sends is typed into the terminal. Either side closes to end it (the
//!   supervisor does when the task ends). Resizes go over a separate `resize` request.

/// Exit code of a task killed by its deadline, as `timeout(1)` reports it.
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Exit code recorded when the command could not be started, as a shell reports it.
pub const SPAWN_FAILED_EXIT_CODE: i32 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Started { pid: i32, start_ticks: u64 },
    SpawnError { errno: i32, message: String },
    Exit { code: i32, signal: Option<i32>, finished_at: u64, timed_out: bool, usage: Option<Usage> },
}

/// Resource use of a task's process tree, as far as it was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub max_rss_kb: u64,
    pub user_ms: u64,
    pub system_ms: u64,
}

impl Report {
    pub fn render(&self) -> String {
        match self {
            Report::Started { pid, start_ticks } => format!("started {pid} {start_ticks}\n"),
            Report::SpawnError { errno, message } => {
                format!("spawn-error {errno} {}\n", message.replace('\n', " "))
            }
            Report::Exit { code, signal, finished_at, timed_out, usage } => format!(
                "exit {code} {} {finished_at} {}{}\n",
                signal.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                u8::from(*timed_out),
                usage.map(|u| format!(" {} {} {}", u.max_rss_kb, u.user_ms, u.system_ms)).unwrap_or_default()
            ),
        }
    }

    pub fn parse(line: &str) -> Option<Report> {
        let mut parts = line.trim_end().splitn(2, ' ');
        let kind = parts.next()?;
        let rest = parts.next().unwrap_or("");
        match kind {
            "started" => {
                let mut f = rest.split(' ');
                Some(Report::Started { pid: f.next()?.parse().ok()?, start_ticks: f.next()?.parse().ok()? })
            }
            "spawn-error" => {
                let (errno, message) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Report::SpawnError { errno: errno.parse().ok()?, message: message.to_string() })
            }
            "exit" => {
                let f: Vec<&str> = rest.split(' ').collect();
                let usage = match f.len() {
                    4 => None,
                    7 => Some(Usage { max_rss_kb: f[4].parse().ok()?, user_ms: f[5].parse().ok()?, system_ms: f[6].parse().ok()? }),
                    _ => return None,
                };
                Some(Report::Exit {
                    code: f[0].parse().ok()?,
                    signal: if f[1] == "-" { None } else { Some(f[1].parse().ok()?) },
                    finished_at: f[2].parse().ok()?,
                    timed_out: f[3] == "1",
                    usage,
                })
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Go,
    Recorded,
    Kill { signal: i32, grace_ms: u64 },
    Write(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    Screen,
    CloseStdin,
    Attach,
}

impl Request {
    pub fn render(&self) -> String {
        match self {
            Request::Go => "go\n".to_string(),
            Request::Recorded => "recorded\n".to_string(),
            Request::Kill { signal, grace_ms } => format!("kill {signal} {grace_ms}\n"),
            Request::Write(bytes) => format!("write {}\n", hex_encode(bytes)),
            Request::Resize { rows, cols } => format!("resize {rows} {cols}\n"),
            Request::Screen => "screen\n".to_string(),
            Request::CloseStdin => "close-stdin\n".to_string(),
            Request::Attach => "attach\n".to_string(),
        }
    }

    pub fn parse(line: &str) -> Option<Request> {
        let f: Vec<&str> = line.trim_end().split(' ').collect();
        match f.as_slice() {
            ["go"] => Some(Request::Go),
            ["recorded"] => Some(Request::Recorded),
            ["kill", sig, grace] => Some(Request::Kill { signal: sig.parse().ok()?, grace_ms: grace.parse().ok()? }),
            ["write", hex] => Some(Request::Write(hex_decode(hex)?)),
            ["write"] => Some(Request::Write(Vec::new())),
            ["resize", rows, cols] => Some(Request::Resize { rows: rows.parse().ok()?, cols: cols.parse().ok()? }),
            ["screen"] => Some(Request::Screen),
            ["close-stdin"] => Some(Request::CloseStdin),
            ["attach"] => Some(Request::Attach),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(u64),
    Screen(String),
    Err(String),
}

impl Reply {
    pub fn render(&self) -> String {
        match self {
            Reply::Ok(n) => format!("ok {n}\n"),
            Reply::Screen(text) => format!("screen {}\n", hex_encode(text.as_bytes())),
            Reply::Err(msg) => format!("err {}\n", msg.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim_end_matches('\n');
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "ok" => Some(Reply::Ok(rest.parse().ok()?)),
            "screen" => Some(Reply::Screen(String::from_utf8(hex_decode(rest)?).ok()?)),
            "err" => Some(Reply::Err(rest.to_string())),
            _ => None,
        }
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

const SIGNALS: &[(i32, &str)] = &[
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGSYS, "SIGSYS"),
];

pub fn signal_name(signal: i32) -> String {
    SIGNALS.iter().find(|(n, _)| *n == signal).map(|(_, name)| (*name).to_string()).unwrap_or_else(|| format!("SIG{signal}"))
}

pub fn signal_number(name: &str) -> Option<i32> {
    SIGNALS.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(num, _)| *num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Started { pid: 42, start_ticks: 9_000_000 },
            Report::SpawnError { errno: 2, message: "No such file or directory".into() },
            Report::Exit { code: 143, signal: Some(15), finished_at: 1_700_000_000_123, timed_out: false, usage: None },
            Report::Exit { code: 124, signal: None, finished_at: 5, timed_out: true, usage: None },
            Report::Exit {
                code: 0,
                signal: None,
                finished_at: 5,
                timed_out: false,
                usage: Some(Usage { max_rss_kb: 12_345, user_ms: 1500, system_ms: 20 }),
            },
        ] {
            assert_eq!(Report::parse(&r.render()), Some(r));
        }
        assert_eq!(Report::parse("exit 1 2"), None);
        for r in [
            Request::Go,
            Request::Recorded,
            Request::Kill { signal: 15, grace_ms: 2000 },
            Request::Write(b"hi\r\x1b[A\x00\xff".to_vec()),
            Request::Write(Vec::new()),
            Request::Resize { rows: 50, cols: 120 },
            Request::Screen,
            Request::CloseStdin,
            Request::Attach,
        ] {
            assert_eq!(Request::parse(&r.render()), Some(r));
        }
        for r in [Reply::Ok(5), Reply::Screen("a €\nb".into()), Reply::Err("no such thing".into())] {
            assert_eq!(Reply::parse(&r.render()), Some(r));
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_number("sigkill"), Some(libc::SIGKILL));
        assert_eq!(signal_name(77), "SIG77");
    }
}
