//! Requests over the admin socket and their replies (blocking; ringctl does one thing at a
//! time): one call, a kept connection for repeated calls, or a stream.
use ringpost_admin_proto::{decode, encode, Reply, Request};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Send `request` and wait for its reply.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> std::io::Result<Reply> {
    Conn::open(path, timeout)?.call(request)
}

/// One connection to the daemon kept for several requests, one at a time (`--every`): the
/// daemon serves any number of requests per connection, so polling needs no new process and
/// no new connection per poll.
pub struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
    next_id: u32,
}

impl Conn {
    /// Connect, with `timeout` on every read and write.
    pub fn open(path: &Path, timeout: Duration) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn { s, buf: Vec::new(), next_id: std::process::id() })
    }

    /// Send `request` and wait for its reply.
    pub fn call(&mut self, request: &Request) -> std::io::Result<Reply> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.s.write_all(&encode(id, request).map_err(std::io::Error::other)?)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match decode::<Reply>(&self.buf).map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))? {
                Some((got, reply, used)) if got == id || matches!(reply, Reply::Error(_)) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Some((got, _, _)) => return Err(std::io::Error::other(format!("reply for request {got}, expected {id}"))),
                None => {}
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the daemon closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
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
