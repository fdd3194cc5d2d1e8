//! The shard's side of the admin socket. The admin task (control plane, `engine/src/admin/`) sends
//! an [`AdminAsk`] on this core's admin channel; this core answers from its own task, so the
//! admin never touches a core's state, and a slow admin client never holds a core: answers are
//! built at once from the core's state and sent on a oneshot the admin may already have given
//! up on. Bounces go through the same path as a 5xx reply (`apply`: log, final report to the
//! owner core, DSN there).
//!
//! Must never: await anything but the finals path while holding state, or keep an answer
//! waiting on the admin (the oneshot send never blocks).
use crate::config::{AdminSection, Config};
use crate::outbound::agent::AgentContext;
use crate::outbound::queue::{Delivery, Final, Place, Settlement};
use crate::outbound::retry::RetryPolicy;
use crate::outbound::routes::Routes;
use crate::outbound::shaping::holds::{domain_key, HoldRecord};
use crate::outbound::tls_policy::ClientConfigs;
use crate::shard::core::{Core, LiveConfig, Shared};
use crate::shard::history::History;
pub use crate::shard::history::{DoneMsg, FinalNote};
use crate::shard::inbox::FinalReport;
use crate::smtp::reply::Reply;
use crate::trace::Subscription;
use futures_channel::oneshot;
use glommio::channels::shared_channel::SharedReceiver;
use ringpost_admin_proto as proto;
use ringpost_spool::{MsgRef, Outcome};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Most destinations whose last response a core remembers (the table is cleared past it).
const LAST_RESPONSES_MAX: usize = 10_000;

/// A question for one core, with where to send the answer.
pub struct AdminAsk {
    /// What to do.
    pub op: CoreOp,
    /// Where the answer goes (dropped by the admin when it gave up waiting).
    pub reply: oneshot::Sender<CoreAnswer>,
}

/// What the admin task may ask a core.
pub enum CoreOp {
    /// This core's counters and gauges.
    Status,
    /// The destinations this core owns.
    Queue,
    /// What this core knows of a message (the ledger on its owner, queues everywhere).
    Msg(MsgRef),
    /// Suspend a destination (`None`: all), optionally for a while.
    Suspend(Option<String>, Option<u64>),
    /// Lift a suspension (`None`: all).
    Resume(Option<String>),
    /// Make waiting mail of a destination (`None`: all) ready now.
    Retry(Option<String>),
    /// Bounce queued recipients of a destination or of a message, with a reason.
    Bounce(BouncePick, String),
    /// Refuse new sessions with 421 (true) or accept again.
    Drain(bool),
    /// Check (`false`) or apply (`true`) a new configuration.
    Reload(Arc<Config>, bool),
    /// A copy of this core's metrics (the Prometheus endpoint).
    Metrics,
    /// Which message carried this Message-ID (live or in the history), if this core owns one.
    FindMessageId(String),
    /// Start sending trace events to a subscriber.
    TraceOn(Subscription),
    /// Stop sending trace events to subscription `id`.
    TraceOff(u64),
}

/// What a bounce takes out of the queues.
pub enum BouncePick {
    /// Every queued recipient of this destination.
    Domain(String),
    /// Every queued recipient of this message.
    Msg(MsgRef),
}

/// A core's answer.
pub enum CoreAnswer {
    /// To `Status`.
    Status(proto::CoreStatus),
    /// To `Queue`: this core's destinations, unsorted.
    Queue(Vec<proto::DestStatus>),
    /// To `Msg`.
    Msg(MsgAnswer),
    /// To actions: how many destinations or recipients they touched.
    Count(u64),
    /// To `Reload`: why the configuration cannot be used.
    Reload(Result<(), String>),
    /// To `Metrics`.
    Metrics(Box<crate::metrics::local::CoreSample>),
    /// To `FindMessageId`.
    Found(Option<MsgRef>),
}

/// What one core knows of a message.
#[derive(Default)]
pub struct MsgAnswer {
    /// From the owner core's ledger: the message is live.
    pub owned: Option<OwnedMsg>,
    /// Recipients found in this core's queues.
    pub queued: Vec<QueuedAnswer>,
    /// From the owner core: the Message-ID and the outcomes of final recipients so far.
    pub message_id: Option<String>,
    /// From the owner core: final recipients' outcomes (live message) so far.
    pub finals: Vec<FinalNote>,
    /// From the owner core: the message is finished and still in the history.
    pub done: Option<DoneMsg>,
}

/// A recipient of the message found in a queue.
pub struct QueuedAnswer {
    /// Recipient index.
    pub rcpt: u32,
    /// Queued, suspended or deferred.
    pub state: proto::RcptState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt (Unix ms) when deferred.
    pub next_attempt_ms: Option<u64>,
    /// The last transient reply.
    pub last_response: Option<String>,
}

/// A live message as its owner core's ledger has it.
pub struct OwnedMsg {
    /// Envelope sender.
    pub sender: String,
    /// Recipients in envelope order.
    pub recipients: Vec<String>,
    /// Size as relayed.
    pub size: u64,
    /// Reception time (Unix ms).
    pub received_ms: u64,
    /// Recipients without a final outcome.
    pub open: Vec<u32>,
    /// Failed recipients: (address, expired, diagnostic).
    pub failed: Vec<(String, bool, String)>,
}

/// Counters since start and operator state, kept by the core for the admin socket.
pub struct AdminState {
    /// Message-IDs and outcomes for `ringctl msg`, finished messages for `[admin] history`.
    pub history: RefCell<History>,
    /// Messages accepted (DSNs included).
    pub accepted: Cell<u64>,
    /// Recipients delivered.
    pub delivered: Cell<u64>,
    /// Recipient attempts deferred.
    pub deferred: Cell<u64>,
    /// Recipients bounced.
    pub bounced: Cell<u64>,
    /// Recipients expired.
    pub expired: Cell<u64>,
    /// New sessions are refused with 421.
    pub draining: Cell<bool>,
    last_response: RefCell<HashMap<String, String>>,
    /// The suspension each `--for` timer may lift: (destination or "*") → generation.
    suspensions: RefCell<HashMap<String, u64>>,
    generation: Cell<u64>,
}

impl AdminState {
    /// Fresh counters; the history bounded as `[admin]` says.
    pub fn new(cfg: &AdminSection) -> Self {
        Self {
            history: RefCell::new(History::new(cfg.history_ms(), cfg.history_max)),
            accepted: Cell::default(),
            delivered: Cell::default(),
            deferred: Cell::default(),
            bounced: Cell::default(),
            expired: Cell::default(),
            draining: Cell::default(),
            last_response: RefCell::default(),
            suspensions: RefCell::default(),
            generation: Cell::default(),
        }
    }
}

fn bump(c: &Cell<u64>, n: usize) {
    c.set(c.get() + n as u64);
}

impl AdminState {
    /// Count the outcome of one attempt.
    pub fn count_settlement(&self, s: &Settlement) {
        for f in &s.finals {
            match f.outcome {
                Outcome::Delivered => bump(&self.delivered, 1),
                Outcome::Bounced => bump(&self.bounced, 1),
                Outcome::Expired => bump(&self.expired, 1),
            }
        }
        bump(&self.deferred, s.deferred.as_ref().map_or(0, |d| d.rcpts.len()));
    }

    /// Remember the last reply seen from `domain`.
    pub fn note_response(&self, domain: &str, s: &Settlement) {
        let Some(reply) = s.deferred.as_ref().map(|d| &d.reply).or(s.finals.last().map(|f| &f.reply)) else { return };
        let mut map = self.last_response.borrow_mut();
        if map.len() >= LAST_RESPONSES_MAX && !map.contains_key(domain) {
            map.clear();
        }
        map.insert(domain.to_string(), reply.to_wire().trim_end().replace("\r\n", " "));
    }
}

impl Core {
    /// Take in the admin task's questions for the life of the core.
    pub fn start_admin_inbox(self: &Rc<Self>, rx: SharedReceiver<AdminAsk>) {
        let core = self.clone();
        glommio::spawn_local(async move {
            let rx = rx.connect().await;
            while let Some(ask) = rx.recv().await {
                let answer = core.admin_op(ask.op).await;
                let _ = ask.reply.send(answer);
            }
        })
        .detach();
    }

    async fn admin_op(self: &Rc<Self>, op: CoreOp) -> CoreAnswer {
        match op {
            CoreOp::Status => CoreAnswer::Status(self.admin_status()),
            CoreOp::Queue => CoreAnswer::Queue(self.admin_queue()),
            CoreOp::Msg(id) => CoreAnswer::Msg(self.admin_msg(id)),
            CoreOp::Suspend(domain, for_s) => CoreAnswer::Count(self.admin_suspend(domain, for_s)),
            CoreOp::Resume(domain) => CoreAnswer::Count(self.admin_resume(domain)),
            CoreOp::Retry(domain) => {
                let moved = self.queues.borrow_mut().release_now(domain.as_deref(), self.clock.now_ms(), !self.is_stopping());
                let n = moved.len() as u64;
                for action in moved {
                    self.act(action);
                }
                CoreAnswer::Count(n)
            }
            CoreOp::Bounce(pick, reason) => CoreAnswer::Count(self.admin_bounce(pick, &reason).await),
            CoreOp::Drain(on) => {
                self.admin.draining.set(on);
                CoreAnswer::Count(1)
            }
            CoreOp::Reload(config, apply) => CoreAnswer::Reload(self.admin_reload(&config, apply)),
            CoreOp::Metrics => CoreAnswer::Metrics(Box::new(self.metrics_sample())),
            CoreOp::FindMessageId(mid) => CoreAnswer::Found(self.find_message_id(&mid)),
            CoreOp::TraceOn(sub) => {
                self.tracer.subscribe(sub);
                CoreAnswer::Count(1)
            }
            CoreOp::TraceOff(id) => {
                self.tracer.unsubscribe(id);
                CoreAnswer::Count(1)
            }
        }
    }

    /// This core's counters, gauges and histograms, copied (built at once, like `Status`).
    fn metrics_sample(&self) -> crate::metrics::local::CoreSample {
        let mut m = crate::metrics::local::CoreSample { core: self.id, ..Default::default() };
        self.metrics.fill(&mut m);
        let mut dests = Vec::new();
        for v in self.queues.borrow().views(self.clock.now_ms()) {
            m.queue_ready += v.ready as u64;
            m.queue_waiting += v.waiting as u64;
            m.queue_in_flight += v.in_flight as u64;
            m.connections_out += v.connections as u64;
            let (ready, waiting, in_flight) = (v.ready as u64, v.waiting as u64, v.in_flight as u64);
            dests.push(crate::metrics::local::DestDepth { domain: v.domain, ready, waiting, in_flight });
        }
        m.destinations = crate::metrics::local::top_destinations(dests, self.shared.config.metrics.destinations_top);
        m.connections_in = self.sessions.get() as u64;
        m.spool_segments = self.spool.segment_count() as u64;
        m.spool_bytes = m.spool_segments * self.shared.config.spool.segment_size;
        m.commit_rounds = self.spool.rounds();
        (m.round_records, m.fsync_us) = self.spool.round_stats();
        (m.dns_queries, m.dns_cache_hits) = self.agent.borrow().resolver.counts();
        m
    }

    /// Keep a recipient's final outcome for `ringctl msg` (on the message's owner core).
    pub fn note_final(&self, r: &FinalReport) {
        let state = match r.outcome {
            Outcome::Delivered => proto::RcptState::Delivered,
            Outcome::Bounced => proto::RcptState::Bounced,
            Outcome::Expired => proto::RcptState::Expired,
        };
        let category = r.failure.as_ref().map(|f| f.category.as_str());
        let note = FinalNote { rcpt: r.rcpt, state, attempts: r.attempts, response: r.response.as_str().into(), category };
        self.admin.history.borrow_mut().record(r.msg, note);
    }

    fn admin_status(&self) -> proto::CoreStatus {
        let views = self.queues.borrow().views(self.clock.now_ms());
        let sum = |f: fn(&crate::outbound::queue::DestView) -> usize| views.iter().map(f).sum::<usize>() as u64;
        let a = &self.admin;
        let segments = self.spool.segment_count() as u64;
        proto::CoreStatus {
            core: self.id as u32,
            sessions: self.sessions.get() as u64,
            messages_live: self.ledger.borrow().len() as u64,
            rcpts_ready: sum(|v| v.ready),
            rcpts_waiting: sum(|v| v.waiting),
            rcpts_in_flight: sum(|v| v.in_flight),
            destinations: views.len() as u64,
            suspended: self.queues.borrow().suspended_list(),
            connections_out: sum(|v| v.connections),
            spool_segments: segments,
            spool_bytes: segments * self.shared.config.spool.segment_size,
            commit_rounds: self.spool.rounds(),
            accepted: a.accepted.get(),
            delivered: a.delivered.get(),
            deferred: a.deferred.get(),
            bounced: a.bounced.get(),
            expired: a.expired.get(),
        }
    }

    fn admin_queue(&self) -> Vec<proto::DestStatus> {
        let now = self.clock.now_ms();
        let last = self.admin.last_response.borrow();
        self.queues
            .borrow()
            .views(now)
            .into_iter()
            .map(|v| proto::DestStatus {
                last_response: last.get(&v.domain).cloned(),
                core: self.id as u32,
                ready: v.ready as u64,
                waiting: v.waiting as u64,
                in_flight: v.in_flight as u64,
                connections: v.connections as u64,
                oldest_age_s: v.oldest_received_ms.map(|t| now.saturating_sub(t) / 1000),
                suspended: v.suspended,
                domain: v.domain,
                site: v.site,
                shaping: v.paths,
            })
            .collect()
    }

    fn admin_msg(&self, id: MsgRef) -> MsgAnswer {
        let mut answer = MsgAnswer::default();
        if id.core as usize == self.id {
            let mut history = self.admin.history.borrow_mut();
            history.evict(self.clock.now_ms());
            answer.finals = history.finals(id).to_vec();
            answer.done = history.done(id).cloned();
        }
        if let Some((msg, open, failed)) = self.ledger.borrow().lookup(id) {
            answer.message_id = crate::shard::history::message_id(msg);
            answer.owned = Some(OwnedMsg {
                sender: msg.sender().to_string(),
                recipients: msg.recipients().map(String::from).collect(),
                size: msg.wire_len(),
                received_ms: msg.received_ms(),
                open: open.iter().collect(),
                failed: failed.iter().map(|f| (f.recipient.clone(), f.expired, f.diagnostic.clone())).collect(),
            });
        }
        let queues = self.queues.borrow();
        for q in queues.find(id) {
            let (state, next) = match q.place {
                Place::Ready if queues.is_suspended(&q.domain) => (proto::RcptState::Suspended, None),
                Place::Ready => (proto::RcptState::Queued, None),
                Place::Waiting(at) => (proto::RcptState::Deferred, Some(at)),
            };
            answer.queued.push(QueuedAnswer { rcpt: q.rcpt, state, attempts: q.attempts, next_attempt_ms: next, last_response: q.last_response });
        }
        answer
    }

    /// The message of this core that carried `mid`, live (its id read from the ledger's
    /// message) or finished.
    fn find_message_id(&self, mid: &str) -> Option<MsgRef> {
        let ledger = self.ledger.borrow();
        let live_mid = |id| ledger.lookup(id).and_then(|(msg, _, _)| crate::shard::history::message_id(msg));
        self.admin.history.borrow().find(mid, live_mid)
    }

    fn admin_suspend(self: &Rc<Self>, domain: Option<String>, for_s: Option<u64>) -> u64 {
        let quit = self.queues.borrow_mut().suspend(domain.as_deref());
        quit.into_iter().for_each(|a| self.act(a));
        let key = domain.clone().unwrap_or_else(|| "*".into());
        self.keep_suspension(&key, for_s);
        let generation = self.admin.generation.get() + 1;
        self.admin.generation.set(generation);
        self.admin.suspensions.borrow_mut().insert(key.clone(), generation);
        if let Some(s) = for_s {
            let core = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_secs(s)).await;
                if core.admin.suspensions.borrow().get(&key) == Some(&generation) {
                    core.admin_resume(domain);
                }
            })
            .detach();
        }
        1
    }

    fn admin_resume(self: &Rc<Self>, domain: Option<String>) -> u64 {
        let holds = &self.shared.shaping.holds;
        match &domain {
            Some(d) => holds.remove(|k| k == domain_key(d)),
            None => holds.remove(|k| k.starts_with("domain:")),
        }
        match &domain {
            Some(d) => self.admin.suspensions.borrow_mut().remove(d),
            None => {
                self.admin.suspensions.borrow_mut().clear();
                None
            }
        };
        let again = self.queues.borrow_mut().resume(domain.as_deref(), self.clock.now_ms(), !self.is_stopping());
        let n = again.len() as u64;
        for action in again {
            self.act(action);
        }
        n
    }

    /// Keep a timed suspension of `key` (a destination or `*`) for a restart; an indefinite
    /// one replaces it and is not kept (a restart lifts it, as before).
    fn keep_suspension(&self, key: &str, for_s: Option<u64>) {
        let holds = &self.shared.shaping.holds;
        match for_s {
            Some(s) => {
                let until = self.clock.now_ms() + s * 1000;
                holds.set(domain_key(key), HoldRecord::suspension(until, &format!("ringctl suspend --for {s}")));
            }
            None => holds.remove(|k| k == domain_key(key)),
        }
    }

    /// At start: suspend again the destinations of this core (and `*`) that a timed
    /// `ringctl suspend` held when the daemon stopped, for what is left of their time.
    pub fn restore_suspensions(self: &Rc<Self>) {
        let now = self.clock.now_ms();
        for (d, until) in self.shared.shaping.holds.domains() {
            if until > now && (d == "*" || crate::shard::router::owner_core(&d, self.ncores) == self.id) {
                let domain = (d != "*").then_some(d);
                self.admin_suspend(domain, Some((until - now).div_ceil(1000)));
            }
        }
    }

    /// Take the picked recipients out of the queues and settle them as bounced, exactly as a
    /// 5xx reply would be: Bounce events, final reports to the owner core, DSNs there.
    pub(crate) async fn admin_bounce(self: &Rc<Self>, pick: BouncePick, reason: &str) -> u64 {
        let taken = self.queues.borrow_mut().take_queued(|domain, d: &Delivery| match &pick {
            BouncePick::Domain(x) => x == domain,
            BouncePick::Msg(id) => d.msg.id == *id,
        });
        let reply = Reply::new(550, (5, 0, 0), format!("bounced by the administrator: {reason}"));
        let mut n = 0;
        for (_, d) in taken {
            n += d.rcpts.len() as u64;
            let finals = d.rcpts.iter().map(|&rcpt| Final { rcpt, outcome: Outcome::Bounced, reply: reply.clone() }).collect();
            let s = Settlement { finals, deferred: None, attempts: d.attempts };
            self.apply(&d.msg, s, None).await;
        }
        n
    }

    /// Check that `cfg` can be used on this core (`apply` false), or use it from now on:
    /// sessions, connections and retry schedules made after this see it.
    fn admin_reload(self: &Rc<Self>, cfg: &Config, apply: bool) -> Result<(), String> {
        let client_tls = ClientConfigs::build(cfg).map_err(|e| e.to_string())?;
        if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            crate::tls::server_config(c, k).map_err(|e| e.to_string())?;
        }
        let signers = crate::dkim::Signers::load(&cfg.dkim).map_err(|e| e.to_string())?;
        if !apply {
            return Ok(());
        }
        // New keys sign messages committed from now on; a message already streaming keeps
        // its body hash (the same for every key) and is signed with the new keys, and so is
        // one answered 250 and still waiting for its RSA signature.
        *self.signers.borrow_mut() = Arc::new(signers);
        let old = self.agent.borrow().clone();
        let agent = AgentContext {
            hostname: old.hostname.clone(),
            config: cfg.clone(),
            routes: Routes::new(&cfg.route),
            resolver: old.resolver.clone(),
            client_tls,
            tracer: old.tracer.clone(),
        };
        *self.agent.borrow_mut() = Rc::new(agent);
        *self.live.borrow_mut() = Rc::new(LiveConfig::new(cfg.clone(), &self.shared));
        self.admin.history.borrow_mut().set_bounds(cfg.admin.history_ms(), cfg.admin.history_max);
        let d = &cfg.delivery;
        self.queues.borrow_mut().set_policy(RetryPolicy::from_config(d), d.max_connections_per_destination);
        let cap = d.max_connections_total.div_ceil(self.ncores.max(1));
        let opened = self.queues.borrow_mut().set_total_connections(cap, self.clock.now_ms(), !self.is_stopping());
        opened.into_iter().for_each(|a| self.act(a));
        self.queues.borrow_mut().expire_sites();
        self.reload_tls();
        Ok(())
    }
}

/// The suppression commands. The list is host-wide (in [`Shared`], shared by every core's RCPT
/// check), so no core is asked; changes are fsynced (on glommio's blocking pool) before the
/// reply, and take effect only then.
pub async fn suppress(shared: &Shared, op: proto::SuppressOp, now_s: u64) -> proto::Reply {
    use proto::{ErrorKind, Reply, SuppressOp};
    let Some(s) = &shared.suppression else {
        return Reply::error(ErrorKind::Refused, "the suppression list is off ([suppression] enabled = false)");
    };
    let list = s.list.clone();
    let unavailable = |e: crate::account::suppression::SuppressionError| Reply::error(ErrorKind::Unavailable, e.to_string());
    let report = |summary: String, entries: Vec<proto::SuppressEntry>| {
        Reply::Suppression(proto::SuppressionReport { summary, total: list.len() as u64, entries })
    };
    match op {
        SuppressOp::Add { addr, reason } => {
            if let Err(why) = check_address(&addr) {
                return Reply::error(ErrorKind::Refused, why);
            }
            let reason = reason.unwrap_or_else(|| "added by the administrator".into());
            match list.add_manual(&addr, &reason, now_s).await {
                Ok(()) => report(
                    format!("{addr} suppressed: RCPT refused with 550 5.1.1"),
                    suppress_entries(&list, Some(&addr), 1).await.unwrap_or_default(),
                ),
                Err(e) => unavailable(e),
            }
        }
        SuppressOp::Remove { addr } => match list.remove(&addr, now_s).await {
            Ok(true) => report(format!("{addr} no longer suppressed"), Vec::new()),
            Ok(false) => Reply::error(ErrorKind::NotFound, format!("{addr} is not suppressed")),
            Err(e) => unavailable(e),
        },
        SuppressOp::List { limit } => match suppress_entries(&list, None, limit.min(proto::SUPPRESS_LIMIT_MAX) as usize).await {
            Ok(entries) => report(format!("{} of {} suppressed addresses", entries.len(), list.len()), entries),
            Err(e) => unavailable(e),
        },
        SuppressOp::Check { addr } => {
            if list.check(&addr).is_none() {
                return Reply::error(ErrorKind::NotFound, format!("{addr} is not suppressed"));
            }
            match suppress_entries(&list, Some(&addr), 1).await {
                Ok(entries) => report(format!("{addr} is suppressed"), entries),
                Err(e) => unavailable(e),
            }
        }
    }
}

/// Journal entries (all, or the one for `addr`), at most `limit`, read on the blocking pool.
async fn suppress_entries(
    list: &Arc<crate::account::suppression::SuppressionList>,
    addr: Option<&str>,
    limit: usize,
) -> Result<Vec<proto::SuppressEntry>, crate::account::suppression::SuppressionError> {
    let key = |a: &str| a.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase();
    let want = addr.map(key);
    let l = list.clone();
    let all = glommio::executor().spawn_blocking(move || l.entries()).await?;
    Ok(all
        .into_iter()
        .filter(|e| want.as_ref().is_none_or(|w| key(&e.addr) == *w))
        .take(limit)
        .map(|e| proto::SuppressEntry {
            category: e.entry.category.as_str().into(),
            since_unix_s: e.entry.since_s,
            reason: e.reason,
            manual: e.manual,
            addr: e.addr,
        })
        .collect())
}

/// An address an operator may suppress: `local@domain`, no spaces or controls, ≤ 254 octets.
fn check_address(addr: &str) -> Result<(), String> {
    let a = addr.trim_start_matches('<').trim_end_matches('>');
    let ok = a.len() <= 254 && a.rfind('@').is_some_and(|at| at > 0 && at + 1 < a.len()) && !a.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!("{addr:?} is not an address (local@domain, at most 254 octets)"))
    }
}
