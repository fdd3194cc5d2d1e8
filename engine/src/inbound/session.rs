//! The inbound session driver: a thin loop between a TCP stream and the sans-I/O server
//! machine. It streams body bytes into the core's spool in bounded chunks, waits for the
//! group commit before replying 250, enforces timeouts and the trickle defence, and hands
//! accepted messages to the core for routing.
use crate::clock::{rfc5322, unix_ms};
use crate::shard::core::Core;
use crate::account::delivery_log::{EventKind, Peer};
use crate::dkim::BodyHashStream;
use crate::message::SpooledMessage;
use crate::smtp::reply::Reply;
use crate::smtp::server::{Server, Step, Transaction};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringpost_spool::record::{MessageRecord, FLAG_8BITMIME, FLAG_SMTPUTF8};
use ringpost_spool::{Extent, SpoolError, Ticket};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::tls::Transport;
use crate::wire_write::write_all_timeout;

/// Body bytes are handed to the spool in pieces of this size: the most a session holds.
const CHUNK: usize = 128 * 1024;
/// Input buffer per session, at most.
const INPUT: usize = 64 * 1024;
/// Input buffer a session starts with.
const INPUT_START: usize = 4 * 1024;

/// Body bytes of the message being received, and the spool extents already written for it.
struct BodyWriter {
    buf: Vec<u8>,
    extents: Vec<Extent>,
    /// The spool tickets of those extents: the 250 waits for every one of them.
    tickets: Vec<Ticket>,
    error: Option<SpoolError>,
    /// The single pass that computes the DKIM body hash, when any key is configured.
    dkim: Option<BodyHashStream>,
}

impl BodyWriter {
    async fn push(&mut self, core: &Core, prefix: &[u8], bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(prefix);
        self.buf.extend_from_slice(bytes);
        if let Some(d) = self.dkim.as_mut() {
            d.write_wire(prefix);
            d.write_wire(bytes);
        }
        if self.buf.len() >= CHUNK {
            core.spool.wait_for_room().await;
            self.flush(core);
        }
    }

    fn flush(&mut self, core: &Core) {
        if self.buf.is_empty() || self.error.is_some() {
            return;
        }
        match core.spool.append_chunk(&self.buf) {
            Ok((e, t)) => {
                self.extents.push(e);
                self.tickets.push(t);
            }
            Err(e) => self.error = Some(e),
        }
        self.buf.clear();
    }

    /// Forget the message: unpin whatever was spooled for it, and get ready for the next.
    fn abandon(&mut self, core: &Core) {
        core.spool.release_message(None, &self.extents);
        self.extents.clear();
        self.tickets.clear();
        self.buf.clear();
        self.error = None;
        self.dkim = (!core.signers.is_empty()).then(BodyHashStream::new);
    }
}

fn received_header(core: &Core, helo: &str, peer: SocketAddr, tls: bool) -> Vec<u8> {
    format!(
        "Received: from {helo} ([{}])\r\n\tby {} (ringpost) with {};\r\n\t{}\r\n",
        peer.ip(),
        core.limits.hostname,
        if tls { "ESMTPS" } else { "ESMTP" },
        rfc5322(unix_ms())
    )
    .into_bytes()
}

/// Make the completed message durable; returns the reply and, on success, the message.
async fn commit(core: &Core, server: &mut Server, body: &mut BodyWriter, peer: SocketAddr) -> (Reply, Option<Arc<SpooledMessage>>) {
    body.flush(core);
    if let Some(e) = body.error.take() {
        body.abandon(core);
        return (server.commit_failed(e.is_disk_full()), None);
    }
    let tx: &Transaction = server.transaction().expect("a message without a transaction");
    let mut flags = 0;
    if server.eight_bit() {
        flags |= FLAG_8BITMIME;
    }
    if tx.params.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    let received_ms = unix_ms();
    let mut trace = received_header(core, server.helo().unwrap_or("unknown"), peer, server.tls_active());
    let mut body_hash = None;
    if let Some(d) = body.dkim.take() {
        let (headers, hash) = d.finish();
        body_hash = Some(hash);
        match headers.map(|h| core.signers.sign(&h, &hash, received_ms / 1000)) {
            Some(Ok(sigs)) => trace.extend_from_slice(&sigs),
            Some(Err(e)) => tracing::warn!("core {}: DKIM signing skipped: {e}", core.id),
            None => tracing::warn!("core {}: DKIM signing skipped: header block too large", core.id),
        }
    }
    let record = MessageRecord {
        received_ms,
        sender: tx.sender.as_ref().map(|a| a.raw.clone().into_bytes()).unwrap_or_default(),
        recipients: tx.recipients.iter().map(|a| a.raw.clone().into_bytes()).collect(),
        trace,
        body: std::mem::take(&mut body.extents),
        flags,
        body_hash,
    };
    let mut tickets = std::mem::take(&mut body.tickets);
    let appended = core.spool.append_message(&record);
    let result = match appended {
        Ok((id, ticket)) => {
            tickets.push(ticket);
            core.spool.wait_durable_all(&tickets).await.map(|_| id).map_err(|e| (Some(id), e))
        }
        Err(e) => Err((None, e)),
    };
    match result {
        Ok(id) => {
            let msg = SpooledMessage::from_record(id, &record, |s| core.spool.map(s)).expect("segments of a committed record");
            (server.committed(&id.to_string()), Some(Arc::new(msg)))
        }
        Err((id, e)) => {
            tracing::warn!("core {}: spool commit failed: {e}", core.id);
            core.spool.release_message(id, &record.body);
            (server.commit_failed(e.is_disk_full()), None)
        }
    }
}

/// Serve one SMTP session to completion.
pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr) {
    let cfg = &core.shared.config.server;
    let relay = core.shared.relay_networks.iter().any(|n| n.contains(peer.ip()));
    let mut server = Server::new(core.limits.clone(), relay);
    let tls_config = core.server_tls.borrow().clone();
    if tls_config.is_some() {
        server.offer_tls();
    }
    let auth = &core.shared.config.auth;
    if !auth.users.is_empty() {
        let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
        server.offer_auth(auth.plaintext_listeners.iter().any(|l| *l == local));
    }
    let mut auth_failures = 0u32;
    let mut stream = Transport::Plain(stream);
    let mut out = Vec::with_capacity(4096);
    server.greeting().write_to(&mut out);
    // Start small (most sessions are a few commands and small messages) and grow to INPUT
    // when a read fills the buffer: zeroing 64 KiB per connection showed up in profiles.
    let mut input = vec![0u8; INPUT_START];
    let (mut start, mut end) = (0usize, 0usize);
    let mut body = BodyWriter { buf: Vec::new(), extents: Vec::new(), tickets: Vec::new(), error: None, dkim: None };
    let command_timeout = Duration::from_secs(cfg.command_timeout_s);
    let data_timeout = Duration::from_secs(cfg.data_timeout_s);
    let write_timeout = Duration::from_secs(cfg.write_timeout_s);
    let mut phase_start = Instant::now();
    let mut data_bytes = 0u64;
    let _ = stream.tcp().set_nodelay(true);
    loop {
        let step = server.step(&input[start..end]);
        match step {
            Step::Need { consumed } if consumed > 0 => start += consumed,
            Step::Need { .. } => {
                if !out.is_empty() {
                    if write_all_timeout(&mut stream, &out, write_timeout).await.is_err() {
                        break;
                    }
                    out.clear();
                }
                if start == end {
                    (start, end) = (0, 0);
                } else if end == input.len() {
                    input.copy_within(start..end, 0);
                    (start, end) = (0, end - start);
                }
                if end == input.len() && input.len() < INPUT {
                    input.resize(INPUT, 0);
                }
                // Deadlines: a whole command within command_timeout; DATA at least
                // min_data_rate once data_timeout has passed (trickling clients are cut).
                let in_data = server.in_data();
                let allowed = if in_data {
                    data_timeout + Duration::from_secs(data_bytes / cfg.min_data_rate.max(1))
                } else {
                    command_timeout
                };
                let Some(left) = allowed.checked_sub(phase_start.elapsed()).filter(|d| !d.is_zero()) else {
                    let _ = write_all_timeout(&mut stream, &server.timeout_reply().to_wire().into_bytes(), write_timeout).await;
                    break;
                };
                let _ = stream.tcp().set_read_timeout(Some(left.min(if in_data { data_timeout } else { command_timeout })));
                let read = if in_data {
                    Some(stream.read(&mut input[end..]).await)
                } else {
                    futures_lite::future::or(async { Some(stream.read(&mut input[end..]).await) }, async {
                        core.stopped().await;
                        None
                    })
                    .await
                };
                match read {
                    None => {
                        let r = Reply::new(421, (4, 3, 2), format!("{} Service shutting down", core.limits.hostname));
                        let _ = write_all_timeout(&mut stream, r.to_wire().as_bytes(), write_timeout).await;
                        break;
                    }
                    Some(Ok(0)) => break,
                    Some(Ok(n)) => {
                        end += n;
                        if in_data {
                            data_bytes += n as u64;
                        }
                    }
                    Some(Err(e)) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            let _ = write_all_timeout(&mut stream, server.timeout_reply().to_wire().as_bytes(), write_timeout).await;
                        }
                        break;
                    }
                }
            }
            Step::Reply { consumed, reply } => {
                start += consumed;
                let entering_data = reply.code == 354;
                reply.write_to(&mut out);
                phase_start = Instant::now();
                if entering_data {
                    data_bytes = 0;
                    body.abandon(&core);
                }
            }
            Step::Close { consumed: _, reply } => {
                reply.write_to(&mut out);
                let _ = write_all_timeout(&mut stream, &out, write_timeout).await;
                break;
            }
            Step::Body { consumed, prefix, body: n } => {
                body.push(&core, prefix, &input[start..start + n]).await;
                start += consumed;
            }
            Step::Message { consumed, prefix, body: n } => {
                body.push(&core, prefix, &input[start..start + n]).await;
                start += consumed;
                let (reply, msg) = commit(&core, &mut server, &mut body, peer).await;
                reply.write_to(&mut out);
                phase_start = Instant::now();
                if let Some(msg) = msg {
                    let client = Peer { remote: peer.to_string(), tls: stream.tls_description() };
                    core.log_event(EventKind::Reception, &msg, None, Some(&client), None, 0);
                    core.accept_message(msg).await;
                }
            }
            Step::Authenticate { consumed, user, password } => {
                start += consumed;
                let hash = auth.users.iter().find(|u| u.name == user).map(|u| u.password_hash.clone());
                // Argon2 costs milliseconds by design: verify on glommio's blocking pool so the
                // core keeps serving everyone else.
                let ok = match hash {
                    Some(h) => glommio::executor().spawn_blocking(move || crate::smtp::auth::verify_password(&h, &password)).await,
                    None => false,
                };
                if !ok {
                    auth_failures += 1;
                    glommio::timer::sleep(Duration::from_millis(auth.failure_delay_ms)).await;
                    tracing::warn!("core {}: AUTH failure for {user:?} from {peer}", core.id);
                }
                server.auth_result(&user, ok).write_to(&mut out);
                if auth_failures >= auth.max_failures {
                    Reply::new(421, (4, 7, 0), format!("{} Error: too many authentication failures", core.limits.hostname)).write_to(&mut out);
                    let _ = write_all_timeout(&mut stream, &out, write_timeout).await;
                    break;
                }
                phase_start = Instant::now();
            }
            Step::StartTls { consumed: _, reply } => {
                reply.write_to(&mut out);
                if write_all_timeout(&mut stream, &out, write_timeout).await.is_err() {
                    break;
                }
                out.clear();
                // Whatever the client sent after STARTTLS was sent in plaintext: drop it
                // (CVE-2011-0411, "NO STARTTLS").
                (start, end) = (0, 0);
                let Some(tls) = tls_config.clone() else { break };
                let handshake = glommio::timer::timeout(command_timeout, async { Ok(stream.accept(tls).await) }).await;
                match handshake {
                    Ok(Ok(())) => server.tls_started(),
                    _ => break,
                }
                phase_start = Instant::now();
            }
            Step::DataRefused { consumed, reply } => {
                start += consumed;
                body.abandon(&core);
                reply.write_to(&mut out);
                phase_start = Instant::now();
            }
        }
    }
    body.abandon(&core);
    let _ = stream.close().await;
}
