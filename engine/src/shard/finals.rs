//! Outcomes on the core that owns a message: persist each recipient's final disposition or
//! deferral in the spool, track it in the ledger, and when the message is finished make its
//! DSN durable before its spool space is released.
//!
//! Order matters for the promise: the original message stays pinned in the spool until its
//! DSN (when one is owed) is durable, so a crash or a full disk at any point leaves either the
//! DSN or the means to build it again (recovery finds the failures and no DSN marker).
use crate::account::delivery_log::EventKind;
use crate::account::dsn::{self, Original};
use crate::message::SpooledMessage;
use crate::shard::core::Core;
use crate::shard::inbox::{Deferral, FinalReport};
use crate::shard::ledger::{Finished, Progress};
use ringpost_spool::record::MessageRecord;
use ringpost_spool::{Disposition, FailureDetail, RcptState, SpoolError};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Longest pause between two attempts to spool a DSN (the disk may be full for a while).
const DSN_RETRY_MAX: Duration = Duration::from_secs(60);
/// Locally generated bodies (DSNs) are spooled in pieces of this size, like received ones.
const LOCAL_CHUNK_BYTES: usize = 128 * 1024;

impl Core {
    /// On the owner core: persist the disposition and track it; when the message is finished,
    /// settle it (DSN, then release).
    pub fn record_final(self: &Rc<Self>, r: FinalReport) {
        if r.msg.core as usize != self.id {
            // Only reached when the owner core is gone (shutdown): its spool still has the
            // recipient open, and the restart delivers it again (at-least-once).
            tracing::warn!("core {}: final report for {} of core {} left to recovery", self.id, r.msg, r.msg.core);
            return;
        }
        let failure =
            r.failure.as_ref().map(|f| FailureDetail { status: f.status.clone(), remote: f.remote.clone(), diagnostic: f.diagnostic.clone() });
        let d = Disposition { msg: r.msg, rcpt: r.rcpt, outcome: r.outcome, failure };
        if let Err(e) = self.spool.append_disposition(&d) {
            tracing::error!("core {}: cannot record disposition of {}: {e}", self.id, r.msg);
        }
        // Only an open recipient's outcome is noted: the history keeps outcomes of live
        // messages, and a duplicate or stray report must not leave a note behind.
        if self.ledger.borrow().is_open(r.msg, r.rcpt) {
            self.note_final(&r);
        }
        let progress = self.ledger.borrow_mut().record(r.msg, r.rcpt, r.failure);
        match progress {
            Progress::Open | Progress::Duplicate => {}
            Progress::Unknown => tracing::error!("core {}: final report for unknown message {}", self.id, r.msg),
            Progress::Finished(f) => {
                self.admin.history.borrow_mut().finish(&f.msg, self.clock.now_ms());
                self.settle_finished(f)
            }
        }
    }

    /// On the owner core: persist where deferred recipients stand, so a restart resumes their
    /// schedule instead of retrying the whole backlog at once.
    pub fn record_deferral(&self, d: &Deferral) {
        if d.msg.core as usize != self.id {
            return;
        }
        for &rcpt in &d.rcpts {
            let state = RcptState { msg: d.msg, rcpt, attempts: d.attempts, next_attempt_ms: d.next_attempt_ms, last_response: d.response.clone() };
            if let Err(e) = self.spool.append_rcpt_state(&state) {
                // Only the schedule is lost: after a restart this recipient is retried sooner.
                tracing::warn!("core {}: cannot record the retry state of {} recipient {rcpt}: {e}", self.id, d.msg);
            }
        }
    }

    /// A message whose recipients are all final: release it, after its DSN when one is owed.
    pub fn settle_finished(self: &Rc<Self>, f: Finished) {
        if !f.owes_dsn() {
            if !f.failed.is_empty() {
                // Failures but no DSN (null sender): mark it handled, or every restart would
                // find this message owing one while its segment lasts.
                let _ = self.spool.append_dsn_done(f.msg.id);
            }
            self.spool.release_message(Some(f.msg.id), &f.msg.extents());
            return;
        }
        let core = self.clone();
        glommio::spawn_local(async move { core.dsn_then_release(f).await }).detach();
    }

    async fn dsn_then_release(self: Rc<Self>, f: Finished) {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.spool_dsn(&f).await {
                Ok(dsn) => {
                    // Only now that the DSN is durable: mark it sent (a crash before this marker
                    // is durable means a second DSN, never none), then let the original go.
                    if let Err(e) = self.spool.append_dsn_done(f.msg.id) {
                        tracing::warn!("core {}: cannot mark the DSN of {} as sent: {e}", self.id, f.msg.id);
                    }
                    self.spool.release_message(Some(f.msg.id), &f.msg.extents());
                    self.log_event(EventKind::Reception, &dsn, None, None, Some(format!("DSN for {}", f.msg.id)), 0);
                    self.accept_message(dsn).await;
                    return;
                }
                Err(e @ SpoolError::RecordTooLarge { .. }) => {
                    // Retrying cannot help: give the DSN up loudly rather than pin the original
                    // (and every segment behind it) for ever.
                    tracing::error!("core {}: the DSN for {} can never be spooled ({e}); it is dropped", self.id, f.msg.id);
                    let _ = self.spool.append_dsn_done(f.msg.id);
                    self.spool.release_message(Some(f.msg.id), &f.msg.extents());
                    return;
                }
                Err(e) => {
                    tracing::error!("core {}: could not spool the DSN for {}: {e}; the message stays queued", self.id, f.msg.id);
                    if self.is_stopping() {
                        return;
                    }
                    glommio::timer::sleep(pause).await;
                    pause = (pause * 2).min(DSN_RETRY_MAX);
                }
            }
        }
    }

    /// Build and durably spool the DSN for a finished message.
    async fn spool_dsn(&self, f: &Finished) -> Result<Arc<SpooledMessage>, SpoolError> {
        let orig = &f.msg;
        let headers = orig.headers(32 * 1024);
        let id = orig.id.to_string();
        let now = self.clock.now_ms();
        let original = Original { id: &id, sender: orig.sender(), received_ms: orig.received_ms(), headers: &headers };
        let body = dsn::build(&self.limits.hostname, now, &original, &f.failed);
        self.spool_local_message(b"", vec![orig.sender().as_bytes().to_vec()], &body, now).await
    }

    /// Spool a locally generated message durably and return its shared view. The body goes in
    /// pieces of at most [`LOCAL_CHUNK_BYTES`], like a received one, so a large DSN fits any
    /// segment size; the message waits for every piece and its record.
    async fn spool_local_message(&self, sender: &[u8], recipients: Vec<Vec<u8>>, body: &[u8], now: u64) -> Result<Arc<SpooledMessage>, SpoolError> {
        let mut extents = Vec::new();
        let mut tickets = Vec::new();
        for piece in body.chunks(LOCAL_CHUNK_BYTES) {
            match self.spool.append_chunk(piece) {
                Ok((extent, ticket)) => {
                    extents.push(extent);
                    tickets.push(ticket);
                }
                Err(e) => {
                    self.spool.release_message(None, &extents);
                    return Err(e);
                }
            }
        }
        let record = MessageRecord { received_ms: now, sender: sender.to_vec(), recipients, body: extents, ..Default::default() };
        let (id, ticket) = match self.spool.append_message(&record) {
            Ok(v) => v,
            Err(e) => {
                self.spool.release_message(None, &record.body);
                return Err(e);
            }
        };
        tickets.push(ticket);
        if let Err(e) = self.spool.wait_durable_all(&tickets).await {
            self.spool.release_message(Some(id), &record.body);
            return Err(e);
        }
        let msg = SpooledMessage::from_record(id, &record, |s| self.spool.map(s)).expect("segment of a committed record");
        Ok(Arc::new(msg))
    }
}
