//! The durable commit of a received message: the body writer that streams body bytes into
//! the spool in bounded chunks (computing the DKIM body hash on the way), the Received header,
//! and the commit that answers 250 only once the message record and every body chunk it names
//! are durable. If any of them was in a failed commit round, the message fails as a whole
//! (451/452) and its spool space is released: nothing is acknowledged that is not on disk.
//! RSA signing is not part of it: the record keeps the body hash and says signing is due, and
//! the message is signed after its 250 (`inbound/signing.rs`). Ed25519-only signing (tens of
//! microseconds) stays here, its lines in the trace.
use crate::clock::rfc5322;
use crate::dkim::{BodyHashStream, SigningPlan};
use crate::inbound::signing::ToSign;
use crate::message::SpooledMessage;
use crate::outbound::shaping::pool_scan::PoolHeaderScan;
use crate::shard::core::Core;
use crate::smtp::reply::Reply;
use crate::smtp::server::Server;
use ringpost_spool::record::{MessageRecord, FLAG_8BITMIME, FLAG_NO_POOL_HEADER, FLAG_SIGN_PENDING, FLAG_SMTPUTF8};
use ringpost_spool::{Extent, MsgRef, SpoolError, Ticket};
use std::net::SocketAddr;
use std::sync::Arc;

/// Body bytes of the message being received, and the spool extents already written for it.
pub struct BodyWriter {
    buf: Vec<u8>,
    /// Flush to the spool once this many bytes are held: the most a session holds.
    chunk_bytes: usize,
    extents: Vec<Extent>,
    /// The spool tickets of those extents: the 250 waits for every one of them.
    tickets: Vec<Ticket>,
    error: Option<SpoolError>,
    /// The single pass that computes the DKIM body hash, when any key is configured.
    dkim: Option<BodyHashStream>,
    /// Whether the message may carry an `X-Ringpost-Pool` header (delivery skips its header
    /// scans when it cannot: [`FLAG_NO_POOL_HEADER`]).
    pool_scan: PoolHeaderScan,
}

impl BodyWriter {
    /// A writer that hands the spool pieces of `chunk_bytes`.
    pub fn new(chunk_bytes: usize) -> Self {
        Self { buf: Vec::new(), chunk_bytes, extents: Vec::new(), tickets: Vec::new(), error: None, dkim: None, pool_scan: PoolHeaderScan::new() }
    }

    /// Take body bytes (`prefix` then `bytes`); flushes a full chunk, waiting while the spool's
    /// pending batch is over its bound.
    pub async fn push(&mut self, core: &Core, prefix: &[u8], bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(prefix);
        self.buf.extend_from_slice(bytes);
        self.pool_scan.feed(prefix);
        self.pool_scan.feed(bytes);
        if let Some(d) = self.dkim.as_mut() {
            d.write_wire(prefix);
            d.write_wire(bytes);
        }
        if self.buf.len() >= self.chunk_bytes {
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
    pub fn abandon(&mut self, core: &Core) {
        core.spool.release_message(None, &self.extents);
        self.extents.clear();
        self.tickets.clear();
        self.buf.clear();
        self.error = None;
        self.pool_scan = PoolHeaderScan::new();
        self.dkim = (!core.signers.borrow().is_empty()).then(BodyHashStream::new);
    }
}

/// The Received header ringpost prepends. Only the checked HELO name and the peer's address
/// go in: never raw client bytes (header injection).
fn received_header(core: &Core, helo: &str, peer: SocketAddr, tls: bool, now_ms: u64) -> Vec<u8> {
    format!(
        "Received: from {helo} ([{}])\r\n\tby {} (ringpost) with {};\r\n\t{}\r\n",
        peer.ip(),
        core.limits.hostname,
        if tls { "ESMTPS" } else { "ESMTP" },
        rfc5322(now_ms)
    )
    .into_bytes()
}

/// A message made durable: its record, and what signing it needs when signing is due.
pub struct Committed {
    /// Its spool identity.
    pub id: MsgRef,
    /// Its record as written.
    pub record: MessageRecord,
    /// The header block and body hash to sign, when a key covers its From domain.
    pub to_sign: Option<ToSign>,
}

impl Committed {
    /// The engine's handle of the message, without signature lines.
    pub fn handle(&self, core: &Core) -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage::from_record(self.id, &self.record, |s| core.spool.map(s)).expect("segments of a committed record"))
    }
}

/// Make the completed message durable; returns the reply and, on success, the message.
pub async fn commit(core: &Core, server: &mut Server, body: &mut BodyWriter, peer: SocketAddr) -> (Reply, Option<Committed>) {
    body.flush(core);
    if let Some(e) = body.error.take() {
        body.abandon(core);
        return (server.commit_failed(e.is_disk_full()), None);
    }
    let (record, to_sign) = build_record(core, server, body, peer);
    let mut tickets = std::mem::take(&mut body.tickets);
    let result = match core.spool.append_message(&record) {
        Ok((id, ticket)) => {
            tickets.push(ticket);
            core.spool.wait_durable_all(&tickets).await.map(|_| id).map_err(|e| (Some(id), e))
        }
        Err(e) => Err((None, e)),
    };
    match result {
        Ok(id) => (server.committed(&id.to_string()), Some(Committed { id, record, to_sign })),
        Err((id, e)) => {
            tracing::warn!("core {}: spool commit failed: {e}", core.id);
            core.spool.release_message(id, &record.body);
            (server.commit_failed(e.is_disk_full()), None)
        }
    }
}

/// The message record (envelope, trace and body extents) and, when a key covers its From
/// domain, what signing it after the commit needs (the record then has `FLAG_SIGN_PENDING`).
fn build_record(core: &Core, server: &Server, body: &mut BodyWriter, peer: SocketAddr) -> (MessageRecord, Option<ToSign>) {
    let tx = server.transaction().expect("a message without a transaction");
    let mut flags = 0;
    if server.eight_bit() {
        flags |= FLAG_8BITMIME;
    }
    if tx.params.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    let received_ms = core.clock.now_ms();
    let mut trace = received_header(core, server.helo().unwrap_or("unknown"), peer, server.tls_active(), received_ms);
    // The AUTH user's pool travels in the trace headers; delivery reads it and never sends it.
    let live = core.live();
    if let Some(pool) = server.user().and_then(|u| live.config.auth.users.iter().find(|x| x.name == u)).and_then(|u| u.pool.as_deref()) {
        trace.extend_from_slice(format!("X-Ringpost-Pool: {pool}\r\n").as_bytes());
    } else if !body.pool_scan.may_carry() {
        flags |= FLAG_NO_POOL_HEADER;
    }
    let (mut body_hash, mut to_sign) = (None, None);
    if let Some(d) = body.dkim.take() {
        let (headers, hash) = d.finish();
        body_hash = Some(hash);
        let signers = core.signers.borrow().clone();
        match headers.map(|h| (signers.plan(&h), h)) {
            Some((SigningPlan::AfterReply { on_core }, h)) => {
                flags |= FLAG_SIGN_PENDING;
                to_sign = Some(ToSign { headers: h, body_hash: hash, now_s: received_ms / 1000, on_core });
            }
            // Ed25519 only: cheaper than a trip to the signing pool, so made here, into the trace.
            Some((SigningPlan::Inline, h)) => match signers.sign(&h, &hash, received_ms / 1000) {
                Ok(sigs) => {
                    trace.extend_from_slice(&sigs);
                    core.metrics.signed();
                }
                Err(e) => tracing::warn!("core {}: DKIM signing skipped: {e}", core.id),
            },
            Some((SigningPlan::None, _)) => {}
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
    (record, to_sign)
}
