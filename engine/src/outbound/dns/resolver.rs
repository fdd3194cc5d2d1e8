//! The per-core stub resolver: UDP on the core's own event loop, TCP when an answer is
//! truncated, timeouts and retries over the configured nameservers, and a bounded TTL cache
//! with negative caching ([`DnsCache`]). One per core, owned by it (`Rc`), so the cache needs
//! no lock. This is the only place that reads the clock for the cache.
use super::cache::DnsCache;
use super::mx::{plan, MxPlan};
use super::wire::{build_query, parse_answer, Answer, Qtype, Rec};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Nameservers, tried in order.
    pub nameservers: Vec<SocketAddr>,
    /// Per-try timeout.
    pub timeout: Duration,
    /// Tries per nameserver.
    pub attempts: u32,
    /// Cap on negative-cache TTLs (RFC 2308 suggests at most 3 hours).
    pub negative_ttl_max: u32,
    /// Most answers the cache holds; beyond it expired, then least recently used, go.
    pub cache_entries_max: usize,
}

/// Nameservers from resolv.conf text (port 53), for when none are configured.
pub fn nameservers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Where to deliver a domain's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Hosts in order: (exchange name, addresses).
    Hosts(Vec<(String, Vec<IpAddr>)>),
    /// Null MX (RFC 7505): bounce with 5.1.10.
    NullMx,
    /// The domain does not exist (or has neither MX nor address): bounce.
    NoSuchDomain,
    /// Temporary DNS failure: retry later.
    TempFail(String),
}

/// One core's resolver and cache.
pub struct Resolver {
    cfg: ResolverConfig,
    cache: RefCell<DnsCache>,
    next_id: std::cell::Cell<u16>,
    /// Lookups that asked a nameserver (cache misses), for the metrics endpoint.
    queries: std::cell::Cell<u64>,
    /// Lookups answered from the cache.
    hits: std::cell::Cell<u64>,
}

impl Resolver {
    /// A resolver with an empty cache.
    pub fn new(cfg: ResolverConfig) -> Self {
        let seed = (crate::clock::unix_ms() as u16) ^ 0x5a5a;
        let cache = RefCell::new(DnsCache::new(cfg.cache_entries_max));
        Self { cfg, cache, next_id: std::cell::Cell::new(seed), queries: Default::default(), hits: Default::default() }
    }

    /// (lookups that asked a nameserver, lookups answered from the cache) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.queries.get(), self.hits.get())
    }

    fn id(&self) -> u16 {
        // Unpredictable enough to make blind spoofing costly; answers are also matched on name and type.
        let x = self.next_id.get().wrapping_mul(25173).wrapping_add(13849) ^ (rand::random::<u16>());
        self.next_id.set(x);
        x
    }

    /// Look up `name`/`qtype`, from the cache while its TTL lasts.
    pub async fn lookup(&self, name: &str, qtype: Qtype) -> Answer {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), qtype);
        let hit = self.cache.borrow_mut().get(&key, Instant::now());
        if let Some(a) = hit {
            self.hits.set(self.hits.get() + 1);
            return a;
        }
        self.queries.set(self.queries.get() + 1);
        let answer = self.query(&key.0, qtype).await;
        let ttl = match &answer {
            Answer::Records(_, ttl) | Answer::NxDomain(ttl) | Answer::NoData(ttl) => Some(*ttl),
            Answer::ServFail(_) | Answer::Truncated => None,
        };
        if let Some(ttl) = ttl.filter(|t| *t > 0) {
            let now = Instant::now();
            self.cache.borrow_mut().insert(key, answer.clone(), now + Duration::from_secs(ttl as u64), now);
        }
        answer
    }

    async fn query(&self, name: &str, qtype: Qtype) -> Answer {
        let mut last = Answer::ServFail("no nameservers configured".into());
        for ns in &self.cfg.nameservers {
            for _ in 0..self.cfg.attempts.max(1) {
                let id = self.id();
                let Ok(q) = build_query(id, name, qtype) else { return Answer::NxDomain(0) };
                let got = match glommio::timer::timeout(self.cfg.timeout, async { Ok(self.udp(&q, *ns, id, name, qtype).await) }).await {
                    Ok(a) => a,
                    Err(_) => Answer::ServFail(format!("timeout asking {ns}")),
                };
                let got = if got == Answer::Truncated {
                    match glommio::timer::timeout(self.cfg.timeout, async { Ok(self.tcp(&q, *ns, id, name, qtype).await) }).await {
                        Ok(a) => a,
                        Err(_) => Answer::ServFail(format!("TCP timeout asking {ns}")),
                    }
                } else {
                    got
                };
                match got {
                    Answer::ServFail(_) => last = got,
                    definitive => return definitive,
                }
            }
        }
        last
    }

    async fn udp(&self, q: &[u8], ns: SocketAddr, id: u16, name: &str, qtype: Qtype) -> Answer {
        let bind: SocketAddr = if ns.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let sock = match UdpSocket::bind(bind) {
            Ok(s) => s,
            Err(e) => return Answer::ServFail(format!("udp socket: {e}")),
        };
        if let Err(e) = sock.send_to(q, ns).await {
            return Answer::ServFail(format!("send to {ns}: {e}"));
        }
        let mut buf = vec![0u8; 4096];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) if from == ns => match parse_answer(&buf[..n], id, name, qtype, self.cfg.negative_ttl_max) {
                    Ok(a) => return a,
                    Err(_) => continue, // not our answer: keep waiting until the timeout
                },
                Ok(_) => continue,
                Err(e) => return Answer::ServFail(format!("recv from {ns}: {e}")),
            }
        }
    }

    async fn tcp(&self, q: &[u8], ns: SocketAddr, id: u16, name: &str, qtype: Qtype) -> Answer {
        let run = async {
            let mut s = TcpStream::connect(ns).await.map_err(std::io::Error::from)?;
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(q);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match run.await {
            Ok(buf) => parse_answer(&buf, id, name, qtype, self.cfg.negative_ttl_max).unwrap_or_else(|e| Answer::ServFail(e.to_string())),
            Err(e) => Answer::ServFail(format!("tcp {ns}: {e}")),
        }
    }

    /// Addresses of `host` (A then AAAA). `Err` carries a temporary failure.
    pub async fn addresses(&self, host: &str) -> Result<Option<Vec<IpAddr>>, String> {
        let mut ips = Vec::new();
        let mut temp = None;
        let mut nx = true;
        for qt in [Qtype::A, Qtype::Aaaa] {
            match self.lookup(host, qt).await {
                Answer::Records(recs, _) => {
                    nx = false;
                    ips.extend(recs.into_iter().filter_map(|r| match r {
                        Rec::Addr(ip) => Some(ip),
                        Rec::Mx(..) => None,
                    }))
                }
                Answer::NoData(_) => nx = false,
                Answer::NxDomain(_) => {}
                Answer::ServFail(e) if temp.is_none() => temp = Some(e),
                Answer::Truncated if temp.is_none() => temp = Some("truncated answer".into()),
                _ => {}
            }
        }
        if !ips.is_empty() {
            return Ok(Some(ips));
        }
        match temp {
            Some(e) => Err(e),
            None => Ok(if nx { None } else { Some(Vec::new()) }),
        }
    }

    /// Resolve where mail for `domain` goes (RFC 5321 5.1).
    pub async fn destination(&self, domain: &str) -> Destination {
        match self.lookup(domain, Qtype::Mx).await {
            Answer::NxDomain(_) => Destination::NoSuchDomain,
            Answer::ServFail(e) => Destination::TempFail(format!("MX lookup for {domain}: {e}")),
            Answer::Truncated => Destination::TempFail("truncated answer".into()),
            Answer::NoData(_) => match self.addresses(domain).await {
                // Implicit MX: the domain's own address records.
                Ok(Some(ips)) if !ips.is_empty() => Destination::Hosts(vec![(domain.to_string(), ips)]),
                Ok(_) => Destination::NoSuchDomain,
                Err(e) => Destination::TempFail(format!("address lookup for {domain}: {e}")),
            },
            Answer::Records(recs, _) => match plan(&recs, &mut rand::thread_rng()) {
                MxPlan::NullMx => Destination::NullMx,
                MxPlan::Exchanges(hosts) => {
                    let mut out = Vec::new();
                    let mut temp = None;
                    for h in hosts {
                        match self.addresses(&h).await {
                            Ok(Some(ips)) if !ips.is_empty() => out.push((h, ips)),
                            Ok(_) => {}
                            Err(e) => temp = Some(e),
                        }
                    }
                    if !out.is_empty() {
                        Destination::Hosts(out)
                    } else if let Some(e) = temp {
                        Destination::TempFail(format!("MX address lookup for {domain}: {e}"))
                    } else {
                        // MX records exist but none has an address: never fall back to the domain's A.
                        Destination::TempFail(format!("no MX host of {domain} has an address"))
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_nameservers_from_resolv_conf() {
        let ns = super::nameservers_from_resolv_conf("# c\nnameserver 127.0.0.53\nsearch x\nnameserver ::1\n");
        assert_eq!(ns, vec!["127.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }
}
