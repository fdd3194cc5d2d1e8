//! Requeue what the spool recovered, before the core serves anything: every recovered message
//! goes back into the ledger with what is known of it (failures so far, for its DSN), and its
//! open recipients to the cores owning their destinations, each resuming its persisted retry
//! schedule (attempts made, next attempt time) instead of all being retried at once.
//!
//! The spool pinned every recovered message when it opened, so a release that happens while
//! this loop waits on a full channel can never delete a segment that a message still to be
//! requeued lives in. Messages whose recipients are all final but whose DSN was never spooled
//! come back with nothing open: the ledger finishes them at once and the DSN is sent.
use crate::account::bounce_class::{BounceCategory, Classifier};
use crate::account::dsn::FailedRecipient;
use crate::message::{SignatureLines, SpooledMessage};
use crate::shard::core::Core;
use crate::shard::history::History;
use crate::shard::inbox::Group;
use crate::shard::ledger::{Finished, Ledger};
use crate::shard::router::domain_of;
use ringpost_spool::{MsgRef, Outcome, RecoveredMessage, SegmentMap};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

/// Hand every recovered message back to the engine.
pub async fn requeue(core: &Rc<Core>, recovered: Vec<RecoveredMessage>) {
    let id = core.id;
    let (mut requeued, mut owed) = (0usize, 0usize);
    let mut recovered = recovered;
    let held = crate::inbound::signing::sign_recovered(core, &mut recovered).await;
    let msgs = build_messages(&recovered, |s| core.spool.map(s), &held);
    for (m, msg) in recovered.into_iter().zip(msgs) {
        let Some(msg) = msg else {
            eprintln!("ringpost: core {id}: message {} names a missing segment", m.msg);
            core.spool.release_message(Some(m.msg), &m.record.body);
            continue;
        };
        let admitted = admit(&mut core.ledger.borrow_mut(), &mut core.admin.history.borrow_mut(), &core.shared.classifier, &msg, m);
        match admitted {
            Admitted::Finished(finished) => {
                core.admin.history.borrow_mut().finish(&finished.msg, core.clock.now_ms());
                owed += 1;
                core.settle_finished(finished);
            }
            Admitted::Open(groups) => {
                requeued += 1;
                core.send_groups(&msg, groups).await;
            }
        }
    }
    if requeued + owed > 0 {
        eprintln!("ringpost: core {id}: requeued {requeued} messages from the spool ({owed} more owed only a DSN)");
    }
}

/// The engine's message of every recovered one (none: it names a missing segment), all made
/// before any recovered record is dropped. Why first: the scan's owned copies (envelopes,
/// retry states, locations) are several hundred bytes per message; were each message's handle
/// allocated as its record is dropped, the handles would land one by one in the holes the
/// records leave, a few per page across the whole scan high-water mark, and no page of it
/// could go back to the system (a restart with 200,000 queued kept 1,067 bytes per recipient
/// resident against 481 before it). Made up front, they fill fresh pages densely, and the
/// records, dropped afterwards, leave whole free pages that `malloc_trim` returns.
/// Each carries its DKIM signature lines: from the spool, or `held` (signed again at this
/// start, with the record not written).
pub fn build_messages(
    recovered: &[RecoveredMessage],
    map: impl Fn(u32) -> Option<Arc<SegmentMap>>,
    held: &HashMap<MsgRef, Vec<u8>>,
) -> Vec<Option<Arc<SpooledMessage>>> {
    let lines = |m: &RecoveredMessage| match (held.get(&m.msg), m.signature) {
        (Some(lines), _) => SignatureLines::Held(lines),
        (None, Some(at)) => SignatureLines::Spooled(at),
        (None, None) => SignatureLines::None,
    };
    recovered.iter().map(|m| SpooledMessage::signed(m.msg, &m.record, &map, lines(m)).map(Arc::new)).collect()
}

/// What admitting one recovered message decided.
pub enum Admitted {
    /// Every recipient is final: only its DSN is owed.
    Finished(Finished),
    /// Its open recipients, grouped by destination and schedule, to be queued.
    Open(Vec<Group>),
}

/// Track one recovered message in the ledger and the history; `m` is dropped here.
pub fn admit(ledger: &mut Ledger, history: &mut History, classifier: &Classifier, msg: &Arc<SpooledMessage>, m: RecoveredMessage) -> Admitted {
    history.admit(msg);
    let failed = failures(msg, &m, classifier);
    match ledger.admit(msg.clone(), &m.pending, failed) {
        Some(finished) => Admitted::Finished(finished),
        None => Admitted::Open(groups(msg, &m)),
    }
}

/// The recovered failures of `m`, as its DSN will list them.
fn failures(msg: &SpooledMessage, m: &RecoveredMessage, classifier: &Classifier) -> Vec<FailedRecipient> {
    let names: Vec<&str> = msg.recipients().collect();
    m.failed
        .iter()
        .map(|d| {
            let detail = d.failure.clone().unwrap_or_default();
            let expired = d.outcome == Outcome::Expired;
            // Not persisted: the category is a function of what is (status and diagnostic).
            let category = if expired { BounceCategory::MessageExpired } else { classifier.classify(&detail.status, &detail.diagnostic) };
            FailedRecipient {
                recipient: names[d.rcpt as usize].to_string(),
                status: if detail.status.is_empty() { "5.0.0".into() } else { detail.status },
                remote: detail.remote,
                diagnostic: detail.diagnostic,
                expired,
                category,
            }
        })
        .collect()
}

/// The open recipients of `m` grouped by destination and by where their schedule stands.
pub fn groups(msg: &SpooledMessage, m: &RecoveredMessage) -> Vec<Group> {
    type Key = (String, u32, u64, Option<String>);
    let mut by_key: BTreeMap<Key, Vec<u32>> = BTreeMap::new();
    // Read once: a lookup by index walks the spooled envelope from its start.
    let names: Vec<&str> = msg.recipients().collect();
    for &i in &m.pending {
        let state = m.states.iter().find(|s| s.rcpt == i);
        let (attempts, next) = state.map_or((0, 0), |s| (s.attempts, s.next_attempt_ms));
        let response = state.map(|s| s.last_response.clone()).filter(|r| !r.is_empty());
        by_key.entry((domain_of(names[i as usize]), attempts, next, response)).or_default().push(i);
    }
    by_key
        .into_iter()
        .map(|((domain, attempts, not_before_ms, last_response), rcpts)| Group {
            domain,
            rcpts,
            attempts,
            not_before_ms,
            last_response,
            recovered: true,
        })
        .collect()
}
