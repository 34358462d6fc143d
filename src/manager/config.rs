//! Manager options and spawn requests: defaults of API.md, validation before any I/O.

use super::*;

pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// Largest input one `write` takes.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_ROWS: u16 = 24;
pub const DEFAULT_COLS: u16 = 80;
pub const MAX_SESSION_ID_BYTES: usize = 512;

/// Variables set by `agentEnv: true` so programs neither page, prompt, colour nor buffer.
pub const AGENT_ENV: &[(&str, &str)] = &[
    ("NO_COLOR", "1"),
    ("FORCE_COLOR", "0"),
    ("CLICOLOR", "0"),
    ("TERM", "dumb"),
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("MANPAGER", "cat"),
    ("SYSTEMD_PAGER", ""),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("PYTHONUNBUFFERED", "1"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("npm_config_progress", "false"),
    ("npm_config_fund", "false"),
];

#[derive(Debug, Clone)]
pub struct Config {
    pub storage_dir: PathBuf,
    pub harness: String,
    pub max_running: usize,
    pub default_timeout_ms: u64,
    pub kill_grace_ms: u64,
    pub shell: String,
    pub retention_ms: u64,
    pub long_running_interval_ms: u64,
    pub agent_env: bool,
    pub output_cap_bytes: u64,
    pub durability: crate::store::Durability,
}

/// Manager options as given (all optional); `Config::resolve` applies API.md's defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub storage_dir: Option<String>,
    pub harness: Option<String>,
    pub max_running: Option<u64>,
    pub default_timeout_ms: Option<u64>,
    pub kill_grace_ms: Option<u64>,
    pub shell: Option<String>,
    pub retention_ms: Option<u64>,
    pub long_running_interval_ms: Option<u64>,
    pub agent_env: Option<bool>,
    pub output_cap_bytes: Option<u64>,
    pub durability: Option<String>,
}

impl Config {
    pub fn resolve(o: Options) -> Result<Config> {
        let storage_dir = match o.storage_dir {
            Some(d) if d.is_empty() => return Err(Error::invalid("storageDir must not be empty")),
            Some(d) => absolute(Path::new(&d)),
            None => default_storage_dir()?,
        };
        let harness = o.harness.unwrap_or_else(|| "default".into());
        if harness.is_empty() || !harness.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return Err(Error::invalid(format!("harness {harness:?} must match [a-z0-9_-]+")));
        }
        let max_running = o.max_running.unwrap_or(16) as usize;
        if max_running == 0 {
            return Err(Error::invalid("maxRunning must be at least 1"));
        }
        let shell = match o.shell {
            Some(s) if s.is_empty() => return Err(Error::invalid("shell must not be empty")),
            Some(s) => s,
            None => default_shell(),
        };
        let durability = match o.durability.as_deref() {
            None => crate::store::Durability::default(),
            Some(d) => crate::store::Durability::parse(d)
                .ok_or_else(|| Error::invalid(format!("durability must be 'batched' or 'strict' (got {d:?})")))?,
        };
        Ok(Config {
            durability,
            storage_dir,
            harness,
            max_running,
            default_timeout_ms: o.default_timeout_ms.unwrap_or(1_800_000),
            kill_grace_ms: o.kill_grace_ms.unwrap_or(2000),
            shell,
            retention_ms: o.retention_ms.unwrap_or(24 * 3600 * 1000),
            long_running_interval_ms: o.long_running_interval_ms.unwrap_or(600_000),
            agent_env: o.agent_env.unwrap_or(false),
            output_cap_bytes: o.output_cap_bytes.unwrap_or(100 * 1024 * 1024),
        })
    }
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|c| c.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell, else ~/.local/state/bgshell, in the process's
/// environment.
pub fn default_storage_dir() -> Result<PathBuf> {
    storage_dir_in(|k| std::env::var_os(k).map(PathBuf::from))
        .map(|p| absolute(&p))
        .ok_or_else(|| Error::invalid("no storageDir given and neither BGSHELL_HOME, XDG_STATE_HOME nor HOME is set"))
}

/// The default store location in an environment given by `var` (the bindings pass JS's
/// `process.env`, which Bun does not mirror into the native one). Empty variables count as unset.
pub fn storage_dir_in(var: impl Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    let var = |k: &str| var(k).filter(|v| !v.as_os_str().is_empty());
    if let Some(h) = var("BGSHELL_HOME") {
        return Some(h);
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return Some(x.join("bgshell"));
    }
    var("HOME").map(|h| h.join(".local/state/bgshell"))
}

/// $BASH if it exists, else `bash` on PATH, else /bin/sh.
fn default_shell() -> String {
    if let Some(b) = std::env::var_os("BASH").map(PathBuf::from).filter(|p| p.is_file()) {
        return b.display().to_string();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bash");
            if candidate.is_file() {
                return candidate.display().to_string();
            }
        }
    }
    "/bin/sh".into()
}

#[derive(Debug, Clone, Default)]
pub struct SpawnRequest {
    pub session_id: String,
    pub command: String,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout_ms: Option<u64>,
    pub notify_on_completion: Option<bool>,
    pub compressed: Option<bool>,
    pub project_root: Option<String>,
    pub mode: Mode,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
    pub agent_env: Option<bool>,
    /// Pipes mode: the command's stdin is a pipe held by its supervisor (write, closeStdin).
    pub stdin_pipe: bool,
    pub label: Option<String>,
}

/// Longest `label`, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// A label is a short human name: 1..=128 bytes, no control characters (it is shown on one line).
pub fn validate_label(label: &str) -> Result<()> {
    if label.trim().is_empty() || label.len() > MAX_LABEL_BYTES {
        return Err(Error::invalid(format!("label must be 1 to {MAX_LABEL_BYTES} bytes of visible text (got {} bytes)", label.len())));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!("label {label:?} contains the control character {c:?}; a label is shown on one line")));
    }
    Ok(())
}

pub fn validate_session_id(session_id: &str) -> Result<()> {
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_BYTES || session_id.contains('\0') {
        return Err(Error::invalid(format!(
            "sessionId must be 1 to {MAX_SESSION_ID_BYTES} bytes without NUL (got {} bytes)",
            session_id.len()
        )));
    }
    Ok(())
}

impl SpawnRequest {
    /// Checks everything that can be checked without touching the disk.
    pub fn validate(&self) -> Result<()> {
        validate_session_id(&self.session_id)?;
        if self.command.trim().is_empty() {
            return Err(Error::invalid("command is empty; give the shell text to run"));
        }
        if self.command.contains('\0') {
            return Err(Error::invalid("command contains a NUL byte, which no shell can run"));
        }
        if self.command.len() > MAX_COMMAND_BYTES {
            return Err(Error::invalid(format!("command is {} bytes; the limit is {MAX_COMMAND_BYTES} (1 MiB)", self.command.len())));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid(format!("env entry {k:?} is not a valid variable (no '=', no NUL, not empty)")));
            }
        }
        if let Some(label) = &self.label {
            validate_label(label)?;
        }
        if self.stdin_pipe && self.mode == Mode::Pty {
            return Err(Error::invalid("stdin: 'pipe' is for pipes tasks; a pty task takes input through write() already"));
        }
        if let Some(cwd) = &self.cwd {
            if cwd.contains('\0') {
                return Err(Error::invalid("cwd contains a NUL byte"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_store_location_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| PathBuf::from(v))
        };
        assert_eq!(storage_dir_in(env(&[("BGSHELL_HOME", "/b"), ("XDG_STATE_HOME", "/x/"), ("HOME", "/h")])), Some(PathBuf::from("/b")));
        assert_eq!(
            storage_dir_in(env(&[("BGSHELL_HOME", ""), ("XDG_STATE_HOME", "/x/"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/bgshell"))
        );
        assert_eq!(storage_dir_in(env(&[("XDG_STATE_HOME", ""), ("HOME", "/h")])), Some(PathBuf::from("/h/.local/state/bgshell")));
        assert_eq!(storage_dir_in(env(&[])), None);
    }
}
