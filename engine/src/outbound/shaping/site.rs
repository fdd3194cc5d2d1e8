//! Sites: the set of hosts a domain's mail goes to (its MX hosts, or a static route's hosts).
//! Every domain hosted by one provider resolves to the same set, so they share one site, one
//! ready queue per source and one set of limits (KumoMTA's "site name").

/// One site as a core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The sorted, de-duplicated host names (or `ip:port`s of a route), joined by `,`;
    /// prefixed `route:` for static routes and `domain:` when DNS gave no hosts.
    pub key: String,
    /// The host names, de-duplicated, in the order to try them: MX preference as the domain
    /// that formed the site resolved them, or the route's order (shape and rule patterns
    /// `*.suffix` match against these; the key is what is sorted).
    pub hosts: Vec<String>,
    /// A domain that resolved to this site: connections are made as for it (targets, TLS
    /// policy). Every domain of the site resolves to the same hosts.
    pub domain: String,
    /// DNS gave no hosts: the answer every delivery of this attempt gets (a 5xx bounces, a 4xx
    /// is retried; the site is looked up again for the next attempt).
    pub failure: Option<crate::smtp::reply::Reply>,
}

impl Site {
    /// The site of MX (or implicit-MX) host names, given in preference order.
    pub fn of_mx(domain: &str, hosts: impl IntoIterator<Item = String>) -> Self {
        let hosts = in_order_once(hosts.into_iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()));
        Self { key: sorted_key(&hosts), hosts, domain: domain.to_string(), failure: None }
    }

    /// The site of a static route: its `ip:port` hosts plus what else makes its connections
    /// differ (TLS settings), so two routes share a site only when they would connect alike.
    pub fn of_route(domain: &str, hosts: &[String], tls: &str) -> Self {
        let hosts = in_order_once(hosts.iter().cloned());
        Self { key: format!("route:{}{tls}", sorted_key(&hosts)), hosts, domain: domain.to_string(), failure: None }
    }

    /// The site of a `[[route]]` under TLS `policy`: everything the route sets about how its
    /// connections are made (TLS mode, verification, CA, the name verified) is part of the
    /// key, so routes to the same hosts that connect differently are different sites.
    pub fn of_static_route(domain: &str, route: &crate::config::Route, policy: &crate::config::TlsPolicy) -> Self {
        let tls_set = route.tls.is_some() || route.tls_verify.is_some() || route.tls_ca_file.is_some() || route.tls_name.is_some();
        let tls = match tls_set {
            true => format!("|{policy:?}|name={}", route.tls_name.as_deref().unwrap_or("-")),
            false => String::new(),
        };
        Self::of_route(domain, &route.hosts, &tls)
    }

    /// A domain DNS gave no hosts for (no such domain, null MX, temporary failure): a site of
    /// its own, whose attempt reports `failure`, the DNS answer.
    pub fn of_unresolved(domain: &str, failure: crate::smtp::reply::Reply) -> Self {
        Self { key: format!("domain:{domain}"), hosts: Vec::new(), domain: domain.to_string(), failure: Some(failure) }
    }
}

/// Each host once, where it first appears.
fn in_order_once(hosts: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// The hosts sorted and joined: the same set gives the same key whatever the order.
fn sorted_key(hosts: &[String]) -> String {
    let mut sorted: Vec<&str> = hosts.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.join(",")
}

/// A `site` pattern of `[[shape]]` or `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteMatch {
    /// `"*"`.
    Any,
    /// `"*.mx.example"`: a host of the site ends with `.mx.example`.
    MxSuffix(String),
    /// A domain: the site that domain resolves to.
    Domain(String),
}

impl SiteMatch {
    /// Parse a pattern.
    pub fn parse(p: &str) -> Self {
        let p = p.trim().to_ascii_lowercase();
        if p == "*" {
            SiteMatch::Any
        } else if let Some(s) = p.strip_prefix('*') {
            SiteMatch::MxSuffix(s.to_string())
        } else {
            SiteMatch::Domain(p)
        }
    }

    /// Does it match `site`, reached for `domain`?
    pub fn matches(&self, domain: &str, site: &Site) -> bool {
        match self {
            SiteMatch::Any => true,
            SiteMatch::MxSuffix(s) => site.hosts.iter().any(|h| h.ends_with(s.as_str())),
            SiteMatch::Domain(d) => d == domain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_with_the_same_mx_set_share_a_site_whatever_the_order() {
        let a = Site::of_mx("a.test", ["MX2.p.example.".into(), "mx1.p.example".into()]);
        let b = Site::of_mx("b.test", ["mx1.p.example".into(), "mx2.p.example".into(), "mx1.p.example".into()]);
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, "mx1.p.example,mx2.p.example");
        let r = Site::of_route("c.test", &["127.0.0.1:25".into()], "");
        assert_ne!(r.key, Site::of_mx("c.test", ["127.0.0.1:25".into()]).key, "a route is not an MX set");
    }

    #[test]
    fn hosts_keep_their_preference_order_while_the_key_is_sorted() {
        let s = Site::of_mx("a.test", ["mx2.p.example.".into(), "MX1.p.example".into(), "mx2.p.example".into(), "mx0.p.example".into()]);
        assert_eq!(s.hosts, ["mx2.p.example", "mx1.p.example", "mx0.p.example"], "the order to try them");
        assert_eq!(s.key, "mx0.p.example,mx1.p.example,mx2.p.example");
        let r = Site::of_route("b.test", &["127.0.0.9:25".into(), "127.0.0.1:25".into()], "");
        assert_eq!(r.hosts, ["127.0.0.9:25", "127.0.0.1:25"], "a route's hosts are tried in order");
        assert_eq!(r.key, "route:127.0.0.1:25,127.0.0.9:25");
    }

    #[test]
    fn routes_to_the_same_hosts_are_one_site_only_when_they_connect_alike() {
        let cfg = crate::config::Config::parse("[server]\n").unwrap();
        let route = |tls_name: Option<&str>| crate::config::Route {
            domain: "x.test".into(),
            hosts: vec!["127.0.0.1:25".into()],
            tls: None,
            tls_verify: None,
            tls_ca_file: None,
            tls_name: tls_name.map(Into::into),
            bdat_max_octets: None,
        };
        let site = |r: &crate::config::Route| Site::of_static_route("x.test", r, &cfg.tls_policy(r)).key;
        let (a, b, plain) = (route(Some("a.example")), route(Some("b.example")), route(None));
        assert_ne!(site(&a), site(&b), "another name verified: another site");
        assert_ne!(site(&a), site(&plain));
        assert_eq!(site(&a), site(&route(Some("a.example"))));
        assert_eq!(site(&plain), "route:127.0.0.1:25");
        let verified = crate::config::Route { tls_ca_file: Some("/ca.pem".into()), ..plain.clone() };
        assert_ne!(site(&verified), site(&plain), "another CA: another site");
    }

    #[test]
    fn patterns_match_any_suffix_or_domain() {
        let s = Site::of_mx("gmail.com", ["gmail-smtp-in.l.google.com".into()]);
        assert!(SiteMatch::parse("*").matches("gmail.com", &s));
        assert!(SiteMatch::parse("*.google.com").matches("x.test", &s));
        assert!(!SiteMatch::parse("*.yahoodns.net").matches("gmail.com", &s));
        assert!(SiteMatch::parse("Gmail.com").matches("gmail.com", &s));
        assert!(!SiteMatch::parse("gmail.com").matches("googlemail.com", &s));
    }
}
