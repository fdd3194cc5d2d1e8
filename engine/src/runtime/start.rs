//! One core's life: recover its spool, assemble its state, start its tasks and listeners,
//! and on shutdown let sessions finish and the last commit round land.
use crate::account::delivery_log::DeliveryLog;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::inbound::listener::{accept_loop, PerIpCounts};
use crate::outbound::agent::AgentContext;
use crate::outbound::dns::resolver::{nameservers_from_resolv_conf, Resolver, ResolverConfig};
use crate::outbound::routes::Routes;
use crate::shard::admin_ops::AdminAsk;
use crate::shard::core::{Core, CoreParts, Shared};
use crate::shard::inbox::CoreMsg;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers};
use glommio::channels::shared_channel::SharedReceiver;
use ringpost_spool::{RecoveredMessage, Recovery, SpoolConfig, SpoolShard};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How often the flusher writes the delivery log and looks for a reload request.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// How long shutdown waits for open sessions to finish their transaction.
const SESSION_DRAIN_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for outbound connections to close: idle ones QUIT at once (they
/// watch for shutdown), busy ones after their transaction.
const OUTBOUND_DRAIN_MAX: Duration = Duration::from_secs(3);

/// Run core `id` of `n` until shutdown.
pub async fn run_core(
    id: usize,
    n: usize,
    shared: Arc<Shared>,
    mesh: MeshBuilder<CoreMsg, Full>,
    per_ip: Arc<PerIpCounts>,
    admin_rx: SharedReceiver<AdminAsk>,
) -> Result<(), String> {
    let cfg = &shared.config;
    let scan_started = std::time::Instant::now();
    let (spool, recovery) = open_spool(id, cfg)?;
    let scan = scan_started.elapsed();
    let committer = glommio::spawn_local(spool.clone().run_committer());
    let (senders, receivers) = mesh.join().await.map_err(|_| "channel mesh join failed".to_string())?;
    let core = build_core(id, n, shared.clone(), spool.clone(), senders)?;
    start_inbox(&core, receivers);
    core.start_admin_inbox(admin_rx);
    // Before the requeue: mail of a destination suspended before the restart stays held.
    core.restore_suspensions();
    glommio::spawn_local(core.clone().run_retry_timer()).detach();
    let flusher = glommio::spawn_local(run_flusher(core.clone()));
    let recovered = recovery.len();
    let requeue_started = std::time::Instant::now();
    super::recovery::requeue(&core, recovery).await;
    // Printed even for 0 messages: bench/backlog.sh waits for one line per core.
    let requeue = requeue_started.elapsed();
    eprintln!("ringpost: core {id}: recovery of {recovered} messages: spool scan {scan:.2?}, requeue {requeue:.2?}");
    if recovered > 0 {
        release_free_heap();
    }

    let mut accepts = Vec::new();
    for addr in &cfg.server.listen {
        let listener = crate::inbound::listener::listen(addr).map_err(|e| format!("listen {addr}: {e}"))?;
        accepts.push(glommio::spawn_local(accept_loop(core.clone(), listener, per_ip.clone())));
    }
    if id == 0 {
        eprintln!("ringpost: {n} cores serving {:?} (durability {})", cfg.server.listen, cfg.spool.durability);
    }
    super::wait_shutdown(&shared).await;
    core.stopping.notify(usize::MAX);
    core.quit_idle_at_shutdown();
    for a in accepts {
        a.await;
    }
    drain_sessions(&core).await;
    drain_outbound(&core).await;
    flusher.await;
    core.log.flush();
    spool.close();
    committer.await;
    Ok(())
}

/// Give the heap pages freed by recovery back to the system. The scan decodes every record
/// into owned copies that the requeue drops, interleaved with the small entries that stay:
/// without this, a restart with a large backlog keeps the scan's high-water mark resident.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel; it touches
    // no live allocation and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Scan this core's spool and open it for appending, with every recovered message pinned.
fn open_spool(id: usize, cfg: &Config) -> Result<(Rc<SpoolShard>, Vec<RecoveredMessage>), String> {
    // Absolute: glommio opens directories with dirfd -1 (not AT_FDCWD), so a relative spool
    // dir (the default "var/spool") fails its directory fsyncs with EBADF.
    let dir = std::path::absolute(&cfg.spool.dir).map_err(|e| format!("{}: {e}", cfg.spool.dir.display()))?;
    let spool_cfg = SpoolConfig {
        dir,
        segment_size: cfg.spool.segment_size,
        durability: cfg.spool.durability.into(),
        pending_bytes_max: cfg.spool.pending_bytes_max,
    };
    let core_dir = SpoolShard::core_dir(&spool_cfg.dir, id as u16);
    let recovery = Recovery::scan(&core_dir, id as u16).map_err(|e| e.to_string())?;
    for (seg, at, why) in &recovery.torn {
        eprintln!("ringpost: core {id}: dropped torn spool tail in segment {seg} at offset {at}: {why}");
    }
    for (seg, at, skipped) in &recovery.corrupt {
        eprintln!(
            "ringpost: core {id}: unreadable spool data in segment {seg} at offset {at}: skipped {skipped} bytes, later records kept \
             (a power cut can leave such a gap in the segment being written; anywhere else it is corruption)"
        );
    }
    if recovery.incomplete > 0 {
        eprintln!("ringpost: core {id}: {} message records name a body chunk that is not intact: not recovered", recovery.incomplete);
    }
    // Every recovered message's segments are pinned before `open` returns, so nothing after it
    // (sessions, releases, garbage collection) can delete a segment of one not yet requeued.
    SpoolShard::open(id as u16, spool_cfg, recovery).map_err(|e| e.to_string())
}

/// Assemble the core's state from the configuration.
fn build_core(
    id: usize,
    n: usize,
    shared: Arc<Shared>,
    spool: Rc<SpoolShard>,
    senders: glommio::channels::channel_mesh::Senders<CoreMsg>,
) -> Result<Rc<Core>, String> {
    let cfg = &shared.config;
    let log =
        DeliveryLog::open(&cfg.log.delivery_log, shared.log_rotation.clone()).map_err(|e| format!("{}: {e}", cfg.log.delivery_log.display()))?;
    let signers = crate::dkim::Signers::load(&cfg.dkim).map_err(|e| e.to_string())?;
    let server_tls = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => Some(crate::tls::server_config(c, k).map_err(|e| e.to_string())?),
        _ => None,
    };
    let agent = AgentContext {
        hostname: cfg.server.hostname.clone(),
        config: cfg.clone(),
        routes: Routes::new(&cfg.route),
        resolver: Rc::new(Resolver::new(resolver_config(cfg))),
        client_tls: crate::outbound::tls_policy::ClientConfigs::build(cfg).map_err(|e| e.to_string())?,
        tracer: Rc::new(crate::trace::Tracer::new(id)),
    };
    let clock = Rc::new(SystemClock);
    Ok(Core::new(CoreParts { id, ncores: n, shared, spool, senders, log, signers, server_tls, agent, clock }))
}

/// Resolver settings from `[dns]`, falling back to /etc/resolv.conf's nameservers.
fn resolver_config(c: &Config) -> ResolverConfig {
    let mut nameservers: Vec<std::net::SocketAddr> = c.dns.nameservers.iter().filter_map(|n| n.parse().ok()).collect();
    if nameservers.is_empty() {
        nameservers = nameservers_from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    }
    ResolverConfig {
        nameservers,
        timeout: Duration::from_millis(c.dns.timeout_ms),
        attempts: c.dns.attempts,
        negative_ttl_max: c.dns.negative_ttl_max_s,
        cache_entries_max: c.dns.cache_entries_max,
    }
}

/// One task per peer core, taking in what it sends.
fn start_inbox(core: &Rc<Core>, mut receivers: Receivers<CoreMsg>) {
    for (_, rx) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(m) = rx.recv().await {
                core.handle(m);
            }
        })
        .detach();
    }
}

/// Flush the delivery log every tick (SIGHUP reloads go through the admin task).
async fn run_flusher(core: Rc<Core>) {
    while !core.is_stopping() {
        glommio::timer::sleep(FLUSH_INTERVAL).await;
        core.log.flush();
    }
}

/// Let outbound connections say QUIT and close (up to [`OUTBOUND_DRAIN_MAX`]): a receiver
/// should see a polite end, not a dropped connection.
async fn drain_outbound(core: &Core) {
    let start = std::time::Instant::now();
    while core.queues.borrow().connections_total() > 0 && start.elapsed() < OUTBOUND_DRAIN_MAX {
        glommio::timer::sleep(FLUSH_INTERVAL).await;
    }
}

/// Let sessions finish their transaction (they close at their next command wait).
async fn drain_sessions(core: &Core) {
    let start = std::time::Instant::now();
    while core.sessions.get() > 0 && start.elapsed() < SESSION_DRAIN_MAX {
        glommio::timer::sleep(FLUSH_INTERVAL).await;
    }
}
