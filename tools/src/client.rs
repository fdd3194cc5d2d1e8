//! One request over the admin socket, one reply back (blocking; ringctl does one thing).
use ringpost_admin_proto::{decode, encode, Reply, Request};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Send `request` and wait for its reply.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let id = std::process::id();
    s.write_all(&encode(id, request).map_err(std::io::Error::other)?)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match decode::<Reply>(&buf).map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))? {
            Some((got, reply, _)) if got == id || matches!(reply, Reply::Error(_)) => return Ok(reply),
            Some((got, _, _)) => return Err(std::io::Error::other(format!("reply for request {got}, expected {id}"))),
            None => {}
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the daemon closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Send a streaming `request` and hand each reply to `each` until it returns false, the
/// daemon closes, or `stop` is set (checked at least every `tick`). Returns the last reply.
pub fn stream(
    path: &Path,
    request: &Request,
    tick: Duration,
    stop: &dyn Fn() -> bool,
    each: &mut dyn FnMut(&Reply) -> bool,
) -> std::io::Result<Option<Reply>> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(tick))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let id = std::process::id();
    s.write_all(&encode(id, request).map_err(std::io::Error::other)?)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut last = None;
    loop {
        while let Some((_, reply, used)) = decode::<Reply>(&buf).map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))? {
            buf.drain(..used);
            let go_on = each(&reply) && !matches!(reply, Reply::Error(_));
            last = Some(reply);
            if !go_on {
                return Ok(last);
            }
        }
        if stop() {
            return Ok(last);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(last),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
}
