//! The queue manager driven by a manual clock: ready, wait, expire and bounce decisions.
use super::*;
use crate::clock::{Clock, ManualClock};
use ringpost_spool::MsgRef;

const T0: u64 = 1_800_000_000_000;

fn policy() -> RetryPolicy {
    RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(3600) }
}

fn message(received_ms: u64, rcpts: usize) -> Arc<SpooledMessage> {
    Arc::new(SpooledMessage {
        id: MsgRef { core: 0, segment: 1, offset: 64 },
        sender: "s@a.test".into(),
        recipients: (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
        trace: crate::message::Trace::Owned(Vec::new()),
        body: Vec::new(),
        received_ms,
        flags: 0,
    })
}

fn delivery(msg: &Arc<SpooledMessage>, rcpts: &[u32], attempts: u32) -> Delivery {
    Delivery { msg: msg.clone(), rcpts: rcpts.to_vec(), attempts, last_response: None }
}

fn ok() -> RcptResult {
    RcptResult::Delivered(Reply::new(250, (2, 0, 0), "ok"))
}
fn temp() -> RcptResult {
    RcptResult::Transient(Reply::new(451, (4, 3, 0), "later"))
}
fn perm() -> RcptResult {
    RcptResult::Permanent(Reply::new(550, (5, 1, 1), "no such user"))
}

#[test]
fn enqueue_opens_up_to_the_limit_then_wakes_idle_connections() {
    let mut q = QueueManager::new(policy(), 2);
    let m = message(T0, 1);
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), true), Dispatch::Open));
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), true), Dispatch::Open));
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), true), Dispatch::Nothing), "limit of 2 reached");
    q.set_idle("b.test", 1);
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), true), Dispatch::WakeIdle(_)));
    assert_eq!(q.depth("b.test"), (4, 2));
}

#[test]
fn nothing_opens_while_shutting_down() {
    let mut q = QueueManager::new(policy(), 4);
    let m = message(T0, 1);
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), false), Dispatch::Nothing));
    assert_eq!(q.depth("b.test"), (1, 0));
}

#[test]
fn a_closed_connection_reopens_only_when_work_is_left() {
    let mut q = QueueManager::new(policy(), 1);
    let m = message(T0, 1);
    assert!(matches!(q.enqueue("b.test", delivery(&m, &[0], 0), true), Dispatch::Open));
    assert!(matches!(q.connection_closed("b.test", true), Dispatch::Open), "work still ready");
    assert!(q.pop("b.test").is_some());
    assert!(matches!(q.connection_closed("b.test", true), Dispatch::Nothing));
    assert_eq!(q.depth("b.test"), (0, 0));
}

#[test]
fn mixed_results_give_finals_and_one_deferral_due_after_the_backoff() {
    let clock = ManualClock::at(T0);
    let mut q = QueueManager::new(policy(), 1);
    let m = message(T0, 3);
    let s = q.settle(clock.now_ms(), "b.test", delivery(&m, &[0, 1, 2], 0), vec![ok(), perm(), temp()]);
    let finals: Vec<(u32, Outcome)> = s.finals.iter().map(|f| (f.rcpt, f.outcome)).collect();
    assert_eq!(finals, [(0, Outcome::Delivered), (1, Outcome::Bounced)]);
    let d = s.deferred.expect("one recipient waits");
    assert_eq!((d.rcpts.as_slice(), d.attempts, d.next_attempt_ms), (&[2u32][..], 1, T0 + 300_000));
    assert_eq!(q.next_due_ms(), Some(T0 + 300_000));
    clock.advance(Duration::from_secs(299));
    assert!(q.release_due(clock.now_ms(), true).is_empty(), "not due yet");
    clock.advance(Duration::from_secs(1));
    let dispatched = q.release_due(clock.now_ms(), true);
    assert_eq!(dispatched.len(), 1);
    assert!(matches!(dispatched[0], (ref d, Dispatch::Open) if d == "b.test"));
    let again = q.pop("b.test").expect("ready again");
    assert_eq!((again.rcpts.as_slice(), again.attempts), (&[2u32][..], 1));
}

#[test]
fn transient_failures_back_off_until_the_lifetime_then_expire() {
    let clock = ManualClock::at(T0);
    let mut q = QueueManager::new(policy(), 1);
    let m = message(T0, 1);
    let mut d = delivery(&m, &[0], 0);
    let mut waits = Vec::new();
    loop {
        let s = q.settle(clock.now_ms(), "b.test", d, vec![temp()]);
        if let Some(f) = s.finals.first() {
            assert_eq!((f.rcpt, f.outcome, f.reply.code), (0, Outcome::Expired, 451));
            assert!(s.deferred.is_none());
            break;
        }
        let due = q.next_due_ms().unwrap();
        waits.push((due - clock.now_ms()) / 1000);
        clock.advance(Duration::from_millis(due - clock.now_ms()));
        q.release_due(clock.now_ms(), true);
        d = q.pop("b.test").unwrap();
    }
    // 300 + 600 + 1200 = 2100 s, then the last wait is cut to the lifetime (3600 s).
    assert_eq!(waits, [300, 600, 1200, 1500]);
    assert_eq!(clock.now_ms(), T0 + 3_600_000);
    assert_eq!(q.scheduled_len(), 0);
}

#[test]
fn permanent_failures_are_final_at_once_whatever_the_age() {
    let mut q = QueueManager::new(policy(), 1);
    let m = message(T0, 2);
    let s = q.settle(T0 + 10, "b.test", delivery(&m, &[0, 1], 4), vec![perm(), ok()]);
    assert_eq!(s.attempts, 5);
    assert_eq!(s.finals.len(), 2);
    assert!(s.deferred.is_none());
    assert_eq!(q.scheduled_len(), 0);
}

#[test]
#[should_panic(expected = "one result per recipient")]
fn a_missing_result_is_a_bug_not_a_silent_drop() {
    let mut q = QueueManager::new(policy(), 1);
    let m = message(T0, 2);
    q.settle(T0, "b.test", delivery(&m, &[0, 1], 0), vec![ok()]);
}
