//! Server configuration as the command line spells it.

use std::path::PathBuf;
use std::str::FromStr;

use crate::transport::ListenAddr;

/// One `--export NAME=PATH[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// Name the guest mounts it by.
    pub name: String,
    /// Host directory.
    pub path: PathBuf,
    /// Refuse every mutation with EROFS.
    pub read_only: bool,
}

/// An export specification that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --export {input:?}: {why} (expected NAME=PATH or NAME=PATH:ro)")]
pub struct BadExportSpec {
    input: String,
    why: String,
}

impl FromStr for ExportSpec {
    type Err = BadExportSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadExportSpec {
            input: s.to_string(),
            why: why.to_string(),
        };
        let (name, mut rest) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        validate_name(name).map_err(|w| bad(&w))?;
        // Options trail the path after a colon; a path may itself contain colons, so only known
        // option words are taken off the end.
        let mut read_only = false;
        loop {
            if let Some(p) = rest.strip_suffix(":ro") {
                read_only = true;
                rest = p;
            } else if let Some(p) = rest.strip_suffix(":rw") {
                rest = p;
            } else {
                break;
            }
        }
        if rest.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(ExportSpec {
            name: name.to_string(),
            path: PathBuf::from(rest),
            read_only,
        })
    }
}

/// Export names appear in mount tables and log lines: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 64 {
        return Err("name longer than 64 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} not allowed in a name (use A-Z a-z 0-9 - _ .)"
        ));
    }
    Ok(())
}

/// Everything `ferry-host` needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Exports, in export-id order.
    pub exports: Vec<ExportSpec>,
    /// Listeners.
    pub listen: Vec<ListenAddr>,
    /// Shared secret for TCP clients (and any client, when set).
    pub token: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_specs() {
        let e: ExportSpec = "src=/home/me/src".parse().unwrap();
        assert_eq!(e.name, "src");
        assert_eq!(e.path, PathBuf::from("/home/me/src"));
        assert!(!e.read_only);
        let e: ExportSpec = "docs=/a:b/c:ro".parse().unwrap();
        assert_eq!(e.path, PathBuf::from("/a:b/c"));
        assert!(e.read_only);
        for bad in ["", "noequals", "=/x", "a b=/x", "x=", "x=:ro", "a/b=/x"] {
            let err = bad.parse::<ExportSpec>().unwrap_err().to_string();
            assert!(err.contains("expected NAME=PATH"), "{bad}: {err}");
        }
    }
}
