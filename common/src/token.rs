//! The shared token both sides present: one file format, one rule.
//!
//! A token file holds the token's bytes; trailing ASCII whitespace (the newline an editor or
//! `echo` adds, a `\r\n`, stray spaces) is not part of the token. The same file therefore
//! authenticates identically on the host and in the guest.

use std::path::{Path, PathBuf};

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Both a file and a value were given.
    #[error("give either a token file or a token, not both")]
    Both,
    /// The file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing is left once trailing whitespace is dropped.
    #[error("the token is empty")]
    Empty,
}

/// The token from a file (`--token-file`) or given as is (`--token`); `None` when neither.
pub fn load(file: Option<&Path>, value: Option<&str>) -> Result<Option<Vec<u8>>, TokenError> {
    let token = match (file, value) {
        (Some(_), Some(_)) => return Err(TokenError::Both),
        (Some(path), None) => {
            let raw = std::fs::read(path).map_err(|source| TokenError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            trim(&raw).to_vec()
        }
        (None, Some(v)) => v.as_bytes().to_vec(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(Some(token))
}

/// The token in a file's bytes: trailing ASCII whitespace dropped.
fn trim(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &raw[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_lose_trailing_whitespace_only() {
        let dir = tempfile::tempdir().unwrap();
        for (content, want) in [
            (&b"s3cret"[..], &b"s3cret"[..]),
            (b"s3cret\n", b"s3cret"),
            (b"s3cret\n\n", b"s3cret"),
            (b"s3cret\r\n", b"s3cret"),
            (b" s3 cret \t\n", b" s3 cret"),
        ] {
            let p = dir.path().join("t");
            std::fs::write(&p, content).unwrap();
            assert_eq!(load(Some(&p), None).unwrap().unwrap(), want, "{content:?}");
        }
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, b"\n\n").unwrap();
        assert!(matches!(load(Some(&p), None), Err(TokenError::Empty)));
        assert!(matches!(load(None, Some("")), Err(TokenError::Empty)));
        assert!(matches!(load(Some(&p), Some("x")), Err(TokenError::Both)));
        let missing = dir.path().join("missing");
        let e = load(Some(&missing), None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(load(None, None).unwrap(), None);
        assert_eq!(load(None, Some("v")).unwrap().unwrap(), b"v");
    }
}
