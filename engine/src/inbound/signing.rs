//! DKIM signing after the 250 (issue 9 item 3). An RSA-2048 signature costs about a quarter
//! of a millisecond of CPU with aws-lc here (half a millisecond with ring, which signed before;
//! `crate::dkim_key`), more than the rest of a transaction. Made in the accepting session
//! before the commit, it held every 250 and stalled the core's other sessions for that
//! long. Now the commit only records the body hash and flags the message
//! ([`FLAG_SIGN_PENDING`]) when an RSA key applies (Ed25519 alone is cheaper than the trip and
//! is still signed in the session: `Signers::plan`). The session answers 250 and reads on, and
//! this module:
//! 1. signs, in a task of the core when the keys are cheap (up to four RSA-2048 keys here, as
//!    measured when the keys are loaded:
//!    [`crate::dkim::ON_CORE_SIGNING_US`]), else on glommio's blocking pool (one thread per
//!    core, on the core's CPU: the kernel's scheduler shares the CPU, so the reactor keeps
//!    serving between time slices; other blocking work of the core, such as AUTH password
//!    checks, queues behind at most [`SIGNING_IN_FLIGHT`] signatures). On the core is faster
//!    (no thread switches) but holds the reactor for the signature's time;
//! 2. appends the lines to the spool as a Signature record, so retries and restarts reuse them
//!    and nothing signs twice;
//! 3. only then hands the message to delivery, so it never leaves unsigned.
//!
//! A Signature record is a cache: a crash before it is durable loses nothing. Recovery finds
//! the flag without the record and signs again, with the same header block, body hash, `t=`
//! and (unless reloaded) key, which gives the same bytes.
use crate::dkim::{BodyHashStream, Signers};
use crate::inbound::commit::Committed;
use crate::message::{SignatureLines, SpooledMessage};
use crate::shard::core::Core;
use ringpost_spool::record::{FLAG_SIGN_PENDING, MAX_SIGNATURE_LEN};
use ringpost_spool::{MessageRecord, MsgRef, RecoveredMessage, SegmentMap};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::dkim::SIGNING_IN_FLIGHT;

/// What signing a committed message needs.
pub struct ToSign {
    /// The unstuffed header block, as the body hash stream kept it.
    pub headers: Vec<u8>,
    /// The relaxed body hash (also in the record).
    pub body_hash: [u8; 32],
    /// `t=`: the reception time in seconds (recovery signs again with the same one).
    pub now_s: u64,
    /// Sign in this task, on the core (cheap keys), rather than on the blocking pool.
    pub on_core: bool,
}

/// Sign `c` (in this task or on the blocking pool, as its job says) and keep the lines in the
/// spool; returns the message handle that carries them. Never fails the message: when signing
/// fails it is relayed unsigned, as a message with no applicable key is, and a warning says why.
pub async fn sign_committed(core: &Core, c: Committed) -> Arc<SpooledMessage> {
    let job = c.to_sign.expect("signing a message that needs none");
    let signers = core.signers.borrow().clone();
    // On the core, first give the reactor a turn: signing tasks made ready together (one commit
    // round wakes many sessions) would otherwise run back to back, up to 64 ms with no I/O
    // polled. Yielding the task queue returns to the reactor between two signatures, and lets
    // the session that spawned this one reach its next read, where it flushes its 250 (a
    // client that pipelines further transactions gets its replies at that read, as ever).
    let made = if job.on_core {
        glommio::executor().yield_task_queue_now().await;
        sign(&signers, &job)
    } else {
        glommio::executor().spawn_blocking(move || sign(&signers, &job)).await
    };
    let lines = checked(core, c.id, made);
    core.metrics.signed();
    let spooled = match core.spool.append_signature(c.id, &lines) {
        // The lines are in the map once the round that writes them is done.
        Ok((at, ticket)) => core.spool.wait_durable(ticket).await.ok().map(|_| at),
        Err(e) => {
            tracing::warn!("core {}: signature of {} kept in memory only: {e}", core.id, c.id);
            None
        }
    };
    // Lines in a later segment (a rotation came first) are held: reading them back would need
    // that segment's map.
    let sig = match spooled {
        Some(at) if at.segment == c.id.segment => SignatureLines::Spooled(at),
        _ => SignatureLines::Held(&lines),
    };
    Arc::new(SpooledMessage::signed(c.id, &c.record, |s| core.spool.map(s), sig).expect("segments of a committed record"))
}

/// The signature lines of a header block (what runs on the blocking pool).
fn sign(signers: &Signers, job: &ToSign) -> Result<Vec<u8>, crate::dkim::DkimError> {
    signers.sign(&job.headers, &job.body_hash, job.now_s)
}

/// The lines to keep, or none (with a warning) when signing failed or made too much.
fn checked(core: &Core, id: MsgRef, made: Result<Vec<u8>, crate::dkim::DkimError>) -> Vec<u8> {
    match made {
        Ok(lines) if lines.len() <= MAX_SIGNATURE_LEN => lines,
        Ok(lines) => {
            tracing::warn!("core {}: DKIM signing of {id} skipped: {} bytes of signatures", core.id, lines.len());
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("core {}: DKIM signing of {id} skipped: {e}", core.id);
            Vec::new()
        }
    }
}

/// Sign, at start-up, every recovered message whose signature was due but is not in the spool
/// (the host stopped between its 250 and the write of its lines), and record where the new
/// lines are. Returns the lines of those whose record could not be written, to be held.
/// Runs before the core serves, on the core. How many: those signing when the host stopped
/// ([`SIGNING_IN_FLIGHT`] per core), those committed by sessions still waiting for a slot, and
/// those whose Signature record could not be written (a failing disk): usually a few dozen,
/// tens of milliseconds of RSA-2048. Lines once written are kept while their message lives,
/// wherever they are, so a message is not signed again at the next start.
pub async fn sign_recovered(core: &Core, recovered: &mut [RecoveredMessage]) -> HashMap<MsgRef, Vec<u8>> {
    let mut held = HashMap::new();
    // Lines outside the message's own segment are copied now, before any wait: the committer
    // may relocate and delete that segment during one, and a message whose handle cannot be
    // built is dropped by the requeue. They are few (a rotation between commit and signature).
    for m in recovered.iter_mut().filter(|m| m.signature.is_some_and(|e| e.segment != m.msg.segment)) {
        let e = m.signature.expect("filtered");
        match core.spool.map(e.segment) {
            Some(map) => {
                held.insert(m.msg, map.extent(&e).to_vec());
            }
            None => m.signature = None,
        }
    }
    // Only messages still to be relayed: one that owes only a DSN is never sent. Lines in a
    // segment that is not mapped (not expected: that segment is kept while the message lives)
    // are made again (above, `signature` was cleared) rather than the message dropped.
    let due: Vec<usize> = (0..recovered.len())
        .filter(|&i| {
            let m = &recovered[i];
            m.record.flags & FLAG_SIGN_PENDING != 0 && !m.pending.is_empty() && m.signature.is_none() && !held.contains_key(&m.msg)
        })
        .collect();
    if due.is_empty() {
        return held;
    }
    let signers = core.signers.borrow().clone();
    let (mut written, count) = (Vec::new(), due.len());
    for i in due {
        let m = &recovered[i];
        let Some(job) = job_of(&m.record, |s| core.spool.map(s)) else {
            tracing::warn!("core {}: {} cannot be signed again: its header block is not readable", core.id, m.msg);
            continue;
        };
        let lines = checked(core, m.msg, sign(&signers, &job));
        core.metrics.signed();
        match core.spool.append_signature(m.msg, &lines) {
            Ok((at, ticket)) => written.push((i, at, ticket, lines)),
            Err(_) => {
                held.insert(m.msg, lines);
            }
        }
    }
    for (i, at, ticket, lines) in written {
        match core.spool.wait_durable(ticket).await {
            Ok(()) => recovered[i].signature = Some(at),
            Err(_) => {
                held.insert(recovered[i].msg, lines);
            }
        }
    }
    eprintln!("ringpost: core {}: signed again {count} recovered messages whose signatures were not kept", core.id);
    held
}

/// The header block, body hash and `t=` of a spooled message, read back from its body (the
/// same single pass that made them while it streamed in).
fn job_of(record: &MessageRecord, map: impl Fn(u32) -> Option<Arc<SegmentMap>>) -> Option<ToSign> {
    let mut stream = BodyHashStream::new();
    for e in &record.body {
        stream.write_wire(map(e.segment)?.extent(e));
    }
    let (headers, hash) = stream.finish();
    Some(ToSign { headers: headers?, body_hash: record.body_hash.unwrap_or(hash), now_s: record.received_ms / 1000, on_core: true })
}
