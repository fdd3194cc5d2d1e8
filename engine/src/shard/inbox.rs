//! The messages cores exchange, and how a core takes them in.
//!
//! A message accepted on one core is handed, per destination, to the core that owns that
//! destination ([`CoreMsg::Deliver`]); outcomes travel back to the core that owns the message
//! ([`CoreMsg::Final`], [`CoreMsg::Deferred`]). Nothing is ever dropped on the way: when the
//! channel to a core is closed (it is shutting down), deliveries are queued here instead and
//! outcomes stay undone in the spool, to be redone after the restart (at-least-once).
use crate::account::delivery_log::EventKind;
use crate::account::dsn::FailedRecipient;
use crate::account::suppression::Suppressed;
use crate::clock::rfc5322;
use crate::config::SuppressionMode;
use crate::message::SpooledMessage;
use crate::shard::core::Core;
use crate::shard::router::group_by_owner;
use ringpost_spool::{MsgRef, Outcome};
use std::rc::Rc;
use std::sync::Arc;

/// Recipients of one message for one destination, with where they stand.
#[derive(Debug, Clone)]
pub struct Group {
    /// The destination domain.
    pub domain: String,
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far (recovered from the spool; 0 for new mail).
    pub attempts: u32,
    /// Not to be tried before this time (Unix ms; 0: now).
    pub not_before_ms: u64,
    /// The last transient reply (recovered from the spool; none for new mail).
    pub last_response: Option<String>,
    /// Requeued from the spool at a start: it goes through the schedule even when due, so a
    /// restart's backlog leaves in the retry timer's bounded batches
    /// ([`crate::outbound::queue::RELEASE_BATCH`]), not all at once into the ready queues.
    pub recovered: bool,
}

/// Work handed between cores.
pub enum CoreMsg {
    /// Deliver these groups of a message; sent to the destinations' owner core.
    Deliver(Arc<SpooledMessage>, Vec<Group>),
    /// A recipient reached its final outcome; sent to the message's owner core.
    Final(FinalReport),
    /// Recipients wait for another attempt; sent to the message's owner core to persist.
    Deferred(Deferral),
}

/// A recipient's final outcome, reported to the core that owns the message.
#[derive(Debug)]
pub struct FinalReport {
    /// The message.
    pub msg: MsgRef,
    /// Recipient index.
    pub rcpt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Details for the DSN when it failed.
    pub failure: Option<FailedRecipient>,
    /// Attempts it took (for `ringctl msg`).
    pub attempts: u32,
    /// The final reply, one line (for `ringctl msg`).
    pub response: String,
}

/// Recipients that wait, with the state to persist so a restart resumes the schedule.
#[derive(Debug)]
pub struct Deferral {
    /// The message.
    pub msg: MsgRef,
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: u64,
    /// The last transient response.
    pub response: String,
}

impl Core {
    /// Hand each of `groups` to the core owning its destination.
    pub async fn send_groups(self: &Rc<Self>, msg: &Arc<SpooledMessage>, groups: Vec<Group>) {
        let mut by_core: std::collections::BTreeMap<usize, Vec<Group>> = Default::default();
        for g in groups {
            by_core.entry(crate::shard::router::owner_core(&g.domain, self.ncores)).or_default().push(g);
        }
        for (core, groups) in by_core {
            self.route_to(core, CoreMsg::Deliver(msg.clone(), groups)).await;
        }
    }

    /// Take ownership of a durable message: track it in the ledger, then hand its recipients,
    /// grouped once by destination, to the cores owning them.
    pub async fn accept_message(self: &Rc<Self>, msg: Arc<SpooledMessage>) {
        let all: Vec<u32> = (0..msg.rcpt_count() as u32).collect();
        self.admin.accepted.set(self.admin.accepted.get() + 1);
        let finished = self.ledger.borrow_mut().admit(msg.clone(), &all, Vec::new());
        self.admin.history.borrow_mut().admit(&msg);
        debug_assert!(finished.is_none(), "a new message has recipients");
        let suppressed = self.bounce_suppressed(&msg).await;
        let rcpts = msg.recipients().enumerate().map(|(i, r)| (i as u32, r)).filter(|(i, _)| !suppressed.contains(i));
        for (core, groups) in group_by_owner(rcpts, self.ncores) {
            let groups = groups
                .into_iter()
                .map(|(domain, rcpts)| Group { domain, rcpts, attempts: 0, not_before_ms: 0, last_response: None, recovered: false })
                .collect();
            self.route_to(core, CoreMsg::Deliver(msg.clone(), groups)).await;
        }
    }

    /// Send `m` to `core` (or handle it here when it is this core). Never drops it.
    pub async fn route_to(self: &Rc<Self>, core: usize, m: CoreMsg) {
        if core == self.id {
            return self.handle(m);
        }
        match self.senders.send_to(core, m).await {
            Ok(()) => {}
            Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(m))) => {
                // The peer core is gone (shutdown). Keep the work here rather than lose it.
                tracing::warn!("core {}: channel to core {core} closed; handling the message here", self.id);
                self.handle(m);
            }
            Err(e) => panic!("core {}: channel mesh misuse sending to core {core}: {e}", self.id),
        }
    }

    /// Handle a message from any core (including this one).
    pub fn handle(self: &Rc<Self>, m: CoreMsg) {
        match m {
            CoreMsg::Deliver(msg, groups) => {
                for g in groups {
                    self.enqueue_group(&msg, g);
                }
            }
            CoreMsg::Final(r) => self.record_final(r),
            CoreMsg::Deferred(d) => self.record_deferral(&d),
        }
    }

    /// Report a final outcome to the message's owner core.
    pub async fn report_final(self: &Rc<Self>, r: FinalReport) {
        self.route_to(r.msg.core as usize, CoreMsg::Final(r)).await;
    }

    /// With `[suppression] mode = "accept-and-bounce"`: bounce the suppressed recipients of a
    /// new message at once (Bounce line, disposition, DSN) instead of sending to them; returns
    /// their indexes.
    async fn bounce_suppressed(self: &Rc<Self>, msg: &Arc<SpooledMessage>) -> Vec<u32> {
        let Some(s) = self.shared.suppression.as_ref().filter(|s| s.mode == SuppressionMode::AcceptAndBounce) else { return Vec::new() };
        let hits: Vec<(u32, &str, Suppressed)> = msg.recipients().enumerate().filter_map(|(i, r)| Some((i as u32, r, s.list.check(r)?))).collect();
        for &(rcpt, name, hit) in &hits {
            let diagnostic = format!("550 5.1.1 recipient suppressed ({} since {})", hit.category.as_str(), rfc5322(hit.since_s * 1000));
            let failure = FailedRecipient {
                recipient: name.to_string(),
                status: "5.1.1".into(),
                remote: None,
                diagnostic: diagnostic.clone(),
                expired: false,
                category: hit.category,
            };
            self.log_classified(EventKind::Bounce, msg, Some(name), None, (Some(diagnostic.clone()), Some(hit.category)), 0);
            let r = FinalReport { msg: msg.id, rcpt, outcome: Outcome::Bounced, failure: Some(failure), attempts: 0, response: diagnostic };
            self.report_final(r).await;
        }
        hits.into_iter().map(|(i, _, _)| i).collect()
    }
}
