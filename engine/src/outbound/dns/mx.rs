//! What an MX answer means for delivery (RFC 5321 5.1, RFC 7505), as pure functions.
use super::wire::Rec;
use rand::seq::SliceRandom;
use rand::Rng;

/// The delivery plan for a domain's MX answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Exchanges to try, in order (preference ascending, equal preferences shuffled).
    Exchanges(Vec<String>),
    /// The domain publishes a null MX (`0 .`): it accepts no mail.
    NullMx,
}

/// Order MX records: sort by preference, shuffle within each preference, detect null MX.
/// A null MX mixed with real exchanges is a misconfiguration; the real ones are used.
pub fn plan(records: &[Rec], rng: &mut impl Rng) -> MxPlan {
    let mut mx: Vec<(u16, String)> = records
        .iter()
        .filter_map(|r| match r {
            Rec::Mx(p, h) => Some((*p, h.clone())),
            Rec::Addr(_) => None,
        })
        .collect();
    let real: Vec<(u16, String)> = mx.iter().filter(|(_, h)| !h.is_empty()).cloned().collect();
    if real.is_empty() && !mx.is_empty() {
        return MxPlan::NullMx;
    }
    mx = real;
    mx.shuffle(rng);
    mx.sort_by_key(|(p, _)| *p); // stable: keeps the shuffle within equal preferences
    let mut seen = std::collections::HashSet::new();
    MxPlan::Exchanges(mx.into_iter().map(|(_, h)| h).filter(|h| seen.insert(h.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn mx(p: u16, h: &str) -> Rec {
        Rec::Mx(p, h.into())
    }

    #[test]
    fn orders_by_preference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let p = plan(&[mx(20, "b"), mx(5, "a"), mx(30, "c")], &mut rng);
        assert_eq!(p, MxPlan::Exchanges(vec!["a".into(), "b".into(), "c".into()]));
    }

    #[test]
    fn shuffles_equal_preferences_and_keeps_the_order_between_them() {
        let mut firsts = std::collections::HashMap::new();
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let MxPlan::Exchanges(order) = plan(&[mx(10, "a"), mx(10, "b"), mx(10, "c"), mx(50, "z")], &mut rng) else { panic!() };
            assert_eq!(order.last().unwrap(), "z");
            *firsts.entry(order[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3, "every equal-preference exchange comes first sometimes: {firsts:?}");
        assert!(firsts.values().all(|n| *n > 40), "{firsts:?}");
    }

    #[test]
    fn null_mx_is_recognised() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(plan(&[mx(0, "")], &mut rng), MxPlan::NullMx);
        assert_eq!(plan(&[mx(0, ""), mx(10, "real")], &mut rng), MxPlan::Exchanges(vec!["real".into()]));
    }
}
