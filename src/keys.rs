//! Key names for `write` (API.md): what a terminal sends for each.

use crate::error::{Error, Result};

/// The bytes a terminal sends for `name` (case-insensitive), or E_INVALID.
pub fn key_bytes(name: &str) -> Result<Vec<u8>> {
    let lower = name.to_ascii_lowercase();
    let fixed: &[u8] = match lower.as_str() {
        "enter" | "return" => b"\r",
        "tab" => b"\t",
        "space" => b" ",
        "backspace" => b"\x7f",
        "esc" | "escape" => b"\x1b",
        "up" => b"\x1b[A",
        "down" => b"\x1b[B",
        "right" => b"\x1b[C",
        "left" => b"\x1b[D",
        "home" => b"\x1b[H",
        "end" => b"\x1b[F",
        "page-up" => b"\x1b[5~",
        "page-down" => b"\x1b[6~",
        "delete" => b"\x1b[3~",
        "insert" => b"\x1b[2~",
        "f1" => b"\x1bOP",
        "f2" => b"\x1bOQ",
        "f3" => b"\x1bOR",
        "f4" => b"\x1bOS",
        "f5" => b"\x1b[15~",
        "f6" => b"\x1b[17~",
        "f7" => b"\x1b[18~",
        "f8" => b"\x1b[19~",
        "f9" => b"\x1b[20~",
        "f10" => b"\x1b[21~",
        "f11" => b"\x1b[23~",
        "f12" => b"\x1b[24~",
        _ => {
            if let Some(c) = lower.strip_prefix("ctrl-").filter(|c| c.len() == 1) {
                let b = c.as_bytes()[0];
                if b.is_ascii_lowercase() {
                    return Ok(vec![b - b'a' + 1]);
                }
            }
            return Err(Error::invalid(format!(
                "unknown key {name:?}: use enter, tab, space, backspace, esc, up, down, left, right, home, end, page-up, page-down, delete, insert, f1..f12 or ctrl-a..ctrl-z"
            )));
        }
    };
    Ok(fixed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key_bytes("Enter").unwrap(), b"\r");
        assert_eq!(key_bytes("UP").unwrap(), b"\x1b[A");
        assert_eq!(key_bytes("ctrl-a").unwrap(), [1]);
        assert_eq!(key_bytes("Ctrl-Z").unwrap(), [26]);
        assert_eq!(key_bytes("f12").unwrap(), b"\x1b[24~");
        for bad in ["ctrl-1", "f13", "hyper", "ctrl-", ""] {
            assert_eq!(key_bytes(bad).unwrap_err().code, crate::error::Code::Invalid, "{bad}");
        }
    }
}
