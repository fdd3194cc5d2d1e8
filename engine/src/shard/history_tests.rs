use super::*;
use ringpost_spool::{Extent, SegmentMap};
use std::io::Write;
use std::sync::Arc;

fn message(offset: u64, rcpts: usize) -> Arc<SpooledMessage> {
    Arc::new(SpooledMessage::owned(
        MsgRef { core: 0, segment: 1, offset },
        "s@a.test".into(),
        (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
        Vec::new(),
        Vec::new(),
        5,
        0,
    ))
}

/// A message whose body (in a mapped file, as in the spool) is `body`.
fn with_body(offset: u64, rcpts: usize, body: &str) -> Arc<SpooledMessage> {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(body.as_bytes()).unwrap();
    let map = Arc::new(SegmentMap::map(9, "body".into(), &f).unwrap());
    let pieces = vec![(map, Extent { segment: 9, offset: 0, len: body.len() as u32 })];
    let rcpts = (0..rcpts).map(|i| format!("r{i}@b.test")).collect();
    Arc::new(SpooledMessage::owned(MsgRef { core: 0, segment: 1, offset }, "s@a.test".into(), rcpts, Vec::new(), pieces, 5, 0))
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
    let m = with_body(64, 2, "Subject: s\r\nMessage-ID: <mid@x>\r\n\r\nhello\r\n");
    h.admit(&m);
    h.record(m.id, delivered(0));
    h.record(m.id, FinalNote { response: "5".repeat(500).into(), state: RcptState::Bounced, category: Some("bad-mailbox"), ..delivered(1) });
    assert_eq!(h.finals(m.id).len(), 2);
    h.finish(&m, 100);
    assert!(h.finals(m.id).is_empty());
    let d = h.done(m.id).expect("kept after finishing");
    assert_eq!(d.finals.len(), 2);
    assert_eq!(d.finals[1].response.len(), RESPONSE_MAX, "responses are cut");
    assert_eq!(d.message_id.as_deref(), Some("mid@x"), "read from the body at the finish");
    assert_eq!(h.find("<mid@x>", |_| None), Some(m.id));
    h.evict(1099);
    assert!(h.done(m.id).is_some(), "still inside the window");
    h.evict(1100);
    assert!(h.done(m.id).is_none(), "evicted once the window passed");
    assert_eq!(h.find("mid@x", |_| None), None, "its Message-ID goes with it");
    assert!(h.by_mid.candidates(mid_key("mid@x")).is_empty(), "its index entry too");
}

#[test]
fn two_messages_with_one_id_the_newest_is_found_and_the_older_after_it_goes() {
    // A platform sends again with the same Message-ID: each message keeps its own entry.
    let mut h = History::new(1000, 10);
    let (old, new) = (with_body(64, 1, "Message-ID: <again@x>\r\n\r\n"), with_body(900, 1, "Message-ID: <again@x>\r\n\r\n"));
    h.admit(&old);
    h.admit(&new);
    let live = |id: MsgRef| [&old, &new].into_iter().find(|m| m.id == id).and_then(|m| message_id(m));
    assert_eq!(h.find("again@x", live), Some(new.id), "the newest first");
    h.finish(&new, 100);
    assert_eq!(h.find("again@x", |_| None), Some(new.id), "finished, it is still the newest");
    h.evict(1100);
    assert_eq!(h.find("again@x", live), Some(old.id), "once the newer one is evicted, the older live one");
    h.finish(&old, 2000);
    h.evict(3000);
    assert!(h.by_mid.candidates(mid_key("again@x")).is_empty());
}

#[test]
fn a_live_message_is_found_by_its_id_and_a_hash_hit_is_checked() {
    let mut h = History::new(1000, 10);
    let m = with_body(64, 1, "Message-ID: <live@x>\r\n\r\n");
    h.admit(&m);
    assert!(h.live.is_empty(), "a queued message without outcomes keeps no note");
    let real = |id: MsgRef| (id == m.id).then(|| message_id(&m)).flatten();
    assert_eq!(h.find("<live@x>", real), Some(m.id));
    // The index keeps a hash only: a hit whose message reads another id is not believed.
    assert_eq!(h.find("live@x", |_| Some("other@x".to_string())), None);
    assert_eq!(h.find("nope@x", |_| Some("nope@x".to_string())), None);
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
