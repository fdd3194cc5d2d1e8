use super::*;
use std::sync::Arc;

fn message(offset: u64, rcpts: usize) -> Arc<SpooledMessage> {
    Arc::new(SpooledMessage {
        id: MsgRef { core: 0, segment: 1, offset },
        sender: "s@a.test".into(),
        recipients: (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
        trace: crate::message::Trace::Owned(Vec::new()),
        body: Vec::new(),
        received_ms: 5,
        flags: 0,
    })
}

fn delivered(rcpt: u32) -> FinalNote {
    FinalNote { rcpt, state: RcptState::Delivered, attempts: 2, response: "250 2.0.0 ok".into(), category: None }
}

#[test]
fn the_message_id_is_found_in_the_header_block_only() {
    let h = b"From: a@b\r\nMessage-Id: <abc.123@host.test>\r\nSubject: x\r\n\r\nMessage-ID: <not@body>\r\n";
    assert_eq!(find_message_id(h).as_deref(), Some("abc.123@host.test"));
    let folded = b"MESSAGE-ID:\r\n <folded@host.test>\r\n\r\n";
    assert_eq!(find_message_id(folded).as_deref(), Some("folded@host.test"));
    assert_eq!(find_message_id(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n"), None);
    assert_eq!(find_message_id(b"X-Message-ID: <no@x>\r\n\r\n"), None);
    assert_eq!(strip(" <a@b> "), "a@b");
}

#[test]
fn finished_messages_are_kept_for_the_window_then_evicted_by_time() {
    let mut h = History::new(1000, 10);
    let m = message(64, 2);
    h.admit(&m);
    h.by_mid.insert("mid@x".into(), m.id); // as admit does for a body with a Message-ID
    h.live.get_mut(&m.id).unwrap().message_id = Some("mid@x".into());
    h.record(m.id, delivered(0));
    h.record(m.id, FinalNote { response: "5".repeat(500).into(), state: RcptState::Bounced, category: Some("bad-mailbox"), ..delivered(1) });
    assert_eq!(h.live(m.id).unwrap().1.len(), 2);
    h.finish(&m, 100);
    assert!(h.live(m.id).is_none());
    let d = h.done(m.id).expect("kept after finishing");
    assert_eq!(d.finals.len(), 2);
    assert_eq!(d.finals[1].response.len(), RESPONSE_MAX, "responses are cut");
    assert_eq!(h.find("<mid@x>"), Some(m.id));
    h.evict(1099);
    assert!(h.done(m.id).is_some(), "still inside the window");
    h.evict(1100);
    assert!(h.done(m.id).is_none(), "evicted once the window passed");
    assert_eq!(h.find("mid@x"), None, "its Message-ID goes with it");
}

#[test]
fn the_count_bound_evicts_the_oldest_first() {
    let mut h = History::new(3_600_000, 3);
    for i in 0..5u64 {
        let m = message(64 + i, 1);
        h.admit(&m);
        h.finish(&m, i);
    }
    assert_eq!(h.done_len(), 3);
    assert!(h.done(MsgRef { core: 0, segment: 1, offset: 64 }).is_none());
    assert!(h.done(MsgRef { core: 0, segment: 1, offset: 65 }).is_none());
    assert!(h.done(MsgRef { core: 0, segment: 1, offset: 68 }).is_some());
}
