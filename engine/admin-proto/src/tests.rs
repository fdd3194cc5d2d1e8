use super::frame::raw_frame;
use super::*;

fn requests() -> Vec<Request> {
    vec![
        Request::Status,
        Request::Queue { limit: 20, sort: QueueSort::Oldest },
        Request::Msg { id: "0100000100000000C0".into() },
        Request::Suspend { target: Target::Domain("a.test".into()), for_s: Some(1800) },
        Request::Suspend { target: Target::All, for_s: None },
        Request::Resume { target: Target::All },
        Request::Bounce { target: BounceTarget::Msg("X".into()), reason: Some("spam run".into()) },
        Request::Retry { target: Target::Domain("b.test".into()) },
        Request::Drain { on: true },
        Request::Reload,
        Request::Suppress(SuppressOp::Add { addr: "a@b.test".into(), reason: Some("asked".into()) }),
        Request::Suppress(SuppressOp::Remove { addr: "a@b.test".into() }),
        Request::Suppress(SuppressOp::List { limit: 10 }),
        Request::Suppress(SuppressOp::Check { addr: "a@b.test".into() }),
        Request::Trace { client: Some("192.0.2.1".into()), dest: None },
        Request::Top { interval_ms: 1000, dests: 10 },
    ]
}

#[test]
fn every_request_round_trips() {
    for r in requests() {
        let bytes = encode(7, &r).unwrap();
        let (id, back, used) = decode::<Request>(&bytes).unwrap().expect("a whole frame");
        assert_eq!((id, &back, used), (7, &r, bytes.len()));
    }
}

#[test]
fn replies_round_trip() {
    let r = Reply::Queue(QueueReport {
        total_destinations: 1,
        destinations: vec![DestStatus {
            domain: "a.test".into(),
            core: 1,
            ready: 3,
            waiting: 2,
            in_flight: 1,
            connections: 1,
            oldest_age_s: Some(9),
            suspended: true,
            last_response: Some("451 4.2.0 busy".into()),
            site: Some("mx1.a.test,mx2.a.test".into()),
            shaping: vec!["ip2|mx1.a.test suspended until ...".into()],
        }],
    });
    let bytes = encode(u32::MAX, &r).unwrap();
    assert_eq!(decode::<Reply>(&bytes).unwrap().unwrap().1, r);
}

#[test]
fn a_partial_frame_asks_for_more() {
    let bytes = encode(1, &Request::Status).unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(decode::<Request>(&bytes[..cut]).unwrap(), None, "cut at {cut}");
    }
}

#[test]
fn two_frames_in_one_buffer_come_out_one_at_a_time() {
    let mut buf = encode(1, &Request::Status).unwrap();
    buf.extend(encode(2, &Request::Reload).unwrap());
    let (id, r, used) = decode::<Request>(&buf).unwrap().unwrap();
    assert_eq!((id, r), (1, Request::Status));
    let (id, r, _) = decode::<Request>(&buf[used..]).unwrap().unwrap();
    assert_eq!((id, r), (2, Request::Reload));
}

#[test]
fn oversized_is_refused_from_the_length_alone() {
    let len = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    let e = decode::<Request>(&len).unwrap_err();
    assert_eq!(e, FrameError::Oversized { len: MAX_FRAME_BYTES + 1, max: MAX_FRAME_BYTES });
    assert_eq!((e.id(), ErrorKind::from(&e)), (0, ErrorKind::Oversized));
    let at_limit = (MAX_FRAME_BYTES as u32).to_be_bytes();
    assert_eq!(decode::<Request>(&at_limit).unwrap(), None, "a frame at the limit is awaited");
}

#[test]
fn too_short_unknown_version_and_garbage_are_errors_with_the_right_id() {
    assert_eq!(decode::<Request>(&[0, 0, 0, 4, 1, 0, 0, 0]).unwrap_err(), FrameError::TooShort { len: 4 });
    let v2 = raw_frame(2, 42, &[0]);
    assert_eq!(decode::<Request>(&v2).unwrap_err(), FrameError::UnknownVersion { version: 2, id: 42 });
    let garbage = raw_frame(PROTOCOL_VERSION, 9, &[200]);
    let e = decode::<Request>(&garbage).unwrap_err();
    assert!(matches!(e, FrameError::Malformed { id: 9, .. }), "{e:?}");
    let empty = raw_frame(PROTOCOL_VERSION, 3, &[]);
    assert!(matches!(decode::<Request>(&empty).unwrap_err(), FrameError::Malformed { id: 3, .. }));
}

#[test]
fn trailing_bytes_inside_a_frame_are_malformed() {
    let mut payload = postcard::to_allocvec(&Request::Status).unwrap();
    payload.push(0);
    let e = decode::<Request>(&raw_frame(PROTOCOL_VERSION, 5, &payload)).unwrap_err();
    assert_eq!(e, FrameError::Malformed { id: 5, why: "1 bytes after the payload".into() });
}

#[test]
fn an_encoded_reply_over_the_limit_is_refused() {
    let big = Reply::Done(Done { summary: "x".repeat(MAX_FRAME_BYTES), count: 0 });
    assert!(matches!(encode(1, &big), Err(FrameError::Oversized { .. })));
}

#[test]
fn streaming_replies_round_trip() {
    let ev = TraceEvent {
        unix_ms: 1,
        core: 1,
        side: TraceSide::Out,
        conn: 7,
        peer: "mx[192.0.2.1]:25".into(),
        domain: Some("b.test".into()),
        kind: TraceKind::Command,
        text: "MAIL FROM:<a@b>".into(),
    };
    let status = Status { version: "0".into(), uptime_s: 1, draining: false, cores: Vec::new() };
    for r in [
        Reply::Trace(TraceBatch { events: vec![ev], dropped_total: 3 }),
        Reply::Top(TopFrame { unix_ms: 5, status, queue: QueueReport { total_destinations: 0, destinations: Vec::new() } }),
    ] {
        let bytes = encode(9, &r).unwrap();
        assert_eq!(decode::<Reply>(&bytes).unwrap().map(|(i, b, _)| (i, b)), Some((9, r)));
    }
}

#[test]
fn new_requests_keep_their_wire_bytes() {
    // docs/admin-protocol.md lists these bytes: a reordered enum is a protocol change.
    assert_eq!(&encode(0, &Request::Trace { client: None, dest: None }).unwrap()[9..], [0x0a, 0, 0]);
    assert_eq!(&encode(0, &Request::Top { interval_ms: 1000, dests: 10 }).unwrap()[9..], [0x0b, 0xe8, 0x07, 0x0a]);
    assert_eq!(&encode(0, &Request::Suppress(SuppressOp::Check { addr: "a@b".into() })).unwrap()[9..], [0x09, 0x03, 0x03, b'a', b'@', b'b']);
}
