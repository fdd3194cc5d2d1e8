//! The resolver's answer cache: TTL-aware and bounded (TIGER_STYLE "put a limit on everything").
//!
//! A pure data structure owned by one core's resolver: no I/O, no clock. The caller passes
//! `now` in, so tests drive time by hand. When full, an insert first evicts an entry whose TTL
//! has run out (the one that expired earliest), and only when none has, the least recently
//! used one. Every operation is O(log n): two ordered indexes shadow the map, one by last use
//! and one by expiry, so a full 100 000-entry cache never scans.
use super::wire::{Answer, Qtype};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A cached question: lower-case name without the trailing dot, and record type.
pub type Key = (String, Qtype);

struct Entry {
    answer: Answer,
    expires: Instant,
    /// Use stamp: unique per entry, larger is more recent.
    used: u64,
}

/// A bounded TTL cache of DNS answers with least-recently-used eviction.
pub struct DnsCache {
    entries: HashMap<Key, Entry>,
    /// Use stamp -> key, oldest first.
    by_use: BTreeMap<u64, Key>,
    /// (expiry, use stamp) -> (), earliest first; the stamp finds the key in `by_use`.
    by_expiry: BTreeMap<(Instant, u64), ()>,
    next_use: u64,
    max: usize,
}

impl DnsCache {
    /// An empty cache holding at most `max` answers (at least one).
    pub fn new(max: usize) -> Self {
        Self { entries: HashMap::new(), by_use: BTreeMap::new(), by_expiry: BTreeMap::new(), next_use: 0, max: max.max(1) }
    }

    /// Number of answers held (expired ones included until they are evicted or looked up).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn stamp(&mut self) -> u64 {
        self.next_use += 1;
        self.next_use
    }

    /// The answer for `key` if its TTL lasts past `now`; a hit counts as a use. An expired
    /// entry is dropped on the spot.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Answer> {
        let (expires, used) = self.entries.get(key).map(|e| (e.expires, e.used))?;
        if now >= expires {
            self.remove(key);
            return None;
        }
        let fresh = self.stamp();
        self.by_use.remove(&used);
        self.by_expiry.remove(&(expires, used));
        self.by_use.insert(fresh, key.clone());
        self.by_expiry.insert((expires, fresh), ());
        let e = self.entries.get_mut(key).expect("entry seen above");
        e.used = fresh;
        Some(e.answer.clone())
    }

    /// Store `answer` for `key` until `expires`, making room first if the cache is full.
    pub fn insert(&mut self, key: Key, answer: Answer, expires: Instant, now: Instant) {
        self.remove(&key);
        while self.entries.len() >= self.max {
            self.evict_one(now);
        }
        let used = self.stamp();
        self.by_use.insert(used, key.clone());
        self.by_expiry.insert((expires, used), ());
        self.entries.insert(key, Entry { answer, expires, used });
    }

    /// Drop the earliest-expired entry if one has expired by `now`, else the least recently used.
    fn evict_one(&mut self, now: Instant) {
        let expired = self.by_expiry.keys().next().filter(|(exp, _)| *exp <= now).map(|&(_, used)| used);
        let used = match expired {
            Some(u) => u,
            None => *self.by_use.keys().next().expect("evicting from an empty cache"),
        };
        let key = self.by_use.get(&used).expect("indexes agree").clone();
        self.remove(&key);
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.by_use.remove(&e.used);
            self.by_expiry.remove(&(e.expires, e.used));
        }
        debug_assert!(self.by_use.len() == self.entries.len() && self.by_expiry.len() == self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(n: &str) -> Key {
        (n.to_string(), Qtype::A)
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn answers_live_until_their_ttl_and_not_a_moment_longer() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(10);
        c.insert(key("a"), Answer::NxDomain(60), secs(t0, 60), t0);
        assert_eq!(c.get(&key("a"), secs(t0, 59)), Some(Answer::NxDomain(60)));
        assert_eq!(c.get(&key("a"), secs(t0, 60)), None);
        assert_eq!(c.len(), 0, "an expired entry is dropped when looked up");
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_when_nothing_has_expired() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(3);
        for n in ["a", "b", "c"] {
            c.insert(key(n), Answer::NoData(300), secs(t0, 300), t0);
        }
        // "a" is used again, so "b" is now the least recently used.
        assert!(c.get(&key("a"), secs(t0, 1)).is_some());
        c.insert(key("d"), Answer::NoData(300), secs(t0, 302), secs(t0, 2));
        assert_eq!(c.len(), 3);
        assert!(c.get(&key("b"), secs(t0, 3)).is_none(), "b was least recently used");
        for n in ["a", "c", "d"] {
            assert!(c.get(&key(n), secs(t0, 3)).is_some(), "{n} must survive");
        }
    }

    #[test]
    fn expired_entries_go_before_recently_used_ones() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(3);
        c.insert(key("old"), Answer::NoData(300), secs(t0, 300), t0);
        c.insert(key("short"), Answer::NoData(5), secs(t0, 5), t0);
        c.insert(key("long"), Answer::NoData(300), secs(t0, 300), t0);
        // At t=10 "short" has expired; "old" is the least recently used but still valid.
        c.insert(key("new"), Answer::NoData(300), secs(t0, 310), secs(t0, 10));
        assert_eq!(c.len(), 3);
        for n in ["old", "long", "new"] {
            assert!(c.get(&key(n), secs(t0, 11)).is_some(), "{n} must survive");
        }
    }

    #[test]
    fn replacing_a_key_keeps_one_entry_and_the_bound_holds_under_churn() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(100);
        c.insert(key("a"), Answer::NxDomain(1), secs(t0, 1), t0);
        c.insert(key("a"), Answer::NxDomain(9), secs(t0, 9), t0);
        assert_eq!((c.len(), c.get(&key("a"), secs(t0, 5))), (1, Some(Answer::NxDomain(9))));
        for i in 0..10_000u64 {
            c.insert(key(&format!("h{i}")), Answer::NoData(60), secs(t0, 60 + i), secs(t0, i / 10));
            assert!(c.len() <= 100);
        }
        assert_eq!(c.len(), 100);
        // The most recent hundred are the ones kept.
        assert!(c.get(&key("h9900"), secs(t0, 1000)).is_some());
        assert!(c.get(&key("h9899"), secs(t0, 1000)).is_none());
    }
}
