//! Shard ownership: which core owns a destination, and the grouping of a message's recipients
//! by destination (done once, at acceptance) and by the core that owns each destination.
use std::collections::BTreeMap;

/// The core that owns destination `domain`: a stable FNV-1a hash modulo the core count, so
/// every core agrees without asking anyone.
pub fn owner_core(domain: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores as u64) as usize
}

/// The domain of an address, lower-cased (the part after the last `@`).
pub fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("").to_ascii_lowercase()
}

/// A message's recipients grouped by destination domain and then by owner core: what each core
/// is sent. Destinations come out in a stable (sorted) order.
pub fn group_by_owner<'a>(recipients: impl Iterator<Item = (u32, &'a str)>, cores: usize) -> BTreeMap<usize, Vec<(String, Vec<u32>)>> {
    let mut by_domain: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (i, addr) in recipients {
        by_domain.entry(domain_of(addr)).or_default().push(i);
    }
    let mut out: BTreeMap<usize, Vec<(String, Vec<u32>)>> = BTreeMap::new();
    for (domain, rcpts) in by_domain {
        out.entry(owner_core(&domain, cores)).or_default().push((domain, rcpts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_case_insensitive() {
        assert_eq!(owner_core("Example.ORG", 4), owner_core("example.org", 4));
        let spread: std::collections::HashSet<usize> = (0..64).map(|i| owner_core(&format!("d{i}.test"), 4)).collect();
        assert_eq!(spread.len(), 4, "domains spread over every core");
        assert_eq!(domain_of("x@Y.Test"), "y.test");
    }

    #[test]
    fn recipients_are_grouped_once_by_domain_then_owner() {
        let rcpts = ["a@X.test", "b@y.test", "c@x.test"];
        let groups = group_by_owner(rcpts.iter().enumerate().map(|(i, r)| (i as u32, *r)), 2);
        let flat: Vec<(usize, String, Vec<u32>)> = groups.into_iter().flat_map(|(c, g)| g.into_iter().map(move |(d, r)| (c, d, r))).collect();
        assert_eq!(flat.len(), 2, "two destinations: {flat:?}");
        let x = flat.iter().find(|(_, d, _)| d == "x.test").unwrap();
        assert_eq!((x.0, &x.2), (owner_core("x.test", 2), &vec![0, 2]));
    }
}
