//! One admin connection: frames in, requests handled concurrently (up to
//! [`IN_FLIGHT_MAX`]), replies out in the order they are ready, each tagged with its request
//! id. Every buffer is bounded: the input to one frame, the replies waiting to be written to
//! the requests in flight (a client that does not read stops being read), and every write has
//! a timeout after which the connection is dropped. A frame that cannot be decoded is
//! answered with an error frame and the connection is closed.
use super::Admin;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{UnixListener, UnixStream};
use ringpost_admin_proto::frame::{HEADER_BYTES, LENGTH_BYTES};
use ringpost_admin_proto::{decode, encode, ErrorKind, Reply, Request, MAX_FRAME_BYTES};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// Requests one connection may have in flight; the next frame is not read until one ends.
pub const IN_FLIGHT_MAX: usize = 16;
/// A reply write that makes no progress this long drops the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Input read per call.
const READ_BYTES: usize = 16 * 1024;

/// Accept admin connections until shutdown, at most `[admin] connections_max` at once.
pub async fn accept_loop(admin: Rc<Admin>, listener: UnixListener) {
    let open = Rc::new(Cell::new(0usize));
    let max = admin.shared.config.admin.connections_max;
    loop {
        let stop = async {
            while !admin.shared.stopping() {
                glommio::timer::sleep(super::TICK).await;
            }
            None
        };
        let Some(accepted) = futures_lite::future::or(async { Some(listener.accept().await) }, stop).await else { return };
        let Ok(stream) = accepted else { continue };
        if open.get() >= max {
            continue; // dropped: closed at once
        }
        open.set(open.get() + 1);
        let (admin, open) = (admin.clone(), open.clone());
        glommio::spawn_local(async move {
            serve_connection(admin, stream).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// The replies of one connection waiting to be written, and its requests in flight.
#[derive(Default)]
pub(super) struct Outbox {
    frames: RefCell<VecDeque<Vec<u8>>>,
    ready: event_listener::Event,
    in_flight: Cell<usize>,
    slot_free: event_listener::Event,
    /// The reader stopped (end of input, or a bad frame): write what is left, then close.
    reader_done: Cell<bool>,
    /// The writer failed or timed out: drop everything.
    broken: Cell<bool>,
}

impl Outbox {
    pub(super) fn push(&self, frame: Vec<u8>) {
        self.frames.borrow_mut().push_back(frame);
        self.ready.notify(1);
    }

    /// Frames waiting to be written.
    pub(super) fn waiting(&self) -> usize {
        self.frames.borrow().len()
    }

    /// The client is still there: it has not closed its side and the writer has not failed.
    pub(super) fn open(&self) -> bool {
        !self.reader_done.get() && !self.broken.get()
    }
}

async fn serve_connection(admin: Rc<Admin>, stream: UnixStream) {
    let (reader, writer) = futures_lite::io::split(stream);
    let out = Rc::new(Outbox::default());
    let w = glommio::spawn_local(write_loop(writer, out.clone()));
    let broken = async {
        while !out.broken.get() {
            let l = out.slot_free.listen();
            if !out.broken.get() {
                l.await;
            }
        }
    };
    // A client that stopped reading its replies is dropped even while we wait for its input.
    futures_lite::future::or(read_loop(admin, reader, &out), broken).await;
    out.reader_done.set(true);
    out.ready.notify(1);
    w.await;
}

/// Read frames and start a task per request; stop at end of input or at the first bad frame
/// (after queueing its error frame).
async fn read_loop(admin: Rc<Admin>, mut reader: impl futures_lite::AsyncRead + Unpin, out: &Rc<Outbox>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
    loop {
        while out.in_flight.get() >= IN_FLIGHT_MAX && !out.broken.get() {
            let l = out.slot_free.listen();
            if out.in_flight.get() >= IN_FLIGHT_MAX {
                l.await;
            }
        }
        if out.broken.get() {
            return;
        }
        match decode::<Request>(&buf) {
            Ok(Some((id, request, used))) => {
                buf.drain(..used);
                start_request(&admin, out, id, request);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let reply = Reply::error(ErrorKind::from(&e), e.to_string());
                out.push(encode(e.id(), &reply).expect("an error reply fits a frame"));
                return;
            }
        }
        let len = buf.len();
        buf.resize(len + READ_BYTES.min(LENGTH_BYTES + HEADER_BYTES + MAX_FRAME_BYTES - len).max(1), 0);
        let n = reader.read(&mut buf[len..]).await.unwrap_or(0);
        buf.truncate(len + n);
        if n == 0 {
            return;
        }
    }
}

fn start_request(admin: &Rc<Admin>, out: &Rc<Outbox>, id: u32, request: Request) {
    out.in_flight.set(out.in_flight.get() + 1);
    let (admin, out) = (admin.clone(), out.clone());
    glommio::spawn_local(async move {
        match request {
            Request::Trace { client, dest } => admin.trace(&out, id, client, dest).await,
            Request::Top { interval_ms, dests } => admin.top(&out, id, interval_ms, dests).await,
            request => {
                let reply = admin.handle(request).await;
                out.push_reply(id, &reply);
            }
        }
        out.in_flight.set(out.in_flight.get() - 1);
        out.slot_free.notify(1);
        // A stream ends after the reader: let the writer see that nothing is left.
        out.ready.notify(1);
    })
    .detach();
}

/// Write replies as they come; end when the reader is done and nothing is left to write.
async fn write_loop(mut writer: impl futures_lite::AsyncWrite + Unpin, out: Rc<Outbox>) {
    loop {
        let l = out.ready.listen();
        let next = out.frames.borrow_mut().pop_front();
        match next {
            Some(frame) => {
                let timeout = async {
                    glommio::timer::sleep(WRITE_TIMEOUT).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                };
                if futures_lite::future::or(writer.write_all(&frame), timeout).await.is_err() {
                    out.broken.set(true);
                    out.slot_free.notify(usize::MAX);
                    return;
                }
            }
            None if out.reader_done.get() && out.in_flight.get() == 0 => {
                let _ = writer.close().await;
                return;
            }
            None => l.await,
        }
    }
}
