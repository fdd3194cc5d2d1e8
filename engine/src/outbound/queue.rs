//! The queue manager of one core: per destination a ready FIFO, a schedule of deliveries
//! waiting for their next attempt, and the decision of what happens after an attempt.
//!
//! It decides and never acts: no I/O, no timers, no spawning. Time is passed in (Unix ms from
//! the shard's [`crate::clock::Clock`]), results are handed to it, and it answers with
//! [`Dispatch`] (what the caller should do about connections) and [`Settlement`] (what became
//! final, what waits). That keeps it testable by driving time (Postfix's qmgr apart from its
//! smtp agents). The shard owns one and touches it only from its own core.
use crate::message::SpooledMessage;
use crate::outbound::retry::{RetryDecision, RetryPolicy};
use crate::smtp::client::RcptResult;
use crate::smtp::reply::Reply;
use event_listener::Event;
use ringpost_spool::Outcome;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Some recipients of one message bound for one destination.
pub struct Delivery {
    /// The message.
    pub msg: Arc<SpooledMessage>,
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last transient reply about these recipients (none before the first attempt).
    pub last_response: Option<String>,
}

/// What the caller should do about connections after a queue change.
pub enum Dispatch {
    /// Nothing: no work, or the connection limit is reached.
    Nothing,
    /// Wake an idle connection of the destination (notify this event).
    WakeIdle(Rc<Event>),
    /// Open a new connection (already counted against the limit).
    Open,
}

/// A recipient whose attempt ended for good.
#[derive(Debug, Clone)]
pub struct Final {
    /// Recipient index.
    pub rcpt: u32,
    /// Delivered, bounced or expired.
    pub outcome: Outcome,
    /// The reply it ended with (for expiry: the last transient reply).
    pub reply: Reply,
}

/// Recipients that wait for another attempt.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far, including this one.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: u64,
    /// The transient reply.
    pub reply: Reply,
}

/// The outcome of one attempt for one delivery.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Recipients that are done (delivered, bounced, expired).
    pub finals: Vec<Final>,
    /// Recipients scheduled again, if any.
    pub deferred: Option<Deferred>,
    /// Attempts made, including this one.
    pub attempts: u32,
}

#[derive(Default)]
struct Destination {
    ready: VecDeque<Delivery>,
    connections: usize,
    idle: usize,
    /// Recipients handed to connections and not yet settled.
    in_flight: usize,
    wake: Rc<Event>,
}

/// All destination queues of one core.
pub struct QueueManager {
    dests: HashMap<String, Destination>,
    scheduled: BTreeMap<(u64, u64), (String, Delivery)>,
    seq: u64,
    policy: RetryPolicy,
    connections_max: usize,
    /// Destinations the operator suspended: their mail waits, no connection takes it.
    suspended: HashSet<String>,
    /// Every destination is suspended.
    all_suspended: bool,
}

impl QueueManager {
    /// Empty queues with this retry policy and per-destination connection limit.
    pub fn new(policy: RetryPolicy, connections_max: usize) -> Self {
        Self {
            dests: HashMap::new(),
            scheduled: BTreeMap::new(),
            seq: 0,
            policy,
            connections_max: connections_max.max(1),
            suspended: HashSet::new(),
            all_suspended: false,
        }
    }

    /// New retry policy and connection limit (a reload); deliveries already scheduled keep
    /// their time, connections above a lowered limit finish their work.
    pub fn set_policy(&mut self, policy: RetryPolicy, connections_max: usize) {
        self.policy = policy;
        self.connections_max = connections_max.max(1);
    }

    /// Queue a delivery as ready now; `may_open` is false while shutting down.
    pub fn enqueue(&mut self, domain: &str, d: Delivery, may_open: bool) -> Dispatch {
        self.dests.entry(domain.to_string()).or_default().ready.push_back(d);
        self.dispatch(domain, may_open)
    }

    /// Queue a delivery for its next attempt at `at_ms`.
    pub fn schedule(&mut self, domain: &str, d: Delivery, at_ms: u64) {
        self.seq += 1;
        self.scheduled.insert((at_ms, self.seq), (domain.to_string(), d));
    }

    /// When the earliest scheduled delivery is due (Unix ms).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.scheduled.keys().next().map(|(t, _)| *t)
    }

    /// Move every delivery due at `now_ms` to its ready queue; one dispatch per delivery moved.
    pub fn release_due(&mut self, now_ms: u64, may_open: bool) -> Vec<(String, Dispatch)> {
        let later = self.scheduled.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.scheduled, later);
        due.into_values()
            .map(|(domain, d)| {
                let action = self.enqueue(&domain, d, may_open);
                (domain, action)
            })
            .collect()
    }

    /// Wake an idle connection or open one, within the destination's connection limit.
    fn dispatch(&mut self, domain: &str, may_open: bool) -> Dispatch {
        let held = self.is_suspended(domain);
        let Some(dest) = self.dests.get_mut(domain) else { return Dispatch::Nothing };
        if dest.ready.is_empty() || held {
            Dispatch::Nothing
        } else if dest.idle > 0 {
            Dispatch::WakeIdle(dest.wake.clone())
        } else if dest.connections < self.connections_max && may_open {
            dest.connections += 1;
            Dispatch::Open
        } else {
            Dispatch::Nothing
        }
    }

    /// Next ready delivery for a connection to `domain`.
    /// None while the destination is suspended: its connections finish what they hold and close.
    pub fn pop(&mut self, domain: &str) -> Option<Delivery> {
        if self.is_suspended(domain) {
            return None;
        }
        let dest = self.dests.get_mut(domain)?;
        let d = dest.ready.pop_front()?;
        dest.in_flight += d.rcpts.len();
        Some(d)
    }

    /// Every ready delivery of `domain` (its connection attempt failed).
    pub fn take_ready(&mut self, domain: &str) -> Vec<Delivery> {
        let Some(dest) = self.dests.get_mut(domain) else { return Vec::new() };
        let taken: Vec<Delivery> = dest.ready.drain(..).collect();
        dest.in_flight += taken.iter().map(|d| d.rcpts.len()).sum::<usize>();
        taken
    }

    /// The event that wakes idle connections of `domain`.
    pub fn wake_event(&self, domain: &str) -> Option<Rc<Event>> {
        self.dests.get(domain).map(|d| d.wake.clone())
    }

    /// A connection of `domain` starts (`+1`) or stops (`-1`) waiting idle for work.
    pub fn set_idle(&mut self, domain: &str, delta: isize) {
        if let Some(d) = self.dests.get_mut(domain) {
            d.idle = d.idle.saturating_add_signed(delta);
        }
    }

    /// A connection to `domain` ended; open another if work is still ready and none is left.
    pub fn connection_closed(&mut self, domain: &str, may_open: bool) -> Dispatch {
        let Some(d) = self.dests.get_mut(domain) else { return Dispatch::Nothing };
        d.connections = d.connections.saturating_sub(1);
        if d.connections > 0 {
            return Dispatch::Nothing;
        }
        if d.ready.is_empty() {
            self.dests.remove(domain);
            return Dispatch::Nothing;
        }
        self.dispatch(domain, may_open)
    }

    /// Ready deliveries and open connections of `domain`.
    pub fn depth(&self, domain: &str) -> (usize, usize) {
        self.dests.get(domain).map(|d| (d.ready.len(), d.connections)).unwrap_or((0, 0))
    }

    /// Deliveries waiting for a later attempt.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// Decide what one attempt's results mean: finals for delivered and bounced recipients;
    /// transient failures either wait (scheduled here) or, past the lifetime, expire.
    pub fn settle(&mut self, now_ms: u64, domain: &str, d: Delivery, results: Vec<RcptResult>) -> Settlement {
        let attempts = d.attempts + 1;
        if let Some(dest) = self.dests.get_mut(domain) {
            dest.in_flight = dest.in_flight.saturating_sub(d.rcpts.len());
        }
        let mut out = Settlement { attempts, ..Default::default() };
        let mut retry = Vec::new();
        let mut last_transient = None;
        assert_eq!(d.rcpts.len(), results.len(), "one result per recipient");
        for (&rcpt, result) in d.rcpts.iter().zip(results) {
            match result {
                RcptResult::Delivered(reply) => out.finals.push(Final { rcpt, outcome: Outcome::Delivered, reply }),
                RcptResult::Permanent(reply) => out.finals.push(Final { rcpt, outcome: Outcome::Bounced, reply }),
                RcptResult::Transient(reply) => {
                    retry.push(rcpt);
                    last_transient = Some(reply);
                }
            }
        }
        let Some(reply) = last_transient else { return out };
        let age = Duration::from_millis(now_ms.saturating_sub(d.msg.received_ms));
        match self.policy.decide(attempts, age) {
            RetryDecision::RetryIn(after) => {
                let next_attempt_ms = now_ms + after.as_millis() as u64;
                let last_response = Some(reply.to_wire().trim_end().replace("\r\n", " "));
                out.deferred = Some(Deferred { rcpts: retry.clone(), attempts, next_attempt_ms, reply });
                self.schedule(domain, Delivery { msg: d.msg, rcpts: retry, attempts, last_response }, next_attempt_ms);
            }
            RetryDecision::Expire => {
                out.finals.extend(retry.into_iter().map(|rcpt| Final { rcpt, outcome: Outcome::Expired, reply: reply.clone() }));
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;

#[path = "queue_admin.rs"]
mod admin;
pub use admin::{DestView, Place, QueuedRcpt};
