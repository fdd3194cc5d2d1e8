//! Every network write of the engine: SMTP replies, outbound commands and message bodies.
//!
//! Owns one rule: a write never blocks the core's thread and never waits forever. glommio 0.9
//! makes its sockets in blocking mode, so a plain `write`/`writev` on one stalls the whole
//! executor — every session and the group committer of that core — as soon as the peer stops
//! reading. Here a send is either a non-blocking syscall (`MSG_DONTWAIT`) or glommio's own
//! async write, which waits for writability through io_uring (a poll op) on the reactor.
//!
//! **No copy of the body.** The plain path hands the caller's pieces (the spool's mapped
//! segment slices) to `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` as an iovec, as many as fit in
//! one call. When the socket is full (`EAGAIN`) the rest of the current piece goes through
//! glommio's `poll_write`, which itself sends straight from our slice (`send(MSG_DONTWAIT)`
//! first, then an io_uring poll for writability, then `send` again): glommio 0.9 exposes no
//! "wait until writable" on its own, and writing part of the data *is* that wait, without a
//! copy. Then the vectored sends resume. Under TLS the bytes are encrypted into records by
//! rustls (a copy inherent to TLS), whose socket writes are glommio's same async path.
//!
//! **Timeout semantics: no progress for `timeout`.** Each time the socket takes no bytes for
//! `timeout`, the write fails with `ErrorKind::TimedOut` (glommio's write timer, armed only
//! while a send would block, cancelled by every send that takes bytes). This is RFC 5321
//! §4.5.3.2.5's reading ("while awaiting the completion of each TCP SEND call"): a large body
//! to a slow but live peer is never cut for being large, a peer that stops reading is cut
//! `timeout` after it stopped. The timeout stays set on the socket afterwards, so a later TLS
//! `close` (which sends close_notify) is bounded by it too.
//!
//! Never: a blocking syscall, a copy of body bytes on the plain path, an unbounded wait.
use crate::tls::Transport;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// iovecs on the stack for one `sendmsg` (a body is a few pieces per 128 KiB chunk; 64 pieces
/// cover megabytes, far more than a socket takes in one call).
const IOV_BATCH: usize = 64;

/// iovecs for one `sendmsg` when more pieces wait (Linux's `UIO_MAXIOV`): a BDAT chunk is
/// the stored body cut at every stuffing dot, so a body of dot-led lines is thousands of
/// small pieces, and 64 per call would be a syscall per 64 lines.
const IOV_MAX: usize = 1024;

/// Bytes gathered into one rustls write under TLS: rustls makes a record for each write (up
/// to 16 KiB of plaintext), so thousands of small pieces would be thousands of records.
const TLS_GATHER: usize = 16 * 1024;

/// Write every byte of `pieces`, in order, to `t`; fails with `TimedOut` when the peer takes
/// no bytes for `timeout` (see the module notes). On plain TCP the pieces leave from where
/// they are (zero copy); under TLS they are encrypted by rustls and flushed.
pub async fn write_all_vectored(t: &mut Transport, pieces: &[&[u8]], timeout: Duration) -> io::Result<()> {
    t.set_write_timeout(timeout)?;
    match t {
        Transport::Plain(stream) => plain_vectored(stream, pieces).await,
        tls => {
            // Encrypting copies the bytes anyway: gather small pieces into record-sized writes.
            let mut gathered = Vec::new();
            for piece in pieces {
                if gathered.len() + piece.len() > TLS_GATHER && !gathered.is_empty() {
                    tls.write_all(&gathered).await?;
                    gathered.clear();
                }
                if piece.len() >= TLS_GATHER {
                    tls.write_all(piece).await?;
                } else {
                    gathered.extend_from_slice(piece);
                }
            }
            if !gathered.is_empty() {
                tls.write_all(&gathered).await?;
            }
            // rustls may still hold records it could not send: push them out, same timeout.
            tls.flush().await
        }
    }
}

/// Write a command or a reply: all of `bytes`, or `TimedOut` when the peer takes nothing for
/// `timeout`. One `sendmsg` in the common case, exactly like the vectored path.
pub async fn write_all_timeout(t: &mut Transport, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    write_all_vectored(t, &[bytes], timeout).await
}

/// Write a session's last bytes (its closing reply) just before the caller shuts the socket
/// down. On plain TCP the first send carries `MSG_MORE`: the kernel holds the bytes until the
/// shutdown, whose FIN then leaves in the same segment, where a reply pushed at once and a
/// FIN after it are two segments for both ends to process (one of about 24 a
/// connection-per-message client and its relay cost, perf/RESULTS.md, seventeenth session).
/// The caller must shut down or close the socket next, which every session end does.
/// Whatever the first send did not take goes the usual way.
pub async fn write_last(t: &mut Transport, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    if let Transport::Plain(stream) = t {
        let fd = stream.as_raw_fd();
        // SAFETY: `bytes` is borrowed for the call; the kernel only reads it.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_MORE) };
        let done = if n >= 0 {
            n as usize
        } else {
            match io::Error::last_os_error() {
                e if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
                // EPIPE, ECONNRESET: the peer is gone; report this error, not a second one.
                e => return Err(e),
            }
        };
        if done == bytes.len() {
            return Ok(());
        }
        return write_all_timeout(t, &bytes[done..], timeout).await;
    }
    write_all_timeout(t, bytes, timeout).await
}

/// The plain-TCP loop: vectored non-blocking sends while the socket takes bytes; when it is
/// full, glommio's async write of the current piece's rest (waits on io_uring, timed out).
async fn plain_vectored(stream: &mut TcpStream, pieces: &[&[u8]]) -> io::Result<()> {
    let mut cursor = Cursor::new(pieces);
    while !cursor.is_done() {
        match send_nonblocking(stream.as_raw_fd(), &cursor) {
            Ok(n) => cursor.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let n = stream.write(cursor.current()).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                cursor.advance(n);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` of the next pieces: never blocks, even on
/// glommio's blocking sockets; a closed peer is an `EPIPE` error, not a signal.
fn send_nonblocking(fd: std::os::fd::RawFd, cursor: &Cursor<'_>) -> io::Result<usize> {
    let none = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let (mut small, mut many);
    let iov: &mut [libc::iovec] = match cursor.pieces_left() {
        n if n <= IOV_BATCH => {
            small = [none; IOV_BATCH];
            &mut small
        }
        n => {
            many = vec![none; n.min(IOV_MAX)];
            &mut many
        }
    };
    let count = cursor.fill(iov);
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count as _;
    // SAFETY: every iovec points into a slice `cursor` borrows for the duration of the call,
    // and the kernel only reads through them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Where a write of several pieces stands: the next byte to send is `pieces[idx][off]`.
/// Invariant: `idx` is past every empty piece, so `current()` is never empty unless done.
struct Cursor<'a> {
    pieces: &'a [&'a [u8]],
    idx: usize,
    off: usize,
}

impl<'a> Cursor<'a> {
    fn new(pieces: &'a [&'a [u8]]) -> Self {
        let mut c = Cursor { pieces, idx: 0, off: 0 };
        c.skip_empty();
        c
    }

    fn is_done(&self) -> bool {
        self.idx == self.pieces.len()
    }

    /// Pieces not yet sent in full (empty ones included).
    fn pieces_left(&self) -> usize {
        self.pieces.len() - self.idx
    }

    /// What is left of the current piece.
    fn current(&self) -> &'a [u8] {
        &self.pieces[self.idx][self.off..]
    }

    /// Describe the next pieces (at most `iov.len()`) as iovecs; returns how many.
    fn fill(&self, iov: &mut [libc::iovec]) -> usize {
        let mut count = 0;
        for (i, piece) in self.pieces[self.idx..].iter().enumerate() {
            if count == iov.len() {
                break;
            }
            let piece = if i == 0 { &piece[self.off..] } else { piece };
            if piece.is_empty() {
                continue;
            }
            iov[count] = libc::iovec { iov_base: piece.as_ptr() as *mut libc::c_void, iov_len: piece.len() };
            count += 1;
        }
        count
    }

    /// `n` more bytes were sent.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let left = self.pieces[self.idx].len() - self.off;
            if n < left {
                self.off += n;
                return;
            }
            n -= left;
            self.idx += 1;
            self.off = 0;
            assert!(n == 0 || self.idx < self.pieces.len(), "the kernel sent more than we gave it");
        }
        self.skip_empty();
    }

    fn skip_empty(&mut self) {
        while self.idx < self.pieces.len() && self.pieces[self.idx].len() == self.off {
            self.idx += 1;
            self.off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::cell::Cell;
    use std::io::Read;
    use std::net::TcpListener;
    use std::rc::Rc;
    use std::time::Instant;

    #[test]
    fn cursor_walks_pieces_and_skips_empty_ones() {
        let pieces: [&[u8]; 5] = [b"ab", b"", b"cde", b"", b""];
        let mut c = Cursor::new(&pieces);
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH];
        assert_eq!(c.fill(&mut iov), 2, "empty pieces are not sent");
        assert_eq!((iov[0].iov_len, iov[1].iov_len), (2, 3));
        c.advance(1);
        assert_eq!(c.current(), b"b");
        assert_eq!(c.fill(&mut iov), 2);
        assert_eq!((iov[0].iov_len, iov[0].iov_base as *const u8), (1, pieces[0][1..].as_ptr()), "from the caller's bytes, no copy");
        c.advance(3);
        assert_eq!(c.current(), b"e");
        assert!(!c.is_done());
        c.advance(1);
        assert!(c.is_done(), "trailing empty pieces are skipped");
        let none: [&[u8]; 2] = [b"", b""];
        assert!(Cursor::new(&none).is_done());
    }

    #[test]
    fn cursor_hands_at_most_one_batch_to_the_kernel() {
        let byte = [7u8];
        let pieces: Vec<&[u8]> = (0..IOV_BATCH + 10).map(|_| &byte[..]).collect();
        let mut c = Cursor::new(&pieces);
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH];
        assert_eq!(c.fill(&mut iov), IOV_BATCH);
        c.advance(IOV_BATCH);
        assert_eq!(c.fill(&mut iov), 10);
    }

    #[test]
    #[should_panic(expected = "more than we gave")]
    fn cursor_refuses_to_advance_past_the_end() {
        let pieces: [&[u8]; 1] = [b"ab"];
        Cursor::new(&pieces).advance(3);
    }

    fn set_buf(fd: std::os::fd::RawFd, opt: libc::c_int, bytes: libc::c_int) {
        // SAFETY: plain setsockopt with an int value on a socket we own.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, &bytes as *const _ as *const libc::c_void, 4) };
        assert_eq!(r, 0);
    }

    /// A listener whose accepted sockets have a small receive buffer, so a peer that does not
    /// read stops taking bytes after a few KiB.
    fn small_listener() -> TcpListener {
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_buf(l.as_raw_fd(), libc::SO_RCVBUF, 16 * 1024);
        l
    }

    /// Run `f` on a glommio executor of its own; fail (instead of hanging) if the executor
    /// thread does not finish, which is what a blocking write does to it.
    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            LocalExecutorBuilder::default().io_memory(1 << 20).spawn(f).unwrap().join().unwrap();
            done.send(()).unwrap();
        });
        finished.recv_timeout(Duration::from_secs(30)).expect("the executor thread did not finish (blocked or panicked)");
    }

    async fn connect(addr: std::net::SocketAddr) -> Transport {
        let s = TcpStream::connect(addr).await.unwrap();
        set_buf(s.as_raw_fd(), libc::SO_SNDBUF, 32 * 1024);
        Transport::Plain(s)
    }

    /// Segments a socket has received (`tcpi_segs_in`, Linux 4.2+: offset 140 of `tcp_info`).
    fn segments_in(fd: std::os::fd::RawFd) -> u32 {
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
        assert!(r == 0 && len >= 144, "TCP_INFO too short: {len}");
        u32::from_ne_bytes(info[140..144].try_into().unwrap())
    }

    /// What the receiving end of a session's last reply sees: the reply and then end of file,
    /// and how many segments carried them. `last` chooses [`write_last`] or the usual write.
    fn last_reply_segments(last: bool) -> u32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            assert_eq!(all, b"221 2.0.0 Bye\r\n");
            segments_in(s.as_raw_fd())
        });
        on_executor(move || async move {
            let mut t = Transport::Plain(TcpStream::connect(addr).await.unwrap());
            t.tcp().set_nodelay(true).unwrap();
            let reply = b"221 2.0.0 Bye\r\n";
            if last {
                write_last(&mut t, reply, Duration::from_secs(5)).await.unwrap();
            } else {
                write_all_timeout(&mut t, reply, Duration::from_secs(5)).await.unwrap();
            }
            t.close().await.unwrap();
        });
        reader.join().unwrap()
    }

    /// A closing reply written with [`write_last`] leaves with the FIN: one segment fewer for
    /// the client than the reply pushed at once and the FIN after it.
    #[test]
    fn the_last_reply_and_the_fin_share_a_segment() {
        // A thread paused for a retransmission timeout between the send and the shutdown lets
        // the kernel send the held bytes alone: measure twice before calling it broken.
        let counts: Vec<(u32, u32)> = (0..2).map(|_| (last_reply_segments(false), last_reply_segments(true))).collect();
        assert!(counts.iter().any(|&(pushed, last)| last + 1 == pushed), "segments received (without, with write_last): {counts:?}");
    }

    #[test]
    fn pieces_arrive_in_order_byte_for_byte_through_a_slow_reader() {
        let l = small_listener();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (mut all, mut buf) = (Vec::new(), vec![0u8; 7000]);
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match s.read(&mut buf).unwrap() {
                    0 => return all,
                    n => all.extend_from_slice(&buf[..n]),
                }
            }
        });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        on_executor(move || async move {
            // Pieces of every shape: empty, one byte, odd sizes, more than one batch of them.
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for i in 0.. {
                let len = [0, 1, 13, 4096, 65_537, 30_000][i % 6].min(data.len() - at);
                pieces.push(&data[at..at + len]);
                at += len;
                if at == data.len() {
                    break;
                }
            }
            assert!(pieces.len() > IOV_BATCH);
            let mut t = connect(addr).await;
            write_all_vectored(&mut t, &pieces, Duration::from_secs(5)).await.unwrap();
            t.close().await.unwrap();
        });
        assert!(reader.join().unwrap() == expect, "bytes differ");
    }

    #[test]
    fn a_peer_that_stops_reading_times_out_while_the_core_keeps_running() {
        let l = small_listener();
        let addr = l.local_addr().unwrap();
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let _ = release.recv(); // never reads; keeps the connection open until the end
            drop(s);
        });
        on_executor(move || async move {
            let ticks = Rc::new(Cell::new(0u32));
            let t2 = ticks.clone();
            let ticker = glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    t2.set(t2.get() + 1);
                }
            })
            .detach();
            let body = vec![b'x'; 16 << 20];
            let pieces: Vec<&[u8]> = body.chunks(128 * 1024).collect();
            let mut t = connect(addr).await;
            let started = Instant::now();
            let e = write_all_vectored(&mut t, &pieces, Duration::from_millis(300)).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
            assert!(ticks.get() >= 10, "the executor kept running other tasks: {} ticks", ticks.get());
            // A reply on the same stuck connection is cut the same way.
            let e = write_all_timeout(&mut t, b"250 ok\r\n", Duration::from_millis(100)).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            ticker.cancel();
        });
        hold.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_slow_but_steady_reader_is_not_cut_by_the_timeout() {
        let l = small_listener();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (mut total, mut buf) = (0usize, vec![0u8; 16 * 1024]);
            loop {
                std::thread::sleep(Duration::from_millis(20));
                match s.read(&mut buf).unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        on_executor(move || async move {
            let body = vec![b'y'; 1 << 20];
            let pieces: Vec<&[u8]> = body.chunks(100_000).collect();
            let mut t = connect(addr).await;
            let started = Instant::now();
            write_all_vectored(&mut t, &pieces, Duration::from_millis(250)).await.unwrap();
            let took = started.elapsed();
            assert!(took > Duration::from_millis(500), "the whole write outlasts the timeout ({took:?}): progress resets it");
            t.close().await.unwrap();
        });
        assert_eq!(reader.join().unwrap(), 1 << 20);
    }
}
