//! Shared copies of the strings many queued deliveries carry (their domain, their last
//! transient reply): a backlog of a million messages to ten domains, all deferred with the
//! same "connection refused", holds ten domain strings and one reply, not a million of each
//! (issue 9 item 4).
//!
//! Bounded: strings nobody else holds any more are dropped whenever the table has doubled
//! since the last sweep, so a stream of distinct replies costs amortised O(1) per lookup and
//! never more than twice what is in use. Data only; the queue manager owns one.
use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;

/// Least table size at which a sweep runs.
const SWEEP_MIN: usize = 64;

/// A shared string as a queued delivery carries it: one pointer (an `Rc<str>` is two), so a
/// delivery's domain and last reply cost 16 bytes, not 32, times a million queued.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Rc<Box<str>>);

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Rc::new(s.into()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A table of shared strings.
#[derive(Debug)]
pub struct Interner {
    set: HashSet<Name>,
    sweep_at: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self { set: HashSet::new(), sweep_at: SWEEP_MIN }
    }
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Name {
        if let Some(x) = self.set.get(s) {
            return x.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|x| Rc::strong_count(&x.0) > 1);
            self.sweep_at = (self.set.len() * 2).max(SWEEP_MIN);
        }
        let x = Name::from(s);
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
        assert!(Rc::ptr_eq(&a.0, &b.0));
        // Distinct strings no one keeps: the table never holds more than twice the sweep size.
        for i in 0..10_000 {
            t.get(&format!("reply {i}"));
            assert!(t.len() <= SWEEP_MIN + 1, "{} strings kept", t.len());
        }
        assert!(Rc::ptr_eq(&a.0, &t.get("451 4.4.1 connection refused").0), "a string in use survives sweeps");
    }
}
