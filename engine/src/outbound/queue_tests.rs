//! The queue manager driven by a manual clock: sites, paths and their limits, ready, wait,
//! expire and bounce decisions.
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use ringpost_spool::MsgRef;

const T0: u64 = 1_800_000_000_000;
/// The idle timeout the queue tests give their idle connections (the shipped default, 30 s).
const IDLE_MS: u64 = 30_000;

fn policy() -> RetryPolicy {
    RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(3600) }
}

fn shaping(extra: &str) -> Arc<Shaping> {
    Arc::new(Shaping::new(&Config::parse(&format!("[server]\n{extra}")).unwrap(), None))
}

/// A queue manager where `b.test` and `c.test` share site `mx.p.test` and `d.test` has its own.
fn qm(max: usize, extra: &str) -> QueueManager {
    let mut q = QueueManager::new(policy(), max, shaping(extra));
    for (d, mx) in [("b.test", "mx.p.test"), ("c.test", "mx.p.test"), ("d.test", "mx.d.test")] {
        assert!(q.site_resolved(d, Site::of_mx(d, [mx.to_string()]), T0, true).is_empty());
    }
    q
}

/// An owned message with `rcpts` recipients r0@b.test.. (also used by queue_admin's tests).
pub(super) fn message(received_ms: u64, rcpts: usize) -> Arc<SpooledMessage> {
    Arc::new(SpooledMessage::owned(
        MsgRef { core: 0, segment: 1, offset: 64 },
        "s@a.test".into(),
        (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
        Vec::new(),
        Vec::new(),
        received_ms,
        0,
    ))
}

fn to(domain: &str, msg: &Arc<SpooledMessage>, rcpts: &[u32], attempts: u32) -> Delivery {
    Delivery { msg: msg.clone(), rcpts: rcpts.into(), attempts, last_response: None, domain: domain.into(), pool: None }
}

fn delivery(msg: &Arc<SpooledMessage>, rcpts: &[u32], attempts: u32) -> Delivery {
    to("b.test", msg, rcpts, attempts)
}

fn opened(d: Dispatch) -> Rc<str> {
    match d {
        Dispatch::Open(k) => k,
        _ => panic!("expected Open"),
    }
}

fn ready(p: Pop) -> Delivery {
    match p {
        Pop::Ready(d) => d,
        _ => panic!("expected a delivery"),
    }
}

/// Release what is due; a site looked up again (its TTL passed) resolves to the same hosts.
fn release(q: &mut QueueManager, now: u64) -> Vec<Dispatch> {
    let mut out = Vec::new();
    for d in q.release_due(now, true) {
        match d {
            Dispatch::Resolve(domain) => out.extend(q.site_resolved(&domain, Site::of_mx(&domain, ["mx.p.test".to_string()]), now, true)),
            other => out.push(other),
        }
    }
    out
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
    let mut q = qm(2, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Open(_)));
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Nothing), "limit of 2 reached");
    q.idle_begin(&k, T0, IdleBell::new(), IDLE_MS).unwrap();
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::WakeIdle(_)));
    assert_eq!(q.depth("b.test"), (4, 2));
}

#[test]
fn domains_of_one_site_share_one_ready_queue_and_its_limit() {
    let mut q = qm(1, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    assert!(matches!(q.enqueue(to("c.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "same site: the one connection serves both");
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0, true), Dispatch::Open(_)), "another site has its own");
    assert_eq!(&*ready(q.pop(&k, T0)).domain, "b.test");
    assert_eq!(&*ready(q.pop(&k, T0)).domain, "c.test", "one FIFO for the site");
    assert!(matches!(q.pop(&k, T0), Pop::Empty));
    assert!(k.contains("mx.p.test"));
}

#[test]
fn an_unknown_domain_is_resolved_once_and_its_mail_waits_for_it() {
    let mut q = qm(4, "");
    let m = message(T0, 1);
    assert!(matches!(q.enqueue(to("new.test", &m, &[0], 0), T0, true), Dispatch::Resolve(ref d) if d == "new.test"));
    assert!(matches!(q.enqueue(to("new.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "one lookup at a time");
    assert_eq!(q.views(T0)[0].ready, 2, "waiting for its site counts as ready");
    let out = q.site_resolved("new.test", Site::of_mx("new.test", ["mx.p.test".into()]), T0, true);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Dispatch::Open(_)));
    assert!(matches!(q.enqueue(to("new.test", &m, &[0], 0), T0 + SITE_TTL_MS, true), Dispatch::Resolve(_)), "looked up again after the TTL");
}

#[test]
fn nothing_opens_while_shutting_down() {
    let mut q = qm(4, "");
    let m = message(T0, 1);
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, false), Dispatch::Nothing));
    assert_eq!(q.depth("b.test"), (1, 0));
}

#[test]
fn a_closed_connection_reopens_only_when_work_is_left() {
    let mut q = qm(1, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Open(_)), "work still ready");
    assert!(matches!(q.pop(&k, T0), Pop::Ready(_)));
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Nothing));
    assert_eq!(q.depth("b.test"), (0, 0));
}

#[test]
fn a_shaped_cap_holds_and_a_closed_connection_frees_a_slot() {
    let mut q = qm(32, "[[shape]]\nsite = \"*.p.test\"\nmax_connections = 2\n");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Nothing), "cap of 2, not the per-core 32");
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0, true), Dispatch::Open(_)), "the shape is the p.test site's");
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Open(_)), "the freed slot is taken again");
}

#[test]
fn a_message_rate_makes_connections_wait_their_turn() {
    let mut q = qm(4, "[[shape]]\nsite = \"*\"\nmax_message_rate = \"10/s\"\n");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    q.enqueue(delivery(&m, &[0], 0), T0, true);
    assert!(matches!(q.pop(&k, T0), Pop::Ready(_)));
    assert!(matches!(q.pop(&k, T0), Pop::Wait(t) if t == T0 + 100));
    assert!(matches!(q.pop(&k, T0 + 100), Pop::Ready(_)));
}

#[test]
fn a_suspended_path_closes_its_connections_and_reopens_when_the_time_is_up() {
    let mut q = qm(4, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    let (_, limits) = q.path_limits(&k).unwrap();
    limits.suspend(T0 + 60_000, "rule tss04");
    assert!(matches!(q.pop(&k, T0), Pop::Close));
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Nothing));
    assert_eq!(q.next_due_ms(), Some(T0 + 60_000), "a wake-up at the end of the suspension");
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0, true), Dispatch::Open(_)), "other sites unaffected");
    assert!(q.release_due(T0 + 59_999, true).is_empty());
    let again = q.release_due(T0 + 60_000, true);
    assert!(matches!(again.as_slice(), [Dispatch::Open(_)]), "resumes by itself");
}

#[test]
fn pools_spread_over_sources_by_weight_each_its_own_path() {
    let extra = "[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\nehlo = \"mta2.test\"\n[[source]]\nname = \"ip3\"\nbind = \"127.0.0.3\"\n\
                 [[pool]]\nname = \"default\"\nsources = { ip2 = 1, ip3 = 3 }\n";
    let mut q = qm(100, extra);
    let m = message(T0, 1);
    let keys: Vec<Rc<str>> = (0..8)
        .filter_map(|_| match q.enqueue(delivery(&m, &[0], 0), T0, true) {
            Dispatch::Open(k) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("ip2|")).count(), 2);
    assert_eq!(keys.iter().filter(|k| k.starts_with("ip3|")).count(), 6);
    let info = q.path_info(keys.iter().find(|k| k.starts_with("ip2|")).unwrap()).unwrap();
    assert_eq!((info.source.bind, info.source.ehlo.as_deref()), (Some("127.0.0.2".parse().unwrap()), Some("mta2.test")));
}

#[test]
fn over_the_warmup_cap_mail_waits_for_the_next_day() {
    let extra = "[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\n[[pool]]\nname = \"default\"\nsources = { ip2 = 1 }\n\
                 [[warmup]]\nsource = \"ip2\"\nstart = \"2027-01-15\"\ndaily = [2]\n";
    let mut q = qm(100, extra);
    let m = message(T0, 1);
    assert!((0..2).all(|_| matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Open(_))));
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Nothing));
    let next_day = (T0 / 86_400_000 + 1) * 86_400_000;
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (1, Some(next_day)), "the third is queued for tomorrow, not bounced");
}

#[test]
fn warmup_overflow_goes_to_the_other_sources_of_the_pool() {
    let extra = "[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\n[[source]]\nname = \"ip3\"\nbind = \"127.0.0.3\"\n\
                 [[pool]]\nname = \"default\"\nsources = { ip2 = 3, ip3 = 1 }\n\
                 [[warmup]]\nsource = \"ip2\"\nstart = \"2027-01-15\"\ndaily = [1]\noverflow = \"pool\"\n";
    let mut q = qm(100, extra);
    let m = message(T0, 1);
    let keys: Vec<Rc<str>> = (0..4).map(|_| opened(q.enqueue(delivery(&m, &[0], 0), T0, true))).collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("ip2|")).count(), 1, "one from ip2, the rest overflowed");
    assert_eq!(q.scheduled_len(), 0);
}

#[test]
fn mixed_results_give_finals_and_one_deferral_due_after_the_backoff() {
    let clock = ManualClock::at(T0);
    let mut q = qm(1, "");
    let m = message(T0, 3);
    let s = q.settle(clock.now_ms(), delivery(&m, &[0, 1, 2], 0), vec![ok(), perm(), temp()], None);
    let finals: Vec<(u32, Outcome)> = s.finals.iter().map(|f| (f.rcpt, f.outcome)).collect();
    assert_eq!(finals, [(0, Outcome::Delivered), (1, Outcome::Bounced)]);
    let d = s.deferred.expect("one recipient waits");
    assert_eq!((d.rcpts.as_slice(), d.attempts, d.next_attempt_ms), (&[2u32][..], 1, T0 + 300_000));
    assert_eq!(q.next_due_ms(), Some(T0 + 300_000));
    clock.advance(Duration::from_secs(299));
    assert!(q.release_due(clock.now_ms(), true).is_empty(), "not due yet");
    clock.advance(Duration::from_secs(1));
    let dispatched = release(&mut q, clock.now_ms());
    assert_eq!(dispatched.len(), 1);
    let k = opened(dispatched.into_iter().next().unwrap());
    let again = ready(q.pop(&k, clock.now_ms()));
    assert_eq!((&*again.rcpts, again.attempts), (&[2u32][..], 1));
}

#[test]
fn a_rule_retry_in_replaces_the_backoff() {
    let mut q = qm(1, "");
    let m = message(T0, 1);
    let s = q.settle(T0, delivery(&m, &[0], 0), vec![temp()], Some(Duration::from_secs(7)));
    assert_eq!(s.deferred.unwrap().next_attempt_ms, T0 + 7_000);
}

#[test]
fn transient_failures_back_off_until_the_lifetime_then_expire() {
    let clock = ManualClock::at(T0);
    let mut q = qm(1, "");
    let m = message(T0, 1);
    let mut d = delivery(&m, &[0], 0);
    let mut waits = Vec::new();
    loop {
        let s = q.settle(clock.now_ms(), d, vec![temp()], None);
        if let Some(f) = s.finals.first() {
            assert_eq!((f.rcpt, f.outcome, f.reply.code), (0, Outcome::Expired, 451));
            assert!(s.deferred.is_none());
            break;
        }
        let due = q.next_due_ms().unwrap();
        waits.push((due - clock.now_ms()) / 1000);
        clock.advance(Duration::from_millis(due - clock.now_ms()));
        let k = match release(&mut q, clock.now_ms()).pop() {
            Some(Dispatch::Open(k)) => k,
            _ => q.path_key_of("b.test").unwrap(),
        };
        d = ready(q.pop(&k, clock.now_ms()));
    }
    // 300 + 600 + 1200 = 2100 s, then the last wait is cut to the lifetime (3600 s).
    assert_eq!(waits, [300, 600, 1200, 1500]);
    assert_eq!(clock.now_ms(), T0 + 3_600_000);
    assert_eq!(q.scheduled_len(), 0);
}

#[test]
fn permanent_failures_are_final_at_once_whatever_the_age() {
    let mut q = qm(1, "");
    let m = message(T0, 2);
    let s = q.settle(T0 + 10, delivery(&m, &[0, 1], 4), vec![perm(), ok()], None);
    assert_eq!(s.attempts, 5);
    assert_eq!(s.finals.len(), 2);
    assert!(s.deferred.is_none());
    assert_eq!(q.scheduled_len(), 0);
}

#[test]
#[should_panic(expected = "one result per recipient")]
fn a_missing_result_is_a_bug_not_a_silent_drop() {
    let mut q = qm(1, "");
    let m = message(T0, 2);
    q.settle(T0, delivery(&m, &[0, 1], 0), vec![ok()], None);
}

#[test]
fn the_schedule_releases_due_deliveries_earliest_first() {
    let mut q = qm(1, "");
    let m = message(T0, 8);
    // Scheduled out of order; two share a due time: the one scheduled first goes first.
    for (rcpt, at) in [(0, 50), (1, 10), (2, 30), (3, 10), (4, 70), (5, 20), (6, 31)] {
        q.schedule(delivery(&m, &[rcpt], 1), T0 + at);
    }
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (7, Some(T0 + 10)));
    assert!(q.release_due(T0 + 9, true).is_empty(), "nothing due yet");
    q.release_due(T0 + 30, true);
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (3, Some(T0 + 31)));
    let key = q.path_key_of("b.test").expect("path made on release");
    let order: Vec<u32> = std::iter::from_fn(|| match q.pop(&key, T0 + 30) {
        Pop::Ready(d) => Some(d.rcpts[0]),
        _ => None,
    })
    .collect();
    assert_eq!(order, [1, 3, 5, 2]);
    q.release_due(T0 + 100, true);
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (0, None));
}

#[test]
fn a_backlog_due_at_once_is_released_a_batch_at_a_time_earliest_first() {
    // A restart or the end of an outage: more deliveries due than one batch. One call moves a
    // batch, the rest stays packed in the schedule, still due, so the timer comes back for it.
    let mut q = qm(1, "");
    let m = message(T0, 1);
    let n = RELEASE_BATCH + 10;
    // Within the site's second of validity, so every released one goes straight to its path.
    for i in 0..n {
        q.schedule(delivery(&m, &[0], i as u32), T0 + (i / 2) as u64);
    }
    let now = T0 + SITE_TTL_MS - 1;
    assert_eq!(q.release_due(now, true).len(), RELEASE_BATCH, "one dispatch per released delivery");
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (10, Some(T0 + (RELEASE_BATCH / 2) as u64)), "the rest waits, due");
    let key = q.path_key_of("b.test").expect("path made on release");
    assert_eq!(q.depth("b.test").0, RELEASE_BATCH);
    assert_eq!(ready(q.pop(&key, now)).attempts, 0, "earliest due first");
    assert_eq!(q.release_due(now, true).len(), 10);
    assert_eq!((q.scheduled_len(), q.next_due_ms()), (0, None));
    assert_eq!(q.depth("b.test").0, n - 1);
}

#[test]
fn past_the_cores_connection_cap_destinations_take_turns_first_come_first_served() {
    let mut q = qm(32, "");
    q.set_total_connections(1, T0, true);
    let m = message(T0, 4);
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    assert!(matches!(q.enqueue(to("d.test", &m, &[1], 0), T0, true), Dispatch::Nothing), "at the cap: d.test waits");
    assert!(matches!(q.enqueue(to("b.test", &m, &[2], 0), T0, true), Dispatch::Nothing), "b.test's own second connection waits too");
    assert_eq!(q.connections_total(), 1);
    assert_eq!(&*ready(q.pop(&kb, T0)).rcpts, [0]);
    // b.test still has mail, but d.test asked first: the freed connection goes to d.test and
    // b.test goes to the back of the line.
    let kd = opened(q.connection_closed(&kb, T0, true));
    assert_ne!(kd, kb);
    assert_eq!(q.connections_total(), 1);
    assert_eq!(&*ready(q.pop(&kd, T0)).rcpts, [1]);
    assert!(matches!(q.pop(&kd, T0), Pop::Close), "with b.test waiting, an empty connection gives its slot away instead of idling");
    assert_eq!(opened(q.connection_closed(&kd, T0, true)), kb, "then b.test's turn");
    assert_eq!(&*ready(q.pop(&kb, T0)).rcpts, [2]);
    assert!(matches!(q.connection_closed(&kb, T0, true), Dispatch::Nothing), "nobody waits");
    assert_eq!(q.connections_total(), 0);
    // A raised cap opens at once again.
    assert!(q.set_total_connections(2, T0, true).is_empty(), "nobody waits");
    opened(q.enqueue(to("b.test", &m, &[3], 0), T0, true));
    opened(q.enqueue(to("d.test", &m, &[3], 0), T0, true));
    assert_eq!(q.connections_total(), 2);
}

#[test]
fn while_others_wait_a_busy_path_gives_its_slot_away_after_its_turn_and_a_raised_cap_serves_the_line() {
    let mut q = qm(32, "");
    q.set_total_connections(1, T0, true);
    let m = message(T0, 1);
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    for _ in 0..TURN_DELIVERIES + 10 {
        q.enqueue(to("b.test", &m, &[0], 0), T0, true);
    }
    for _ in 0..TURN_DELIVERIES + 5 {
        ready(q.pop(&kb, T0));
    }
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "d.test waits");
    assert!(matches!(q.pop(&kb, T0), Pop::Close), "past its turn with d.test waiting, b.test's connection closes");
    let kd = opened(q.connection_closed(&kb, T0, true));
    assert_ne!(kd, kb);
    // b.test is in line now; raising the cap opens for it at once.
    let opened_now = q.set_total_connections(3, T0, true);
    assert_eq!(opened_now.len(), 1);
    assert_eq!(opened(opened_now.into_iter().next().unwrap()), kb);
    assert_eq!(q.connections_total(), 2);
}

#[test]
fn slow_start_a_path_opens_another_connection_only_while_its_backlog_outnumbers_its_connections() {
    let mut q = qm(8, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    ready(q.pop(&k, T0));
    // The one connection is busy: the next message waits for it instead of opening another
    // (before, every message that met a busy connection opened one, up to the limit).
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Nothing), "1 ready, 1 connection");
    let k2 = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    assert_eq!(k2, k, "2 ready for 1 connection: a second opens");
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Open(_)), "3 ready for 2 connections: a third");
    ready(q.pop(&k, T0));
    ready(q.pop(&k, T0));
    assert!(matches!(q.enqueue(delivery(&m, &[0], 0), T0, true), Dispatch::Nothing), "2 ready for 3 connections");
    assert_eq!(q.depth("b.test"), (2, 3));
    // A closed connection is replaced only while the backlog still outnumbers what is left.
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Nothing), "2 ready for 2 connections");
    assert!(matches!(q.connection_closed(&k, T0, true), Dispatch::Open(_)), "2 ready for 1 connection");
}

/// A site of its own for `domain` (`mx.<domain>`).
fn own_site(q: &mut QueueManager, domain: &str) {
    assert!(q.site_resolved(domain, Site::of_mx(domain, [format!("mx.{domain}")]), T0, true).is_empty());
}

/// Opens a connection for one delivery to `domain`, hands it the delivery, and lets it idle
/// at `at`: (path key, its idle ticket, its bell).
fn idle_connection(q: &mut QueueManager, m: &Arc<SpooledMessage>, domain: &str, at: u64) -> (Rc<str>, IdleTicket, Rc<IdleBell>) {
    let k = opened(q.enqueue(to(domain, m, &[0], 0), at, true));
    ready(q.pop(&k, at));
    assert!(matches!(q.pop(&k, at), Pop::Empty), "nobody waits: it may idle");
    let quit = IdleBell::new();
    let t = q.idle_begin(&k, at, quit.clone(), IDLE_MS).unwrap().ticket;
    (k, t, quit)
}

fn told_to_quit(d: Dispatch) -> Rc<IdleBell> {
    match d {
        Dispatch::CloseIdle(e) => e,
        _ => panic!("expected CloseIdle"),
    }
}

#[test]
fn at_the_cap_the_longest_idle_connection_of_another_path_quits_and_its_slot_goes_to_the_waiting_path() {
    let mut q = qm(32, "");
    own_site(&mut q, "e.test");
    q.set_total_connections(2, T0, true);
    let m = message(T0, 1);
    let (kb, tb, quit_b) = idle_connection(&mut q, &m, "b.test", T0);
    let (kd, td, quit_d) = idle_connection(&mut q, &m, "d.test", T0 + 10);
    assert_eq!(q.connections_total(), 2);
    // e.test needs a connection at the cap: b's connection, idle longest, is told to quit.
    let told = told_to_quit(q.enqueue(to("e.test", &m, &[0], 0), T0 + 20, true));
    assert!(Rc::ptr_eq(&told, &quit_b), "the longest idle (b.test), not d.test");
    assert!(matches!(q.enqueue(to("e.test", &m, &[0], 0), T0 + 20, true), Dispatch::Nothing), "one quit per waiting path");
    // d.test's idle connection is still there for its own mail; b's is not woken for work.
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0 + 30, true), Dispatch::WakeIdle(ref e) if Rc::ptr_eq(e, &quit_d)), "d's own connection");
    assert!(!q.idle_end(&kd, td, false), "woken for work, not told to quit");
    ready(q.pop(&kd, T0 + 30));
    assert!(q.idle_end(&kb, tb, false), "b's connection learns it must QUIT");
    let ke = opened(q.connection_ended(&kb, Some(tb), T0 + 31, true));
    assert_ne!(ke, kb);
    assert_eq!(&*ready(q.pop(&ke, T0 + 31)).domain, "e.test");
    assert_eq!(q.connections_total(), 2, "the cap holds throughout");
}

#[test]
fn a_path_whose_idle_connection_was_told_to_quit_waits_for_a_slot_and_another_idle_one_quits_for_it() {
    let mut q = qm(32, "");
    own_site(&mut q, "e.test");
    q.set_total_connections(2, T0, true);
    let m = message(T0, 1);
    let (kb, tb, quit_b) = idle_connection(&mut q, &m, "b.test", T0);
    let (_kd, _td, quit_d) = idle_connection(&mut q, &m, "d.test", T0 + 10);
    assert!(Rc::ptr_eq(&told_to_quit(q.enqueue(to("e.test", &m, &[0], 0), T0 + 20, true)), &quit_b));
    // b.test gets mail before its connection has quit: that connection is not woken for it,
    // b.test joins the line and d.test's idle connection quits for it.
    assert!(Rc::ptr_eq(&told_to_quit(q.enqueue(to("b.test", &m, &[0], 0), T0 + 21, true)), &quit_d));
    assert!(matches!(q.enqueue(to("e.test", &m, &[0], 0), T0 + 22, true), Dispatch::Nothing), "no idle connection left");
    assert!(q.idle_end(&kb, tb, false));
    let first = opened(q.connection_ended(&kb, Some(tb), T0 + 23, true));
    assert_ne!(first, kb, "e.test asked first");
}

#[test]
fn a_path_sent_to_the_back_of_the_line_after_its_turn_gets_an_idle_connection_quit_for_it() {
    // b.test's site may have one connection: its backlog does not queue for a second slot.
    let mut q = qm(32, "[[shape]]\nsite = \"*.p.test\"\nmax_connections = 1\n");
    own_site(&mut q, "e.test");
    q.set_total_connections(2, T0, true);
    let m = message(T0, 1);
    let (kd, td, quit_d) = idle_connection(&mut q, &m, "d.test", T0);
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    for _ in 0..TURN_DELIVERIES + 5 {
        q.enqueue(to("b.test", &m, &[0], 0), T0, true);
    }
    for _ in 0..TURN_DELIVERIES {
        ready(q.pop(&kb, T0));
    }
    // e.test waits: d's idle connection quits for it, but b's turn is up too.
    assert!(Rc::ptr_eq(&told_to_quit(q.enqueue(to("e.test", &m, &[0], 0), T0 + 1, true)), &quit_d));
    assert!(matches!(q.pop(&kb, T0 + 1), Pop::Close), "past its turn");
    let ke = opened(q.connection_closed(&kb, T0 + 2, true));
    assert_ne!(ke, kb, "e.test gets b's slot; b.test goes to the back of the line");
    assert!(q.idle_end(&kd, td, false));
    assert_eq!(opened(q.connection_ended(&kd, Some(td), T0 + 3, true)), kb, "d's slot goes to b.test");
}

#[test]
fn below_the_cap_or_with_nothing_idle_no_connection_is_told_to_quit() {
    let mut q = qm(32, "");
    own_site(&mut q, "e.test");
    q.set_total_connections(3, T0, true);
    let m = message(T0, 1);
    let (kb, tb, _) = idle_connection(&mut q, &m, "b.test", T0);
    opened(q.enqueue(to("d.test", &m, &[0], 0), T0, true));
    let ke = opened(q.enqueue(to("e.test", &m, &[0], 0), T0, true));
    assert_eq!(q.connections_total(), 3, "below the cap paths open, the idle one stays");
    ready(q.pop(&ke, T0));
    assert!(!q.idle_end(&kb, tb, false), "its idle time ran out: it was never told to quit");
    assert!(matches!(q.enqueue(to("e.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "slow start: 1 ready, 1 busy connection");
    assert!(matches!(q.enqueue(to("e.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "at the cap with nothing idle: nobody quits");
}

#[test]
fn a_waiting_path_served_by_its_own_connection_leaves_the_line() {
    let mut q = qm(32, "");
    q.set_total_connections(1, T0, true);
    let m = message(T0, 1);
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "a second connection waits at the cap");
    assert_eq!(q.slot_waiters.len(), 1);
    ready(q.pop(&kb, T0));
    ready(q.pop(&kb, T0));
    assert!(q.slot_waiters.is_empty(), "its own connection took the backlog: no place in line left behind");
    assert!(matches!(q.pop(&kb, T0), Pop::Empty), "so its connection may idle");
}

/// One core's queue manager sharing `shaping` (a host-wide site cap) with another, with b.test
/// and c.test both resolved to the site of mx.p.test.
fn site_core(shaping: &Arc<Shaping>) -> QueueManager {
    let mut q = QueueManager::new(policy(), 32, shaping.clone());
    for d in ["b.test", "c.test"] {
        assert!(q.site_resolved(d, Site::of_mx(d, ["mx.p.test".to_string()]), T0, true).is_empty());
    }
    q
}

#[test]
fn a_site_cap_held_by_an_idle_connection_on_another_core_asks_it_to_quit_once_per_interval() {
    use crate::outbound::shaping::IDLE_QUIT_ASK_MS;
    let shaping = shaping("[[shape]]\nsite = \"*.p.test\"\nmax_connections = 1\n");
    let (mut a, mut b) = (site_core(&shaping), site_core(&shaping));
    let m = message(T0, 1);
    // Core b's connection of the site is busy: core a's mail waits, nobody is asked.
    let kb = opened(b.enqueue(to("b.test", &m, &[0], 0), T0, true));
    ready(b.pop(&kb, T0));
    assert!(matches!(a.enqueue(to("c.test", &m, &[0], 0), T0, true), Dispatch::Nothing), "the site's one connection is at work");
    // Now it idles: core a asks it to quit, at most once per interval.
    let tb = b.idle_begin(&kb, T0 + 5, IdleBell::new(), IDLE_MS).unwrap().ticket;
    let Dispatch::AskIdleQuit(limits) = a.enqueue(to("c.test", &m, &[0], 0), T0 + 10, true) else { panic!("expected AskIdleQuit") };
    assert_eq!(limits.idle_connections(), 1);
    assert!(release(&mut a, T0 + 10 + CAP_POLL_MS).iter().all(|d| matches!(d, Dispatch::Nothing)), "asked already");
    assert!(release(&mut a, T0 + 10 + IDLE_QUIT_ASK_MS).iter().any(|d| matches!(d, Dispatch::AskIdleQuit(_))), "asked again");
    // It quits (woken by the ask, not by its own core): core a's next poll opens.
    assert!(b.idle_end(&kb, tb, true), "asked: it must QUIT");
    assert!(matches!(b.connection_ended(&kb, Some(tb), T0 + 300, true), Dispatch::Nothing));
    assert_eq!(limits.idle_connections(), 0);
    let opened_now = release(&mut a, T0 + 300 + CAP_POLL_MS);
    assert!(matches!(opened_now.as_slice(), [Dispatch::Open(_)]), "core a's mail gets the site's connection");
}

#[test]
fn a_woken_idle_connection_is_not_told_to_quit_for_another_path_in_the_same_pass() {
    let mut q = qm(32, "");
    own_site(&mut q, "e.test");
    q.set_total_connections(2, T0, true);
    let m = message(T0, 1);
    let (kb, tb, quit_b) = idle_connection(&mut q, &m, "b.test", T0);
    let (_kd, _td, quit_d) = idle_connection(&mut q, &m, "d.test", T0 + 10);
    // b.test's mail wakes b's connection (idle longest); before it runs, e.test needs a slot.
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 20, true), Dispatch::WakeIdle(ref e) if Rc::ptr_eq(e, &quit_b)));
    let told = told_to_quit(q.enqueue(to("e.test", &m, &[0], 0), T0 + 20, true));
    assert!(Rc::ptr_eq(&told, &quit_d), "the woken connection has work: d's idle one quits instead");
    assert!(!q.idle_end(&kb, tb, false), "b's connection carries on");
    assert_eq!(&*ready(q.pop(&kb, T0 + 21)).domain, "b.test");
}

#[test]
fn a_connection_told_to_quit_is_counted_by_its_ticket_not_by_whichever_connection_of_its_path_closes_first() {
    let mut q = qm(32, "");
    for d in ["e.test", "g.test"] {
        own_site(&mut q, d);
    }
    q.set_total_connections(3, T0, true);
    let m = message(T0, 1);
    // b.test: two connections, one idles (b1), one stays busy (b2); d.test: one idle.
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    ready(q.pop(&kb, T0));
    ready(q.pop(&kb, T0));
    let tb1 = q.idle_begin(&kb, T0, IdleBell::new(), IDLE_MS).unwrap().ticket;
    let (_kd, _td, quit_d) = idle_connection(&mut q, &m, "d.test", T0 + 10);
    assert_eq!(q.connections_total(), 3);
    // e.test waits at the cap: b1 (idle longest) is told to quit.
    told_to_quit(q.enqueue(to("e.test", &m, &[0], 0), T0 + 20, true));
    assert!(q.idle_end(&kb, tb1, false), "b1 told");
    // b2 closes first, for its own reason: e.test gets its slot; b1 is still closing.
    assert_eq!(opened(q.connection_closed(&kb, T0 + 21, true)), q.path_key_of("e.test").unwrap());
    // g.test waits: b1's close is its slot, so d's idle connection is not told to quit too.
    assert!(matches!(q.enqueue(to("g.test", &m, &[0], 0), T0 + 22, true), Dispatch::Nothing), "one quitting connection per waiting path");
    assert_eq!(opened(q.connection_ended(&kb, Some(tb1), T0 + 23, true)), q.path_key_of("g.test").unwrap());
    assert_eq!(q.connections_total(), 3);
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0 + 24, true), Dispatch::WakeIdle(ref e) if Rc::ptr_eq(e, &quit_d)), "d's kept");
}

#[test]
fn an_operator_suspension_tells_the_idle_connections_of_the_suspended_site_to_quit() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    let (kb, tb, quit_b) = idle_connection(&mut q, &m, "b.test", T0);
    let (kd, td, quit_d) = idle_connection(&mut q, &m, "d.test", T0 + 10);
    // c.test shares b.test's site: b's connection goes, d's stays.
    let told: Vec<Rc<IdleBell>> = q.suspend(Some("c.test")).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [e] if Rc::ptr_eq(e, &quit_b)), "only the suspended site's idle connection");
    assert!(q.idle_end(&kb, tb, false), "it QUITs");
    assert!(matches!(q.connection_ended(&kb, Some(tb), T0 + 20, true), Dispatch::Nothing));
    let told: Vec<Rc<IdleBell>> = q.suspend(None).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [e] if Rc::ptr_eq(e, &quit_d)), "suspending everything: every idle connection");
    assert!(q.idle_end(&kd, td, false));
}

#[test]
fn a_delivery_back_from_a_dead_reused_connection_is_ready_again_uncounted_once() {
    let mut q = qm(32, "");
    let m = message(T0, 2);
    let k = opened(q.enqueue(delivery(&m, &[0, 1], 2), T0, true));
    let d = ready(q.pop(&k, T0));
    assert!(q.requeue_unsent(&k, d).is_ok(), "the first time it goes back");
    assert_eq!(q.depth("b.test"), (1, 1), "ready again, at the front");
    assert_eq!(q.scheduled_len(), 0, "not scheduled for a retry");
    let d = ready(q.pop(&k, T0));
    assert_eq!((d.attempts, &*d.rcpts), (2, &[0, 1][..]), "no attempt counted");
    let Err(d) = q.requeue_unsent(&k, d) else { panic!("a second time it is reported") };
    let s = q.settle(T0, d, vec![temp(), temp()], None);
    assert_eq!(s.attempts, 3, "reported, it counts");
    // Settled, it may come back once on its next attempt.
    let due = s.deferred.expect("deferred").next_attempt_ms;
    release(&mut q, due);
    let d = ready(q.pop(&k, due));
    assert_eq!(d.attempts, 3);
    assert!(q.requeue_unsent(&k, d).is_ok(), "one silent retry per attempt");
}

#[test]
fn a_delivery_taken_by_an_operator_while_back_from_a_dead_connection_leaves_no_note_behind() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    let k = opened(q.enqueue(delivery(&m, &[0], 0), T0, true));
    let d = ready(q.pop(&k, T0));
    assert!(q.requeue_unsent(&k, d).is_ok());
    assert_eq!(q.requeued.len(), 1);
    assert_eq!(q.take_queued(|_, _| true).len(), 1, "the operator bounces it");
    assert!(q.requeued.is_empty(), "its silent-retry note goes with it");
}

#[test]
fn a_dead_reused_connection_sends_its_paths_older_idle_connections_away_so_the_retry_gets_a_fresh_one() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    // b.test: three connections; two idle (b1 since T0, b2 since T0 + 5), b3 idles last.
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    for _ in 0..2 {
        opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    }
    for _ in 0..3 {
        ready(q.pop(&kb, T0));
    }
    let (q1, q2) = (IdleBell::new(), IdleBell::new());
    let t1 = q.idle_begin(&kb, T0, q1.clone(), IDLE_MS).unwrap().ticket;
    let t2 = q.idle_begin(&kb, T0 + 5, q2.clone(), IDLE_MS).unwrap().ticket;
    let t3 = q.idle_begin(&kb, T0 + 10, IdleBell::new(), IDLE_MS).unwrap().ticket;
    // Mail comes: the newest idle connection (b3) wakes, takes it, and finds the receiver gone.
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 20, true), Dispatch::WakeIdle(_)));
    assert!(!q.idle_end(&kb, t3, false), "b3 works");
    let d = ready(q.pop(&kb, T0 + 20));
    let Ok(told) = q.requeue_unsent(&kb, d) else { panic!("silent the first time") };
    let told: Vec<Rc<IdleBell>> = told.into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [a, b] if Rc::ptr_eq(a, &q1) && Rc::ptr_eq(b, &q2)), "both older idle connections go");
    assert!(q.idle_end(&kb, t1, false) && q.idle_end(&kb, t2, false), "they QUIT");
    // b3 closes: the delivery waiting at the front gets a fresh connection, not a stale one.
    assert_eq!(opened(q.connection_ended(&kb, None, T0 + 21, true)), kb);
}

#[test]
fn at_the_cores_cap_nothing_opens_while_other_cores_free_and_take_the_sites_place() {
    // Core a is at its cap with one connection of another path; the site's one place is
    // taken and freed by another thread (another core) all the time. At the cap core a must
    // not open, whatever the site's count says when it looks.
    let mut q = qm(32, "[[shape]]\nsite = \"*.p.test\"\nmax_connections = 1\n");
    q.set_total_connections(1, T0, true);
    let m = message(T0, 1);
    let kd = opened(q.enqueue(to("d.test", &m, &[0], 0), T0, true));
    ready(q.pop(&kd, T0));
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 1, true), Dispatch::Nothing), "at the cap");
    let kb = q.path_key_of("b.test").unwrap();
    let limits = q.path_limits(&kb).unwrap().1;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (limits, stop) = (limits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if limits.try_open(T0, 0, 1, None).is_ok() {
                    limits.closed();
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let mut opens = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        for _ in 0..1000 {
            if let Dispatch::Open(k) = q.enqueue(to("b.test", &m, &[0], 0), T0 + 2, true) {
                opens += 1;
                q.connection_closed(&k, T0 + 2, false);
            }
            q.take_ready(&kb);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().unwrap();
    assert_eq!(opens, 0, "opened past the core's cap of 1");
}

#[test]
fn a_site_cap_held_on_another_core_is_asked_for_only_when_the_connection_rate_would_let_this_core_open() {
    let shaping = shaping("[[shape]]\nsite = \"*.p.test\"\nmax_connections = 1\nmax_connection_rate = \"1/s\"\n");
    let (mut a, mut b) = (site_core(&shaping), site_core(&shaping));
    let m = message(T0, 1);
    // Core b opens the site's one connection (its connection turn for this second) and idles.
    let kb = opened(b.enqueue(to("b.test", &m, &[0], 0), T0, true));
    ready(b.pop(&kb, T0));
    b.idle_begin(&kb, T0 + 5, IdleBell::new(), IDLE_MS).unwrap();
    // Core a's mail waits; the rate would not let it open before T0 + 1000: nobody is asked.
    assert!(matches!(a.enqueue(to("c.test", &m, &[0], 0), T0 + 10, true), Dispatch::Nothing), "no ask while the rate holds");
    assert!(release(&mut a, T0 + 10 + CAP_POLL_MS).iter().all(|d| matches!(d, Dispatch::Nothing)), "still held by the rate");
    let asked = release(&mut a, T0 + 1_000 + CAP_POLL_MS);
    assert!(matches!(asked.as_slice(), [Dispatch::AskIdleQuit(_)]), "the rate allows: now b's idle connection is asked");
}

#[test]
fn the_retry_timer_tells_an_idle_connection_to_quit_when_its_time_runs_out_and_not_before() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    let (kb, tb, bell_b) = idle_connection(&mut q, &m, "b.test", T0);
    let (kd, td, bell_d) = idle_connection(&mut q, &m, "d.test", T0 + 400);
    assert_eq!(q.next_idle_ms(), Some(T0 + IDLE_MS), "the timer sleeps until the first idle connection runs out");
    assert!(q.expire_idle(T0 + IDLE_MS - 1).is_empty(), "a millisecond early: nobody quits");
    let told: Vec<Rc<IdleBell>> = q.expire_idle(T0 + IDLE_MS).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [e] if Rc::ptr_eq(e, &bell_b)), "b's time ran out, d's did not");
    assert!(q.idle_end(&kb, tb, false), "b learns it must QUIT");
    assert_eq!(q.next_idle_ms(), Some(T0 + 400 + IDLE_MS), "then the timer waits for d");
    // Work wakes d before its time: it is no longer idle and never told to QUIT.
    assert!(matches!(q.enqueue(to("d.test", &m, &[0], 0), T0 + 500, true), Dispatch::WakeIdle(ref e) if Rc::ptr_eq(e, &bell_d)));
    assert!(!q.idle_end(&kd, td, false), "woken for work");
    assert!(q.expire_idle(T0 + 400 + IDLE_MS).is_empty(), "a woken connection does not run out");
    assert_eq!(q.next_idle_ms(), None, "nothing idles: the timer has nothing to wait for");
}

#[test]
fn a_shorter_idle_timeout_after_a_longer_one_runs_out_first_and_wakes_the_timer() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    ready(q.pop(&kb, T0));
    let kd = opened(q.enqueue(to("d.test", &m, &[0], 0), T0, true));
    ready(q.pop(&kd, T0));
    let (bell_b, bell_d) = (IdleBell::new(), IdleBell::new());
    let b = q.idle_begin(&kb, T0, bell_b.clone(), IDLE_MS).unwrap();
    assert!(b.wake_timer, "the first idle connection: the timer must learn of it");
    let d = q.idle_begin(&kd, T0 + 10, bell_d.clone(), 2_000).unwrap();
    assert!(d.wake_timer, "an earlier end than the timer knows of");
    let e = q.idle_begin(&kd, T0 + 20, IdleBell::new(), 2_000).unwrap();
    assert!(!e.wake_timer, "a later end: the timer wakes for the earlier one first");
    assert_eq!(q.next_idle_ms(), Some(T0 + 10 + 2_000));
    let told: Vec<Rc<IdleBell>> = q.expire_idle(T0 + 10 + 2_000).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [x] if Rc::ptr_eq(x, &bell_d)), "the 2 s connection, though it began to idle after the 30 s one");
    assert!(q.idle_end(&kd, d.ticket, false));
    assert_eq!(q.next_idle_ms(), Some(T0 + 20 + 2_000));
    assert_eq!(q.expire_idle(T0 + 20 + 2_000).len(), 1);
    assert!(q.expire_idle(T0 + IDLE_MS - 1).is_empty(), "b still has time");
    let told: Vec<Rc<IdleBell>> = q.expire_idle(T0 + IDLE_MS).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [x] if Rc::ptr_eq(x, &bell_b)));
    assert!(q.idle_end(&kb, b.ticket, false));
}

#[test]
fn mail_due_when_an_idle_connections_time_runs_out_takes_that_connection_instead_of_a_new_one() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    let (kb, tb, bell_b) = idle_connection(&mut q, &m, "b.test", T0);
    q.schedule(to("b.test", &m, &[0], 1), T0 + IDLE_MS);
    // The retry timer's order: release what is due, then expire.
    let due = release(&mut q, T0 + IDLE_MS);
    assert!(matches!(due.as_slice(), [Dispatch::WakeIdle(e)] if Rc::ptr_eq(e, &bell_b)), "the due retry wakes the idle connection");
    assert!(q.expire_idle(T0 + IDLE_MS).is_empty(), "woken for work: it does not expire");
    assert!(!q.idle_end(&kb, tb, false));
    ready(q.pop(&kb, T0 + IDLE_MS));
}

#[test]
fn a_connection_woken_for_mail_another_took_idles_on_with_its_first_deadline_and_place() {
    let mut q = qm(32, "");
    let m = message(T0, 1);
    // b.test: two connections; b1 idles since T0, b2 since T0 + 5.
    let kb = opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    opened(q.enqueue(to("b.test", &m, &[0], 0), T0, true));
    ready(q.pop(&kb, T0));
    ready(q.pop(&kb, T0));
    let (b1, b2) = (IdleBell::new(), IdleBell::new());
    let t1 = q.idle_begin(&kb, T0, b1.clone(), IDLE_MS).unwrap().ticket;
    let t2 = q.idle_begin(&kb, T0 + 5, b2.clone(), IDLE_MS).unwrap().ticket;
    // Mail wakes the newest, b2, which takes it.
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 100, true), Dispatch::WakeIdle(b) if Rc::ptr_eq(&b, &b2)));
    assert!(!q.idle_end(&kb, t2, false));
    ready(q.pop(&kb, T0 + 100));
    // More mail wakes b1; b2, done with its transaction, takes that mail first and then idles.
    assert!(matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 200, true), Dispatch::WakeIdle(b) if Rc::ptr_eq(&b, &b1)));
    ready(q.pop(&kb, T0 + 200));
    assert!(matches!(q.pop(&kb, T0 + 200), Pop::Empty));
    let t2 = q.idle_begin(&kb, T0 + 200, b2.clone(), IDLE_MS).unwrap().ticket;
    // b1 runs, finds nothing, and idles on from T0: still the oldest.
    assert!(!q.idle_end(&kb, t1, false));
    assert!(matches!(q.pop(&kb, T0 + 201), Pop::Empty));
    let t1 = q.idle_begin(&kb, T0, b1.clone(), IDLE_MS).unwrap().ticket;
    assert!(
        matches!(q.enqueue(to("b.test", &m, &[0], 0), T0 + 300, true), Dispatch::WakeIdle(b) if Rc::ptr_eq(&b, &b2)),
        "the newest, b2, is woken, not b1"
    );
    assert!(!q.idle_end(&kb, t2, false));
    ready(q.pop(&kb, T0 + 300));
    // b1 runs out at its first deadline, T0 + IDLE_MS, not a full idle time after its wake.
    assert!(q.expire_idle(T0 + IDLE_MS - 1).is_empty());
    let told: Vec<Rc<IdleBell>> = q.expire_idle(T0 + IDLE_MS).into_iter().map(told_to_quit).collect();
    assert!(matches!(told.as_slice(), [a] if Rc::ptr_eq(a, &b1)));
    assert!(q.idle_end(&kb, t1, false), "it QUITs");
}
