//! Requeue what the spool recovered, before the core serves anything: every recovered message
//! goes back into the ledger with what is known of it, and its open recipients to the cores
//! owning their destinations.
//!
//! The spool pinned every recovered message when it opened, so a release that happens while
//! this loop waits on a full channel can never delete a segment that a message still to be
//! requeued lives in.
use crate::message::SpooledMessage;
use crate::shard::core::Core;
use crate::shard::inbox::Group;
use crate::shard::router::domain_of;
use ringpost_spool::RecoveredMessage;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// Hand every recovered message back to the engine.
pub async fn requeue(core: &Rc<Core>, recovered: Vec<RecoveredMessage>) {
    let id = core.id;
    let count = recovered.len();
    for m in recovered {
        let Some(msg) = SpooledMessage::from_record(m.msg, &m.record, |s| core.spool.map(s)) else {
            eprintln!("ringpost: core {id}: message {} names a missing segment", m.msg);
            core.spool.release_message(Some(m.msg), &m.record.body);
            continue;
        };
        let msg = Arc::new(msg);
        if let Some(finished) = core.ledger.borrow_mut().admit(msg.clone(), &m.pending, Vec::new()) {
            core.settle_finished(finished);
            continue;
        }
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &i in &m.pending {
            groups.entry(domain_of(&msg.recipients[i as usize])).or_default().push(i);
        }
        let groups = groups.into_iter().map(|(domain, rcpts)| Group { domain, rcpts, attempts: 0, not_before_ms: 0 }).collect();
        core.send_groups(&msg, groups).await;
    }
    if count > 0 {
        eprintln!("ringpost: core {id}: requeued {count} messages from the spool");
    }
}
