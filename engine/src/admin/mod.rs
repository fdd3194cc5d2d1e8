//! The control plane: the admin socket `ringctl` talks to, and configuration reload (the
//! `reload` command and SIGHUP).
//!
//! It runs on an executor of its own, apart from the cores, so an admin client (slow, hostile
//! or just busy) never takes a core's time. It asks each core through that core's admin
//! channel ([`crate::shard::admin_ops`]) and waits for the answer with a timeout; it never
//! touches a core's state (`engine/tests/layout.rs` holds it to that). Requests and replies
//! are the `ringpost-admin-proto` types; the wire format is in `docs/admin-protocol.md`.
mod commands;
mod conn;
pub mod reload;
pub mod socket;
mod stream;

use crate::shard::admin_ops::{AdminAsk, CoreAnswer, CoreOp};
use crate::shard::core::Shared;
use futures_channel::oneshot;
use glommio::channels::shared_channel::{ConnectedSender, SharedSender};
use ringpost_admin_proto::{ErrorKind, Reply};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Questions each core's admin channel holds before the admin gets `Timeout` at once.
pub const CORE_CHANNEL_CAPACITY: usize = 64;
/// How often the admin task looks for a SIGHUP and for shutdown.
const TICK: Duration = Duration::from_millis(100);

/// The admin task's state: its links to the cores and what it knows of the configuration.
pub struct Admin {
    cores: RefCell<Vec<Option<Rc<ConnectedSender<AdminAsk>>>>>,
    /// Notified each time a core's link comes up.
    linked: event_listener::Event,
    shared: Arc<Shared>,
    started: Instant,
    timeout: Duration,
    /// The configuration in force (the start one, then each reload's).
    current: RefCell<crate::config::Config>,
    /// `drain` is on.
    draining: std::cell::Cell<bool>,
}

impl Admin {
    /// Connect to every core's admin channel (each link comes up when its core starts).
    fn new(links: Vec<SharedSender<AdminAsk>>, shared: Arc<Shared>) -> Rc<Self> {
        let admin = Rc::new(Self {
            cores: RefCell::new(vec![None; links.len()]),
            timeout: Duration::from_millis(shared.config.admin.core_timeout_ms),
            current: RefCell::new(shared.config.clone()),
            shared,
            started: Instant::now(),
            linked: event_listener::Event::new(),
            draining: Default::default(),
        });
        for (i, link) in links.into_iter().enumerate() {
            let a = admin.clone();
            glommio::spawn_local(async move {
                let connected = link.connect().await;
                a.cores.borrow_mut()[i] = Some(Rc::new(connected));
                a.linked.notify(usize::MAX);
            })
            .detach();
        }
        admin
    }

    /// Number of cores.
    fn ncores(&self) -> usize {
        self.cores.borrow().len()
    }

    /// The link to `core`, waiting (up to the core timeout) for it to come up at start.
    async fn link(&self, core: usize) -> Result<Rc<ConnectedSender<AdminAsk>>, Reply> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let l = self.linked.listen();
            if let Some(link) = self.cores.borrow().get(core).cloned().flatten() {
                return Ok(link);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || core >= self.ncores() {
                return Err(Reply::error(ErrorKind::Unavailable, format!("core {core} is not running")));
            }
            futures_lite::future::or(l, glommio::timer::sleep(left)).await;
        }
    }

    /// Send `op` to `core`; the answer comes on the returned receiver. Never waits for room.
    async fn send(&self, core: usize, op: CoreOp) -> Result<oneshot::Receiver<CoreAnswer>, Reply> {
        let link = self.link(core).await?;
        let (tx, rx) = oneshot::channel();
        match link.try_send(AdminAsk { op, reply: tx }) {
            Ok(()) => Ok(rx),
            Err(_) => Err(Reply::error(ErrorKind::Timeout, format!("core {core} has {CORE_CHANNEL_CAPACITY} admin requests waiting"))),
        }
    }

    /// Wait for one answer, at most the core timeout.
    async fn wait(&self, core: usize, rx: oneshot::Receiver<CoreAnswer>) -> Result<CoreAnswer, Reply> {
        let timeout = async {
            glommio::timer::sleep(self.timeout).await;
            None
        };
        match futures_lite::future::or(async { Some(rx.await) }, timeout).await {
            Some(Ok(a)) => Ok(a),
            Some(Err(_)) => Err(Reply::error(ErrorKind::Unavailable, format!("core {core} stopped before answering"))),
            None => Err(Reply::error(ErrorKind::Timeout, format!("core {core} did not answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// Ask one core.
    async fn ask(&self, core: usize, op: CoreOp) -> Result<CoreAnswer, Reply> {
        let rx = self.send(core, op).await?;
        self.wait(core, rx).await
    }

    /// True once shutdown was requested.
    pub(crate) fn stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// Ask every core (all questions go out before any answer is awaited).
    pub(crate) async fn ask_all(&self, op: impl Fn() -> CoreOp) -> Result<Vec<CoreAnswer>, Reply> {
        let mut pending = Vec::with_capacity(self.ncores());
        for c in 0..self.ncores() {
            pending.push(self.send(c, op()).await?);
        }
        let mut out = Vec::with_capacity(pending.len());
        for (c, rx) in pending.into_iter().enumerate() {
            out.push(self.wait(c, rx).await?);
        }
        Ok(out)
    }
}

/// Run the admin task until shutdown: serve `listener` (when the socket is configured) and
/// the metrics endpoint (when `[metrics] listen` is set), reload on SIGHUP, and remove the
/// socket file at the end.
pub async fn serve(
    listener: Option<(glommio::net::UnixListener, PathBuf)>,
    metrics: Option<glommio::net::TcpListener>,
    links: Vec<SharedSender<AdminAsk>>,
    shared: Arc<Shared>,
) {
    let admin = Admin::new(links, shared.clone());
    let scrapes = metrics.map(|l| glommio::spawn_local(crate::metrics::http::serve(admin.clone(), l, shared.config.metrics.destinations_top)));
    let accepts = listener.map(|(l, path)| {
        let a = admin.clone();
        (glommio::spawn_local(conn::accept_loop(a, l)), path)
    });
    let mut seen_reload = shared.reloads.load(Ordering::Relaxed);
    while !shared.stopping() {
        glommio::timer::sleep(TICK).await;
        let r = shared.reloads.load(Ordering::Relaxed);
        if r != seen_reload {
            seen_reload = r;
            let reply = admin.reload().await;
            eprintln!("ringpost: SIGHUP: {}", reload::describe(&reply));
        }
    }
    if let Some((task, path)) = accepts {
        task.await;
        socket::remove(&path);
    }
    if let Some(task) = scrapes {
        task.await;
    }
}
