//! The shard's driver of the outbound side: it feeds the queue manager, starts delivery agents
//! when the queue manager says so, hands agents their work, and applies what the queue manager
//! decided about their results (log events, final reports, deferrals).
//!
//! The queue manager decides; this file only acts on its answers, so the decisions stay
//! testable without I/O (see `outbound/queue_tests.rs`).
use crate::account::bounce_class::{BounceCategory, Classifier};
use crate::account::delivery_log::{EventKind, Peer};
use crate::account::dsn::FailedRecipient;
use crate::cluster_config::{LimitConfig, Rate};
use crate::message::SpooledMessage;
use crate::outbound::agent::{run_connection, WorkSource};
use crate::outbound::cluster::limiter::{ConnSlot, LimitKey, PathLimits};
use crate::outbound::queue::{Delivery, Dispatch, Final, Settlement};
use crate::shard::core::Core;
use crate::shard::inbox::{CoreMsg, Deferral, FinalReport, Group};
use crate::smtp::client::RcptResult;
use crate::smtp::reply::Reply;
use ringpost_spool::Outcome;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The longest the retry timer sleeps before looking again (it also watches for shutdown).
const RETRY_TICK_MAX: Duration = Duration::from_secs(1);

impl Core {
    /// Queue one group of a message on this core (which owns its destination): ready now, or
    /// scheduled when a recovered recipient's next attempt is still ahead.
    pub fn enqueue_group(self: &Rc<Self>, msg: &Arc<SpooledMessage>, g: Group) {
        let d = Delivery { msg: msg.clone(), rcpts: g.rcpts, attempts: g.attempts, last_response: g.last_response };
        if g.not_before_ms > self.clock.now_ms() {
            self.queues.borrow_mut().schedule(&g.domain, d, g.not_before_ms);
            self.retry_wake.notify(1);
            return;
        }
        let action = self.queues.borrow_mut().enqueue(&g.domain, d, !self.is_stopping());
        self.act(&g.domain, action);
    }

    /// Do what the queue manager answered about `domain`'s connections.
    pub(crate) fn act(self: &Rc<Self>, domain: &str, action: Dispatch) {
        match action {
            Dispatch::Nothing => {}
            Dispatch::WakeIdle(event) => {
                event.notify(1);
            }
            Dispatch::Open => self.spawn_agent(domain.to_string()),
        }
    }

    fn spawn_agent(self: &Rc<Self>, domain: String) {
        let core = self.clone();
        glommio::spawn_local(async move {
            let slot = core.connection_slot(&domain).await;
            let ctx = core.agent.borrow().clone();
            run_connection(&ctx, &ShardWork(&core, &ctx), &domain).await;
            drop(slot);
            let again = core.queues.borrow_mut().connection_closed(&domain, !core.is_stopping());
            core.act(&domain, again);
        })
        .detach();
    }

    /// The retry timer: moves due deliveries back to their ready queues. Runs for the life of
    /// the core.
    pub async fn run_retry_timer(self: Rc<Self>) {
        while !self.is_stopping() {
            let listener = self.retry_wake.listen();
            let now = self.clock.now_ms();
            let due = self.queues.borrow_mut().release_due(now, true);
            for (domain, action) in due {
                self.act(&domain, action);
            }
            let next = self.queues.borrow().next_due_ms();
            let wait = next.map_or(RETRY_TICK_MAX, |t| Duration::from_millis(t.saturating_sub(now)).min(RETRY_TICK_MAX));
            futures_lite::future::or(listener, glommio::timer::sleep(wait)).await;
        }
    }

    /// Apply the queue manager's decision about one attempt: log every recipient, report
    /// finals to the message's owner core, and send deferrals there to be persisted.
    pub(crate) async fn apply(self: &Rc<Self>, msg: &Arc<SpooledMessage>, s: Settlement, peer: Option<Peer>) {
        let remote = peer.as_ref().map(|p| p.remote.clone());
        self.admin.count_settlement(&s);
        for f in s.finals {
            let response = one_line(&f.reply);
            let kind = match f.outcome {
                Outcome::Delivered => EventKind::Delivery,
                Outcome::Bounced => EventKind::Bounce,
                Outcome::Expired => EventKind::Expiration,
            };
            let failure = failure_of(msg, &f, remote.clone(), response.clone(), &self.shared.classifier);
            let category = failure.as_ref().map(|x| x.category);
            if let (Outcome::Bounced, Some(c)) = (f.outcome, category) {
                self.auto_suppress(&msg.recipients[f.rcpt as usize], c, &response);
            }
            self.log_classified(kind, msg, Some(f.rcpt), peer.as_ref(), (Some(response), category), s.attempts);
            self.report_final(FinalReport { msg: msg.id, rcpt: f.rcpt, outcome: f.outcome, failure }).await;
        }
        if let Some(d) = s.deferred {
            let response = one_line(&d.reply);
            let category = self.shared.classifier.classify(&status_of(&d.reply, ""), &response);
            for &i in &d.rcpts {
                self.log_classified(EventKind::TransientFailure, msg, Some(i), peer.as_ref(), (Some(response.clone()), Some(category)), d.attempts);
            }
            self.retry_wake.notify(1);
            let deferral = Deferral { msg: msg.id, rcpts: d.rcpts, attempts: d.attempts, next_attempt_ms: d.next_attempt_ms, response };
            self.route_to(msg.id.core as usize, CoreMsg::Deferred(deferral)).await;
        }
    }
}

impl Core {
    /// Add a bounced recipient to the suppression list when its category says the mailbox is
    /// gone. Durable before it takes effect; done in the background so delivery goes on.
    fn auto_suppress(&self, rcpt: &str, category: BounceCategory, response: &str) {
        let Some(s) = &self.shared.suppression else { return };
        if !s.auto.contains(&category) {
            return;
        }
        let (list, rcpt, response, now_s) = (s.list.clone(), rcpt.to_string(), response.to_string(), self.clock.now_ms() / 1000);
        glommio::spawn_local(async move {
            if let Err(e) = list.add(&rcpt, category, &response, now_s).await {
                tracing::error!("cannot suppress {rcpt}: {e}");
            }
        })
        .detach();
    }
}

fn one_line(r: &Reply) -> String {
    r.to_wire().trim_end().replace("\r\n", " ")
}

fn status_of(r: &Reply, default: &str) -> String {
    match r.enhanced {
        Some((c, s, d)) => format!("{c}.{s}.{d}"),
        None => default.to_string(),
    }
}

/// The DSN entry of a recipient that failed for good (none for a delivery).
fn failure_of(msg: &SpooledMessage, f: &Final, remote: Option<String>, response: String, classifier: &Classifier) -> Option<FailedRecipient> {
    let recipient = msg.recipients[f.rcpt as usize].clone();
    match f.outcome {
        Outcome::Delivered => None,
        Outcome::Bounced => {
            let status = status_of(&f.reply, "5.0.0");
            let category = classifier.classify(&status, &response);
            Some(FailedRecipient { recipient, status, remote, diagnostic: response, expired: false, category })
        }
        Outcome::Expired => Some(FailedRecipient {
            recipient,
            status: "4.4.7".into(),
            remote,
            diagnostic: format!("delivery time expired; last error: {response}"),
            expired: true,
            category: BounceCategory::MessageExpired,
        }),
    }
}

impl Core {
    /// The `[[cluster.limit]]` on `domain`'s path, if one matches.
    fn path_limit(&self, domain: &str) -> Option<(LimitKey, &LimitConfig)> {
        let l = self.shared.config.cluster.limit_for(domain)?;
        Some((LimitKey { name: l.name.clone(), path: domain.to_ascii_lowercase() }, l))
    }

    /// Wait for a connection slot on `domain`'s path when its limit caps connections.
    async fn connection_slot(self: &Rc<Self>, domain: &str) -> Option<ConnSlot> {
        let (key, l) = self.path_limit(domain)?;
        Some(self.cluster.open_connection(&key, l.max_connections?, l.shared).await)
    }

    /// Wait until one more message may leave on `domain`'s path when its limit caps the rate.
    async fn admit_message(&self, domain: &str) {
        let Some((key, l)) = self.path_limit(domain) else { return };
        if let Some(rate) = l.max_message_rate.as_deref().and_then(Rate::parse) {
            self.cluster.admit_message(&key, rate, l.shared).await;
        }
    }
}

/// The queue manager as seen by one delivery agent, with the context it connected with.
struct ShardWork<'a>(&'a Rc<Core>, &'a Rc<crate::outbound::agent::AgentContext>);

impl ShardWork<'_> {
    /// The next delivery for this connection, before the path's rate limit.
    async fn next_unpaced(&self, domain: &str, idle: Duration) -> Option<Delivery> {
        let core = self.0;
        // A reload changed routes or delivery settings: close, so a new connection uses them.
        let stale = || !Rc::ptr_eq(&core.agent.borrow(), self.1);
        if stale() {
            return None;
        }
        if let Some(d) = core.queues.borrow_mut().pop(domain) {
            return Some(d);
        }
        let wake = core.queues.borrow().wake_event(domain)?;
        let listener = wake.listen();
        if let Some(d) = core.queues.borrow_mut().pop(domain) {
            return Some(d);
        }
        core.queues.borrow_mut().set_idle(domain, 1);
        futures_lite::future::or(listener, glommio::timer::sleep(idle)).await;
        core.queues.borrow_mut().set_idle(domain, -1);
        if stale() {
            return None;
        }
        core.queues.borrow_mut().pop(domain)
    }
}

impl WorkSource for ShardWork<'_> {
    async fn next(&self, domain: &str, idle: Duration) -> Option<Delivery> {
        let d = self.next_unpaced(domain, idle).await?;
        self.0.admit_message(domain).await;
        Some(d)
    }

    fn take_ready(&self, domain: &str) -> Vec<Delivery> {
        self.0.queues.borrow_mut().take_ready(domain)
    }

    async fn report(&self, domain: &str, d: Delivery, results: Vec<RcptResult>, peer: Option<Peer>) {
        let core = self.0;
        let msg = d.msg.clone();
        let settlement = core.queues.borrow_mut().settle(core.clock.now_ms(), domain, d, results);
        core.admin.note_response(domain, &settlement);
        core.apply(&msg, settlement, peer).await;
    }

    fn stopping(&self) -> bool {
        self.0.is_stopping()
    }
}
