//! Requests over the admin socket and their replies (blocking; ringctl does one thing at a
//! time): one call, a kept connection for repeated calls, or a stream.
use ringpost_admin_proto::{decode, encode, Reply, Request};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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
    timeout: Duration,
}

/// The longest a wait for a reply goes without asking whether to stop.
pub const WAIT_TICK: Duration = Duration::from_millis(100);

impl Conn {
    /// Connect, with `timeout` on every write and on the wait for each reply.
    pub fn open(path: &Path, timeout: Duration) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        // Reads wake up at least every WAIT_TICK, so a stop asked for while a reply is awaited
        // is seen within a tick (a signal can land just before the read, where no EINTR helps).
        s.set_read_timeout(Some(timeout.min(WAIT_TICK)))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn { s, buf: Vec::new(), next_id: std::process::id(), timeout })
    }

    /// Send `request` and wait for its reply.
    pub fn call(&mut self, request: &Request) -> std::io::Result<Reply> {
        self.call_until(request, || false)
    }

    /// As [`Conn::call`], but `stopped` is asked at least every [`WAIT_TICK`] while the reply
    /// is awaited; once it says true the wait ends with an `Interrupted` error.
    pub fn call_until(&mut self, request: &Request, stopped: impl Fn() -> bool) -> std::io::Result<Reply> {
        let deadline = Instant::now() + self.timeout;
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
            let n = match self.s.read(&mut chunk) {
                Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "the daemon closed the connection")),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if stopped() {
                        return Err(std::io::Error::new(ErrorKind::Interrupted, "stopped while awaiting the reply"));
                    }
                    if Instant::now() >= deadline {
                        return Err(std::io::Error::new(ErrorKind::TimedOut, "no reply from the daemon in time"));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
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
