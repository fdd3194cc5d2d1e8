//! DNS messages in and out, sans I/O: build a query, classify a response.
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::IpAddr;

/// Record types we ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qtype {
    /// Mail exchangers.
    Mx,
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
}

impl Qtype {
    fn record_type(self) -> RecordType {
        match self {
            Qtype::Mx => RecordType::MX,
            Qtype::A => RecordType::A,
            Qtype::Aaaa => RecordType::AAAA,
        }
    }
}

/// One answer record we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// Preference and exchange (lower-case, no trailing dot; empty for the root: null MX).
    Mx(u16, String),
    /// An address.
    Addr(IpAddr),
}

/// What a response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records, with the smallest TTL among them.
    Records(Vec<Rec>, u32),
    /// The name does not exist; negative TTL from the SOA (RFC 2308).
    NxDomain(u32),
    /// The name exists but has no records of the type; negative TTL.
    NoData(u32),
    /// SERVFAIL, REFUSED and other errors: try again later.
    ServFail(String),
    /// The UDP answer was truncated: ask again over TCP.
    Truncated,
}

/// Why bytes could not be used as an answer to our question.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a DNS message.
    #[error("undecodable DNS message: {0}")]
    Decode(String),
    /// An answer to another question (spoofing or a stale reply).
    #[error("response does not match the query")]
    Mismatch,
    /// The name is not a valid domain name.
    #[error("invalid domain name {0:?}")]
    BadName(String),
}

/// Encode a recursive query for `name`/`qtype` with transaction `id`.
pub fn build_query(id: u16, name: &str, qtype: Qtype) -> Result<Vec<u8>, WireError> {
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    let n = Name::from_ascii(&fqdn).map_err(|_| WireError::BadName(name.into()))?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n, qtype.record_type()));
    m.to_vec().map_err(|e| WireError::Decode(e.to_string()))
}

fn name_text(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Classify a response to query `id` for `name`/`qtype`. `negative_ttl_max` caps negative TTLs.
pub fn parse_answer(bytes: &[u8], id: u16, name: &str, qtype: Qtype, negative_ttl_max: u32) -> Result<Answer, WireError> {
    let m = Message::from_vec(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    let asked = name.trim_end_matches('.').to_ascii_lowercase();
    let q_ok = m.queries.first().is_some_and(|q| q.query_type == qtype.record_type() && name_text(&q.name) == asked);
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response || !q_ok {
        return Err(WireError::Mismatch);
    }
    if m.metadata.truncation {
        return Ok(Answer::Truncated);
    }
    let neg_ttl = || {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(300)
            .min(negative_ttl_max)
    };
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::NxDomain(neg_ttl())),
        other => return Ok(Answer::ServFail(format!("{other:?}"))),
    }
    let mut recs = Vec::new();
    let mut ttl = u32::MAX;
    for r in &m.answers {
        let rec = match (qtype, &r.data) {
            (Qtype::Mx, RData::MX(mx)) => Rec::Mx(mx.preference, name_text(&mx.exchange)),
            (Qtype::A, RData::A(a)) => Rec::Addr(IpAddr::V4(a.0)),
            (Qtype::Aaaa, RData::AAAA(a)) => Rec::Addr(IpAddr::V6(a.0)),
            _ => continue, // CNAME chains are followed by the recursive server; skip the rest
        };
        ttl = ttl.min(r.ttl);
        recs.push(rec);
    }
    if recs.is_empty() {
        return Ok(Answer::NoData(neg_ttl()));
    }
    Ok(Answer::Records(recs, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, MX, SOA};
    use hickory_proto::rr::Record;

    fn response(id: u16, name: &str, qtype: Qtype, rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(Name::from_ascii(format!("{name}.")).unwrap(), qtype.record_type()));
        m.answers = answers;
        m.authorities = authorities;
        m.to_vec().unwrap()
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.test.").unwrap();
        Record::from_rdata(n.clone(), ttl, RData::SOA(SOA::new(n.clone(), n, 1, 60, 60, 60, minimum)))
    }

    #[test]
    fn query_round_trips_through_the_codec() {
        let q = build_query(7, "Example.Test", Qtype::Mx).unwrap();
        let m = Message::from_vec(&q).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert!(m.metadata.recursion_desired);
        assert_eq!(name_text(&m.queries[0].name), "example.test");
        assert!(build_query(1, "bad..name", Qtype::A).is_err());
    }

    #[test]
    fn classifies_records_nxdomain_nodata_servfail_and_truncation() {
        let n = Name::from_ascii("example.test.").unwrap();
        let mx = Record::from_rdata(n.clone(), 600, RData::MX(MX::new(10, Name::from_ascii("mx1.example.test.").unwrap())));
        let a = Record::from_rdata(n.clone(), 30, RData::A(A::new(127, 0, 0, 2)));
        let r = response(1, "example.test", Qtype::Mx, ResponseCode::NoError, vec![mx], vec![]);
        assert_eq!(parse_answer(&r, 1, "example.test", Qtype::Mx, 3600), Ok(Answer::Records(vec![Rec::Mx(10, "mx1.example.test".into())], 600)));
        let r = response(2, "example.test", Qtype::A, ResponseCode::NoError, vec![a], vec![]);
        assert_eq!(parse_answer(&r, 2, "example.test", Qtype::A, 3600), Ok(Answer::Records(vec![Rec::Addr("127.0.0.2".parse().unwrap())], 30)));
        let r = response(3, "example.test", Qtype::Mx, ResponseCode::NXDomain, vec![], vec![soa(900, 120)]);
        assert_eq!(parse_answer(&r, 3, "example.test", Qtype::Mx, 3600), Ok(Answer::NxDomain(120)));
        let r = response(4, "example.test", Qtype::Mx, ResponseCode::NoError, vec![], vec![soa(60, 120)]);
        assert_eq!(parse_answer(&r, 4, "example.test", Qtype::Mx, 3600), Ok(Answer::NoData(60)), "negative TTL is min(SOA TTL, minimum)");
        let r = response(5, "example.test", Qtype::Mx, ResponseCode::ServFail, vec![], vec![]);
        assert!(matches!(parse_answer(&r, 5, "example.test", Qtype::Mx, 3600), Ok(Answer::ServFail(_))));
        assert_eq!(parse_answer(&r, 6, "example.test", Qtype::Mx, 3600), Err(WireError::Mismatch), "wrong id");
        assert_eq!(parse_answer(&r, 5, "other.test", Qtype::Mx, 3600), Err(WireError::Mismatch), "wrong name");
        let mut m = Message::from_vec(&r).unwrap();
        m.metadata.truncation = true;
        m.metadata.response_code = ResponseCode::NoError;
        assert_eq!(parse_answer(&m.to_vec().unwrap(), 5, "example.test", Qtype::Mx, 3600), Ok(Answer::Truncated));
        assert!(parse_answer(b"junk", 1, "x", Qtype::A, 1).is_err());
    }
}
