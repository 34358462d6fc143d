//! Errors with the stable codes of API.md. Every message names the offending value.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Invalid,
    NotFound,
    Limit,
    Spawn,
    Io,
    NotPty,
    Exited,
    TooLarge,
    Closed,
    Aborted,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Invalid => "E_INVALID",
            Code::NotFound => "E_NOT_FOUND",
            Code::Limit => "E_LIMIT",
            Code::Spawn => "E_SPAWN",
            Code::Io => "E_IO",
            Code::NotPty => "E_NOT_PTY",
            Code::Exited => "E_EXITED",
            Code::TooLarge => "E_TOO_LARGE",
            Code::Closed => "E_CLOSED",
            Code::Aborted => "E_ABORTED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(Code::Invalid, message)
    }
    pub fn not_found(task_id: &str) -> Self {
        Error::new(Code::NotFound, format!("no task with id {task_id:?} in this store"))
    }
    pub fn closed() -> Self {
        Error::new(Code::Closed, "this TaskManager was closed; create a new one")
    }
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        Error::new(Code::Io, format!("cannot use {}: {err}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}
