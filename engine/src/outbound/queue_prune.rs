//! The queue manager forgets what idle destinations leave behind: a path with no ready mail
//! and no connection (its host-wide limits then go too, `shaping/prune.rs`), and a domain's
//! site entry once its look-up is [`PRUNE_IDLE_MS`] past due and none of its paths is left (a
//! path stays while it has ready mail or a connection, so `ringctl queue` still shows the site
//! of every domain with mail on a path). A forgotten site is looked up again at the domain's
//! next delivery (the resolver's cache answers within the DNS TTL), exactly as after its 1 s
//! TTL; a delivery waiting for its look-up is queued when the answer comes, entry or not.
use super::QueueManager;
use crate::outbound::shaping::prune::PRUNE_IDLE_MS;

impl QueueManager {
    /// Drop idle paths and site entries at `now_ms`; returns (paths, sites) left.
    pub fn prune_idle(&mut self, now_ms: u64) -> (usize, usize) {
        self.paths.retain(|_, p| !p.ready.is_empty() || p.connections > 0 || !p.idle.is_empty());
        let paths = &self.paths;
        self.sites.retain(|_, e| e.expires_ms.saturating_add(PRUNE_IDLE_MS) > now_ms || e.paths.iter().any(|(_, k)| paths.contains_key(k)));
        let (keep_sites, keep_paths) = (self.sites.len() * 2, self.paths.len() * 2);
        self.sites.shrink_to(keep_sites);
        self.paths.shrink_to(keep_paths);
        (self.paths.len(), self.sites.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::config::Config;
    use ringpost_spool::MsgRef;

    const T0: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn message() -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage::owned(
            MsgRef { core: 0, segment: 1, offset: 64 },
            "s@a.test".into(),
            vec!["r@x.test".into()],
            Vec::new(),
            Vec::new(),
            T0,
            0,
        ))
    }

    fn to(domain: &str) -> Delivery {
        Delivery { msg: message(), rcpts: Rcpts::One(0), attempts: 0, last_response: None, domain: domain.into(), pool: None }
    }

    fn delivered() -> Vec<RcptResult> {
        vec![RcptResult::Delivered(Reply::new(250, (2, 0, 0), "ok"))]
    }

    /// Queue one delivery for `domain` (its own MX host) and say which path opened.
    fn send(q: &mut QueueManager, domain: &str, now: u64) -> Rc<str> {
        assert!(matches!(q.enqueue(to(domain), now, true), Dispatch::Resolve(_)));
        let site = Site::of_mx(domain, [format!("mx.{domain}")]);
        match q.site_resolved(domain, site, now, true).pop() {
            Some(Dispatch::Open(k)) => k,
            _ => panic!("expected a connection to open"),
        }
    }

    #[test]
    fn idle_paths_and_sites_go_and_those_with_mail_stay() {
        let shaping = Arc::new(Shaping::new(&Config::parse("[server]\n").unwrap(), None));
        let policy = RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(3600) };
        let mut q = QueueManager::new(policy, 1, shaping.clone());
        // 300 domains, each delivered once and its connection closed.
        for i in 0..300 {
            let k = send(&mut q, &format!("d{i}.test"), T0);
            let Pop::Ready(d) = q.pop(&k, T0) else { panic!("ready") };
            q.settle(T0, d, delivered(), None);
            q.connection_closed(&k, T0, true);
        }
        // Still busy: one with ready mail behind its open connection, one on a connection.
        let busy = send(&mut q, "busy.test", T0);
        q.enqueue(to("busy.test"), T0, true);
        let flying = send(&mut q, "flying.test", T0);
        let Pop::Ready(in_flight) = q.pop(&flying, T0) else { panic!("ready") };
        // One has ready mail and no connection: its destination is suspended by the operator.
        q.suspend(Some("held.test"));
        assert!(matches!(q.enqueue(to("held.test"), T0, true), Dispatch::Resolve(_)));
        let site = Site::of_mx("held.test", ["mx.held.test".to_string()]);
        assert!(matches!(q.site_resolved("held.test", site, T0, true).as_slice(), [Dispatch::Nothing]));
        // One waits for its site.
        assert!(matches!(q.enqueue(to("slow-dns.test"), T0, true), Dispatch::Resolve(_)));
        assert_eq!((q.paths.len(), q.sites.len()), (3, 303), "closed paths are gone already");
        assert_eq!(shaping.path_count(), 303);
        assert_eq!(q.prune_idle(T0 + 4 * MIN), (3, 303), "looked up less than 5 minutes ago");
        assert_eq!(q.prune_idle(T0 + 6 * MIN), (3, 3), "only busy.test, flying.test and held.test");
        assert_eq!(shaping.prune(T0 + 6 * MIN), 3, "the host forgets the paths no core holds");
        assert!(q.path_limits(&busy).is_some() && q.path_limits(&flying).is_some());
        q.settle(T0 + 6 * MIN, in_flight, delivered(), None);
        q.connection_closed(&flying, T0 + 6 * MIN, true);
        assert_eq!(q.prune_idle(T0 + 12 * MIN), (2, 2), "flying.test is idle now");
        let again = q.site_resolved("slow-dns.test", Site::of_mx("slow-dns.test", ["mx.slow".to_string()]), T0 + 12 * MIN, true);
        assert!(matches!(again.as_slice(), [Dispatch::Open(_)]), "what waited for its site is still queued");
    }
}
