//! What a task printed: `readOutput` pages and `tail`.

use super::*;

impl Manager {
    fn stream_path(&self, rec: &TaskRecord, stream: Option<Stream>) -> Result<PathBuf> {
        let paths = self.paths(rec)?;
        match (rec.mode, stream) {
            (Mode::Pipes, None | Some(Stream::Stdout)) => Ok(paths.stdout),
            (Mode::Pipes, Some(Stream::Stderr)) => Ok(paths.stderr),
            (Mode::Pty, None | Some(Stream::Pty)) => Ok(paths.pty),
            (mode, Some(s)) => Err(Error::invalid(format!(
                "stream {:?} does not exist for {} task {}",
                format!("{s:?}").to_lowercase(),
                mode.as_str(),
                rec.task_id
            ))),
        }
    }

    pub async fn read_output(
        self: &Arc<Self>,
        task_id: &str,
        stream: Option<Stream>,
        offset: u64,
        max_bytes: u64,
    ) -> Result<crate::output::Page> {
        let rec = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        if stream == Some(Stream::Combined) {
            return Err(Error::invalid("readOutput pages one stream: 'stdout', 'stderr' or 'pty'"));
        }
        let path = self.stream_path(&rec, stream)?;
        let ended = rec.is_terminal();
        tokio::task::spawn_blocking(move || crate::output::read_page(&path, offset, max_bytes, ended).map_err(|e| Error::io(&path, &e)))
            .await
            .map_err(|e| Error::new(Code::Io, e.to_string()))?
    }

    pub async fn tail(
        self: &Arc<Self>,
        task_id: &str,
        stream: Option<Stream>,
        bytes: Option<u64>,
        lines: Option<u64>,
        strip: bool,
    ) -> Result<(String, bool)> {
        let rec = self.get(task_id)?.ok_or_else(|| Error::not_found(task_id))?;
        let files = match stream {
            Some(Stream::Combined) => self.paths(&rec)?.streams(rec.mode),
            other => vec![self.stream_path(&rec, other)?],
        };
        let lines = if bytes.is_none() && lines.is_none() { Some(50) } else { lines };
        tokio::task::spawn_blocking(move || {
            let t = crate::output::tail(&files, bytes, lines);
            (t.text(strip), t.truncated)
        })
        .await
        .map_err(|e| Error::new(Code::Io, e.to_string()))
    }
}
