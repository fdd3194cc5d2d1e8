//! The cluster limiter's scripts and driver against a real `redis-server` (Debian's package,
//! installed by `.ci/run`), started by each test on a free loopback port with no files.
use ringpost_engine::cluster_config::{ClusterSection, Rate, RedisAddr};
use ringpost_engine::outbound::cluster::client::{RedisConn, Script};
use ringpost_engine::outbound::cluster::lease::{batch_size, burst_us};
use ringpost_engine::outbound::cluster::limiter::{LimitKey, Limiter, PathLimits};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts redis on a free port and waits until it answers PING with +PONG. A bare TCP
    /// connect is not proof: a connect to a port nobody listens on yet can self-connect (source
    /// port = destination port, both in the ephemeral range), and the port picked can be taken
    /// by another process before redis binds it, in which case redis exits: start again on a
    /// new port (up to 5 times).
    fn start() -> Redis {
        for _ in 0..5 {
            if let Some(r) = Self::try_start() {
                return r;
            }
        }
        panic!("redis-server did not start in 5 tries");
    }

    fn try_start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let mut redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis.child.try_wait().unwrap().is_some() {
                return None; // exited: most likely the port was taken; Drop reaps it
            }
            if pings(port) {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer PING in 10 s");
    }

    fn addr(&self) -> RedisAddr {
        RedisAddr::parse(&format!("redis://127.0.0.1:{}", self.port)).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when a server on `port` answers `PING` with `+PONG` within a second.
fn pings(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn on_glommio<T: Send + 'static>(f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static) -> T {
    glommio::LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
}

fn per_s(n: u64) -> Rate {
    Rate { count: n, per: Duration::from_secs(1) }
}

const TIMEOUT: Duration = Duration::from_millis(500);

#[test]
fn gcra_grants_a_batch_then_asks_to_wait_and_survives_script_flush() {
    let redis = Redis::start();
    let addr = redis.addr();
    on_glommio(move || {
        Box::pin(async move {
            let mut c = RedisConn::connect(&addr, TIMEOUT).await.unwrap();
            let gcra = Script::new(include_str!("../src/outbound/cluster/gcra.lua"));
            // 1/s with a burst tolerance of 2 s: a batch of at most 3, then one per second
            // (slow on purpose, so a loaded machine cannot refill between two calls).
            let args: [&[u8]; 3] = [b"1000000", b"2000000", b"64"];
            // First call: EVALSHA gets NOSCRIPT, EVAL runs it. A batch of 3 of the 64 asked for.
            assert_eq!(c.run(&gcra, &[b"k1"], &args).await.unwrap(), vec![3, 0]);
            let second = c.run(&gcra, &[b"k1"], &args).await.unwrap();
            assert_eq!(second[0], 0, "burst spent: {second:?}");
            assert!((900..=1000).contains(&second[1]), "next token in ~1 s: {second:?}");
            c.call(&[b"SCRIPT", b"FLUSH"]).await.unwrap();
            let third = c.run(&gcra, &[b"k1"], &args).await.unwrap();
            assert_eq!(third[0], 0, "after SCRIPT FLUSH the EVAL fallback answers, same state: {third:?}");
            // The batch the rate gives the limiter: k tokens of BATCH_SPAN_MS.
            let rate = per_s(1000);
            assert_eq!((batch_size(rate, 64), burst_us(rate)), (20, 19_000));
        })
    });
}

#[test]
fn connection_leases_cap_holders_and_expire_by_themselves() {
    let redis = Redis::start();
    let addr = redis.addr();
    on_glommio(move || {
        Box::pin(async move {
            let mut c = RedisConn::connect(&addr, TIMEOUT).await.unwrap();
            let s = Script::new(include_str!("../src/outbound/cluster/conn_lease.lua"));
            let take = |h: &'static str, ttl: &'static str| -> [&'static [u8]; 3] { [h.as_bytes(), b"2", ttl.as_bytes()] };
            assert_eq!(c.run(&s, &[b"z"], &take("a", "300")).await.unwrap(), vec![1]);
            assert_eq!(c.run(&s, &[b"z"], &take("b", "5000")).await.unwrap(), vec![1]);
            assert_eq!(c.run(&s, &[b"z"], &take("c", "5000")).await.unwrap(), vec![0], "third holder refused");
            assert_eq!(c.run(&s, &[b"z"], &take("b", "5000")).await.unwrap(), vec![1], "a renewal is not a new holder");
            // "a" crashed: never renewed, never released. Its lease dies at its deadline.
            glommio::timer::sleep(Duration::from_millis(350)).await;
            assert_eq!(c.run(&s, &[b"z"], &take("c", "5000")).await.unwrap(), vec![1]);
        })
    });
}

/// Two limiters (two hosts) share one 200/s limit: together they admit at most the bound in a
/// 2 s window, and at least 90 % of it. The round trip of one script call is measured here.
#[test]
fn two_hosts_share_one_rate_and_fall_back_per_host_when_redis_dies() {
    let mut redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        rx.recv().unwrap();
        redis.child.kill().unwrap();
        redis.child.wait().unwrap();
    });
    on_glommio(move || {
        Box::pin(async move {
            let cfg = ClusterSection { redis: Some(url.clone()), ..Default::default() };
            let hosts = [Limiter::new(&cfg, "h1", 0), Limiter::new(&cfg, "h2", 0)];
            let rate = per_s(200);
            let key = LimitKey { name: "t".into(), path: "example.org".into() };
            let shared = admit_for(&hosts, &key, rate, Duration::from_secs(2)).await;
            eprintln!("shared 200/s, two hosts, 2 s: {shared} admitted");
            assert!(hosts.iter().all(|h| h.is_shared()));
            let bound = ringpost_engine::outbound::cluster::lease::excess_bound(rate, 2_000);
            assert!(shared as u64 <= bound && shared >= 360, "shared limit: {shared} in 2 s (bound {bound})");
            tx.send(()).unwrap();
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let alone = admit_for(&hosts, &key, rate, Duration::from_secs(2)).await;
            eprintln!("Redis killed, two hosts at 200/s each, 2 s: {alone} admitted");
            assert!(hosts.iter().all(|h| !h.is_shared()), "Redis gone: per host");
            assert!((700..=820).contains(&alone), "two hosts at 200/s each: {alone} in 2 s");
            measure_round_trip(&url).await;
        })
    });
    killer.join().unwrap();
}

async fn admit_for(hosts: &[Rc<Limiter>], key: &LimitKey, rate: Rate, d: Duration) -> usize {
    let end = Instant::now() + d;
    let mut tasks = Vec::new();
    for h in hosts {
        for _ in 0..4 {
            let (h, key) = (h.clone(), key.clone());
            tasks.push(glommio::spawn_local(async move {
                let mut n = 0;
                while Instant::now() < end {
                    h.admit_message(&key, rate, true).await;
                    if Instant::now() < end {
                        n += 1;
                    }
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await;
    }
    total
}

/// Prints the mean round trip of one GCRA call (for the report; asserted only loosely).
async fn measure_round_trip(_dead_url: &str) {
    let redis = Redis::start();
    let mut c = RedisConn::connect(&redis.addr(), TIMEOUT).await.unwrap();
    let gcra = Script::new(include_str!("../src/outbound/cluster/gcra.lua"));
    let args: [&[u8]; 3] = [b"1", b"0", b"1"];
    c.run(&gcra, &[b"rtt"], &args).await.unwrap();
    let n = 2_000;
    let t0 = Instant::now();
    for _ in 0..n {
        c.run(&gcra, &[b"rtt"], &args).await.unwrap();
    }
    let per = t0.elapsed() / n;
    eprintln!("gcra.lua round trip over glommio TcpStream: {per:?} per call ({n} calls)");
    assert!(per < Duration::from_millis(5), "{per:?}");
}

/// The synchronous hook for shaping paths: two hosts' hooks share one 200/s limit through
/// Redis; with Redis gone they answer Local (the caller's per-host limit applies).
#[test]
fn the_sync_hook_shares_a_rate_and_answers_local_when_redis_is_gone() {
    use ringpost_engine::outbound::cluster::hook::{ClusterHook, Verdict};
    let mut redis = Redis::start();
    let cfg = ClusterSection { redis: Some(format!("redis://127.0.0.1:{}", redis.port)), ..Default::default() };
    let hooks = std::sync::Arc::new([ClusterHook::new(&cfg, "h1"), ClusterHook::new(&cfg, "h2")]);
    // One clock for both runs: the caller's clock never goes back.
    let epoch = Instant::now();
    let run = |hooks: std::sync::Arc<[ClusterHook; 2]>, secs: u64| {
        on_glommio(move || {
            Box::pin(async move {
                let (t0, mut allowed, mut local) = (Instant::now(), 0, 0);
                while t0.elapsed() < Duration::from_secs(secs) {
                    for h in hooks.iter() {
                        match h.acquire("src|site", per_s(200), epoch.elapsed().as_micros() as u64 + 1) {
                            Verdict::Allow => allowed += 1,
                            Verdict::Local => local += 1,
                            Verdict::Deny(_) => {}
                        }
                    }
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
                (allowed, local)
            })
        })
    };
    let (allowed, local) = run(hooks.clone(), 2);
    eprintln!("sync hook, two hosts, shared 200/s, 2 s: {allowed} allowed");
    let bound = ringpost_engine::outbound::cluster::lease::excess_bound(per_s(200), 2_000);
    assert!(local == 0 && allowed as u64 <= bound && allowed >= 340, "allowed {allowed} (bound {bound}), local {local}");
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let (allowed, local) = run(hooks, 1);
    assert!(allowed <= 60 && local > 1_000, "Redis gone: {allowed} allowed, {local} local");
}
