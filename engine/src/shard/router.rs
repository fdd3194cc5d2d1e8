//! Static routing and shard ownership: which hosts serve a domain, and which core owns it.
use crate::config::Route;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The `[[route]]` table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: HashMap<String, (Vec<SocketAddr>, Route)>,
    default: Option<(Vec<SocketAddr>, Route)>,
}

impl Router {
    /// Build from validated config routes.
    pub fn new(routes: &[Route]) -> Self {
        let mut r = Router::default();
        for route in routes {
            let hosts: Vec<SocketAddr> = route.hosts.iter().filter_map(|h| h.parse().ok()).collect();
            if route.domain == "*" {
                r.default = Some((hosts, route.clone()));
            } else {
                r.routes.insert(route.domain.to_ascii_lowercase(), (hosts, route.clone()));
            }
        }
        r
    }

    /// Hosts for `domain` (lower-case), in the order to try; `None` if nothing routes it.
    pub fn hosts(&self, domain: &str) -> Option<&[SocketAddr]> {
        self.route(domain).map(|(h, _)| h.as_slice())
    }

    /// The static route for `domain` (specific, else `"*"`), with its hosts.
    pub fn route(&self, domain: &str) -> Option<&(Vec<SocketAddr>, Route)> {
        self.routes.get(domain).or(self.default.as_ref())
    }
}

/// The core that owns destination `domain`: a stable FNV-1a hash modulo the core count, so
/// every core agrees without asking anyone.
pub fn owner_core(domain: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores as u64) as usize
}

/// The domain of an address, lower-cased (the part after the last `@`).
pub fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_case_insensitive() {
        assert_eq!(owner_core("Example.ORG", 4), owner_core("example.org", 4));
        let spread: std::collections::HashSet<usize> = (0..64).map(|i| owner_core(&format!("d{i}.test"), 4)).collect();
        assert_eq!(spread.len(), 4, "domains spread over every core");
    }

    fn route(domain: &str, hosts: &[&str]) -> Route {
        Route { domain: domain.into(), hosts: hosts.iter().map(|h| h.to_string()).collect(), tls: None, tls_verify: None, tls_ca_file: None, tls_name: None }
    }

    #[test]
    fn specific_route_wins_over_default() {
        let r = Router::new(&[
            route("*", &["127.0.0.1:1"]),
            route("a.test", &["127.0.0.1:2", "127.0.0.1:3"]),
        ]);
        assert_eq!(r.hosts("a.test").unwrap().len(), 2);
        assert_eq!(r.hosts("b.test").unwrap()[0].port(), 1);
        assert_eq!(domain_of("x@Y.Test"), "y.test");
    }
}
