//! Pruning: what idle paths leave behind is forgotten, so a stream of never-seen domains (each
//! a site, each site a path per source) costs memory only while it has mail.
//!
//! A host-wide path entry goes when nothing could tell it from a fresh one: no core holds it
//! (no ready mail, no connection on any core), no connection is counted, no suspension or
//! throttle is in force, its rate limiters are full (a fresh one would not allow a burst the
//! old one owed), and it has not been used for [`PRUNE_IDLE_MS`]. Everything still in force
//! stays, however long it has been idle.
//!
//! The race with a core taking the entry at the same moment is closed by `retired`: the pruner
//! marks the entry, fences, and only then reads the reference count; a core clones, fences and
//! only then reads the mark (`Shaping::path`). Either the pruner sees the core's reference and
//! keeps the entry, or the core sees the mark, lets go and takes what the map holds after the
//! pruner is done. So two cores never hold two different limits for one path.
use super::{PathLimits, Shaping};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// An entry unused for this long (and holding no state in force) is forgotten.
pub const PRUNE_IDLE_MS: u64 = 5 * 60_000;
/// How often each core prunes what it keeps.
pub const PRUNE_EVERY_MS: u64 = 60_000;

impl PathLimits {
    /// Nothing in it differs from a fresh entry at `now_ms`, and it has been idle long enough.
    fn is_idle(&self, now_ms: u64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        self.connections.load(Ordering::Acquire) == 0
            && self.suspended_until_ms.load(Ordering::Acquire) <= now_ms
            && self.throttle_until_ms.load(Ordering::Acquire) <= now_ms
            && self.messages.as_ref().is_none_or(|g| g.is_full(now_us))
            && self.opens.as_ref().is_none_or(|g| g.is_full(now_us))
            && self.last_used_ms.load(Ordering::Relaxed).saturating_add(PRUNE_IDLE_MS) <= now_ms
    }
}

impl Shaping {
    /// Forget idle paths (and the cluster limiter's idle leases) at `now_ms`; returns how many
    /// paths are left. Any core may call it; it takes no lock.
    pub fn prune(&self, now_ms: u64) -> usize {
        let paths = self.paths.pin();
        let idle: Vec<String> = paths.iter().filter(|(_, p)| Arc::strong_count(p) == 1 && p.is_idle(now_ms)).map(|(k, _)| k.clone()).collect();
        for key in idle {
            let Some(p) = paths.get(&key) else { continue };
            p.retired.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if Arc::strong_count(p) == 1 && p.is_idle(now_ms) {
                paths.remove(&key);
            } else {
                p.retired.store(false, Ordering::SeqCst);
            }
        }
        if let Some(s) = &self.shared_limiter {
            s.prune(now_ms.saturating_mul(1000));
        }
        paths.len()
    }

    /// How many paths the host keeps (tests, metrics).
    pub fn path_count(&self) -> usize {
        self.paths.pin().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::outbound::shaping::site::Site;

    const T0: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn shaping() -> Shaping {
        let cfg = "[server]\n[[shape]]\nsite = \"rated.test\"\nmax_message_rate = \"1/h\"\n[[shape]]\nsite = \"*\"\nmax_connections = 4\n";
        Shaping::new(&Config::parse(cfg).unwrap(), None)
    }

    fn site(i: usize) -> Site {
        Site::of_mx(&format!("d{i}.test"), [format!("mx{i}.test")])
    }

    #[test]
    fn idle_paths_go_and_every_one_in_force_stays() {
        let s = shaping();
        // 200 paths, each used once (a connection opened and closed, a message sent).
        for i in 0..200 {
            let p = s.path(0, &format!("d{i}.test"), &site(i));
            p.try_open(T0, 0, 1, None).unwrap();
            p.try_message(T0, None).unwrap();
            p.closed();
        }
        let held = s.path(0, "d0.test", &site(0)); // a core still has mail or a connection here
        s.path(0, "d1.test", &site(1)).suspend(T0 + 20 * MIN, "rule tss04");
        s.path(0, "d2.test", &site(2)).throttle(0.5, T0 + 30 * MIN, "rule s3150");
        s.path(0, "d3.test", &site(3)).try_open(T0, 0, 1, None).unwrap(); // still open
        let rated = Site::of_mx("rated.test", ["mx.rated.test".to_string()]);
        s.path(0, "rated.test", &rated).try_message(T0, None).unwrap(); // owes the rest of 1/h
        assert_eq!(s.path_count(), 201);
        assert_eq!(s.prune(T0 + 4 * MIN), 201, "nothing idle for 5 minutes yet");
        assert_eq!(s.prune(T0 + 6 * MIN), 5, "held, suspended, throttled, open, rate owed");
        assert_eq!(s.prune(T0 + 25 * MIN), 4, "the suspension ended");
        assert_eq!(s.prune(T0 + 35 * MIN), 3, "the throttle ended");
        assert_eq!(s.prune(T0 + 61 * MIN), 2, "the hour's rate is no longer owed");
        s.path(0, "d3.test", &site(3)).closed();
        assert_eq!(s.prune(T0 + 62 * MIN), 1, "the connection closed");
        drop(held);
        assert_eq!(s.prune(T0 + 62 * MIN), 0, "no core holds it any more");
    }

    #[test]
    fn a_pruned_path_comes_back_fresh_and_a_kept_one_is_the_same() {
        let s = shaping();
        let a = s.path(0, "d1.test", &site(1));
        a.try_open(T0, 0, 1, None).unwrap();
        a.closed();
        let a_ptr = Arc::as_ptr(&a);
        assert_eq!(s.prune(T0 + 10 * MIN), 1, "held by a core: kept");
        assert!(std::ptr::eq(Arc::as_ptr(&s.path(0, "d1.test", &site(1))), a_ptr), "the same limits");
        drop(a);
        assert_eq!(s.prune(T0 + 10 * MIN), 0);
        let b = s.path(0, "d1.test", &site(1));
        assert_eq!(b.open_connections(), 0);
        assert!(!b.retired.load(Ordering::SeqCst));
    }

    /// Cores taking paths while another prunes: no one ever holds a path that is no longer
    /// the map's, so no limit is ever split in two.
    #[test]
    fn a_path_taken_while_pruning_is_always_the_one_in_the_map() {
        let s = Arc::new(shaping());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pruner = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    s.prune(T0 + 10 * MIN);
                    n += 1;
                }
                n
            })
        };
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for round in 0..200_000 {
                        let i = round % 64;
                        let p = s.path(0, &format!("d{i}.test"), &site(i));
                        let now = s.paths.pin().get(&p.key).cloned();
                        assert!(now.is_some_and(|m| Arc::ptr_eq(&m, &p)), "a path held outside the map");
                    }
                })
            })
            .collect();
        takers.into_iter().for_each(|t| t.join().unwrap());
        stop.store(true, Ordering::Relaxed);
        assert!(pruner.join().unwrap() > 0);
    }
}
