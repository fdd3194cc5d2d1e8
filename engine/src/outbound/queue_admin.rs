//! The queue manager's operator side: suspend and resume destinations, make waiting mail
//! ready now, take mail out to bounce it, and read-only views for `ringctl queue` and `msg`.
//!
//! Like the rest of the queue manager it decides and never acts: callers act on the
//! [`Dispatch`]es returned and settle what is taken out. Views scan the queues (control plane,
//! on request only); nothing here runs on the delivery path.
use super::{Bucket, Delivery, Dispatch, QueueManager, Scheduled};
use ringpost_spool::MsgRef;
use std::collections::{HashMap, VecDeque};

/// One destination's queue, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestView {
    /// Destination domain.
    pub domain: String,
    /// Recipients ready to go.
    pub ready: usize,
    /// Recipients waiting for their next attempt.
    pub waiting: usize,
    /// Recipients on a connection.
    pub in_flight: usize,
    /// Open connections.
    pub connections: usize,
    /// Reception time of the oldest queued message (Unix ms).
    pub oldest_received_ms: Option<u64>,
    /// Suspended by name or by suspending everything.
    pub suspended: bool,
    /// The site (MX set or route hosts) its mail goes to, once known.
    pub site: Option<String>,
    /// Paths of that site that a rule suspended or throttled, with until when and why.
    pub paths: Vec<String>,
}

/// Where a queued recipient is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In its destination's ready queue.
    Ready,
    /// Waiting for its next attempt, due at this Unix ms.
    Waiting(u64),
}

/// A recipient of a message found in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRcpt {
    /// Its destination.
    pub domain: String,
    /// Recipient index.
    pub rcpt: u32,
    /// Where it is.
    pub place: Place,
    /// Attempts made so far.
    pub attempts: u32,
    /// Last transient reply.
    pub last_response: Option<String>,
}

impl QueueManager {
    /// True while `domain` is suspended (by name or all).
    pub fn is_suspended(&self, domain: &str) -> bool {
        self.all_suspended || self.suspended.contains(domain)
    }

    /// Suspend `domain`, or every destination when `None`. Queued mail stays; connections
    /// finish the transaction they hold and close (or skip that domain's mail). Idle
    /// connections of the domain's site (of every site for `None`) are told to QUIT: notify
    /// the returned events.
    pub fn suspend(&mut self, domain: Option<&str>) -> Vec<Dispatch> {
        match domain {
            Some(d) => {
                self.suspended.insert(d.to_string());
            }
            None => self.all_suspended = true,
        }
        self.quit_idle(domain)
    }

    /// Lift a suspension (`None`: every suspension); one dispatch per path with mail.
    pub fn resume(&mut self, domain: Option<&str>, now_ms: u64, may_open: bool) -> Vec<Dispatch> {
        match domain {
            Some(d) => {
                self.suspended.remove(d);
            }
            None => {
                self.all_suspended = false;
                self.suspended.clear();
            }
        }
        let keys: Vec<_> =
            self.paths.iter().filter(|(_, p)| domain.is_none_or(|d| p.ready.iter().any(|x| &*x.domain == d))).map(|(k, _)| k.clone()).collect();
        keys.into_iter().map(|k| self.dispatch(&k, now_ms, may_open)).collect()
    }

    /// The suspended destinations, sorted; `*` first when everything is suspended.
    pub fn suspended_list(&self) -> Vec<String> {
        let mut out: Vec<String> = self.suspended.iter().cloned().collect();
        out.sort();
        if self.all_suspended {
            out.insert(0, "*".into());
        }
        out
    }

    /// Move the waiting deliveries of `domain` (`None`: all) to their ready queues now.
    pub fn release_now(&mut self, domain: Option<&str>, now_ms: u64, may_open: bool) -> Vec<Dispatch> {
        let taken = self.take_scheduled(|d| domain.is_none_or(|x| x == &*d.domain));
        taken.into_iter().map(|d| self.enqueue(d, now_ms, may_open)).collect()
    }

    /// Take the waiting deliveries `pick` chooses out of the schedule, earliest due first
    /// (a scan and a rebuild: operator commands only). They leave the waiting counts.
    fn take_scheduled(&mut self, pick: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        let all = std::mem::take(&mut self.scheduled).into_vec();
        let (mut taken, kept): (Vec<Scheduled>, Vec<Scheduled>) = all.into_iter().partition(|s| pick(&self.parked_rcpts.view(s)));
        self.scheduled = kept.into();
        taken.sort_by_key(Scheduled::key);
        let taken: Vec<Delivery> = taken.into_iter().map(|s| self.parked_rcpts.unpark(s)).collect();
        taken.iter().for_each(|d| self.stats.remove(d, Bucket::Waiting));
        taken
    }

    /// Take out every queued delivery (ready, waiting or waiting for its site; not in flight)
    /// that `pick` chooses, with its domain. The caller settles them; they are no longer
    /// counted anywhere.
    pub fn take_queued(&mut self, pick: impl Fn(&str, &Delivery) -> bool) -> Vec<(String, Delivery)> {
        let mut out = Vec::new();
        for p in self.paths.values_mut() {
            out.extend(p.ready.take(&pick));
        }
        for v in self.resolving.values_mut() {
            out.extend(v.take(&pick));
        }
        out.iter().for_each(|(_, d)| self.stats.remove(d, Bucket::Ready));
        // A delivery back from a dead connection waits at the front of its ready queue with
        // its silent retry noted; taken away here it never settles, which would keep the note.
        if !self.requeued.is_empty() {
            for (_, d) in &out {
                self.requeued.remove(&(d.msg.id, d.rcpts.first().copied().unwrap_or(0)));
            }
        }
        out.extend(self.take_scheduled(|d| pick(&d.domain, d)).into_iter().map(|d| (d.domain.to_string(), d)));
        out
    }

    /// Every domain with queued mail or mail on a connection.
    pub fn views(&self, now_ms: u64) -> Vec<DestView> {
        let mut v: HashMap<&str, DestView> = HashMap::new();
        for (d, c) in self.stats.iter() {
            let e = v.entry(d).or_insert_with(|| DestView::empty(d));
            (e.ready, e.waiting, e.oldest_received_ms) = (c.ready, c.waiting, c.oldest_received_ms);
        }
        for (d, n) in &self.in_flight {
            v.entry(d).or_insert_with(|| DestView::empty(d)).in_flight = *n;
        }
        let by_site = self.site_connections(now_ms);
        v.into_values()
            .map(|mut view| {
                self.fill_site(&mut view, &by_site);
                view
            })
            .collect()
    }

    /// Per site key: open connections and shaping notes of all its paths (one walk over the
    /// paths, not one per destination).
    fn site_connections(&self, now_ms: u64) -> HashMap<&str, (usize, Vec<String>)> {
        let mut out: HashMap<&str, (usize, Vec<String>)> = HashMap::new();
        for p in self.paths.values() {
            let e = out.entry(p.site.key.as_str()).or_default();
            e.0 += p.connections;
            e.1.extend(p.limits.status(now_ms));
        }
        out
    }

    /// The site of a domain's view, its connections and its paths' shaping state.
    fn fill_site(&self, view: &mut DestView, by_site: &HashMap<&str, (usize, Vec<String>)>) -> Option<()> {
        view.suspended = self.is_suspended(&view.domain);
        let entry = self.sites.get(view.domain.as_str())?;
        view.site = Some(entry.site.key.clone());
        let (connections, paths) = by_site.get(entry.site.key.as_str())?;
        view.connections = *connections;
        view.paths = paths.clone();
        Some(())
    }

    /// Where the queued recipients of message `id` are on this core.
    pub fn find(&self, id: MsgRef) -> Vec<QueuedRcpt> {
        let mut out = Vec::new();
        fn rcpts(d: &Delivery, place: Place) -> Vec<QueuedRcpt> {
            let last_response = d.last_response.as_deref().map(String::from);
            let at = |rcpt| QueuedRcpt { domain: d.domain.to_string(), rcpt, place, attempts: d.attempts, last_response: last_response.clone() };
            d.rcpts.iter().map(|&r| at(r)).collect()
        }
        for d in self.paths.values().flat_map(|p| p.ready.iter()).chain(self.resolving.values().flatten()).filter(|d| d.msg.id == id) {
            out.extend(rcpts(d, Place::Ready));
        }
        let mut waiting: Vec<&Scheduled> = self.scheduled.iter().filter(|s| s.msg().id == id).collect();
        waiting.sort_by_key(|s| s.key());
        for s in waiting {
            out.extend(rcpts(&self.parked_rcpts.view(s), Place::Waiting(s.at_ms())));
        }
        out
    }
}

/// A queue deliveries can be picked out of.
trait QueueLike {
    fn take(&mut self, pick: &dyn Fn(&str, &Delivery) -> bool) -> Vec<(String, Delivery)>;
}

impl QueueLike for VecDeque<Delivery> {
    fn take(&mut self, pick: &dyn Fn(&str, &Delivery) -> bool) -> Vec<(String, Delivery)> {
        let (taken, kept): (Vec<Delivery>, Vec<Delivery>) = self.drain(..).partition(|d| pick(&d.domain, d));
        *self = kept.into();
        taken.into_iter().map(|d| (d.domain.to_string(), d)).collect()
    }
}

impl QueueLike for Vec<Delivery> {
    fn take(&mut self, pick: &dyn Fn(&str, &Delivery) -> bool) -> Vec<(String, Delivery)> {
        let (taken, kept): (Vec<Delivery>, Vec<Delivery>) = self.drain(..).partition(|d| pick(&d.domain, d));
        *self = kept;
        taken.into_iter().map(|d| (d.domain.to_string(), d)).collect()
    }
}

impl DestView {
    fn empty(domain: &str) -> Self {
        DestView {
            domain: domain.to_string(),
            ready: 0,
            waiting: 0,
            in_flight: 0,
            connections: 0,
            oldest_received_ms: None,
            suspended: false,
            site: None,
            paths: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SpooledMessage;
    use crate::outbound::retry::RetryPolicy;
    use crate::outbound::shaping::site::Site;
    use crate::outbound::shaping::Shaping;
    use std::sync::Arc;
    use std::time::Duration;

    const T0: u64 = 1_800_000_000_000;

    fn qm() -> QueueManager {
        let policy = RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(3600) };
        let cfg = crate::config::Config::parse("[server]\n").unwrap();
        let mut q = QueueManager::new(policy, 2, Arc::new(Shaping::new(&cfg, None)));
        for d in ["a.test", "b.test"] {
            q.site_resolved(d, Site::of_mx(d, [format!("mx.{d}")]), T0, true);
        }
        q
    }

    /// When the test messages were received.
    const RECEIVED_MS: u64 = 1_800_000_000_000;

    fn message(rcpts: usize) -> Arc<SpooledMessage> {
        super::super::tests::message(RECEIVED_MS, rcpts)
    }

    fn delivery(domain: &str, msg: &Arc<SpooledMessage>, rcpts: &[u32], attempts: u32) -> Delivery {
        Delivery { msg: msg.clone(), rcpts: rcpts.into(), attempts, last_response: None, domain: domain.into(), pool: None }
    }

    fn popped(q: &mut QueueManager, domain: &str) -> Option<Delivery> {
        let k = q.path_key_of(domain)?;
        match q.pop(&k, T0) {
            super::super::Pop::Ready(d) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn a_suspended_destination_opens_nothing_and_gives_nothing_until_resumed() {
        let mut q = qm();
        q.suspend(Some("a.test"));
        let m = message(1);
        assert!(matches!(q.enqueue(delivery("a.test", &m, &[0], 0), T0, true), Dispatch::Nothing));
        assert!(popped(&mut q, "a.test").is_none(), "a suspended destination hands out nothing");
        assert!(matches!(q.enqueue(delivery("b.test", &m, &[1], 0), T0, true), Dispatch::Open(_)), "others flow");
        let again = q.resume(Some("a.test"), T0, true);
        assert_eq!(again.len(), 1);
        assert!(matches!(again[0], Dispatch::Open(_)));
        assert_eq!(&*popped(&mut q, "a.test").unwrap().rcpts, [0]);
    }

    #[test]
    fn suspend_all_holds_every_destination_and_resume_all_lifts_names_too() {
        let mut q = qm();
        q.suspend(Some("a.test"));
        q.suspend(None);
        assert_eq!(q.suspended_list(), ["*", "a.test"]);
        assert!(q.is_suspended("z.test"));
        q.resume(None, T0, true);
        assert!(q.suspended_list().is_empty() && !q.is_suspended("a.test"));
    }

    #[test]
    fn release_now_moves_only_the_chosen_destination() {
        let mut q = qm();
        let m = message(2);
        q.schedule(delivery("a.test", &m, &[0], 1), 9_000_000);
        q.schedule(delivery("b.test", &m, &[1], 1), 9_000_000);
        let moved = q.release_now(Some("a.test"), T0, true);
        assert_eq!(moved.len(), 1);
        assert_eq!(q.scheduled_len(), 1, "b.test still waits");
        assert_eq!(popped(&mut q, "a.test").unwrap().attempts, 1, "the attempt count is kept");
    }

    #[test]
    fn views_count_recipients_where_they_are_and_take_queued_removes_them() {
        let mut q = qm();
        let m = message(4);
        q.enqueue(delivery("a.test", &m, &[0, 1], 0), T0, true);
        q.schedule(delivery("a.test", &m, &[2], 1), 9_000_000);
        q.enqueue(delivery("a.test", &m, &[3], 0), T0, true);
        let _in_flight = popped(&mut q, "a.test").unwrap();
        let v = q.views(T0);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].ready, v[0].waiting, v[0].in_flight, v[0].connections), (1, 1, 2, 2), "two enqueues, two connections opened");
        assert_eq!(v[0].oldest_received_ms, Some(m.received_ms() / 1000 * 1000), "to the second");
        assert_eq!(v[0].site.as_deref(), Some("mx.a.test"));
        let found = q.find(m.id);
        assert_eq!(found.iter().map(|r| (r.rcpt, r.place)).collect::<Vec<_>>(), [(3, Place::Ready), (2, Place::Waiting(9_000_000))]);
        let taken = q.take_queued(|d, _| d == "a.test");
        assert_eq!(taken.iter().map(|(_, d)| d.rcpts.to_vec()).collect::<Vec<_>>(), [vec![3], vec![2]]);
        let v = q.views(T0);
        assert_eq!((v[0].ready, v[0].waiting, v[0].in_flight), (0, 0, 2), "in-flight mail is not taken");
    }

    #[test]
    fn views_show_what_a_rule_holds_on_the_site() {
        let mut q = qm();
        let m = message(1);
        let Dispatch::Open(k) = q.enqueue(delivery("a.test", &m, &[0], 0), T0, true) else { panic!("opens") };
        q.path_limits(&k).unwrap().1.suspend(T0 + 60_000, "rule tss04: 421 4.7.0 [TSS04]");
        let v = q.views(T0);
        assert!(v[0].paths[0].contains("suspended until") && v[0].paths[0].contains("TSS04"), "{:?}", v[0].paths);
        assert!(q.views(T0 + 60_000)[0].paths.is_empty(), "gone when it ends");
    }

    /// What the views must show, found the slow way: a walk over every queued delivery.
    fn scanned(q: &QueueManager) -> std::collections::BTreeMap<String, (usize, usize, Option<u64>)> {
        let mut v = std::collections::BTreeMap::new();
        let mut add = |d: &Delivery, ready: bool| {
            let e = v.entry(d.domain.to_string()).or_insert((0, 0, None));
            if ready {
                e.0 += d.rcpts.len()
            } else {
                e.1 += d.rcpts.len()
            }
            e.2 = Some(e.2.unwrap_or(u64::MAX).min(d.msg.received_ms() / 1000 * 1000));
            // counted to the second
        };
        q.paths.values().flat_map(|p| p.ready.iter()).chain(q.resolving.values().flatten()).for_each(|d| add(d, true));
        q.scheduled.iter().for_each(|s| add(&q.parked_rcpts.view(s), false));
        v
    }

    #[test]
    fn counted_views_equal_a_walk_over_the_queues_whatever_moves_the_mail() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut q = qm();
        let mut now = T0;
        let domains = ["a.test", "b.test", "c.test"];
        for step in 0..5_000 {
            let dom = domains[rng.gen_range(0..3)];
            let m = super::super::tests::message(T0 - rng.gen_range(0..50u64), 3);
            let rcpts: Vec<u32> = (0..rng.gen_range(1..4u32)).collect();
            match rng.gen_range(0..9) {
                0 | 1 => drop(q.enqueue(delivery(dom, &m, &rcpts, 0), now, true)),
                2 => q.schedule(delivery(dom, &m, &rcpts, 1), now + rng.gen_range(0..2_000u64)),
                3 => drop(q.release_due(now, true)),
                4 => drop(popped(&mut q, dom)),
                5 => drop(q.path_key_of(dom).map(|k| q.take_ready(&k))),
                6 => drop(q.take_queued(|d, x| d == dom && x.msg.received_ms() % 2 == 0)),
                7 => drop(q.release_now(Some(dom), now, true)),
                _ => drop(q.site_resolved(dom, Site::of_mx(dom, [format!("mx.{dom}")]), now, true)),
            }
            now += rng.gen_range(0..400u64);
            if step % 97 == 0 {
                q.expire_sites();
            }
            // Only destinations with queued mail or mail in flight have a view; a view with
            // neither would be a count left behind.
            let views = q.views(now);
            assert!(views.iter().all(|v| v.ready + v.waiting + v.in_flight > 0), "step {step}: an empty view");
            let counted: std::collections::BTreeMap<String, (usize, usize, Option<u64>)> =
                views.into_iter().filter(|v| v.ready + v.waiting > 0).map(|v| (v.domain, (v.ready, v.waiting, v.oldest_received_ms))).collect();
            assert_eq!(counted, scanned(&q), "step {step}");
        }
    }
}
