//! Sites: the set of hosts a domain's mail goes to (its MX hosts, or a static route's hosts).
//! Every domain hosted by one provider resolves to the same set, so they share one site, one
//! ready queue per source and one set of limits (KumoMTA's "site name").

/// One site as a core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The sorted, de-duplicated host names (or `ip:port`s of a route), joined by `,`;
    /// prefixed `route:` for static routes and `domain:` when DNS gave no hosts.
    pub key: String,
    /// The host names, sorted (shape and rule patterns `*.suffix` match against these).
    pub hosts: Vec<String>,
    /// A domain that resolved to this site: connections are made as for it (targets, TLS
    /// policy). Every domain of the site resolves to the same hosts.
    pub domain: String,
    /// DNS gave no hosts: the answer every delivery of this attempt gets (a 5xx bounces, a 4xx
    /// is retried; the site is looked up again for the next attempt).
    pub failure: Option<crate::smtp::reply::Reply>,
}

impl Site {
    /// The site of MX (or implicit-MX) host names.
    pub fn of_mx(domain: &str, hosts: impl IntoIterator<Item = String>) -> Self {
        let mut hosts: Vec<String> = hosts.into_iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect();
        hosts.sort();
        hosts.dedup();
        Self { key: hosts.join(","), hosts, domain: domain.to_string(), failure: None }
    }

    /// The site of a static route: its `ip:port` hosts plus what else makes its connections
    /// differ (TLS settings), so two routes share a site only when they would connect alike.
    pub fn of_route(domain: &str, hosts: &[String], tls: &str) -> Self {
        let mut sorted = hosts.to_vec();
        sorted.sort();
        sorted.dedup();
        Self { key: format!("route:{}{tls}", sorted.join(",")), hosts: sorted, domain: domain.to_string(), failure: None }
    }

    /// A domain DNS gave no hosts for (no such domain, null MX, temporary failure): a site of
    /// its own, whose attempt reports `failure`, the DNS answer.
    pub fn of_unresolved(domain: &str, failure: crate::smtp::reply::Reply) -> Self {
        Self { key: format!("domain:{domain}"), hosts: Vec::new(), domain: domain.to_string(), failure: Some(failure) }
    }
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
    fn patterns_match_any_suffix_or_domain() {
        let s = Site::of_mx("gmail.com", ["gmail-smtp-in.l.google.com".into()]);
        assert!(SiteMatch::parse("*").matches("gmail.com", &s));
        assert!(SiteMatch::parse("*.google.com").matches("x.test", &s));
        assert!(!SiteMatch::parse("*.yahoodns.net").matches("gmail.com", &s));
        assert!(SiteMatch::parse("Gmail.com").matches("gmail.com", &s));
        assert!(!SiteMatch::parse("gmail.com").matches("googlemail.com", &s));
    }
}
