//! Start-up and shutdown: one pinned glommio executor per core, the channel mesh between
//! them, recovery before serving, listeners with SO_REUSEPORT, and a clean stop on SIGTERM.
use crate::config::Config;
use crate::core::{Core, CoreMsg, Shared};
use crate::delivery_log::DeliveryLog;
use crate::message::SpooledMessage;
use crate::queue::Queues;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use ringpost_spool::{Durability, Recovery, SpoolConfig, SpoolShard};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
}

/// Resolve once shutdown is requested (checked every 50 ms: cheap and never on a hot path).
pub async fn wait_shutdown(shared: &Shared) {
    while !shared.stopping() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(RuntimeError::Signals)?;
    }
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = config.core_count(online);
    if config.spool.durability == "none" {
        eprintln!("ringpost: WARNING: spool.durability = \"none\": accepted mail is NOT fsynced and WILL BE LOST on a crash. Benchmarks only.");
    }
    let shared = Arc::new(Shared::new(config, shutdown));
    // SIGHUP: every core reloads its TLS certificate at its next tick.
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
    let mesh: MeshBuilder<CoreMsg, _> = MeshBuilder::full(n, 4096);
    let mut handles = Vec::new();
    for i in 0..n {
        let placement = if n <= online { Placement::Fixed(i) } else { Placement::Unbound };
        let (shared, mesh) = (shared.clone(), mesh.clone());
        let mut builder = LocalExecutorBuilder::new(placement).name(&format!("core-{i}")).io_memory(1 << 20);
        let spin = shared.config.engine.spin_before_park_us;
        if spin > 0 {
            builder = builder.spin_before_park(Duration::from_micros(spin));
        }
        let h = builder
            .spawn(move || async move { run_core(i, n, shared, mesh).await })
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
    first_err.map_or(Ok(()), Err)
}

async fn run_core(id: usize, n: usize, shared: Arc<Shared>, mesh: MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>) -> Result<(), String> {
    let cfg = &shared.config;
    let spool_cfg = SpoolConfig {
        dir: cfg.spool.dir.clone(),
        segment_size: cfg.spool.segment_size,
        durability: if cfg.spool.durability == "none" { Durability::None } else { Durability::Fsync },
        max_pending_bytes: 16 << 20,
    };
    let core_dir = SpoolShard::core_dir(&spool_cfg.dir, id as u16);
    let recovery = Recovery::scan(&core_dir, id as u16).map_err(|e| e.to_string())?;
    for (seg, at, why) in &recovery.torn {
        eprintln!("ringpost: core {id}: dropped torn spool tail in segment {seg} at offset {at}: {why}");
    }
    // Every recovered message's segments are pinned before `open` returns, so nothing below
    // (sessions, releases, garbage collection) can delete a segment of one not yet requeued.
    let (spool, recovered) = SpoolShard::open(id as u16, spool_cfg, recovery).map_err(|e| e.to_string())?;
    let committer = glommio::spawn_local(spool.clone().run_committer());
    let (senders, mut receivers) = mesh.join().await.map_err(|_| "channel mesh join failed".to_string())?;
    let log = DeliveryLog::open(&cfg.log.delivery_log).map_err(|e| format!("{}: {e}", cfg.log.delivery_log.display()))?;
    let signers = crate::dkim::Signers::load(&cfg.dkim).map_err(|e| e.to_string())?;
    let server_tls = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(c), Some(k)) => Some(crate::tls::server_config(c, k).map_err(|e| e.to_string())?),
        _ => None,
    };
    let client_tls = crate::tls_policy::ClientConfigs::build(cfg).map_err(|e| e.to_string())?;
    let core = Core::new(id, n, shared.clone(), spool.clone(), senders, log, signers, (server_tls, client_tls));

    for (_, rx) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(m) = rx.recv().await {
                core.handle(m);
            }
        })
        .detach();
    }
    glommio::spawn_local(Queues::run_retry_timer(core.clone())).detach();
    let flusher = {
        let core = core.clone();
        glommio::spawn_local(async move {
            let mut seen_reload = core.shared.reloads.load(Ordering::Relaxed);
            while !core.shared.stopping() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                core.log.flush();
                let r = core.shared.reloads.load(Ordering::Relaxed);
                if r != seen_reload {
                    seen_reload = r;
                    core.reload_tls();
                }
            }
        })
    };

    // Requeue what recovery found; each message arrives pinned by `SpoolShard::open`, and the
    // queue releases those pins once the message is final.
    let count = recovered.len();
    for m in recovered {
        match SpooledMessage::from_record(m.msg, &m.record, |s| spool.map(s)) {
            Some(msg) => core.accept_message(Arc::new(msg), m.pending).await,
            None => {
                eprintln!("ringpost: core {id}: message {} names a missing segment", m.msg);
                spool.release_message(Some(m.msg), &m.record.body);
            }
        }
    }
    if count > 0 {
        eprintln!("ringpost: core {id}: requeued {count} messages from the spool");
    }

    let mut accepts = Vec::new();
    for addr in &cfg.server.listen {
        let listener = TcpListener::bind(addr.as_str()).map_err(|e| format!("listen {addr}: {e}"))?;
        accepts.push(glommio::spawn_local(accept_loop(core.clone(), listener)));
    }
    if id == 0 {
        eprintln!("ringpost: {n} cores serving {:?} (durability {})", cfg.server.listen, cfg.spool.durability);
    }
    wait_shutdown(&shared).await;
    core.stopping.notify(usize::MAX);
    for a in accepts {
        a.await;
    }
    // Let sessions finish their transaction (they close at their next command wait).
    for _ in 0..600 {
        if core.sessions.get() == 0 {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    flusher.await;
    core.log.flush();
    spool.close();
    committer.await;
    Ok(())
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    let limits = &core.shared.config.server;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            core.stopped().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let Ok(stream) = accepted else { continue };
        let Ok(peer) = stream.peer_addr() else { continue };
        let bucket = &core.shared.per_ip[ip_bucket(peer.ip(), core.shared.per_ip.len())];
        let per_ip = bucket.fetch_add(1, Ordering::Relaxed) as usize + 1;
        if core.sessions.get() >= limits.max_connections_per_core || per_ip > limits.max_connections_per_ip {
            bucket.fetch_sub(1, Ordering::Relaxed);
            let why = if per_ip > limits.max_connections_per_ip { "from your address" } else { "on this server" };
            let reply = format!("421 4.7.0 {} Error: too many connections {why}\r\n", limits.hostname);
            glommio::spawn_local(async move {
                use futures_lite::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        core.sessions.set(core.sessions.get() + 1);
        let core2 = core.clone();
        glommio::spawn_local(async move {
            crate::session::serve(core2.clone(), stream, peer).await;
            core2.sessions.set(core2.sessions.get() - 1);
            core2.shared.per_ip[ip_bucket(peer.ip(), core2.shared.per_ip.len())].fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

fn ip_bucket(ip: std::net::IpAddr, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    (h.finish() as usize) % n
}
