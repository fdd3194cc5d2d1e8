//! Smooth weighted round robin (nginx's): deterministic, and every window of `sum(weights)`
//! picks gives each member exactly its weight, interleaved rather than in runs.

/// One pool's running state on one core.
#[derive(Debug, Clone, Default)]
pub struct Swrr {
    current: Vec<i64>,
}

impl Swrr {
    /// Pick an index of `weights` among those `eligible` says may be used; `None` if none may.
    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.current.resize(weights.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            self.current[i] += i64::from(*w);
            total += i64::from(*w);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_one_and_three_give_exact_shares_interleaved() {
        let mut s = Swrr::default();
        let picks: Vec<usize> = (0..8).map(|_| s.pick(&[1, 3], |_| true).unwrap()).collect();
        assert_eq!(picks, [1, 0, 1, 1, 1, 0, 1, 1]);
        let ones = (0..4000).filter(|_| s.pick(&[1, 3], |_| true) == Some(0)).count();
        assert_eq!(ones, 1000);
    }

    #[test]
    fn ineligible_members_are_skipped_and_none_left_is_none() {
        let mut s = Swrr::default();
        assert!((0..10).all(|_| s.pick(&[1, 3], |i| i == 0) == Some(0)));
        assert_eq!(s.pick(&[1, 3], |_| false), None);
    }
}
