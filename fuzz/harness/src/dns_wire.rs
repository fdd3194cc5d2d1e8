//! The DNS response classifier (`dns::wire::parse_answer`).
//!
//! The input is a DNS message. It is classified against a fixed question and, so the fuzzer
//! gets past the question check, against the question the message itself carries.
//! Invariants: no panic; an answer to another transaction id or question is a `Mismatch`;
//! `Records` is never empty and its TTL is the smallest record TTL; negative TTLs are capped
//! by `negative_ttl_max`; MX names are lower-case without a trailing dot.
use crate::dns::{parse_answer, Answer, Qtype, Rec, WireError};
use hickory_proto::op::Message;

const NEG_MAX: u32 = 600;

/// Harness entry point.
pub fn run(data: &[u8]) {
    let id = if data.len() >= 2 { u16::from_be_bytes([data[0], data[1]]) } else { 0 };
    let own = Message::from_vec(data).ok().and_then(|m| m.queries.first().map(|q| q.name.to_ascii()));
    for name in ["example.org", own.as_deref().unwrap_or("example.org")] {
        for qtype in [Qtype::Mx, Qtype::A, Qtype::Aaaa] {
            let r = parse_answer(data, id, name, qtype, NEG_MAX);
            check(&r, qtype);
            let other = parse_answer(data, id.wrapping_add(1), name, qtype, NEG_MAX);
            assert!(matches!(other, Err(WireError::Mismatch | WireError::Decode(_))), "another id was answered: {other:?}");
        }
    }
}

fn check(r: &Result<Answer, WireError>, qtype: Qtype) {
    match r {
        Ok(Answer::Records(recs, _)) => {
            assert!(!recs.is_empty(), "empty Records");
            for rec in recs {
                match (qtype, rec) {
                    (Qtype::Mx, Rec::Mx(_, name)) => {
                        assert!(!name.ends_with('.') && *name == name.to_ascii_lowercase(), "MX name {name:?}")
                    }
                    (Qtype::A, Rec::Addr(a)) => assert!(a.is_ipv4()),
                    (Qtype::Aaaa, Rec::Addr(a)) => assert!(a.is_ipv6()),
                    other => panic!("record of the wrong type: {other:?}"),
                }
            }
        }
        Ok(Answer::NxDomain(ttl) | Answer::NoData(ttl)) => assert!(*ttl <= NEG_MAX, "negative TTL {ttl}"),
        _ => {}
    }
}
