//! Task ids and session hashes: the only strings that ever become path components.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Ids read from disk may be any `[A-Za-z0-9_-]{1,64}`; everything else is refused before it
/// touches a path.
pub fn validate_task_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "task id {id:?} is not valid: expected 1 to 64 characters of [A-Za-z0-9_-], like \"bash-0123456789abcdef\""
        )))
    }
}

/// `bash-` + 16 lowercase hex characters from the OS random source.
pub fn new_task_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    format!("bash-{}", hex(&bytes))
}

/// Lowercase hex of the first 8 bytes of SHA-256(session id).
pub fn session_hash(session_id: &str) -> String {
    hex(&Sha256::digest(session_id.as_bytes())[..8])
}

/// The name of a session directory: 16 lowercase hex characters.
pub fn is_session_hash(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_prefix16(data: &[u8]) -> String {
    hex(&Sha256::digest(data)[..8])
}

fn hex(bytes: &[u8]) -> String {
    // Digit by digit, not a `format!` per byte: a replay checks the session hash of every bundle.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["bash-0123456789abcdef", "abcd1234", "A_b-9", &"x".repeat(64)] {
            assert!(validate_task_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "a.b", "x y", "é", &"x".repeat(65), "a\0b"] {
            let err = validate_task_id(bad).unwrap_err();
            assert_eq!(err.code, crate::error::Code::Invalid, "{bad}");
        }
        let id = new_task_id();
        assert_eq!(id.len(), 21);
        assert!(id.starts_with("bash-") && id[5..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new_task_id(), id);
    }

    #[test]
    fn session_hash_is_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(session_hash("abc"), "ba7816bf8f01cfea");
        assert_eq!(session_hash("abc").len(), 16);
    }
}
