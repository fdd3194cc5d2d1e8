//! The queue manager's operator side: suspend and resume destinations, make waiting mail
//! ready now, take mail out to bounce it, and read-only views for `ringctl queue` and `msg`.
//!
//! Like the rest of the queue manager it decides and never acts: callers act on the
//! [`Dispatch`]es returned and settle what is taken out. Views scan the queues (control plane,
//! on request only); nothing here runs on the delivery path.
use super::{Delivery, Dispatch, QueueManager};
use ringpost_spool::MsgRef;
use std::collections::HashMap;

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
    /// finish the transaction they hold and close.
    pub fn suspend(&mut self, domain: Option<&str>) {
        match domain {
            Some(d) => {
                self.suspended.insert(d.to_string());
            }
            None => self.all_suspended = true,
        }
    }

    /// Lift a suspension (`None`: every suspension); one dispatch per destination with mail.
    pub fn resume(&mut self, domain: Option<&str>, may_open: bool) -> Vec<(String, Dispatch)> {
        match domain {
            Some(d) => {
                self.suspended.remove(d);
            }
            None => {
                self.all_suspended = false;
                self.suspended.clear();
            }
        }
        let names: Vec<String> = self.dests.keys().filter(|k| domain.is_none_or(|d| d == k.as_str())).cloned().collect();
        names.into_iter().map(|n| (n.clone(), self.dispatch(&n, may_open))).collect()
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
    pub fn release_now(&mut self, domain: Option<&str>, may_open: bool) -> Vec<(String, Dispatch)> {
        let keys: Vec<(u64, u64)> = self.scheduled.iter().filter(|(_, (d, _))| domain.is_none_or(|x| x == d)).map(|(k, _)| *k).collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let (dom, d) = self.scheduled.remove(&k).expect("key just listed");
            let action = self.enqueue(&dom, d, may_open);
            out.push((dom, action));
        }
        out
    }

    /// Take out every queued delivery (ready or waiting, not in flight) that `pick` chooses,
    /// with its destination. The caller settles them; they are no longer counted anywhere.
    pub fn take_queued(&mut self, pick: impl Fn(&str, &Delivery) -> bool) -> Vec<(String, Delivery)> {
        let mut out = Vec::new();
        for (name, dest) in self.dests.iter_mut() {
            let (taken, kept): (Vec<Delivery>, Vec<Delivery>) = dest.ready.drain(..).partition(|d| pick(name, d));
            dest.ready = kept.into();
            out.extend(taken.into_iter().map(|d| (name.clone(), d)));
        }
        let keys: Vec<(u64, u64)> = self.scheduled.iter().filter(|(_, (n, d))| pick(n, d)).map(|(k, _)| *k).collect();
        out.extend(keys.into_iter().map(|k| self.scheduled.remove(&k).expect("key just listed")));
        out
    }

    /// Every destination with queued mail or a connection.
    pub fn views(&self) -> Vec<DestView> {
        let mut waiting: HashMap<&str, (usize, u64)> = HashMap::new();
        for (name, d) in self.scheduled.values() {
            let w = waiting.entry(name.as_str()).or_insert((0, u64::MAX));
            w.0 += d.rcpts.len();
            w.1 = w.1.min(d.msg.received_ms);
        }
        let mut names: Vec<&str> = self.dests.keys().map(String::as_str).collect();
        names.extend(waiting.keys().filter(|n| !self.dests.contains_key(**n)));
        names
            .into_iter()
            .map(|name| {
                let (w, w_oldest) = waiting.get(name).copied().unwrap_or((0, u64::MAX));
                let dest = self.dests.get(name);
                let ready = dest.map_or(0, |d| d.ready.iter().map(|x| x.rcpts.len()).sum());
                let r_oldest = dest.and_then(|d| d.ready.iter().map(|x| x.msg.received_ms).min()).unwrap_or(u64::MAX);
                let oldest = w_oldest.min(r_oldest);
                DestView {
                    domain: name.to_string(),
                    ready,
                    waiting: w,
                    in_flight: dest.map_or(0, |d| d.in_flight),
                    connections: dest.map_or(0, |d| d.connections),
                    oldest_received_ms: (oldest != u64::MAX).then_some(oldest),
                    suspended: self.is_suspended(name),
                }
            })
            .collect()
    }

    /// Where the queued recipients of message `id` are on this core.
    pub fn find(&self, id: MsgRef) -> Vec<QueuedRcpt> {
        let mut out = Vec::new();
        fn rcpts(domain: &str, d: &Delivery, place: Place) -> Vec<QueuedRcpt> {
            let at = |rcpt| QueuedRcpt { domain: domain.to_string(), rcpt, place, attempts: d.attempts, last_response: d.last_response.clone() };
            d.rcpts.iter().map(|&r| at(r)).collect()
        }
        for (name, dest) in &self.dests {
            for d in dest.ready.iter().filter(|d| d.msg.id == id) {
                out.extend(rcpts(name, d, Place::Ready));
            }
        }
        for ((at, _), (name, d)) in self.scheduled.iter().filter(|(_, (_, d))| d.msg.id == id) {
            out.extend(rcpts(name, d, Place::Waiting(*at)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SpooledMessage;
    use crate::outbound::retry::RetryPolicy;
    use std::sync::Arc;
    use std::time::Duration;

    fn qm() -> QueueManager {
        let policy = RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(3600) };
        QueueManager::new(policy, 2)
    }

    fn message(rcpts: usize) -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage {
            id: MsgRef { core: 0, segment: 1, offset: 64 },
            sender: "s@a.test".into(),
            recipients: (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
            trace: crate::message::Trace::Owned(Vec::new()),
            body: Vec::new(),
            received_ms: 1_800_000_000_000,
            flags: 0,
        })
    }

    fn delivery(msg: &Arc<SpooledMessage>, rcpts: &[u32], attempts: u32) -> Delivery {
        Delivery { msg: msg.clone(), rcpts: rcpts.to_vec(), attempts, last_response: None }
    }

    #[test]
    fn a_suspended_destination_opens_nothing_and_gives_nothing_until_resumed() {
        let mut q = qm();
        q.suspend(Some("a.test"));
        let m = message(1);
        assert!(matches!(q.enqueue("a.test", delivery(&m, &[0], 0), true), Dispatch::Nothing));
        assert!(q.pop("a.test").is_none(), "a suspended destination hands out nothing");
        assert!(matches!(q.enqueue("b.test", delivery(&m, &[1], 0), true), Dispatch::Open), "others flow");
        let again = q.resume(Some("a.test"), true);
        assert_eq!(again.len(), 1);
        assert!(matches!(again[0].1, Dispatch::Open));
        assert_eq!(q.pop("a.test").unwrap().rcpts, [0]);
    }

    #[test]
    fn suspend_all_holds_every_destination_and_resume_all_lifts_names_too() {
        let mut q = qm();
        q.suspend(Some("a.test"));
        q.suspend(None);
        assert_eq!(q.suspended_list(), ["*", "a.test"]);
        assert!(q.is_suspended("z.test"));
        q.resume(None, true);
        assert!(q.suspended_list().is_empty() && !q.is_suspended("a.test"));
    }

    #[test]
    fn release_now_moves_only_the_chosen_destination() {
        let mut q = qm();
        let m = message(2);
        q.schedule("a.test", delivery(&m, &[0], 1), 9_000_000);
        q.schedule("b.test", delivery(&m, &[1], 1), 9_000_000);
        let moved = q.release_now(Some("a.test"), true);
        assert_eq!(moved.len(), 1);
        assert_eq!(q.scheduled_len(), 1, "b.test still waits");
        assert_eq!(q.pop("a.test").unwrap().attempts, 1, "the attempt count is kept");
    }

    #[test]
    fn views_count_recipients_where_they_are_and_take_queued_removes_them() {
        let mut q = qm();
        let m = message(4);
        q.enqueue("a.test", delivery(&m, &[0, 1], 0), true);
        q.schedule("a.test", delivery(&m, &[2], 1), 9_000_000);
        q.enqueue("a.test", delivery(&m, &[3], 0), true);
        let _in_flight = q.pop("a.test").unwrap();
        let v = q.views();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].ready, v[0].waiting, v[0].in_flight, v[0].connections), (1, 1, 2, 2), "two enqueues, two connections opened");
        assert_eq!(v[0].oldest_received_ms, Some(m.received_ms));
        let found = q.find(m.id);
        assert_eq!(found.iter().map(|r| (r.rcpt, r.place)).collect::<Vec<_>>(), [(3, Place::Ready), (2, Place::Waiting(9_000_000))]);
        let taken = q.take_queued(|d, _| d == "a.test");
        assert_eq!(taken.iter().map(|(_, d)| d.rcpts.clone()).collect::<Vec<_>>(), [vec![3], vec![2]]);
        let v = q.views();
        assert_eq!((v[0].ready, v[0].waiting, v[0].in_flight), (0, 0, 2), "in-flight mail is not taken");
    }
}
