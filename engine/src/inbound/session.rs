//! The inbound session driver: a thin loop between a socket and the sans-I/O server machine,
//! one small handler per [`Step`]. It streams body bytes into the spool through the
//! [`BodyWriter`], answers 250 only after the durable commit, enforces the command, data and
//! write deadlines and the trickle defence, keeps its buffers bounded (input, body chunk, and
//! pending replies: pipelined commands cannot pile up replies), and hands accepted messages to
//! the shard.
use crate::account::delivery_log::{EventKind, Peer};
use crate::inbound::commit::{commit, BodyWriter};
use crate::inbound::listener::Admission;
use crate::shard::core::Core;
use crate::smtp::reply::Reply;
use crate::smtp::server::{Server, Step};
use crate::tls::Transport;
use crate::trace::{redact_command, TraceTag};
use crate::wire_write::{write_all_timeout, write_last};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringpost_admin_proto::{TraceKind, TraceSide};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Input buffer a session starts with (it grows to `[server] input_buffer_bytes_max`): most sessions are a few commands and small messages,
/// and zeroing 64 KiB per connection showed up in profiles.
const INPUT_BYTES_START: usize = 4 * 1024;
/// Replies pending for pipelined commands are written once they pass this: a client that
/// pipelines 64 KiB of EHLO gets its replies as it goes instead of 850 KiB held here.
const OUTPUT_FLUSH_BYTES: usize = 16 * 1024;
/// Longest a session that has ended may take to hand over its last reply and close: it no
/// longer counts against its client's per-address limit, so it must not linger.
const CLOSING_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the session goes on after a step.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    core: Rc<Core>,
    server: Server,
    stream: Transport,
    peer: SocketAddr,
    admission: Admission,
    tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
    out: Vec<u8>,
    input: Vec<u8>,
    start: usize,
    end: usize,
    body: BodyWriter,
    input_bytes_max: usize,
    command_timeout: Duration,
    data_timeout: Duration,
    write_timeout: Duration,
    phase_start: Instant,
    data_bytes: u64,
    auth_failures: u32,
    /// This session's number for `ringctl trace`.
    trace_conn: u64,
    /// The last reply was a 334 challenge: the next line is an AUTH continuation (redacted).
    in_auth: bool,
}

/// Serve one SMTP session to completion.
pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, admission: Admission) {
    let mut s = Session::new(core, stream, peer, admission);
    if s.core.tracer.on() {
        s.trace(TraceKind::Open, b"");
        s.trace(TraceKind::Reply, &s.out);
    }
    loop {
        let flow = match s.server.step(&s.input[s.start..s.end]) {
            Step::Need { consumed } if consumed > 0 => {
                s.start += consumed;
                Flow::Continue
            }
            Step::Need { .. } => s.read_more().await,
            Step::Reply { consumed, reply } => s.on_reply(consumed, reply).await,
            Step::Close { consumed, reply } => {
                s.trace_command(consumed);
                s.close_with(&reply).await
            }
            Step::Body { consumed, prefix, body } => {
                s.body.push(&s.core, prefix, &s.input[s.start..s.start + body]).await;
                s.start += consumed;
                Flow::Continue
            }
            Step::Message { consumed, prefix, body } => s.on_message(consumed, prefix, body).await,
            Step::Authenticate { consumed, user, password } => s.on_auth(consumed, user, password).await,
            Step::StartTls { consumed, reply } => {
                s.trace_command(consumed);
                s.on_starttls(reply).await
            }
            Step::DataRefused { consumed, reply } => {
                s.trace_body();
                s.trace_reply(&reply);
                s.start += consumed;
                s.body.abandon(&s.core);
                reply.write_to(&mut s.out);
                s.restart_phase();
                Flow::Continue
            }
        };
        if flow == Flow::Close {
            break;
        }
    }
    s.admission.end();
    s.body.abandon(&s.core);
    s.trace(TraceKind::Close, b"");
    let _ = s.stream.set_write_timeout(CLOSING_WRITE_TIMEOUT.min(s.write_timeout));
    let _ = s.stream.close().await;
}

impl Session {
    fn new(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, admission: Admission) -> Self {
        let live = core.live();
        let cfg = &live.config.server;
        let mut server = Server::new(live.limits.clone(), admission.relay);
        let tls_config = core.server_tls.borrow().clone();
        if tls_config.is_some() {
            server.offer_tls();
        }
        let auth = &live.config.auth;
        if !auth.users.is_empty() {
            let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
            server.offer_auth(auth.plaintext_listeners.contains(&local));
        }
        // TCP_NODELAY comes from the listening socket (`listener::listen`).
        let (body_chunk_bytes, input_bytes_max) = (cfg.body_chunk_bytes, cfg.input_buffer_bytes_max);
        let mut out = Vec::with_capacity(4096);
        server.greeting().write_to(&mut out);
        let trace_conn = core.tracer.next_conn();
        // The body writer starts armed (DKIM body hash) for a first message sent with BDAT,
        // which has no 354 to reset it.
        let mut body = BodyWriter::new(body_chunk_bytes);
        body.abandon(&core);
        Self {
            command_timeout: Duration::from_secs(cfg.command_timeout_s),
            data_timeout: Duration::from_secs(cfg.data_timeout_s),
            write_timeout: Duration::from_secs(cfg.write_timeout_s),
            core,
            server,
            stream: Transport::Plain(stream),
            peer,
            admission,
            tls_config,
            out,
            input: vec![0u8; INPUT_BYTES_START],
            start: 0,
            end: 0,
            body,
            input_bytes_max,
            phase_start: Instant::now(),
            data_bytes: 0,
            auth_failures: 0,
            trace_conn,
            in_auth: false,
        }
    }

    /// `ringctl trace`: one event of this session, built only while somebody traces.
    #[inline]
    fn trace(&self, kind: TraceKind, text: &[u8]) {
        let t = &self.core.tracer;
        if t.on() {
            let tag =
                TraceTag { conn: self.trace_conn, side: TraceSide::In, peer: self.peer.to_string(), client: Some(self.peer.ip()), domain: None };
            t.emit(&tag, kind, text);
        }
    }

    /// Trace the command line the machine just consumed (its first line only, credentials
    /// redacted; a BDAT chunk's data is never part of it).
    #[inline]
    fn trace_command(&self, consumed: usize) {
        if self.core.tracer.on() && consumed > 0 {
            let bytes = &self.input[self.start..self.start + consumed];
            let line = &bytes[..bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| p + 1)];
            self.trace(TraceKind::Command, &redact_command(line, self.in_auth));
        }
    }

    #[inline]
    fn trace_reply(&self, reply: &Reply) {
        if self.core.tracer.on() {
            self.trace(TraceKind::Reply, reply.to_wire().as_bytes());
        }
    }

    #[inline]
    fn trace_body(&self) {
        if self.core.tracer.on() {
            self.trace(TraceKind::Body, b"(message body, not shown)");
        }
    }

    /// Write every pending reply (bounded by the write timeout).
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            write_all_timeout(&mut self.stream, &self.out, self.write_timeout).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The session ends: count it out of its client's sessions at once, then write `reply`
    /// (QUIT, error limit, timeouts, shutdown) within [`CLOSING_WRITE_TIMEOUT`] and close.
    async fn close_with(&mut self, reply: &Reply) -> Flow {
        self.trace_reply(reply);
        self.admission.end();
        reply.write_to(&mut self.out);
        self.write_timeout = self.write_timeout.min(CLOSING_WRITE_TIMEOUT);
        // The socket is shut down next (`serve`'s end): the reply and the FIN share a segment.
        let _ = write_last(&mut self.stream, &self.out, self.write_timeout).await;
        self.out.clear();
        Flow::Close
    }

    /// A reply went out: the command (or data block) deadline starts again.
    fn restart_phase(&mut self) {
        self.phase_start = Instant::now();
        self.data_bytes = 0;
    }

    /// Flush replies, make room in the input buffer, and read within the phase's deadline: a
    /// whole command within command_timeout; DATA at least min_data_rate once data_timeout has
    /// passed (trickling clients are cut).
    async fn read_more(&mut self) -> Flow {
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        self.compact_input();
        let in_data = self.server.in_data();
        let min_rate = self.core.live().config.server.min_data_rate.max(1);
        let allowed = if in_data { self.data_timeout + Duration::from_secs(self.data_bytes / min_rate) } else { self.command_timeout };
        let Some(left) = allowed.checked_sub(self.phase_start.elapsed()).filter(|d| !d.is_zero()) else {
            let r = self.server.timeout_reply();
            return self.close_with(&r).await;
        };
        let per_read = if in_data { self.data_timeout } else { self.command_timeout };
        let _ = self.stream.tcp().set_read_timeout(Some(left.min(per_read)));
        let read = if in_data {
            Some(self.stream.read(&mut self.input[self.end..]).await)
        } else {
            let core = self.core.clone();
            let (stream, buf) = (&mut self.stream, &mut self.input[self.end..]);
            futures_lite::future::or(async { Some(stream.read(buf).await) }, async {
                core.stopped().await;
                None
            })
            .await
        };
        self.after_read(read, in_data).await
    }

    fn compact_input(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.input.len() && self.input.len() < self.input_bytes_max {
            self.input.resize(self.input_bytes_max, 0);
        }
    }

    async fn after_read(&mut self, read: Option<std::io::Result<usize>>, in_data: bool) -> Flow {
        match read {
            None => {
                let r = Reply::new(421, (4, 3, 2), format!("{} Service shutting down", self.core.limits.hostname));
                self.close_with(&r).await
            }
            Some(Ok(0)) => Flow::Close,
            Some(Ok(n)) => {
                self.end += n;
                if in_data {
                    self.data_bytes += n as u64;
                }
                Flow::Continue
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                let r = self.server.timeout_reply();
                self.close_with(&r).await
            }
            Some(Err(_)) => Flow::Close,
        }
    }

    async fn on_reply(&mut self, consumed: usize, reply: Reply) -> Flow {
        self.trace_command(consumed);
        self.trace_reply(&reply);
        self.in_auth = reply.code == 334;
        self.start += consumed;
        reply.write_to(&mut self.out);
        // Each BDAT chunk's 250 starts the next chunk's data deadline, as 354 starts DATA's.
        self.restart_phase();
        if reply.code == 354 {
            self.body.abandon(&self.core);
        }
        if self.out.len() >= OUTPUT_FLUSH_BYTES && self.flush().await.is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn on_message(&mut self, consumed: usize, prefix: &'static [u8], body: usize) -> Flow {
        // Accept-to-250: from the end of the data (the parser just saw it) to the durable commit.
        let data_end = Instant::now();
        self.body.push(&self.core, prefix, &self.input[self.start..self.start + body]).await;
        self.start += consumed;
        let (reply, msg) = commit(&self.core, &mut self.server, &mut self.body, self.peer).await;
        self.trace_body();
        self.trace_reply(&reply);
        // Ready for the next message (a BDAT one has no 354 to do this).
        self.body.abandon(&self.core);
        reply.write_to(&mut self.out);
        self.restart_phase();
        if let Some(committed) = msg {
            self.core.metrics.accepted_in(data_end.elapsed().as_micros() as u64);
            let client = Peer { remote: self.peer.to_string(), tls: self.stream.tls_description() };
            // Logged now, with the size received: the message is accepted whatever signing does.
            let unsigned = committed.handle(&self.core);
            self.core.log_event(EventKind::Reception, &unsigned, None, Some(&client), None, 0);
            if committed.to_sign.is_none() {
                self.core.accept_message(unsigned).await;
            } else {
                drop(unsigned);
                self.sign_after_reply(committed).await;
            }
        }
        Flow::Continue
    }

    /// Hand a committed message that needs its DKIM signature to a task of its own, which
    /// signs it (on the core or its blocking pool) and then queues it: the 250 and the
    /// session's next command do not wait for the signer, only for a free slot
    /// ([`crate::inbound::signing::SIGNING_IN_FLIGHT`]).
    async fn sign_after_reply(&mut self, committed: crate::inbound::commit::Committed) {
        let slot = match self.core.signing_slots.try_acquire_static_permit(1) {
            Ok(slot) => slot,
            Err(_) => {
                // Every slot is taken: the client waits for one, but with its 250 in hand (the
                // message is durable; a client left waiting might time out and send it again).
                // A failed flush closes the session at its next read.
                let _ = self.flush().await;
                let Ok(slot) = self.core.signing_slots.acquire_static_permit(1).await else { unreachable!("the signing slots are never closed") };
                // The wait was ours, not the client's: its next command gets a full timeout.
                self.restart_phase();
                slot
            }
        };
        let core = self.core.clone();
        core.metrics.signing_started();
        glommio::spawn_local(async move {
            let msg = crate::inbound::signing::sign_committed(&core, committed).await;
            core.metrics.signing_ended();
            // The slot is held until the message is queued: a full channel to another core
            // pushes back on the sessions, as it did when they queued messages themselves.
            core.accept_message(msg).await;
            drop(slot);
        })
        .detach();
    }

    async fn on_auth(&mut self, consumed: usize, user: String, password: String) -> Flow {
        self.trace_command(consumed);
        self.in_auth = false;
        self.start += consumed;
        let live = self.core.live();
        let auth = &live.config.auth;
        let hash = auth.users.iter().find(|u| u.name == user).map(|u| u.password_hash.clone());
        // Argon2 costs milliseconds by design: verify on glommio's blocking pool so the core
        // keeps serving everyone else.
        let ok = match hash {
            Some(h) => glommio::executor().spawn_blocking(move || crate::smtp::auth::verify_password(&h, &password)).await,
            None => false,
        };
        if !ok {
            self.auth_failures += 1;
            glommio::timer::sleep(Duration::from_millis(auth.failure_delay_ms)).await;
            tracing::warn!("core {}: AUTH failure for {user:?} from {}", self.core.id, self.peer);
        }
        let result = self.server.auth_result(&user, ok);
        self.trace_reply(&result);
        result.write_to(&mut self.out);
        self.phase_start = Instant::now();
        if self.auth_failures >= auth.max_failures {
            let r = Reply::new(421, (4, 7, 0), format!("{} Error: too many authentication failures", self.core.limits.hostname));
            return self.close_with(&r).await;
        }
        Flow::Continue
    }

    async fn on_starttls(&mut self, reply: Reply) -> Flow {
        self.trace_reply(&reply);
        reply.write_to(&mut self.out);
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // Whatever the client sent after STARTTLS was sent in plaintext: drop it
        // (CVE-2011-0411, "NO STARTTLS").
        (self.start, self.end) = (0, 0);
        let Some(tls) = self.tls_config.clone() else { return Flow::Close };
        let stream = &mut self.stream;
        let handshake = glommio::timer::timeout(self.command_timeout, async { Ok(stream.accept(tls).await) }).await;
        match handshake {
            Ok(Ok(())) => self.server.tls_started(),
            _ => return Flow::Close,
        }
        self.phase_start = Instant::now();
        Flow::Continue
    }
}
