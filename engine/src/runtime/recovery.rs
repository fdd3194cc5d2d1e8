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
use crate::message::SpooledMessage;
use crate::shard::core::Core;
use crate::shard::inbox::Group;
use crate::shard::router::domain_of;
use ringpost_spool::{Outcome, RecoveredMessage};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// Hand every recovered message back to the engine.
pub async fn requeue(core: &Rc<Core>, recovered: Vec<RecoveredMessage>) {
    let id = core.id;
    let (mut requeued, mut owed) = (0usize, 0usize);
    for m in recovered {
        let Some(msg) = SpooledMessage::from_record(m.msg, &m.record, |s| core.spool.map(s)) else {
            eprintln!("ringpost: core {id}: message {} names a missing segment", m.msg);
            core.spool.release_message(Some(m.msg), &m.record.body);
            continue;
        };
        let msg = Arc::new(msg);
        core.admin.history.borrow_mut().admit(&msg);
        let failed = failures(&msg, &m, &core.shared.classifier);
        if let Some(finished) = core.ledger.borrow_mut().admit(msg.clone(), &m.pending, failed) {
            core.admin.history.borrow_mut().finish(&finished.msg, core.clock.now_ms());
            owed += 1;
            core.settle_finished(finished);
            continue;
        }
        requeued += 1;
        core.send_groups(&msg, groups(&msg, &m)).await;
    }
    if requeued + owed > 0 {
        eprintln!("ringpost: core {id}: requeued {requeued} messages from the spool ({owed} more owed only a DSN)");
    }
}

/// The recovered failures of `m`, as its DSN will list them.
fn failures(msg: &SpooledMessage, m: &RecoveredMessage, classifier: &Classifier) -> Vec<FailedRecipient> {
    m.failed
        .iter()
        .map(|d| {
            let detail = d.failure.clone().unwrap_or_default();
            let expired = d.outcome == Outcome::Expired;
            // Not persisted: the category is a function of what is (status and diagnostic).
            let category = if expired { BounceCategory::MessageExpired } else { classifier.classify(&detail.status, &detail.diagnostic) };
            FailedRecipient {
                recipient: msg.recipient(d.rcpt).to_string(),
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
fn groups(msg: &SpooledMessage, m: &RecoveredMessage) -> Vec<Group> {
    type Key = (String, u32, u64, Option<String>);
    let mut by_key: BTreeMap<Key, Vec<u32>> = BTreeMap::new();
    for &i in &m.pending {
        let state = m.states.iter().find(|s| s.rcpt == i);
        let (attempts, next) = state.map_or((0, 0), |s| (s.attempts, s.next_attempt_ms));
        let response = state.map(|s| s.last_response.clone()).filter(|r| !r.is_empty());
        by_key.entry((domain_of(msg.recipient(i)), attempts, next, response)).or_default().push(i);
    }
    by_key
        .into_iter()
        .map(|((domain, attempts, not_before_ms, last_response), rcpts)| Group { domain, rcpts, attempts, not_before_ms, last_response })
        .collect()
}
