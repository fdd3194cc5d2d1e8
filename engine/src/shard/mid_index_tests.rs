use super::*;
use std::collections::BTreeSet;

fn id(segment: u32, offset: u64) -> MsgRef {
    MsgRef { core: 0, segment, offset }
}

/// A key whose top 32 bits are `hash` (the part the index keeps) and low bits `low`.
fn key(hash: u32, low: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(low)
}

#[test]
fn one_id_carried_by_several_messages_gives_each_newest_first_until_removed() {
    let mut ix = MidIndex::default();
    let k = key(7, 1);
    for m in [id(1, 64), id(1, 900), id(3, 64)] {
        ix.insert(k, m);
    }
    ix.insert(key(8, 1), id(2, 64));
    assert_eq!(ix.candidates(k), [id(3, 64), id(1, 900), id(1, 64)], "segment 1 is sealed, 3 is the newest");
    assert_eq!(ix.candidates(key(8, 5)), [id(2, 64)], "only 32 bits are kept: the caller checks the real id");
    assert!(ix.candidates(key(9, 1)).is_empty());
    ix.remove(key(8, 1), id(1, 900));
    assert_eq!(ix.candidates(k).len(), 3, "a removal under another key takes nothing");
    ix.remove(k, id(1, 900));
    assert_eq!(ix.candidates(k), [id(3, 64), id(1, 64)]);
    ix.insert(k, id(1, 900));
    assert_eq!(ix.candidates(k), [id(3, 64), id(1, 900), id(1, 64)], "a straggler revives its dead place");
    for m in [id(3, 64), id(1, 900), id(1, 64)] {
        ix.remove(k, m);
    }
    ix.remove(key(8, 1), id(2, 64));
    assert_eq!(ix.live_entries(), 0);
    assert!(ix.segments.is_empty(), "an emptied segment goes");
}

#[test]
fn offsets_past_31_bits_are_indexed_whole() {
    let mut ix = MidIndex::default();
    let (wide, narrow) = (id(1, 1 << 31), id(1, (1 << 31) - 1));
    ix.insert(key(1, 0), wide);
    ix.insert(key(1, 0), narrow);
    ix.insert(key(1, 0), id(2, 1 << 40));
    assert_eq!(ix.candidates(key(1, 0)), [id(2, 1 << 40), wide, narrow]);
    assert_eq!(ix.candidates(key(1, 1)), [narrow], "a wide entry keeps its whole key, a narrow one its top 32 bits");
    ix.remove(key(1, 0), wide);
    ix.remove(key(1, 0), id(2, 1 << 40));
    assert_eq!((ix.candidates(key(1, 0)), ix.wide.len()), (vec![narrow], 0));
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn agrees_with_a_model_through_seals_stragglers_removals_and_compactions() {
    // Messages arrive in segment order, a little out of order within a round, some late into
    // sealed segments; a few hash values only, so keys collide on their 32 bits and share ids;
    // removals in any order. After every step the index answers as a plain set does.
    for seed in 1..=20u64 {
        let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
        let mut ix = MidIndex::default();
        let mut model: BTreeSet<(u64, MsgRef)> = BTreeSet::new();
        let mut pending: Vec<(u64, MsgRef)> = Vec::new();
        let mut offset = 64u64;
        let mut segment = 1u32;
        for step in 0..3000 {
            match rng.below(10) {
                0..=5 => {
                    if rng.below(40) == 0 {
                        segment += 1;
                        offset = 64;
                    }
                    let k = key(rng.below(16) as u32, rng.below(4) as u32);
                    // Now and then a message far ahead (a DSN spooled in the active segment
                    // while recovery goes on with lower ones), or past 31 bits of offset.
                    let m = match rng.below(200) {
                        0 => id(segment + 1000, 64 + rng.below(1 << 20)),
                        1 => id(segment, (1 << 31) + rng.below(1 << 20)),
                        _ => id(segment, offset),
                    };
                    pending.push((k, m));
                    offset += 1 + rng.below(3000);
                    // A round's admissions in any order; now and then one held back long.
                    while pending.len() > rng.below(4) as usize {
                        let i = rng.below(pending.len() as u64) as usize;
                        if rng.below(50) == 0 && pending.len() < 20 {
                            break;
                        }
                        let (k, m) = pending.swap_remove(i);
                        ix.insert(k, m);
                        model.insert((k, m));
                    }
                }
                _ if !model.is_empty() => {
                    let n = rng.below(model.len() as u64) as usize;
                    let (k, m) = *model.iter().nth(n).expect("in range");
                    ix.remove(k, m);
                    model.remove(&(k, m));
                    // A removal under a wrong key changes nothing.
                    ix.remove(k ^ (1 << 40), m);
                }
                _ => {}
            }
            assert_eq!(ix.live_entries(), model.len(), "seed {seed} step {step}");
            assert_eq!(ix.unsealed_behind(), 0, "seed {seed} step {step}: a complete segment left unsorted");
            for h in 0..16u32 {
                // A narrow entry answers its hash's top 32 bits, a wide one its whole key.
                let hit = |k: u64, m: &MsgRef| if narrow(m.offset).is_some() { top(k) == h } else { k == key(h, 0) };
                let mut want: Vec<MsgRef> = model.iter().filter(|(k, m)| hit(*k, m)).map(|(_, m)| *m).collect();
                want.sort_unstable_by(|a, b| b.cmp(a));
                assert_eq!(ix.candidates(key(h, 0)), want, "seed {seed} step {step} hash {h}");
            }
        }
    }
}
