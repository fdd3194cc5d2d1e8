//! Shared copies of the strings many queued deliveries carry (their domain, their last
//! transient reply): a backlog of a million messages to ten domains, all deferred with the
//! same "connection refused", holds ten domain strings and one reply, not a million of each
//! (issue 9 item 4).
//!
//! Bounded: strings nobody else holds any more are dropped whenever the table has doubled
//! since the last sweep, so a stream of distinct replies costs amortised O(1) per lookup and
//! never more than twice what is in use. Data only; the queue manager owns one.
use std::collections::HashSet;
use std::rc::Rc;

/// Least table size at which a sweep runs.
const SWEEP_MIN: usize = 64;

/// A table of shared strings.
#[derive(Debug)]
pub struct Interner {
    set: HashSet<Rc<str>>,
    sweep_at: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self { set: HashSet::new(), sweep_at: SWEEP_MIN }
    }
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Rc<str> {
        if let Some(x) = self.set.get(s) {
            return x.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|x| Rc::strong_count(x) > 1);
            self.sweep_at = (self.set.len() * 2).max(SWEEP_MIN);
        }
        let x: Rc<str> = s.into();
        self.set.insert(x.clone());
        x
    }

    /// Strings in the table (tests).
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_unused_ones_are_swept() {
        let mut t = Interner::default();
        let a = t.get("451 4.4.1 connection refused");
        let b = t.get("451 4.4.1 connection refused");
        assert!(Rc::ptr_eq(&a, &b));
        // Distinct strings no one keeps: the table never holds more than twice the sweep size.
        for i in 0..10_000 {
            t.get(&format!("reply {i}"));
            assert!(t.len() <= SWEEP_MIN + 1, "{} strings kept", t.len());
        }
        assert!(Rc::ptr_eq(&a, &t.get("451 4.4.1 connection refused")), "a string in use survives sweeps");
    }
}
