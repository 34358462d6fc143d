//! PTY tasks (write, resize, screen) and the stdin pipe of pipes tasks (write, closeStdin),
//! through the supervisor's socket.

use super::*;

/// One piece of `write` input: text as given, or a named key.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Key(String),
}

/// How long `write`, `closeStdin` and `resize` wait for the supervisor's answer.
const SUPERVISOR_ANSWER: Duration = Duration::from_secs(6);

impl Manager {
    /// A running pty task's record, or the error API.md names for every other case.
    fn running_pty(&self, task_id: &str) -> Result<TaskRecord> {
        self.running_with_input(task_id, false)
    }

    /// A running task that takes input: a pty task, or (`pipe_ok`) a pipes task spawned with
    /// `stdin: 'pipe'`.
    fn running_with_input(&self, task_id: &str, pipe_ok: bool) -> Result<TaskRecord> {
        let rec = self.get_any(task_id)?;
        let has_pipe = rec.mode == Mode::Pipes && rec.stdin.as_deref() == Some("pipe");
        if rec.mode != Mode::Pty && !(pipe_ok && has_pipe) {
            let msg = if pipe_ok {
                format!("task {task_id} runs with pipes and its stdin is /dev/null; spawn it with stdin: 'pipe' (or mode: 'pty') to give it input")
            } else {
                format!("task {task_id} runs with pipes, not a terminal; only pty tasks have a terminal")
            };
            return Err(Error::new(Code::NotPty, msg));
        }
        if rec.is_terminal() {
            return Err(Error::new(Code::Exited, format!("task {task_id} has ended ({}); it takes no more input", rec.status.as_str())));
        }
        Ok(rec)
    }

    fn get_any(&self, task_id: &str) -> Result<TaskRecord> {
        self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))
    }

    /// One request to the task's supervisor over its socket (short, local, bounded by a timeout).
    fn pty_request(&self, rec: &TaskRecord, request: &Request) -> Result<crate::protocol::Reply> {
        use std::io::{BufRead, Write};
        let paths = self.paths(rec)?;
        let gone = || Error::new(Code::Exited, format!("task {} has ended; it takes no more input", rec.task_id));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&paths.dir)
            .map_err(|e| Error::io(&paths.dir, &e))?;
        let mut stream = bgshell_sys::connect_in(std::os::fd::AsFd::as_fd(&dir), &format!("{}.sock", rec.task_id)).map_err(|_| gone())?;
        drop(dir);
        // A supervisor answers at once, or after at most 5 s of a full terminal input buffer
        // (serve::write_bounded); one that does not answer by then is stopped or stuck, and the
        // JS thread waiting here is not kept longer.
        let silent = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::new(
                Code::Io,
                format!(
                    "the supervisor of task {} did not answer within {} s (stopped or stuck); the input may not have reached it",
                    rec.task_id,
                    SUPERVISOR_ANSWER.as_secs()
                ),
            ),
            _ => gone(),
        };
        let _ = stream.set_read_timeout(Some(SUPERVISOR_ANSWER));
        let _ = stream.set_write_timeout(Some(SUPERVISOR_ANSWER));
        stream.write_all(request.render().as_bytes()).map_err(silent)?;
        let mut line = String::new();
        std::io::BufReader::new(&stream).read_line(&mut line).map_err(silent)?;
        crate::protocol::Reply::parse(&line).ok_or_else(gone)
    }

    /// Types into a pty task: text as given, keys as a terminal sends them, in one write.
    pub fn write(&self, task_id: &str, input: &[Input]) -> Result<u64> {
        self.check_open()?;
        let rec = self.running_with_input(task_id, true)?;
        let mut bytes = Vec::new();
        for part in input {
            match part {
                Input::Text(t) => bytes.extend_from_slice(t.as_bytes()),
                Input::Key(k) => bytes.extend(crate::keys::key_bytes(k)?),
            }
            if bytes.len() > MAX_WRITE_BYTES {
                return Err(Error::new(Code::TooLarge, format!("input is over {MAX_WRITE_BYTES} bytes (1 MiB); send it in parts")));
            }
        }
        match self.pty_request(&rec, &Request::Write(bytes))? {
            crate::protocol::Reply::Ok(n) => Ok(n),
            crate::protocol::Reply::Err(msg) if msg.starts_with("closed: ") => {
                Err(Error::invalid(format!("task {task_id} takes no more input: {}", &msg["closed: ".len()..])))
            }
            other => Err(Error::new(Code::Io, format!("writing to task {task_id} failed: {other:?}"))),
        }
    }

    /// EOF to a pipes task's stdin pipe (`stdin: 'pipe'`); idempotent while it runs.
    pub fn close_stdin(&self, task_id: &str) -> Result<()> {
        self.check_open()?;
        let rec = self.get_any(task_id)?;
        if rec.mode == Mode::Pty {
            return Err(Error::invalid(format!(
                "task {task_id} runs on a terminal, which has no stdin pipe to close; write {{ key: 'ctrl-d' }} to send end-of-input"
            )));
        }
        let rec = self.running_with_input(task_id, true)?;
        match self.pty_request(&rec, &Request::CloseStdin)? {
            crate::protocol::Reply::Ok(_) => Ok(()),
            other => Err(Error::new(Code::Io, format!("closing the stdin of task {task_id} failed: {other:?}"))),
        }
    }

    pub fn resize(&self, task_id: &str, rows: u16, cols: u16) -> Result<()> {
        self.check_open()?;
        let rec = self.running_pty(task_id)?;
        match self.pty_request(&rec, &Request::Resize { rows, cols })? {
            crate::protocol::Reply::Ok(_) => {}
            other => return Err(Error::new(Code::Io, format!("resizing task {task_id} failed: {other:?}"))),
        }
        let resized = |r: &mut TaskRecord| {
            r.pty_rows = Some(rows);
            r.pty_cols = Some(cols);
        };
        let live = self.live.locked().get(task_id).cloned();
        match live {
            Some(l) => self.commit(&l, resized)?,
            None => self.store.update(&rec.session_id, task_id, resized)?,
        };
        Ok(())
    }

    /// The visible screen: the supervisor's live emulator while the task runs, else the
    /// transcript replayed through one. Rows right-trimmed, trailing blank rows dropped.
    pub async fn screen(self: &Arc<Self>, task_id: &str) -> Result<String> {
        let rec = self.get_any(task_id)?;
        if rec.mode != Mode::Pty {
            return Err(Error::new(Code::NotPty, format!("task {task_id} runs with pipes; use tail or readOutput for its output")));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if !rec.is_terminal() {
                if let Ok(crate::protocol::Reply::Screen(text)) = me.pty_request(&rec, &Request::Screen) {
                    return Ok(tidy_screen(&text));
                }
            }
            let path = me.paths(&rec)?.pty;
            let bytes = match fsutil::read_nofollow(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(&path, &e)),
            };
            let (rows, cols) = (rec.pty_rows.unwrap_or(DEFAULT_ROWS), rec.pty_cols.unwrap_or(DEFAULT_COLS));
            let rendered = std::panic::catch_unwind(|| {
                let mut parser = vt100::Parser::new(rows, cols, 0);
                parser.process(&bytes);
                parser.screen().contents()
            });
            Ok(match rendered {
                Ok(text) => tidy_screen(&text),
                Err(_) => {
                    let tail = &bytes[bytes.len().saturating_sub(4096)..];
                    format!("[screen could not be rendered; raw end of the transcript follows]\n{}", String::from_utf8_lossy(tail))
                }
            })
        })
        .await
        .map_err(|e| Error::new(Code::Io, e.to_string()))?
    }
}

fn tidy_screen(text: &str) -> String {
    let mut lines: Vec<&str> = text.split('\n').map(|l| l.trim_end()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}
