//! One core's state: the data a shard owns, and nothing that acts on it.
//!
//! A `Core` lives on one executor and is shared only by that executor's tasks (`Rc`). It owns
//! the core's spool shard, the ledger of messages this core accepted that are still live, and
//! the queue manager of the destinations this core owns. Other cores reach it only through
//! [`crate::shard::inbox::CoreMsg`]s on the channel mesh. RefCell borrows here are never held
//! across an `.await`. What the shard does lives beside it: `inbox` (messages between cores),
//! `dispatch` (driving the outbound side), `finals` (outcomes, DSNs, spool release).
use crate::account::bounce_class::{BounceCategory, Classifier};
use crate::account::delivery_log::{DeliveryLog, EventKind, LogEvent, Peer};
use crate::account::suppression::SuppressionList;
use crate::clock::Clock;
use crate::config::SuppressionMode;
use crate::config::{Config, Network};
use crate::message::SpooledMessage;
use crate::outbound::agent::AgentContext;
use crate::outbound::queue::QueueManager;
use crate::shard::inbox::CoreMsg;
use crate::shard::ledger::Ledger;
use crate::smtp::address::Address;
use crate::smtp::reply::Reply;
use crate::smtp::server::RecipientGate;
use crate::smtp::server::ServerLimits;
use glommio::channels::channel_mesh::Senders;
use ringpost_spool::SpoolShard;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Host-wide, read-mostly state: configuration and the signals every core watches.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Relay networks.
    pub relay_networks: Vec<Network>,
    /// Set by SIGTERM/SIGINT.
    pub shutdown: Arc<AtomicBool>,
    /// Bumped by SIGHUP: the admin task reloads the configuration when it changes.
    pub reloads: AtomicU64,
    /// The delivery log's rotation, shared by every core's writer.
    pub log_rotation: Arc<crate::account::delivery_log::Rotation>,
    /// Bounce classification rules (`[delivery] bounce_rules` or the shipped ones).
    pub classifier: Classifier,
    /// The suppression list, when enabled.
    pub suppression: Option<Suppression>,
    /// The file the configuration came from (None: the embedded default), for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// Sources, pools, shapes, rules, warm-up and the host-wide path limits.
    pub shaping: Arc<crate::outbound::shaping::Shaping>,
}

/// The suppression list with its settings.
pub struct Suppression {
    /// The host-wide list.
    pub list: Arc<SuppressionList>,
    /// Bounce categories that add a recipient.
    pub auto: Vec<BounceCategory>,
    /// Refuse at RCPT or accept and bounce.
    pub mode: SuppressionMode,
}

/// The RCPT-time check against the suppression list (`mode = "refuse"`).
struct SuppressionGate(Arc<SuppressionList>);

impl std::fmt::Debug for SuppressionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SuppressionGate({} entries)", self.0.len())
    }
}

impl RecipientGate for SuppressionGate {
    fn refuse(&self, rcpt: &Address) -> Option<Reply> {
        let s = self.0.check(&rcpt.raw)?;
        let since = crate::clock::rfc5322(s.since_s * 1000);
        let why = self.0.note(&rcpt.raw).unwrap_or_else(|| s.category.as_str().to_string());
        Some(Reply::new(550, (5, 1, 1), format!("<{}>: recipient suppressed ({why} since {since})", rcpt.raw)))
    }
}

impl Shared {
    /// Build from a validated config.
    pub fn new(config: Config, shutdown: Arc<AtomicBool>) -> Self {
        let log_rotation = crate::account::delivery_log::Rotation::new(config.log.rotate_bytes, config.log.keep);
        let mut shaping = crate::outbound::shaping::Shaping::new(&config, Some(&config.spool.dir));
        if config.cluster.redis.is_some() {
            let hook = crate::outbound::cluster::hook::ClusterHook::new(&config.cluster, &config.server.hostname);
            shaping.shared_limiter = Some(Arc::new(hook));
        }
        let shaping = Arc::new(shaping);
        Self {
            shaping,
            relay_networks: config.relay_networks(),
            config,
            shutdown,
            reloads: AtomicU64::new(0),
            log_rotation,
            classifier: Classifier::builtin(),
            suppression: None,
            config_path: None,
        }
    }

    /// Consult and feed `suppression`.
    pub fn with_suppression(mut self, suppression: Option<Suppression>) -> Self {
        self.suppression = suppression;
        self
    }

    /// Use `classifier` instead of the shipped bounce rules.
    pub fn with_classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// True once shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// What a core is built from (everything [`Core::new`] does not derive itself).
pub struct CoreParts {
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
    /// DKIM keys.
    pub signers: crate::dkim::Signers,
    /// Inbound TLS configuration (None: STARTTLS not offered).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// How outbound connections are made.
    pub agent: AgentContext,
    /// The time every schedule reads.
    pub clock: Rc<dyn Clock>,
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
    /// SMTP server limits as started (hostname for DSNs and Received); sessions take the
    /// reloadable ones from [`Core::live`].
    pub limits: Rc<ServerLimits>,
    /// Destination queues owned by this core.
    pub queues: RefCell<QueueManager>,
    /// Notified when a delivery is scheduled earlier than the retry timer's next wake-up.
    pub retry_wake: event_listener::Event,
    /// Live messages this core accepted.
    pub ledger: RefCell<Ledger>,
    /// Open inbound sessions.
    pub sessions: Cell<usize>,
    /// Fired once when shutdown begins; listeners are cheap, unlike a timer per wait.
    pub stopping: event_listener::Event,
    /// DKIM keys (an `Arc`: signing runs on glommio's blocking pool, off the core).
    pub signers: RefCell<Arc<crate::dkim::Signers>>,
    /// Slots for messages being signed after their 250 (`inbound/signing.rs`): a session
    /// takes one before it reads on, so at most [`crate::dkim::SIGNING_IN_FLIGHT`] messages
    /// are being signed, plus one waiting in each session that waits for a slot.
    pub signing_slots: Rc<glommio::sync::Semaphore>,
    /// Inbound TLS configuration (None: STARTTLS not offered); swapped on reload.
    pub server_tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// How outbound connections are made; swapped whole on reload (a connection keeps the one
    /// it opened with, and closes at its next wait for work once it is stale).
    pub agent: RefCell<Rc<AgentContext>>,
    /// The time every schedule reads.
    pub clock: Rc<dyn Clock>,
    /// The settings that change on reload (relay networks, limits, auth): sessions read them
    /// here when they start, never from [`Shared::config`].
    pub live: RefCell<Rc<LiveConfig>>,
    /// Counters and operator state for the admin socket (`shard/admin_ops.rs`).
    pub admin: crate::shard::admin_ops::AdminState,
    /// Counters and histograms for the metrics endpoint (read through the admin channel).
    pub metrics: crate::metrics::local::CoreMetrics,
    /// `ringctl trace` subscribers of this core (the same one the delivery agents use).
    pub tracer: Rc<crate::trace::Tracer>,
    /// Message-rate and connection limits of the paths this core owns, shared through Redis
    /// when configured (`outbound/cluster/`).
    pub cluster: Rc<crate::outbound::cluster::limiter::Limiter>,
}

/// The part of the configuration a reload may change, as sessions read it.
pub struct LiveConfig {
    /// The configuration (restart-only settings as the daemon started with them).
    pub config: Config,
    /// Parsed `server.relay_networks`.
    pub relay_networks: Vec<Network>,
    /// SMTP server limits as started (hostname for DSNs and Received); sessions take the
    /// reloadable ones from [`Core::live`].
    pub limits: Rc<ServerLimits>,
}

impl LiveConfig {
    /// Derive the live settings from a validated config; the suppression gate comes from
    /// `shared` (the list is host-wide and outlives reloads).
    pub fn new(config: Config, shared: &Shared) -> Self {
        let s = &config.server;
        let limits = Rc::new(ServerLimits {
            hostname: s.hostname.clone(),
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            hard_error_limit: s.hard_error_limit,
            local_domains: s.local_domains.clone(),
            recipient_gate: shared.suppression.as_ref().filter(|s| s.mode == SuppressionMode::Refuse).map(|s| {
                let gate: Rc<dyn RecipientGate> = Rc::new(SuppressionGate(s.list.clone()));
                gate
            }),
        });
        Self { relay_networks: config.relay_networks(), limits, config }
    }
}

impl Core {
    /// Assemble a core.
    pub fn new(p: CoreParts) -> Rc<Self> {
        let live = LiveConfig::new(p.shared.config.clone(), &p.shared);
        let limits = live.limits.clone();
        let d = &p.shared.config.delivery;
        let mut queues =
            QueueManager::new(crate::outbound::retry::RetryPolicy::from_config(d), d.max_connections_per_destination, p.shared.shaping.clone());
        queues.set_total_connections(d.max_connections_total.div_ceil(p.ncores.max(1)), 0, false);
        let tracer = p.agent.tracer.clone();
        let cluster = crate::outbound::cluster::limiter::Limiter::new(&p.shared.config.cluster, &p.shared.config.server.hostname, p.id);
        Rc::new(Self {
            cluster,
            id: p.id,
            ncores: p.ncores,
            queues: RefCell::new(queues),
            retry_wake: event_listener::Event::new(),
            ledger: RefCell::new(Ledger::new()),
            server_tls: RefCell::new(p.server_tls),
            agent: RefCell::new(Rc::new(p.agent)),
            clock: p.clock,
            live: RefCell::new(Rc::new(live)),
            metrics: Default::default(),
            admin: crate::shard::admin_ops::AdminState::new(&p.shared.config.admin),
            tracer,
            shared: p.shared,
            spool: p.spool,
            senders: p.senders,
            log: p.log,
            limits,
            sessions: Cell::new(0),
            stopping: event_listener::Event::new(),
            signers: RefCell::new(Arc::new(p.signers)),
            signing_slots: Rc::new(glommio::sync::Semaphore::new(crate::dkim::SIGNING_IN_FLIGHT as u64)),
        })
    }

    /// True once shutdown was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
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

    /// The live settings (cheap: one `Rc` clone).
    pub fn live(&self) -> Rc<LiveConfig> {
        self.live.borrow().clone()
    }

    /// Reload the inbound certificate and key (reload, SIGHUP). Sessions in flight keep the old one.
    pub fn reload_tls(&self) {
        let live = self.live();
        let t = &live.config.tls;
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
        let name = rcpt.map(|i| msg.recipient(i));
        self.log_classified(kind, msg, name, peer, (response, None), attempts);
    }

    /// [`Self::log_event`] for a failure: the response with its bounce category. The recipient
    /// comes by name (none: all of them), looked up once by the caller: a loop over many
    /// recipients must not look each one up by index in the spooled envelope.
    pub fn log_classified(
        &self,
        kind: EventKind,
        msg: &SpooledMessage,
        rcpt: Option<&str>,
        peer: Option<&Peer>,
        (response, category): (Option<String>, Option<BounceCategory>),
        attempts: u32,
    ) {
        let id = msg.id.to_string();
        let all;
        let recipient = match rcpt {
            Some(r) => r,
            None => {
                all = msg.recipients().collect::<Vec<_>>().join(",");
                all.as_str()
            }
        };
        self.metrics.count(counted(kind, peer.is_some()), category.map(BounceCategory::as_str));
        let now = self.clock.now_ms();
        self.log.write(&LogEvent {
            kind,
            time_ms: now,
            id: &id,
            sender: msg.sender(),
            recipient,
            remote: peer.map(|p| p.remote.clone()),
            response,
            category: category.map(BounceCategory::as_str),
            tls: peer.and_then(|p| p.tls.clone()),
            attempts,
            queue_time_ms: now.saturating_sub(msg.received_ms()),
            core: self.id,
            size: msg.wire_len(),
        });
    }
}

/// How the metrics count a log line: a Reception line for a whole message (SMTP, or a DSN,
/// which has no client), every other kind per recipient.
fn counted(kind: EventKind, from_a_client: bool) -> crate::metrics::local::Counted {
    use crate::metrics::local::Counted;
    match kind {
        EventKind::Reception if from_a_client => Counted::ReceivedSmtp,
        EventKind::Reception => Counted::ReceivedDsn,
        EventKind::Delivery => Counted::Delivered,
        EventKind::TransientFailure => Counted::Deferred,
        EventKind::Bounce => Counted::Bounced,
        EventKind::Expiration => Counted::Expired,
    }
}
