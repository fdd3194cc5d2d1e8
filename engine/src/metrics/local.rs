//! What one core counts for the metrics endpoint, kept on the core itself: plain `Cell`s and
//! fixed-bucket histograms, no atomics or locks, recorded on the hot path at the cost of an
//! add. The endpoint never reads these directly: it asks the core over its admin channel
//! (`CoreOp::Metrics`) and the core answers with a [`CoreSample`], a copy.
//!
//! The event counters are bumped where the delivery log line is written (`Core::log_classified`),
//! so they equal the delivery log's lines exactly, kind by kind.
use ringpost_spool::{FixedHistogram, HistogramSnapshot};
use std::cell::{Cell, RefCell};

/// Upper bounds (µs) of the accept-to-250 histogram: 100 µs to 10 s.
pub const ACCEPT_US_BOUNDS: [u64; 16] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000];

/// The label of a failure without a bounce category.
pub const NO_CATEGORY: &str = "none";

/// Counts per bounce category (bounded: the categories are a fixed list).
#[derive(Default)]
pub struct ByCategory(RefCell<Vec<(&'static str, u64)>>);

impl ByCategory {
    fn add(&self, category: &'static str) {
        let mut v = self.0.borrow_mut();
        match v.iter_mut().find(|(c, _)| *c == category) {
            Some((_, n)) => *n += 1,
            None => v.push((category, 1)),
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0.borrow().clone()
    }
}

/// What a delivery-log event was, as the counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A message received over SMTP (one log line per message).
    ReceivedSmtp,
    /// A DSN this daemon generated and queued (one log line per message).
    ReceivedDsn,
    /// One recipient delivered.
    Delivered,
    /// One recipient's attempt deferred.
    Deferred,
    /// One recipient bounced.
    Bounced,
    /// One recipient expired.
    Expired,
}

/// One core's counters and histograms.
pub struct CoreMetrics {
    received_smtp: Cell<u64>,
    received_dsn: Cell<u64>,
    delivered: Cell<u64>,
    deferred: ByCategory,
    bounced: ByCategory,
    expired: ByCategory,
    accept_us: FixedHistogram,
    dkim_signed: Cell<u64>,
    dkim_signing: Cell<u64>,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        Self {
            received_smtp: Cell::new(0),
            received_dsn: Cell::new(0),
            delivered: Cell::new(0),
            deferred: ByCategory::default(),
            bounced: ByCategory::default(),
            expired: ByCategory::default(),
            accept_us: FixedHistogram::new(&ACCEPT_US_BOUNDS),
            dkim_signed: Cell::new(0),
            dkim_signing: Cell::new(0),
        }
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl CoreMetrics {
    /// Count one delivery-log line; `category` for failures (bounce category name).
    pub fn count(&self, what: Counted, category: Option<&'static str>) {
        let category = category.unwrap_or(NO_CATEGORY);
        match what {
            Counted::ReceivedSmtp => bump(&self.received_smtp),
            Counted::ReceivedDsn => bump(&self.received_dsn),
            Counted::Delivered => bump(&self.delivered),
            Counted::Deferred => self.deferred.add(category),
            Counted::Bounced => self.bounced.add(category),
            Counted::Expired => self.expired.add(category),
        }
    }

    /// Record the time from a message's last byte to its 250 (the durable commit), in µs.
    pub fn accepted_in(&self, micros: u64) {
        self.accept_us.record(micros);
    }

    /// A message starts waiting for its DKIM signature (after its 250).
    pub fn signing_started(&self) {
        bump(&self.dkim_signing);
    }

    /// A message waiting for its signature has it (or goes unsigned).
    pub fn signing_ended(&self) {
        self.dkim_signing.set(self.dkim_signing.get() - 1);
    }

    /// A message's signature lines were made: once per message, at its commit or, when the
    /// spool kept none, at recovery.
    pub fn signed(&self) {
        bump(&self.dkim_signed);
    }

    /// Copy the counters into `sample`.
    pub fn fill(&self, sample: &mut CoreSample) {
        sample.received_smtp = self.received_smtp.get();
        sample.received_dsn = self.received_dsn.get();
        sample.delivered = self.delivered.get();
        sample.deferred = self.deferred.snapshot();
        sample.bounced = self.bounced.snapshot();
        sample.expired = self.expired.snapshot();
        sample.accept_us = self.accept_us.snapshot();
        sample.dkim_signed = self.dkim_signed.get();
        sample.dkim_signing = self.dkim_signing.get();
    }
}

/// One destination's queue, for the per-destination gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestDepth {
    /// Destination domain.
    pub domain: String,
    /// Recipients ready.
    pub ready: u64,
    /// Recipients waiting for a retry.
    pub waiting: u64,
    /// Recipients in flight.
    pub in_flight: u64,
}

impl DestDepth {
    /// Everything queued for the destination.
    pub fn total(&self) -> u64 {
        self.ready + self.waiting + self.in_flight
    }
}

/// The `n` largest of `all` by recipients queued (ties by name), largest first; empty ones
/// never. Each destination lives on one core, so the top `n` of the whole daemon are among the
/// cores' own top `n`: a core sends only those.
pub fn top_destinations(mut all: Vec<DestDepth>, n: usize) -> Vec<DestDepth> {
    all.retain(|d| d.total() > 0);
    all.sort_unstable_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.domain.cmp(&b.domain)));
    all.truncate(n);
    all
}

/// A copy of one core's metrics, as the core answers `CoreOp::Metrics`.
#[derive(Debug, Clone, Default)]
pub struct CoreSample {
    /// Core index.
    pub core: usize,
    /// Messages received over SMTP (answered 250).
    pub received_smtp: u64,
    /// DSNs generated.
    pub received_dsn: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipient attempts deferred, by bounce category.
    pub deferred: Vec<(&'static str, u64)>,
    /// Recipients bounced, by bounce category.
    pub bounced: Vec<(&'static str, u64)>,
    /// Recipients expired, by bounce category.
    pub expired: Vec<(&'static str, u64)>,
    /// Recipients ready to go now.
    pub queue_ready: u64,
    /// Recipients waiting for a retry.
    pub queue_waiting: u64,
    /// Recipients being delivered now.
    pub queue_in_flight: u64,
    /// Open inbound SMTP sessions.
    pub connections_in: u64,
    /// Open outbound SMTP connections.
    pub connections_out: u64,
    /// Spool segments.
    pub spool_segments: u64,
    /// Spool bytes (segments × segment size: the disk they hold).
    pub spool_bytes: u64,
    /// Commit rounds done.
    pub commit_rounds: u64,
    /// Records per commit round.
    pub round_records: HistogramSnapshot,
    /// fdatasync time per round, µs.
    pub fsync_us: HistogramSnapshot,
    /// Last byte of a message to its 250, µs.
    pub accept_us: HistogramSnapshot,
    /// DNS lookups that missed the cache and asked a nameserver.
    pub dns_queries: u64,
    /// DNS lookups answered from the cache.
    pub dns_cache_hits: u64,
    /// This core's largest destinations by recipients queued (`[metrics] destinations_top`).
    pub destinations: Vec<DestDepth>,
    /// Messages whose DKIM signature lines were made (once per message).
    pub dkim_signed: u64,
    /// Messages answered 250 and waiting for their signature.
    pub dkim_signing: u64,
}
