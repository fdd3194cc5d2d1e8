//! One core's engine state and the messages cores exchange.
//!
//! A `Core` lives on one executor and is shared only by that executor's tasks (`Rc`). It owns
//! the core's spool shard, the table of messages this core accepted that are still live, and
//! the delivery queues of the destinations this core owns. Other cores reach it only through
//! [`CoreMsg`]s on the channel mesh. RefCell borrows here are never held across an `.await`.
use crate::config::{Config, Network};
use crate::delivery_log::{DeliveryLog, EventKind, LogEvent, Peer};
use crate::dsn::{self, FailedRecipient, Original};
use crate::message::SpooledMessage;
use crate::queue::{Delivery, Queues};
use crate::router::{domain_of, owner_core, Router};
use crate::smtp::server::ServerLimits;
use glommio::channels::channel_mesh::Senders;
use ringpost_spool::record::MessageRecord;
use ringpost_spool::{Disposition, FailureDetail, MsgRef, Outcome, SpoolShard};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Work handed between cores.
pub enum CoreMsg {
    /// Deliver these recipients (indexes) of a message; sent to the destination's owner core.
    Deliver(Arc<SpooledMessage>, Vec<u32>),
    /// A recipient reached its final outcome; sent to the message's owner core.
    Final(FinalReport),
}

/// A recipient's final outcome, reported to the core that owns the message.
pub struct FinalReport {
    /// The message.
    pub msg: MsgRef,
    /// Recipient index.
    pub rcpt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Details for the DSN when it failed.
    pub failure: Option<FailedRecipient>,
}

/// Host-wide, read-mostly state: configuration and a few lock-free counters.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Static routes.
    pub router: Router,
    /// Relay networks.
    pub relay_networks: Vec<Network>,
    /// Set by SIGTERM/SIGINT.
    pub shutdown: Arc<AtomicBool>,
    /// Bumped by SIGHUP: cores reload their TLS certificate when it changes.
    pub reloads: std::sync::atomic::AtomicU64,
    /// Sessions per client IP, in hashed buckets (lock-free; a collision only makes the limit
    /// stricter for the two colliding addresses).
    pub per_ip: Box<[AtomicU32]>,
}

impl Shared {
    /// Build from a validated config.
    pub fn new(config: Config, shutdown: Arc<AtomicBool>) -> Self {
        Self {
            router: Router::new(&config.route),
            relay_networks: config.relay_networks(),
            config,
            shutdown,
            reloads: std::sync::atomic::AtomicU64::new(0),
            per_ip: (0..4096).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// True once shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// Resolver settings from `[dns]`, falling back to /etc/resolv.conf's nameservers.
fn resolver_config(c: &Config) -> crate::dns::resolver::ResolverConfig {
    let mut nameservers: Vec<std::net::SocketAddr> = c.dns.nameservers.iter().filter_map(|n| n.parse().ok()).collect();
    if nameservers.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        nameservers = crate::dns::resolver::nameservers_from_resolv_conf(&text);
    }
    crate::dns::resolver::ResolverConfig {
        nameservers,
        timeout: std::time::Duration::from_millis(c.dns.timeout_ms),
        attempts: c.dns.attempts,
        negative_ttl_max: c.dns.negative_ttl_max_s,
    }
}

struct LiveMessage {
    msg: Arc<SpooledMessage>,
    remaining: usize,
    failed: Vec<FailedRecipient>,
}

/// One core's engine.
pub struct Core {
    /// Core index.
    pub id: usize,
    /// Number of cores.
    pub ncores: usize,
    /// Host-wide state.
    pub shared: Arc<Shared>,
    /// This core's spool.
    pub spool: Rc<SpoolShard>,
    /// Channels to the other cores.
    pub senders: Senders<CoreMsg>,
    /// Delivery log writer.
    pub log: DeliveryLog,
    /// SMTP server limits.
    pub limits: Rc<ServerLimits>,
    /// Destination queues owned by this core.
    pub queues: Queues,
    /// Open inbound sessions.
    pub sessions: Cell<usize>,
    /// Fired once when shutdown begins; listeners are cheap, unlike a timer per wait.
    pub stopping: event_listener::Event,
    /// DKIM keys.
    pub signers: Rc<crate::dkim::Signers>,
    /// This core's DNS resolver and cache.
    pub resolver: crate::dns::resolver::Resolver,
    /// Inbound TLS configuration (None: STARTTLS not offered); swapped on reload.
    pub server_tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Outbound TLS client configurations by verification mode.
    pub client_tls: crate::tls_policy::ClientConfigs,
    live: RefCell<HashMap<MsgRef, LiveMessage>>,
}

impl Core {
    /// Assemble a core.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        ncores: usize,
        shared: Arc<Shared>,
        spool: Rc<SpoolShard>,
        senders: Senders<CoreMsg>,
        log: DeliveryLog,
        signers: crate::dkim::Signers,
        tls: (Option<Arc<rustls::ServerConfig>>, crate::tls_policy::ClientConfigs),
    ) -> Rc<Self> {
        let s = &shared.config.server;
        let limits = Rc::new(ServerLimits {
            hostname: s.hostname.clone(),
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            hard_error_limit: s.hard_error_limit,
            local_domains: s.local_domains.clone(),
        });
        Rc::new(Self {
            id,
            ncores,
            queues: Queues::new(&shared.config.delivery),
            resolver: crate::dns::resolver::Resolver::new(resolver_config(&shared.config)),
            server_tls: RefCell::new(tls.0),
            client_tls: tls.1,
            shared,
            spool,
            senders,
            log,
            limits,
            sessions: Cell::new(0),
            stopping: event_listener::Event::new(),
            signers: Rc::new(signers),
            live: RefCell::new(HashMap::new()),
        })
    }

    /// Resolve once shutdown has begun on this core.
    pub async fn stopped(&self) {
        loop {
            let l = self.stopping.listen();
            if self.shared.stopping() {
                return;
            }
            l.await;
        }
    }

    /// Reload the inbound certificate and key (SIGHUP). Sessions in flight keep the old one.
    pub fn reload_tls(&self) {
        let t = &self.shared.config.tls;
        if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
            match crate::tls::server_config(c, k) {
                Ok(cfg) => {
                    *self.server_tls.borrow_mut() = Some(cfg);
                    eprintln!("ringpost: core {}: TLS certificate reloaded", self.id);
                }
                Err(e) => eprintln!("ringpost: core {}: TLS reload failed, keeping the old certificate: {e}", self.id),
            }
        }
    }

    /// Write a log event about recipient `rcpt` of `msg` (or all recipients when `None`).
    pub fn log_event(&self, kind: EventKind, msg: &SpooledMessage, rcpt: Option<u32>, peer: Option<&Peer>, response: Option<String>, attempts: u32) {
        let id = msg.id.to_string();
        let all;
        let recipient = match rcpt {
            Some(i) => msg.recipients[i as usize].as_str(),
            None => {
                all = msg.recipients.join(",");
                all.as_str()
            }
        };
        let now = crate::clock::unix_ms();
        self.log.write(&LogEvent {
            kind,
            time_ms: now,
            id: &id,
            sender: &msg.sender,
            recipient,
            remote: peer.map(|p| p.remote.clone()),
            response,
            tls: peer.and_then(|p| p.tls.clone()),
            attempts,
            queue_time_ms: now.saturating_sub(msg.received_ms),
            core: self.id,
            size: msg.wire_len(),
        });
    }

    /// Take ownership of a durable message: track it, then hand each recipient group to the
    /// core owning its destination.
    pub async fn accept_message(self: &Rc<Self>, msg: Arc<SpooledMessage>, pending: Vec<u32>) {
        self.live.borrow_mut().insert(msg.id, LiveMessage { msg: msg.clone(), remaining: pending.len(), failed: Vec::new() });
        let mut by_core: HashMap<usize, Vec<u32>> = HashMap::new();
        for i in pending {
            let core = owner_core(&domain_of(&msg.recipients[i as usize]), self.ncores);
            by_core.entry(core).or_default().push(i);
        }
        for (core, rcpts) in by_core {
            self.route_to(core, CoreMsg::Deliver(msg.clone(), rcpts)).await;
        }
    }

    async fn route_to(self: &Rc<Self>, core: usize, m: CoreMsg) {
        if core == self.id {
            self.handle(m);
        } else if self.senders.send_to(core, m).await.is_err() {
            tracing::error!("core {}: channel to core {core} closed", self.id);
        }
    }

    /// Handle a message from any core (including this one).
    pub fn handle(self: &Rc<Self>, m: CoreMsg) {
        match m {
            CoreMsg::Deliver(msg, rcpts) => {
                let mut by_domain: HashMap<String, Vec<u32>> = HashMap::new();
                for i in rcpts {
                    by_domain.entry(domain_of(&msg.recipients[i as usize])).or_default().push(i);
                }
                for (domain, rcpts) in by_domain {
                    self.queues.enqueue(self, domain, Delivery { msg: msg.clone(), rcpts, attempts: 0 });
                }
            }
            CoreMsg::Final(r) => self.record_final(r),
        }
    }

    /// Report a final outcome to the message's owner core.
    pub async fn report_final(self: &Rc<Self>, r: FinalReport) {
        let owner = r.msg.core as usize;
        self.route_to(owner, CoreMsg::Final(r)).await;
    }

    /// On the owner core: persist the disposition; when the message is finished, free its spool
    /// space and send one DSN for all its failed recipients.
    fn record_final(self: &Rc<Self>, r: FinalReport) {
        let failure = r.failure.as_ref().map(|f| FailureDetail {
            status: f.status.clone(),
            remote: f.remote.clone(),
            diagnostic: f.diagnostic.clone(),
        });
        if let Err(e) = self.spool.append_disposition(&Disposition { msg: r.msg, rcpt: r.rcpt, outcome: r.outcome, failure }) {
            tracing::error!("core {}: cannot record disposition of {}: {e}", self.id, r.msg);
        }
        let finished = {
            let mut live = self.live.borrow_mut();
            let Some(l) = live.get_mut(&r.msg) else {
                tracing::error!("core {}: final report for unknown message {}", self.id, r.msg);
                return;
            };
            l.failed.extend(r.failure);
            l.remaining -= 1;
            if l.remaining > 0 {
                return;
            }
            live.remove(&r.msg).unwrap()
        };
        self.spool.release_message(Some(finished.msg.id), &finished.msg.extents());
        if !finished.failed.is_empty() && !finished.msg.sender.is_empty() {
            let core = self.clone();
            glommio::spawn_local(async move { core.send_dsn(&finished.msg, &finished.failed).await }).detach();
        }
    }

    /// Spool a DSN as a new message from `<>` and route it like any other.
    async fn send_dsn(self: &Rc<Self>, orig: &SpooledMessage, failed: &[FailedRecipient]) {
        let headers = orig.headers(32 * 1024);
        let id = orig.id.to_string();
        let now = crate::clock::unix_ms();
        let original = Original { id: &id, sender: &orig.sender, received_ms: orig.received_ms, headers: &headers };
        let body = dsn::build(&self.limits.hostname, now, &original, failed);
        match self.spool_local_message(b"", vec![orig.sender.clone().into_bytes()], &body, now).await {
            Ok(msg) => {
                self.log_event(EventKind::Reception, &msg, None, None, Some(format!("DSN for {id}")), 0);
                self.accept_message(msg, vec![0]).await;
            }
            Err(e) => tracing::error!("core {}: could not spool DSN for {id}: {e}", self.id),
        }
    }

    /// Spool a locally generated message durably and return its shared view.
    async fn spool_local_message(&self, sender: &[u8], recipients: Vec<Vec<u8>>, body: &[u8], now: u64) -> Result<Arc<SpooledMessage>, ringpost_spool::SpoolError> {
        let (extent, _) = self.spool.append_chunk(body)?;
        let record = MessageRecord { received_ms: now, sender: sender.to_vec(), recipients, body: vec![extent], ..Default::default() };
        let (id, ticket) = match self.spool.append_message(&record) {
            Ok(v) => v,
            Err(e) => {
                self.spool.release_message(None, &[extent]);
                return Err(e);
            }
        };
        if let Err(e) = self.spool.wait_durable(ticket).await {
            self.spool.release_message(Some(id), &[extent]);
            return Err(e);
        }
        let msg = SpooledMessage::from_record(id, &record, |s| self.spool.map(s)).expect("segment of a committed record");
        Ok(Arc::new(msg))
    }
}
