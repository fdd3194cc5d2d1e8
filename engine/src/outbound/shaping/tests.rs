//! Unit tests of the shaping registry: shapes, path limits, pool choice and header finding.
use super::*;
use crate::config::Config;

fn config(extra: &str) -> Config {
    Config::parse(&format!("[server]\n{extra}")).unwrap()
}

#[test]
fn first_matching_shape_wins_and_absent_means_today() {
    let c = config(
        "[[shape]]\nsite = \"gmail.com\"\nmax_connections = 5\n[[shape]]\nsite = \"*.google.com\"\nmax_connections = 7\nmax_message_rate = \"10/m\"\n",
    );
    let s = Shaping::new(&c, None);
    let g = Site::of_mx("gmail.com", ["gmail-smtp-in.l.google.com".into()]);
    assert_eq!(s.shape_for("gmail.com", &g).max_connections, Some(5));
    let other = s.shape_for("googlemail.com", &g);
    assert_eq!((other.max_connections, other.message_rate), (Some(7), Some(RateSpec { count: 10, period_ms: 60_000 })));
    assert_eq!(s.shape_for("x.test", &Site::of_mx("x.test", ["mx.x.test".into()])).shape, None);
    let a = s.path(0, "googlemail.com", &g);
    assert!(Arc::ptr_eq(&a, &s.path(0, "googlemail.com", &g)), "one path per (source, site, shape)");
    assert!(!Arc::ptr_eq(&a, &s.path(0, "gmail.com", &g)), "a domain's own shape is its own path");
}

#[test]
fn a_connection_cap_is_host_wide_and_released_on_close() {
    let c = config("[[shape]]\nsite = \"*\"\nmax_connections = 3\n");
    let s = Shaping::new(&c, None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    assert!((0..3).all(|_| p.try_open(0, 0, 1, None).is_ok()), "local counts do not matter under a cap");
    assert_eq!(p.try_open(0, 0, 1, None), Err(Hold::Connections));
    p.closed();
    assert!(p.try_open(0, 0, 1, None).is_ok());
    assert_eq!(p.open_connections(), 3);
}

#[test]
fn without_a_cap_the_per_core_default_applies() {
    let s = Shaping::new(&config(""), None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    assert!(p.try_open(0, 1, 2, None).is_ok());
    assert_eq!(p.try_open(0, 2, 2, None), Err(Hold::Connections));
}

#[test]
fn suspension_holds_until_its_time_and_throttle_slows() {
    let c = config("[[shape]]\nsite = \"*\"\nmax_message_rate = \"10/s\"\n");
    let s = Shaping::new(&c, None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    p.suspend(5_000, "rule tss04");
    assert_eq!(p.try_message(1_000, None), Err(Hold::Suspended(5_000)));
    assert!(p.status(1_000).unwrap().contains("suspended until"));
    assert!(p.try_message(5_000, None).is_ok(), "a suspension ends by itself");
    assert_eq!(p.try_message(5_000, None), Err(Hold::Rate(5_100)));
    p.throttle(0.5, 60_000, "rule s3150");
    assert!(p.try_message(5_100, None).is_ok());
    assert_eq!(p.try_message(5_100, None), Err(Hold::Rate(5_300)), "half the rate while throttled");
}

struct Fixed(SharedVerdict);
impl SharedLimiter for Fixed {
    fn acquire(&self, _: &str, _: RateSpec, _: u64) -> SharedVerdict {
        self.0
    }
}

#[test]
fn shared_limits_consult_the_cluster_hook_and_fall_back_locally() {
    let c = config("[[shape]]\nsite = \"*\"\nmax_message_rate = \"1/s\"\nshared = true\n");
    let s = Shaping::new(&c, None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    assert_eq!(p.try_message(0, Some(&Fixed(SharedVerdict::Deny(7_000_000)))), Err(Hold::Rate(7_000)));
    assert!(p.try_message(0, Some(&Fixed(SharedVerdict::Allow))).is_ok());
    assert!(p.try_message(0, Some(&Fixed(SharedVerdict::Local))).is_ok(), "local GCRA");
    assert_eq!(p.try_message(0, Some(&Fixed(SharedVerdict::Local))), Err(Hold::Rate(1_000)));
}

#[test]
fn a_throttle_slows_a_shared_path_even_when_the_cluster_allows() {
    let c = config("[[shape]]\nsite = \"*\"\nmax_message_rate = \"10/s\"\nshared = true\n");
    let s = Shaping::new(&c, None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    let allow = Fixed(SharedVerdict::Allow);
    assert!(p.try_message(0, Some(&allow)).is_ok() && p.try_message(0, Some(&allow)).is_ok(), "not throttled: the cluster decides");
    p.throttle(0.1, 60_000, "rule gmail-4.7.28");
    assert!(p.try_message(1_000, Some(&allow)).is_ok());
    assert_eq!(p.try_message(1_000, Some(&allow)), Err(Hold::Rate(2_000)), "a tenth of 10/s: one per second");
}

#[test]
fn pools_choose_by_weight_and_overflow_past_a_full_source() {
    let c = config(
        "[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\n[[source]]\nname = \"ip3\"\nbind = \"127.0.0.3\"\n[[pool]]\nname = \"bulk\"\nsources = { ip2 = 1, ip3 = 3 }\n",
    );
    let s = Shaping::new(&c, None);
    let bulk = s.pool_index("bulk");
    let mut ch = Chooser::default();
    let picks: Vec<usize> = (0..400).map(|_| ch.pick(&s, bulk, |_| Offer::Take).unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 100);
    assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 300);
    assert_eq!(ch.pick(&s, None, |_| Offer::Take), Ok(0), "no default pool: the host's address");
    assert_eq!(ch.pick(&s, bulk, |i| if i == 2 { Offer::Overflow(9) } else { Offer::Take }), Ok(1));
    assert_eq!(ch.pick(&s, bulk, |_| Offer::Overflow(9)), Err(9));
    assert_eq!(ch.pick(&s, bulk, |_| Offer::Wait(5)), Err(5));
}

#[test]
fn the_pool_header_is_found_with_its_folded_lines() {
    let msg: [&[u8]; 2] = [b"From: a@b\r\nX-Ringpost-Pool: bu", b"lk\r\n  more\r\nSubject: x\r\n\r\nX-Ringpost-Pool: no\r\n"];
    let (v, r) = find_header(msg.iter().copied(), POOL_HEADER).unwrap();
    assert_eq!(v, "bulk more");
    let all = msg.concat();
    assert_eq!(&all[r], b"X-Ringpost-Pool: bulk\r\n  more\r\n");
    let none: [&[u8]; 1] = [b"Subject: x\r\n\r\nX-Ringpost-Pool: body\r\n"];
    assert!(find_header(none.iter().copied(), POOL_HEADER).is_none(), "only the header section");
}

#[test]
fn a_rules_suspension_tells_every_idle_connection_of_the_path_to_quit() {
    let s = Shaping::new(&config(""), None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    let idle: Vec<_> = (0..3).map(|_| p.listen_idle_quit()).collect();
    p.suspend(5_000, "rule tss04");
    for l in idle {
        assert_eq!(futures_lite::future::block_on(futures_lite::future::poll_once(l)), Some(()), "every idle connection hears it");
    }
}

#[test]
fn the_connection_rate_can_be_looked_at_without_taking_a_turn() {
    let c = config("[[shape]]\nsite = \"*\"\nmax_connection_rate = \"2/s\"\n");
    let s = Shaping::new(&c, None);
    let p = s.path(0, "a.test", &Site::of_mx("a.test", ["mx".into()]));
    assert_eq!(p.connection_rate_allows(1_000), Ok(()));
    assert_eq!(p.connection_rate_allows(1_000), Ok(()), "looking takes nothing");
    assert!(p.try_open(1_000, 0, 9, None).is_ok());
    assert_eq!(p.connection_rate_allows(1_000), Err(1_500));
    assert_eq!(p.connection_rate_allows(1_500), Ok(()));
}

#[test]
fn more_pools_than_a_queued_delivery_can_name_are_refused() {
    let pools = |n: usize| (0..n).map(|i| format!("[[pool]]\nname = \"p{i}\"\nsources = {{ ip2 = 1 }}\n")).collect::<String>();
    let head = "[server]\n[[source]]\nname = \"ip2\"\nbind = \"127.0.0.2\"\n";
    crate::config::Config::parse(&format!("{head}{}", pools(65534))).unwrap();
    let e = crate::config::Config::parse(&format!("{head}{}", pools(65535))).unwrap_err().to_string();
    assert!(e.contains("65535 pools: at most 65534"), "{e}");
}
