//! The shard's driver of the outbound side: it feeds the queue manager, starts delivery agents
//! when the queue manager says so, hands agents their work, and applies what the queue manager
//! decided about their results (log events, final reports, deferrals).
//!
//! The queue manager decides; this file only acts on its answers, so the decisions stay
//! testable without I/O (see `outbound/queue_tests.rs`).
use crate::account::bounce_class::{BounceCategory, Classifier};
use crate::account::delivery_log::{EventKind, Peer};
use crate::account::dsn::FailedRecipient;
use crate::config::RuleAction;
use crate::message::SpooledMessage;
use crate::outbound::agent::{run_connection, AgentContext, WorkSource};
use crate::outbound::cluster::limiter::{ConnSlot, LimitKey, PathLimits};
use crate::outbound::idle_bell::IdleBell;
use crate::outbound::queue::{Delivery, Dispatch, Final, IdleTicket, Pop, Settlement};
use crate::outbound::shaping::prune::PRUNE_EVERY_MS;
use crate::outbound::shaping::site::Site;
use crate::outbound::shaping::{find_header, POOL_HEADER};
use crate::shard::core::Core;
use crate::shard::inbox::{CoreMsg, Deferral, FinalReport, Group};
use crate::smtp::client::RcptResult;
use crate::smtp::reply::Reply;
use ringpost_spool::Outcome;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The longest the retry timer sleeps before looking again (it also watches for shutdown).
const RETRY_TICK_MAX: Duration = Duration::from_secs(1);
/// The retry timer's pause between two batches of due deliveries, so the executor goes back
/// to the reactor (completions, other tasks) before the next batch. Best effort: a timer
/// already past its time when first polled is ready without yielding (glommio), so the pause
/// is long enough for that to be rare and short against a batch (~1 ms).
const RELEASE_PAUSE: Duration = Duration::from_micros(50);

impl Core {
    /// Queue one group of a message on this core (which owns its destination): new mail is
    /// ready now; a recovered group is scheduled, at its next attempt's time, which may be
    /// past (the retry timer then releases it with the rest of the backlog, batch by batch).
    pub fn enqueue_group(self: &Rc<Self>, msg: &Arc<SpooledMessage>, g: Group) {
        let pool = self.pool_of(msg).and_then(|p| u16::try_from(p).ok());
        let mut q = self.queues.borrow_mut();
        let (domain, last_response) = (q.intern(&g.domain), g.last_response.map(|r| q.intern(&r)));
        drop(q);
        let d = Delivery { msg: msg.clone(), rcpts: g.rcpts.into(), attempts: g.attempts, last_response, domain, pool };
        let now = self.clock.now_ms();
        if g.recovered || g.not_before_ms > now {
            // A recovered group already due waits at `now`: among its equals in recovery
            // order (oldest mail first), and shown as due now, not at 1970 (never tried).
            self.queues.borrow_mut().schedule(d, g.not_before_ms.max(now));
            self.retry_wake.notify(1);
            return;
        }
        let action = self.queues.borrow_mut().enqueue(d, now, !self.is_stopping());
        self.act(action);
    }

    /// The pool a message leaves from: the one its AUTH user set (an `X-Ringpost-Pool` line
    /// in the trace headers), else its own `X-Ringpost-Pool` header, else `default`.
    fn pool_of(&self, msg: &SpooledMessage) -> Option<usize> {
        let shaping = &self.shared.shaping;
        if shaping.pools.is_empty() || !msg.may_carry_pool_header() {
            return None;
        }
        let found = find_header(std::iter::once(msg.trace()), POOL_HEADER).or_else(|| find_header(msg.body_pieces(), POOL_HEADER));
        shaping.pool_index(&found?.0)
    }

    /// Do what the queue manager answered.
    pub(crate) fn act(self: &Rc<Self>, action: Dispatch) {
        match action {
            Dispatch::Nothing => {}
            Dispatch::WakeIdle(bell) | Dispatch::CloseIdle(bell) => bell.ring(),
            Dispatch::AskIdleQuit(limits) => limits.ask_idle_quit(),
            Dispatch::Open(path) => self.spawn_agent(path),
            Dispatch::Resolve(domain) => self.spawn_resolve(domain),
        }
    }

    /// Shutdown began: every connection idling on this core is told to QUIT (one that would
    /// start idling from now on sees the flag in `idle_wait` and closes instead).
    pub(crate) fn quit_idle_at_shutdown(self: &Rc<Self>) {
        let told = self.queues.borrow_mut().quit_idle(None);
        told.into_iter().for_each(|a| self.act(a));
    }

    /// Find the site of `domain` (its static route's hosts, else its MX set) and queue what
    /// waited for it.
    fn spawn_resolve(self: &Rc<Self>, domain: String) {
        let core = self.clone();
        glommio::spawn_local(async move {
            let ctx = core.agent.borrow().clone();
            let site = site_of(&ctx, &domain).await;
            let again = core.queues.borrow_mut().site_resolved(&domain, site, core.clock.now_ms(), !core.is_stopping());
            again.into_iter().for_each(|a| core.act(a));
        })
        .detach();
    }

    fn spawn_agent(self: &Rc<Self>, path: Rc<str>) {
        let core = self.clone();
        glommio::spawn_local(async move {
            let ctx = core.agent.borrow().clone();
            let info = core.queues.borrow().path_info(&path);
            let mut told = None;
            if let Some(info) = info {
                let slot = core.shared_connection_slot(&path).await;
                let work = ShardWork(&core, &ctx, IdleBell::new(), Cell::new(None));
                run_connection(&ctx, &work, &path, &info).await;
                drop(slot);
                told = work.3.get();
            }
            let again = core.queues.borrow_mut().connection_ended(&path, told, core.clock.now_ms(), !core.is_stopping());
            core.act(again);
        })
        .detach();
    }

    /// The retry timer: moves due deliveries back to their ready queues and looks again at
    /// paths whose rate, suspension or cap held them. Runs for the life of the core.
    pub async fn run_retry_timer(self: Rc<Self>) {
        let mut next_prune = self.clock.now_ms() + PRUNE_EVERY_MS;
        while !self.is_stopping() {
            let listener = self.retry_wake.listen();
            let now = self.clock.now_ms();
            if now >= next_prune {
                self.prune_idle(now);
                next_prune = now + PRUNE_EVERY_MS;
            }
            // Expiry after the release: mail due now takes an idle connection before it can
            // expire (the queue manager decides both here; acting only rings and spawns).
            let mono = self.clock.mono_ms();
            let (actions, more_due) = {
                let mut q = self.queues.borrow_mut();
                let mut due = q.release_due(now, true);
                // Not while more is due: a connection idling now may be the one it goes to.
                let more_due = q.next_due_ms().is_some_and(|t| t <= now);
                if !more_due {
                    due.extend(q.expire_idle(mono));
                }
                (due, more_due)
            };
            for action in actions {
                self.act(action);
            }
            if more_due {
                // More is due than one batch: let the core's I/O and other tasks run first (a
                // timer that is due at once would not yield: glommio polls it ready).
                glommio::timer::sleep(RELEASE_PAUSE).await;
                continue;
            }
            let (next, next_idle) = {
                let q = self.queues.borrow();
                (q.next_due_ms(), q.next_idle_ms())
            };
            let wait = [next.map(|t| t.saturating_sub(now)), next_idle.map(|t| t.saturating_sub(mono))]
                .into_iter()
                .flatten()
                .map(Duration::from_millis)
                .fold(RETRY_TICK_MAX, Duration::min);
            futures_lite::future::or(listener, glommio::timer::sleep(wait)).await;
        }
    }

    /// Forget what idle paths, sites and limits left behind (`outbound/queue_prune.rs`,
    /// `outbound/shaping/prune.rs`); the host-wide maps are pruned by core 0 only.
    fn prune_idle(&self, now: u64) {
        let (paths, sites) = self.queues.borrow_mut().prune_idle(now);
        let (rates, open) = self.cluster.prune();
        let host_paths = (self.id == 0).then(|| self.shared.shaping.prune(now));
        tracing::debug!("core {}: kept {paths} paths, {sites} sites, {rates}+{open} limiter entries, host paths {host_paths:?}", self.id);
    }

    /// Match the replies of one attempt against the `[[rule]]`s and act on the path: suspend
    /// or throttle it, turn the recipient into a bounce, or move its next attempt. Returns the
    /// retry override and whether the domain's queue is to be bounced.
    fn apply_rules(&self, path: &str, d: &Delivery, results: &mut [RcptResult], now: u64) -> (Option<Duration>, Option<String>) {
        let shaping = &self.shared.shaping;
        // Most attempts deliver: no reply to match, no path to look up.
        if shaping.rules.is_empty() || results.iter().all(|r| matches!(r, RcptResult::Delivered(_))) {
            return (None, None);
        }
        let Some((site, limits)) = self.queues.borrow().path_limits(path) else { return (None, None) };
        let (mut retry_in, mut bounce) = (None, None);
        for r in results.iter_mut() {
            let reply = match r {
                RcptResult::Delivered(_) => continue,
                RcptResult::Transient(x) | RcptResult::Permanent(x) => x.clone(),
            };
            let text = one_line(&reply);
            let Some(rule) = shaping.rules.first_match(&d.domain, &site, &text) else { continue };
            let why = format!("rule {}: {text}", rule.name);
            let until = now + rule.duration.as_millis() as u64;
            tracing::warn!("path {}: {:?} ({why})", limits.key, rule.action);
            match rule.action {
                RuleAction::Suspend => {
                    limits.suspend(until, &why);
                    shaping.keep_hold(&limits);
                }
                RuleAction::Throttle => {
                    limits.throttle(rule.factor, until, &why);
                    shaping.keep_hold(&limits);
                }
                RuleAction::RetryIn => retry_in = Some(rule.duration),
                RuleAction::Bounce => {
                    *r = RcptResult::Permanent(reply);
                    bounce = Some(why);
                }
            }
        }
        (retry_in, bounce)
    }

    /// Apply the queue manager's decision about one attempt: log every recipient, report
    /// finals to the message's owner core, and send deferrals there to be persisted.
    pub(crate) async fn apply(self: &Rc<Self>, msg: &Arc<SpooledMessage>, s: Settlement, peer: Option<Peer>) {
        let remote = peer.as_ref().map(|p| p.remote.clone());
        self.admin.count_settlement(&s);
        // Every recipient's address, read from the spooled envelope in one pass: a settlement
        // can cover thousands of recipients of one message, and a lookup by index walks the
        // envelope from its start.
        let names: Vec<&str> = msg.recipients().collect();
        let responses: Vec<String> = s.finals.iter().map(|f| one_line(&f.reply)).collect();
        // Only a daemon that suppresses needs to know which replies were shared.
        let shared = if self.shared.suppression.is_some() { shared_bounce_replies(&s.finals, &responses) } else { Default::default() };
        for (f, response) in s.finals.into_iter().zip(responses) {
            let name = names[f.rcpt as usize];
            let kind = match f.outcome {
                Outcome::Delivered => EventKind::Delivery,
                Outcome::Bounced => EventKind::Bounce,
                Outcome::Expired => EventKind::Expiration,
            };
            let failure = failure_of(name, &f, remote.clone(), response.clone(), &self.shared.classifier);
            let category = failure.as_ref().map(|x| x.category);
            if let (Outcome::Bounced, Some(c)) = (f.outcome, category) {
                if !shared.contains(&response) || names_recipient(&response, name) {
                    self.auto_suppress(name, c, &response);
                }
            }
            self.log_classified(kind, msg, Some(name), peer.as_ref(), (Some(response.clone()), category), s.attempts);
            let r = FinalReport { msg: msg.id, rcpt: f.rcpt, outcome: f.outcome, failure, attempts: s.attempts, response };
            self.report_final(r).await;
        }
        if let Some(d) = s.deferred {
            let response = one_line(&d.reply);
            let category = self.shared.classifier.classify(&status_of(&d.reply, ""), &response);
            for &i in &d.rcpts {
                self.log_classified(
                    EventKind::TransientFailure,
                    msg,
                    Some(names[i as usize]),
                    peer.as_ref(),
                    (Some(response.clone()), Some(category)),
                    d.attempts,
                );
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

/// The bounce replies that answered more than one recipient of this attempt: a refused MAIL
/// FROM, or a reply to the whole DATA (Yahoo's "554 delivery error: dd This user doesn't have
/// a yahoo.com account (bad@yahoo.com)" answers every recipient of the transaction). Such a
/// reply speaks of the transaction, so it suppresses only a recipient it names: one bad
/// address must not suppress its co-recipients. (Distinct RCPT replies with the same text,
/// e.g. two unknown Gmail users, are not told apart from it and suppress neither: a missed
/// suppression costs a bounce later, a wrong one loses a good address's mail.)
/// `responses` holds each final's reply as one line, in the order of `finals`.
fn shared_bounce_replies(finals: &[Final], responses: &[String]) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    let mut shared = std::collections::HashSet::new();
    for (_, r) in finals.iter().zip(responses).filter(|(f, _)| f.outcome == Outcome::Bounced) {
        if !seen.insert(r.as_str()) {
            shared.insert(r.clone());
        }
    }
    shared
}

/// Whether reply text `response` names `rcpt` (case-insensitively) as a whole address: the
/// characters either side may not belong to an address, so `a@x.test` is not found in
/// `<aa@x.test>` or `a@x.test.org`.
fn names_recipient(response: &str, rcpt: &str) -> bool {
    let (text, want) = (response.to_ascii_lowercase(), rcpt.to_ascii_lowercase());
    // Non-ASCII letters belong to SMTPUTF8 addresses.
    let in_address = |c: Option<char>| c.is_some_and(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || "._%+-@!#$&'*/=?^`{|}~".contains(c));
    text.match_indices(&want).any(|(at, _)| {
        let mut after = text[at + want.len()..].chars();
        let next = after.next();
        // A full stop ends a sentence unless a domain label follows it.
        let continues = if next == Some('.') { in_address(after.next()) } else { in_address(next) };
        !in_address(text[..at].chars().next_back()) && !continues
    })
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
fn failure_of(recipient: &str, f: &Final, remote: Option<String>, response: String, classifier: &Classifier) -> Option<FailedRecipient> {
    let recipient = recipient.to_string();
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
    /// A cluster-wide connection slot, held for the connection's life, when the path's shape
    /// caps connections with `shared = true` and `[cluster] redis` is set (while Redis is
    /// down the cap holds per host).
    async fn shared_connection_slot(self: &Rc<Self>, path: &str) -> Option<ConnSlot> {
        self.shared.config.cluster.redis.as_ref()?;
        let (_, limits) = self.queues.borrow().path_limits(path)?;
        let max = limits.params.max_connections.filter(|_| limits.params.shared)?;
        let key = LimitKey { name: "shape".into(), path: limits.key.clone() };
        Some(self.cluster.open_connection(&key, u32::try_from(max).unwrap_or(u32::MAX), true).await)
    }
}

/// The queue manager as seen by one delivery agent, with the context it connected with,
/// the connection's own bell, rung while it idles when work comes for it
/// ([`Dispatch::WakeIdle`]) or it is told to QUIT ([`Dispatch::CloseIdle`]), and its idle
/// ticket once it was told to QUIT (handed back when it closes).
struct ShardWork<'a>(&'a Rc<Core>, &'a Rc<crate::outbound::agent::AgentContext>, Rc<IdleBell>, Cell<Option<IdleTicket>>);

impl ShardWork<'_> {
    /// A reload changed routes or delivery settings: close, so a new connection uses them.
    fn stale(&self) -> bool {
        !Rc::ptr_eq(&self.0.agent.borrow(), self.1)
    }

    fn pop(&self, path: &str) -> Pop {
        let now = self.0.clock.now_ms();
        self.0.queues.borrow_mut().pop(path, now)
    }

    /// Wait idle, until `since_ms + idle_ms` at most (monotonic; the retry timer keeps that deadline), for the connection's
    /// own bell (work for it, or told to QUIT by this core: its idle time ran out, its path
    /// waits at its cap, an operator's suspension, shutdown) or another core's ask; false
    /// when told to QUIT, by this core, by another whose deliveries wait at the path's
    /// host-wide `max_connections`, or by a rule's suspension of the path. Nothing awaits
    /// between the caller's empty pop and `idle_begin`, so no wake-up is lost. Shutdown tells
    /// every idle connection of the core to QUIT ([`Core::quit_idle_at_shutdown`]); the
    /// `is_stopping` check below only guards a caller that would come after it (today
    /// `run_connection` checks first).
    async fn idle_wait(&self, path: &str, since_ms: u64, idle_ms: u64) -> bool {
        let core = self.0;
        if core.is_stopping() {
            return false;
        }
        let bell = &self.2;
        bell.clear();
        let Some(start) = core.queues.borrow_mut().idle_begin(path, since_ms, bell.clone(), idle_ms) else { return false };
        if start.wake_timer {
            core.retry_wake.notify(1);
        }
        let woke = async {
            bell.wait().await;
            false
        };
        let asked = async {
            start.asked.await;
            true
        };
        let asked = futures_lite::future::or(woke, asked).await;
        let quit = core.queues.borrow_mut().idle_end(path, start.ticket, asked);
        if quit {
            self.3.set(Some(start.ticket));
        }
        !quit
    }

    /// Sleep until Unix ms `t` (a rate's next turn); false once stopping.
    async fn wait_until(&self, t: u64) -> bool {
        let now = self.0.clock.now_ms();
        glommio::timer::sleep(Duration::from_millis(t.saturating_sub(now).max(1))).await;
        !self.0.is_stopping() && !self.stale()
    }
}

impl WorkSource for ShardWork<'_> {
    async fn next(&self, path: &str, idle: Duration) -> Option<Delivery> {
        // When it began to idle (monotonic ms). A connection woken for a delivery that another
        // connection of its path popped first (that one finished its transaction in between)
        // idles again from that first start (same deadline, same place in the idle order),
        // instead of closing: closing there made one route's 64 connections reconnect every
        // 40 messages under load.
        let mut idle_since: Option<u64> = None;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.stale() {
                return None;
            }
            match self.pop(path) {
                Pop::Ready(d) => return Some(d),
                Pop::Close => return None,
                Pop::Wait(t) => {
                    if !self.wait_until(t).await {
                        return None;
                    }
                    continue;
                }
                Pop::Empty => {}
            }
            let now = self.0.clock.mono_ms();
            let since = *idle_since.get_or_insert(now);
            if now.saturating_sub(since) >= idle_ms || !self.idle_wait(path, since, idle_ms).await {
                return None;
            }
        }
    }

    fn take_ready(&self, path: &str) -> Vec<Delivery> {
        self.0.queues.borrow_mut().take_ready(path)
    }

    fn requeue_unsent(&self, path: &str, d: Delivery) -> Result<(), Delivery> {
        let told = self.0.queues.borrow_mut().requeue_unsent(path, d)?;
        for action in told {
            self.0.act(action);
        }
        Ok(())
    }

    async fn report(&self, path: &str, d: Delivery, mut results: Vec<RcptResult>, peer: Option<Peer>) {
        let core = self.0;
        let msg = d.msg.clone();
        let domain = d.domain.clone();
        let now = core.clock.now_ms();
        let (retry_in, bounce) = core.apply_rules(path, &d, &mut results, now);
        let settlement = core.queues.borrow_mut().settle(now, d, results, retry_in);
        core.admin.note_response(&domain, &settlement);
        core.apply(&msg, settlement, peer).await;
        if let Some(why) = bounce {
            core.admin_bounce(crate::shard::admin_ops::BouncePick::Domain(domain.to_string()), &why).await;
        }
    }

    fn stopping(&self) -> bool {
        self.0.is_stopping()
    }
}

/// The site of `domain`: its static route's hosts, else its MX (or implicit MX) hosts; a
/// site of its own when DNS gives no hosts (the connection then reports the DNS answer).
async fn site_of(ctx: &AgentContext, domain: &str) -> Site {
    use crate::outbound::dns::resolver::Destination;
    if let Some((_, route)) = ctx.routes.route(domain) {
        return Site::of_static_route(domain, route, &ctx.config.tls_policy(route));
    }
    match ctx.resolver.destination(domain).await {
        Destination::Hosts(hosts) => Site::of_mx(domain, hosts.into_iter().map(|(h, _)| h)),
        Destination::NullMx => Site::of_unresolved(domain, Reply::new(556, (5, 1, 10), format!("{domain} does not accept mail (null MX)"))),
        Destination::NoSuchDomain => Site::of_unresolved(domain, Reply::new(550, (5, 1, 2), format!("{domain}: no such domain or no mail host"))),
        Destination::TempFail(e) => Site::of_unresolved(domain, Reply::new(451, (4, 4, 3), format!("DNS: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::names_recipient;

    #[test]
    fn a_reply_names_a_recipient_only_as_a_whole_address() {
        let yahoo = "554 delivery error: dd This user doesn't have a yahoo.com account (Bad@yahoo.com) [0]";
        assert!(names_recipient(yahoo, "bad@yahoo.com"));
        assert!(!names_recipient(yahoo, "d@yahoo.com"), "inside another address");
        assert!(!names_recipient("550 5.1.1 <a@x.test.org>: User unknown", "a@x.test"));
        assert!(!names_recipient("550 5.1.1 <aa@x.test>: User unknown", "a@x.test"));
        assert!(names_recipient("550 5.1.1 <a@x.test>: User unknown", "a@x.test"));
        assert!(names_recipient("550 no such user here: a@x.test.", "a@x.test"), "a sentence's full stop");
        assert!(!names_recipient("550 5.7.1 Sender denied", "a@x.test"));
        assert!(!names_recipient("550 5.1.1 <éa@x.test>: User unknown", "a@x.test"), "an SMTPUTF8 local part");
    }
}
