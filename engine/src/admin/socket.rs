//! The admin socket file: refuse to start when a live daemon answers on it, replace a stale
//! one, create it owner-only (or owner and group), and remove it when the daemon stops.
//!
//! The socket is bound under a umask of 0177 so it never exists, even for an instant, with
//! wider permissions than 0600; binding happens before any core starts creating files, so the
//! process-wide umask change affects nothing else.
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process accepts connections on the path.
    #[error("admin socket {0}: another ringpost is running and holds it (stop it, or set [admin] socket to another path)")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("admin socket {0}: exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// The configured group does not exist.
    #[error("admin.group {0:?}: no such group")]
    NoGroup(String),
    /// A system call failed.
    #[error("admin socket {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { path: path.to_path_buf(), what, source }
}

/// Make room for the socket at `path`: fail if a live daemon listens there, remove a stale
/// socket file (a crash left it), create the parent directory.
pub fn prepare(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(SocketError::NotASocket(path.into())),
        Ok(_) => {
            if live_daemon_at(path).map_err(io(path, "checking for a live daemon"))? {
                return Err(SocketError::InUse(path.into()));
            }
            std::fs::remove_file(path).map_err(io(path, "removing the stale socket"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, "stat")(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir, "creating the directory"))?;
    }
    Ok(())
}

/// Whether a daemon answers on `path`. A connection alone does not tell: after a crash the
/// dead process's io_uring may keep its listening socket open (and accepting into the
/// backlog) for a moment, so a `Status` request must get an answer; a socket that refuses
/// connections is stale at once.
fn live_daemon_at(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + LIVENESS_WAIT;
    while Instant::now() < deadline {
        let mut s = match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(false),
            Err(e) => return Err(e),
        };
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let ping = ringpost_admin_proto::encode(0, &ringpost_admin_proto::Request::Status).expect("a status request fits a frame");
        let mut byte = [0u8; 1];
        if s.write_all(&ping).is_ok() && matches!(s.read(&mut byte), Ok(1)) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Connectable yet silent for the whole wait: assume a daemon too busy to answer.
    Ok(true)
}

/// How long start-up waits to tell a live daemon from a dying one's socket.
const LIVENESS_WAIT: Duration = Duration::from_secs(5);

/// Bind the listener with mode 0600 from the start; with `group`, hand it to that group and
/// open it to the group (0660).
pub fn bind(path: &Path, group: Option<&str>) -> Result<glommio::net::UnixListener, SocketError> {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = glommio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| io(path, "bind")(std::io::Error::other(e.to_string())))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| io(path, "path")(std::io::Error::other(e)))?;
        // SAFETY: a valid NUL-terminated path; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(io(path, "chown to the admin group")(std::io::Error::last_os_error()));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io(path, "chmod 0660"))?;
    }
    Ok(listener)
}

fn group_id(name: &str) -> Result<libc::gid_t, SocketError> {
    let c = CString::new(name).map_err(|_| SocketError::NoGroup(name.into()))?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is read at once, before any other
    // call could reuse its static buffer (this runs once, at start).
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        return Err(SocketError::NoGroup(name.into()));
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*g).gr_gid })
}

/// Remove the socket file at shutdown, if it is still ours (a socket).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_refused_a_file_kept() {
        let dir = std::env::temp_dir().join(format!("ringpost-admin-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run/a.sock");
        prepare(&path).unwrap();
        assert!(dir.join("run").is_dir(), "the parent directory is made");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(prepare(&path), Err(SocketError::InUse(_))));
        drop(live);
        prepare(&path).expect("a socket nobody listens on is stale");
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(prepare(&path), Err(SocketError::NotASocket(_))));
        assert!(path.exists(), "a regular file is never removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
