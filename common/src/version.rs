//! What `--version` prints, the same for every Ferry binary.

use std::sync::OnceLock;

/// The package version and the protocol version this build speaks, e.g. `0.1.0 (protocol
/// 2.1)`: a host and an agent whose protocol majors differ refuse each other, so both are
/// printed.
pub fn version() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| {
        let p = ferry_protocol::VERSION;
        format!(
            "{} (protocol {}.{})",
            env!("CARGO_PKG_VERSION"),
            p.major,
            p.minor
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_both_versions() {
        let p = ferry_protocol::VERSION;
        assert_eq!(
            super::version(),
            format!("0.1.0 (protocol {}.{})", p.major, p.minor)
        );
    }
}
