//! The listener: accepts connections on one listening socket of one core, applies the
//! connection ceilings (per core, and per client address across all cores), and starts a
//! session for each connection admitted.
//!
//! Clients in `relay_networks` get their own, larger per-address ceiling
//! (`max_connections_per_relay_ip`): they are our own applications and relays, which inject
//! through many parallel connections from one address (Postfix exempts `mynetworks` from its
//! per-client limit for the same reason), while the small default stays for the internet.
//!
//! A session leaves the per-address count as soon as it has ended (its last reply decided),
//! through its [`Admission`], not when its socket is finally closed: a client that saw its
//! `221` and connects again at once must not be refused for a session that is over. It keeps
//! its place in the per-core count until the socket is closed: that ceiling bounds sockets.
//!
//! The per-address count is exact: a lock-free concurrent map keyed by the client address, so
//! no client can share a counter with another (the hashed buckets it replaces let a client
//! pick addresses that collide with a victim's bucket and lock the victim out).
use crate::shard::core::Core;
use glommio::net::TcpListener;
use papaya::{Compute, Operation};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

/// How long a refused connection may take to accept its 421.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Open sessions per client address, host-wide, shared by every core's listener.
#[derive(Default)]
pub struct PerIpCounts {
    map: papaya::HashMap<IpAddr, u32>,
}

impl PerIpCounts {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one more session for `ip` unless it already has `max`; false when refused.
    pub fn try_enter(&self, ip: IpAddr, max: usize) -> bool {
        let map = self.map.pin();
        let result = map.compute(ip, |entry| match entry {
            Some((_, &n)) if n as usize >= max => Operation::Abort(()),
            Some((_, &n)) => Operation::Insert(n + 1),
            None if max == 0 => Operation::Abort(()),
            None => Operation::Insert(1),
        });
        !matches!(result, Compute::Aborted(()))
    }

    /// A session of `ip` ended.
    pub fn leave(&self, ip: IpAddr) {
        self.map.pin().compute(ip, |entry| match entry {
            Some((_, &n)) if n > 1 => Operation::Insert(n - 1),
            Some(_) => Operation::Remove,
            None => Operation::Abort(()),
        });
    }

    /// Sessions open for `ip` now.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.map.pin().get(&ip).copied().unwrap_or(0)
    }
}

/// A session's place in the per-address count, given back once by [`Admission::end`] (or on
/// drop, whatever ends the task).
pub struct Admission {
    per_ip: Arc<PerIpCounts>,
    ip: IpAddr,
    counted: bool,
    /// The client is in `relay_networks`.
    pub relay: bool,
}

impl Admission {
    /// The session is over: count it out of its address's sessions now.
    pub fn end(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.per_ip.leave(self.ip);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.end();
    }
}

/// Listen on `addr` for SMTP sessions. The listening socket gets `TCP_NODELAY`, which Linux
/// copies to every connection it accepts: each session's replies leave at once without a
/// `setsockopt` per connection (one of the eight syscalls a connection-per-message client
/// costs besides its protocol, perf/RESULTS.md, seventeenth session).
pub fn listen(addr: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::net::ToSocketAddrs;
    let addr = addr.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As glommio's own `TcpListener::bind`: every core listens on the address (SO_REUSEPORT)
    // and the kernel spreads the connections.
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves here.
    Ok(unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(socket)) })
}

/// Accept connections until shutdown begins on this core.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener, per_ip: Arc<PerIpCounts>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            core.stopped().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or memory: the connection stays in the
                // backlog and accept fails again at once, so retrying without a pause would
                // spin the core. Pause briefly; sessions and deliveries go on meanwhile.
                tracing::warn!("accept failed: {e}; pausing 50 ms");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else { continue };
        let live = core.live();
        let limits = &live.config.server;
        if core.admin.draining.get() {
            // `ringctl drain`: no new mail, delivery goes on.
            refuse(stream, format!("421 4.3.2 {} Service not accepting mail now, try later\r\n", limits.hostname));
            continue;
        }
        let full = core.sessions.get() >= limits.max_connections_per_core;
        let relay = live.relay_networks.iter().any(|n| n.contains(peer.ip()));
        let per_ip_max = if relay { limits.max_connections_per_relay_ip } else { limits.max_connections_per_ip };
        if full || !per_ip.try_enter(peer.ip(), per_ip_max) {
            let why = if full { "on this server" } else { "from your address" };
            refuse(stream, format!("421 4.7.0 {} Error: too many connections {why}\r\n", limits.hostname));
            continue;
        }
        core.sessions.set(core.sessions.get() + 1);
        let admission = Admission { per_ip: per_ip.clone(), ip: peer.ip(), counted: true, relay };
        let core = core.clone();
        glommio::spawn_local(async move {
            crate::inbound::session::serve(core.clone(), stream, peer, admission).await;
            core.sessions.set(core.sessions.get() - 1);
        })
        .detach();
    }
}

/// Answer a refused connection with its 421 and close it, without holding up the accept loop.
fn refuse(stream: glommio::net::TcpStream, reply: String) {
    glommio::spawn_local(async move {
        use futures_lite::AsyncWriteExt;
        let mut stream = stream;
        // A client that does not read its 421 must not keep the task (or the socket) forever.
        let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.close().await;
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions rely on the listener's `TCP_NODELAY` being inherited (they no longer set it).
    #[test]
    fn accepted_connections_have_nodelay() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = listen("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let _client = std::net::TcpStream::connect(addr).unwrap();
                let accepted = listener.accept().await.unwrap();
                assert!(accepted.nodelay().unwrap(), "an accepted session must have TCP_NODELAY");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn counts_are_exact_per_address() {
        let t = PerIpCounts::new();
        let victim: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.try_enter(victim, 3));
        }
        assert!(!t.try_enter(victim, 3), "the fourth session is refused");
        assert_eq!(t.count(victim), 3);
        t.leave(victim);
        assert!(t.try_enter(victim, 3), "a session that ended makes room");
    }

    #[test]
    fn no_other_address_can_use_up_a_victims_allowance() {
        let t = PerIpCounts::new();
        // Many distinct clients, each at its own limit: none of them touches the victim's count
        // (with hashed buckets, some of these collided with the victim's bucket).
        for i in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(t.try_enter(ip, 1));
            assert!(!t.try_enter(ip, 1));
        }
        let victim: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.count(victim), 0);
        assert!(t.try_enter(victim, 1));
    }

    #[test]
    fn the_last_session_out_removes_the_address() {
        let t = PerIpCounts::new();
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(t.try_enter(ip, 5));
        t.leave(ip);
        t.leave(ip);
        assert_eq!(t.count(ip), 0);
        assert_eq!(t.map.len(), 0);
    }
}
