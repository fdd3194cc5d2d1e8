//! Static routes (`[[route]]`): which hosts serve a domain, overriding DNS. Read-only after start.
use crate::config::Route;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The `[[route]]` table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: HashMap<String, (Vec<SocketAddr>, Route)>,
    default: Option<(Vec<SocketAddr>, Route)>,
}

impl Routes {
    /// Build from validated config routes.
    pub fn new(routes: &[Route]) -> Self {
        let mut r = Routes::default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, hosts: &[&str]) -> Route {
        Route {
            domain: domain.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls: None,
            tls_verify: None,
            tls_ca_file: None,
            tls_name: None,
            bdat_max_octets: None,
        }
    }

    #[test]
    fn specific_route_wins_over_default() {
        let r = Routes::new(&[route("*", &["127.0.0.1:1"]), route("a.test", &["127.0.0.1:2", "127.0.0.1:3"])]);
        assert_eq!(r.hosts("a.test").unwrap().len(), 2);
        assert_eq!(r.hosts("b.test").unwrap()[0].port(), 1);
    }
}
