//! The control sockets' client side (`ferry status`, `ferry ctl`, `ferry-agent status`): one
//! command line out, the whole answer back.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Sends `command` and a newline to the control socket at `path`; returns everything the
/// server answers until it closes the connection.
pub fn ask(path: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}
