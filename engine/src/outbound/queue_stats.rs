//! Per-destination counts of queued recipients, kept up to date as deliveries enter and leave
//! the queues, so that `ringctl status`, `ringctl queue` and a `/metrics` scrape cost
//! O(destinations) instead of a walk over every queued delivery.
//!
//! Polling is a control-plane job, but a poll runs on the core that delivers: with tens of
//! thousands of messages queued a walk took a third of the daemon's CPU at ten polls a second
//! (perf/RESULTS.md, fourth session). Counting costs one hash look-up and one ordered-map
//! update per queue move on the delivery path.
use super::Delivery;
use crate::outbound::intern::Name;
use std::collections::{BTreeMap, HashMap};

/// Where a queued delivery sits, as the operator counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bucket {
    /// Ready: on a path, or waiting for its domain's site to be resolved.
    Ready,
    /// Waiting for its next attempt.
    Waiting,
}

/// One destination's queued recipients and the reception times of their messages.
#[derive(Debug, Default)]
struct DomainCount {
    ready: usize,
    waiting: usize,
    /// Reception second (Unix s) → queued deliveries received in it: the oldest is the first
    /// key. By second, not by ms: one entry per distinct key, and a backlog fed at a
    /// thousand messages a second would otherwise cost an entry per message (~30 B per
    /// queued recipient, issue 9 item 4); the oldest message's age is shown in seconds.
    received: BTreeMap<u64, u32>,
}

/// One destination's counts, as read by the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    pub ready: usize,
    pub waiting: usize,
    pub oldest_received_ms: Option<u64>,
}

/// The counts of every destination with queued mail (on one core).
#[derive(Debug, Default)]
pub(super) struct QueueStats {
    by_domain: HashMap<Name, DomainCount>,
}

impl QueueStats {
    /// `d` entered bucket `b`.
    pub fn add(&mut self, d: &Delivery, b: Bucket) {
        let c = self.by_domain.entry(d.domain.clone()).or_default();
        match b {
            Bucket::Ready => c.ready += d.rcpts.len(),
            Bucket::Waiting => c.waiting += d.rcpts.len(),
        }
        *c.received.entry(d.msg.received_ms() / 1000).or_default() += 1;
    }

    /// `d` left bucket `b` (it was added there before). A destination with nothing left is
    /// forgotten, so the map holds only destinations with queued mail.
    pub fn remove(&mut self, d: &Delivery, b: Bucket) {
        let Some(c) = self.by_domain.get_mut(&*d.domain) else {
            debug_assert!(false, "{} removed but never counted", d.domain);
            return;
        };
        let n = d.rcpts.len();
        match b {
            Bucket::Ready => c.ready = c.ready.checked_sub(n).unwrap_or_else(|| undercount(&d.domain)),
            Bucket::Waiting => c.waiting = c.waiting.checked_sub(n).unwrap_or_else(|| undercount(&d.domain)),
        }
        let second = d.msg.received_ms() / 1000;
        if let Some(k) = c.received.get_mut(&second) {
            *k -= 1;
            if *k == 0 {
                c.received.remove(&second);
            }
        }
        if c.received.is_empty() {
            debug_assert!(c.ready == 0 && c.waiting == 0, "{}: recipients counted without deliveries", d.domain);
            self.by_domain.remove(&*d.domain);
        }
    }

    /// Every destination with queued mail and its counts.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, Counted)> {
        self.by_domain
            .iter()
            .map(|(d, c)| (d, Counted { ready: c.ready, waiting: c.waiting, oldest_received_ms: c.received.keys().next().map(|s| s * 1000) }))
    }
}

/// A count would go below zero: a bug in the bookkeeping. Debug builds stop; release builds
/// show zero rather than wrap (the counts are for operators; no mail depends on them).
fn undercount(domain: &str) -> usize {
    debug_assert!(false, "{domain}: more recipients removed than counted");
    0
}
