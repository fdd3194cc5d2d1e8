//! Fixed-bucket histograms for one core's hot paths (commit rounds here, SMTP commit latency in
//! the engine), read by the metrics endpoint.
//!
//! A histogram belongs to one core and is recorded into without atomics or locks (`Cell`s: the
//! core's executor is the only writer and reader). The metrics endpoint asks each core for a
//! [`HistogramSnapshot`] over the core's admin channel and adds the snapshots up; the buckets are
//! fixed at compile time so snapshots of the same histogram on different cores always merge.
//! Nothing is ever reset: counts only grow, as a Prometheus histogram's must.
use std::cell::Cell;

/// Counts of values in fixed buckets (`value <= bound`), plus one overflow bucket, and their sum.
pub struct FixedHistogram {
    bounds: &'static [u64],
    counts: Box<[Cell<u64>]>,
    sum: Cell<u64>,
}

impl FixedHistogram {
    /// An empty histogram over `bounds` (strictly increasing upper bounds, inclusive).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Self { bounds, counts: (0..=bounds.len()).map(|_| Cell::new(0)).collect(), sum: Cell::new(0) }
    }

    /// Count one value.
    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        let c = &self.counts[i];
        c.set(c.get() + 1);
        self.sum.set(self.sum.get().saturating_add(value));
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot { bounds: self.bounds.to_vec(), counts: self.counts.iter().map(Cell::get).collect(), sum: self.sum.get() }
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative), the last one for values
/// above every bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Inclusive upper bounds of the buckets but the last.
    pub bounds: Vec<u64>,
    /// Values per bucket: `bounds.len() + 1` entries.
    pub counts: Vec<u64>,
    /// Sum of every value recorded.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `other` (the same histogram on another core) into this one. An empty snapshot
    /// (`Default`) takes the other's buckets.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        assert_eq!(self.bounds, other.bounds, "merging histograms with different buckets");
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them_and_merge_adds() {
        static B: [u64; 3] = [1, 10, 100];
        let h = FixedHistogram::new(&B);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!((s.count(), s.sum), (8, 5225));
        let mut total = HistogramSnapshot::default();
        total.merge(&s);
        total.merge(&s);
        assert_eq!((total.counts, total.sum), (vec![4, 4, 4, 4], 10450));
    }
}
