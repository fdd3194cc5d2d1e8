//! Start-up and shutdown: one pinned glommio executor per core, the channel mesh between
//! them, recovery before serving, listeners with SO_REUSEPORT, and a clean stop on SIGTERM.
pub mod recovery;
mod start;

use crate::config::Config;
use crate::inbound::listener::PerIpCounts;
use crate::shard::admin_ops::AdminAsk;
use crate::shard::core::Shared;
use crate::shard::inbox::CoreMsg;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// io_uring submission depth of each core's rings. The kernel sizes a ring's cancel table
/// from its completion queue: 2 × depth entries, 2^(log2 − 5) buckets, at most 256
/// (`io_ring_ctx_alloc`). glommio keeps a readiness poll pending on every open socket and
/// cancels a timer on every executor turn, and each cancel walks one bucket of pending polls
/// (`io_poll_find`). With thousands of outbound connections (1,000 sites × 4 sources): at
/// glommio's default 128 (8 buckets) that walk was 5 % of the daemon's CPU; 2,048 gives 128
/// buckets; 4,096 the full 256, which halves the walk again (`bench/shaping.sh`, perf/RESULTS.md,
/// twelfth session). The three rings cost about 1.2 MiB per core at this depth.
const RING_DEPTH: usize = 4096;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An executor could not start.
    #[error("cannot start executor {core}: {source}")]
    Executor {
        /// Core index.
        core: usize,
        /// Cause.
        source: glommio::GlommioError<()>,
    },
    /// A core failed while running.
    #[error("core {core} failed: {why}")]
    Core {
        /// Core index.
        core: usize,
        /// Cause.
        why: String,
    },
    /// Signal handler registration failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// `[delivery] bounce_rules` names a file that cannot be used.
    #[error(transparent)]
    BounceRules(#[from] crate::account::bounce_class::RulesError),
    /// The suppression journal cannot be read.
    #[error(transparent)]
    Suppression(#[from] crate::account::suppression::SuppressionError),
    /// `[suppression] auto_categories` names no bounce category.
    #[error("suppression.auto_categories: {0:?} is not a bounce category")]
    SuppressionCategory(String),
    /// The admin socket could not be set up (another daemon holds it, permissions).
    #[error("{0}")]
    Admin(String),
}

/// Resolve once shutdown is requested (checked every 50 ms: cheap and never on a hot path).
pub async fn wait_shutdown(shared: &Shared) {
    while !shared.stopping() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the daemon until SIGTERM/SIGINT; `config_path` is re-read on reload (None: the embedded
/// default, nothing to reload).
pub fn run(config: Config, config_path: Option<std::path::PathBuf>) -> Result<(), RuntimeError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(RuntimeError::Signals)?;
    }
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = config.core_count(online);
    raise_open_file_limit(&config, n);
    if config.spool.durability == crate::config::Durability::None {
        eprintln!("ringpost: WARNING: spool.durability = \"none\": accepted mail is NOT fsynced and WILL BE LOST on a crash. Benchmarks only.");
    }
    let classifier = crate::account::bounce_class::Classifier::load(config.delivery.bounce_rules.as_deref())?;
    let suppression = open_suppression(&config)?;
    let mut shared = Shared::new(config, shutdown).with_classifier(classifier).with_suppression(suppression);
    shared.config_path = config_path;
    let shared = Arc::new(shared);
    // SIGHUP: the admin task reloads the configuration (TLS certificates included).
    {
        let shared = shared.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).map_err(RuntimeError::Signals)?;
        std::thread::Builder::new()
            .name("sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    shared.reloads.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(RuntimeError::Signals)?;
    }
    // The admin executor starts first: its socket is bound (or refused) before any core runs.
    let (links, mut admin_rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| shared_channel::new_bounded(crate::admin::CORE_CHANNEL_CAPACITY)).unzip();
    let admin = start_admin(shared.clone(), links)?;
    let mut handles = Vec::new();
    let mesh: MeshBuilder<CoreMsg, _> = MeshBuilder::full(n, shared.config.engine.mesh_capacity);
    let per_ip = Arc::new(PerIpCounts::new());
    for i in 0..n {
        let admin_rx = admin_rxs.remove(0);
        let placement = if n <= online { Placement::Fixed(i) } else { Placement::Unbound };
        let (shared, mesh, per_ip) = (shared.clone(), mesh.clone(), per_ip.clone());
        let mut builder = LocalExecutorBuilder::new(placement).name(&format!("core-{i}")).io_memory(1 << 20).ring_depth(RING_DEPTH);
        let spin = shared.config.engine.spin_before_park_us;
        if spin > 0 {
            builder = builder.spin_before_park(Duration::from_micros(spin));
        }
        let h = builder
            .spawn(move || async move { start::run_core(i, n, shared, mesh, per_ip, admin_rx).await })
            .map_err(|source| RuntimeError::Executor { core: i, source })?;
        handles.push(h);
    }
    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().map_err(|e| e.to_string()).and_then(|r| r);
        if let Err(why) = r {
            shared.shutdown.store(true, Ordering::Relaxed);
            first_err.get_or_insert(RuntimeError::Core { core: i, why });
        }
    }
    // Every core is done: the admin task stops too (and removes its socket).
    shared.shutdown.store(true, Ordering::Relaxed);
    let _ = admin.join();
    first_err.map_or(Ok(()), Err)
}

/// The suppression list and the categories that feed it, when `[suppression]` is enabled.
fn open_suppression(config: &crate::config::Config) -> Result<Option<crate::shard::core::Suppression>, RuntimeError> {
    use crate::account::bounce_class::BounceCategory;
    if !config.suppression.enabled {
        return Ok(None);
    }
    let auto = config
        .suppression
        .auto_categories
        .iter()
        .map(|c| {
            serde_json::from_value::<BounceCategory>(serde_json::Value::String(c.clone())).map_err(|_| RuntimeError::SuppressionCategory(c.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let list = crate::account::suppression::SuppressionList::open(&config.suppression_file())?;
    Ok(Some(crate::shard::core::Suppression { list: Arc::new(list), auto, mode: config.suppression.mode }))
}

type CoreHandle = glommio::ExecutorJoinHandle<Result<(), String>>;

/// Start the admin executor (unpinned: it must never take a core's CPU from it) and wait until
/// its socket and the metrics listener are bound, or refused.
fn start_admin(shared: Arc<Shared>, links: Vec<shared_channel::SharedSender<AdminAsk>>) -> Result<CoreHandle, RuntimeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("admin")
        .io_memory(256 << 10)
        .spawn(move || async move {
            let a = &shared.config.admin;
            let listener = if a.socket.as_os_str().is_empty() {
                None
            } else {
                let bound = crate::admin::socket::prepare(&a.socket).and_then(|_| crate::admin::socket::bind(&a.socket, a.group.as_deref()));
                match bound {
                    Ok(l) => Some((l, a.socket.clone())),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                }
            };
            let metrics = match crate::metrics::bind(&shared.config) {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(()));
            crate::admin::serve(listener, metrics, links, shared).await;
            Ok(())
        })
        .map_err(|e| RuntimeError::Admin(format!("cannot start the admin executor: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(why)) => {
            let _ = handle.join();
            Err(RuntimeError::Admin(why))
        }
        Err(_) => Err(RuntimeError::Admin("the admin executor stopped while starting".into())),
    }
}

/// Raise the soft limit on open files to the hard one: every connection is a descriptor, and
/// the usual soft limit (1024) is far below `[delivery] max_connections_total` plus the
/// inbound sessions. Past the soft limit connects fail with EMFILE and mail waits for retries.
/// Warns when even the hard limit is below what the configuration can open.
fn raise_open_file_limit(config: &Config, cores: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if got && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let inbound = config.server.max_connections_per_core * cores;
    // Spool segments, logs, listeners, the admin socket: a margin over the connections.
    let wanted = (config.delivery.max_connections_total + inbound + 256) as u64;
    if got && lim.rlim_cur < wanted {
        eprintln!(
            "ringpost: WARNING: open-file limit {} is below what delivery.max_connections_total and server.max_connections_per_core can open ({wanted}): connections past it fail (raise LimitNOFILE / ulimit -n)",
            lim.rlim_cur
        );
    }
}
