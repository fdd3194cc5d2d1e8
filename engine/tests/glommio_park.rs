//! glommio 0.9.0, as published, can park an executor that still has runnable tasks: its run
//! loop asks `run_task_queues` for work, and that returns "nothing ran" when the preempt flag is
//! already up before the first task queue runs (a latency-ring completion, such as the preempt
//! timer itself, landed after the loop last drained the ring). The loop then parks, with no
//! preempt timer armed, until some I/O completes or a user timer fires: with neither coming, a
//! core sleeps for good with its tasks queued. ringpost builds against the patched copy in
//! `vendor/glommio` (see its PATCHED.md); this test is the regression guard.
//!
//! How it provokes the bug: a preempt timer of one microsecond expires almost every time before
//! the executor's loop gets from arming it to running its queues, and the tasks only yield to
//! each other (no I/O, no timer), so a park is never woken. With the published crate the
//! executor parks for good (0 % CPU); with only the first of the two fixes it spins without
//! running a task; with both it finishes in seconds.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `turns` yields in each of two tasks on a fresh executor with the given preempt timer,
/// on its own thread, and reports whether they finished. It fails on lack of progress, not on
/// total time: the turn counter must move at least every `stall` (a parked executor, or one
/// spinning without running a task, never moves it again; its thread leaks), so a slow,
/// loaded machine cannot fail it.
fn finishes(preempt: Duration, turns: u64, stall: Duration) -> bool {
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::default().preempt_timer(preempt).make().unwrap();
        ex.run(async move {
            // Two tasks hand the CPU back and forth, as a busy core's tasks do.
            let c = counter.clone();
            let other = glommio::spawn_local(async move {
                for _ in 0..turns {
                    futures_lite::future::yield_now().await;
                    c.fetch_add(1, Ordering::Relaxed);
                }
            });
            for _ in 0..turns {
                futures_lite::future::yield_now().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            other.await;
        });
    });
    let (mut seen, mut moved) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = done.load(Ordering::Relaxed);
        if now == 2 * turns {
            return true;
        }
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if moved.elapsed() > stall {
            eprintln!("no progress for {stall:?} after {now} of {} turns", 2 * turns);
            return false;
        }
    }
}

#[test]
fn an_executor_never_parks_while_a_task_is_runnable() {
    assert!(
        finishes(Duration::from_micros(1), 20_000, Duration::from_secs(10)),
        "the executor parked, or spun without running a task, with runnable tasks (glommio park bug)"
    );
}

/// Two executors on their own threads pass a token back and forth `rounds` times over
/// glommio's shared channels, so each one goes to sleep between messages and is woken by the
/// other. ringpost's patch 4 replaced the sleeper's process-wide `membarrier` with a fence on
/// each side: a wake-up lost in that handshake leaves both asleep, and the round counter stops.
fn ping_pong(rounds: u64, stall: Duration, spin: Option<Duration>) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    use glommio::channels::shared_channel;
    let done = Arc::new(AtomicU64::new(0));
    let (to_b, from_a) = shared_channel::new_bounded::<u64>(1);
    let (to_a, from_b) = shared_channel::new_bounded::<u64>(1);
    let counter = done.clone();
    std::thread::spawn(move || {
        let ex = executor(spin.map(|d| (d, 0)));
        ex.run(async move {
            // Both ends at once: each connect waits for its peer's.
            let (tx, rx) = futures_lite::future::zip(to_b.connect(), from_b.connect()).await;
            for i in 0..rounds {
                tx.send(i).await.unwrap();
                assert_eq!(rx.recv().await, Some(i));
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    std::thread::spawn(move || {
        let ex = executor(spin.map(|d| (d, 1 % cpus)));
        ex.run(async move {
            let (tx, rx) = futures_lite::future::zip(to_a.connect(), from_a.connect()).await;
            while let Some(i) = rx.recv().await {
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        });
    });
    let (mut seen, mut moved) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = done.load(Ordering::Relaxed);
        if now == rounds {
            return true;
        }
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if moved.elapsed() > stall {
            eprintln!("no progress for {stall:?} after {now} of {rounds} round trips");
            return false;
        }
    }
}

/// An executor as ping_pong's ends use it: unpinned and parking at once, or pinned to `cpu`
/// and spinning `spin` first (glommio ignores a spin on an unpinned executor).
fn executor(spin: Option<(Duration, usize)>) -> glommio::LocalExecutor {
    match spin {
        Some((d, cpu)) => glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu)).spin_before_park(d).make().unwrap(),
        None => glommio::LocalExecutorBuilder::default().make().unwrap(),
    }
}

#[test]
fn an_executor_asleep_always_wakes_for_a_message_from_another() {
    assert!(ping_pong(50_000, Duration::from_secs(10), None), "a cross-executor wake-up was lost: both executors slept");
}

/// With `engine.spin_before_park_us` set, an executor spins (patch 6 yields the CPU between
/// polls) and then parks. The same liveness guard as above with both ends pinned and a 20 us
/// spin: a message is found either by a spinning end's poll or by the park's handshake, and one
/// sent around the moment an end stops spinning and never seen stops the counter.
#[test]
fn an_executor_spinning_or_asleep_always_takes_a_message_from_another() {
    assert!(
        ping_pong(50_000, Duration::from_secs(10), Some(Duration::from_micros(20))),
        "a cross-executor message was missed by an executor that spins before parking"
    );
}

/// How many times, in `window`, a task that only checks `need_preempt` (no I/O, no yield)
/// finds it set, with a preempt timer of `period`.
fn preemptions(period: Duration, window: Duration) -> u64 {
    let ex = glommio::LocalExecutorBuilder::default().preempt_timer(period).make().unwrap();
    ex.run(async move {
        let mut seen = 0;
        let start = Instant::now();
        while start.elapsed() < window {
            if glommio::executor().need_preempt() {
                seen += 1;
                // Give the loop its turn: the next preemption needs the timer armed again.
                futures_lite::future::yield_now().await;
            }
        }
        seen
    })
}

#[test]
fn a_busy_task_is_still_told_to_yield_every_preempt_period() {
    // ringpost's patch 5 keeps a pending preempt timer across the executor's turns instead of
    // re-arming it on each: it must still fire about once a period while a task runs (here
    // 10 ms over 1 s: about 100; 40 allows for a loaded machine). Never re-arming it gives 1.
    // Over 150 would mean a timer firing early or re-armed at once (a busy loop of turns).
    let seen = preemptions(Duration::from_millis(10), Duration::from_secs(1));
    assert!((40..=150).contains(&seen), "told to yield {seen} times in 1 s with a 10 ms preempt timer");
}

#[test]
fn an_idle_executor_wakes_for_its_timer() {
    // The timer of a sleeping executor (patch 5 gave it its own slot, apart from the preempt
    // timer that a sleep cancels): a 200 ms sleep with nothing else to do ends on time, not
    // never, and not at the first preempt period.
    let ex = glommio::LocalExecutorBuilder::default().preempt_timer(Duration::from_millis(10)).make().unwrap();
    let took = ex.run(async {
        let start = Instant::now();
        glommio::timer::sleep(Duration::from_millis(200)).await;
        start.elapsed()
    });
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "a 200 ms sleep took {took:?}");
}

#[test]
fn a_latency_sensitive_queue_shortens_a_pending_preempt_timer() {
    // Patch 5 keeps a pending preempt timer across turns. When a `Latency::Matters` queue
    // becomes active the period shrinks, and a kept timer that would fire after the new period
    // must be replaced. The executor's period is 2 s, armed at its first turn. In that turn a
    // task in a queue asking for 10 ms registers a 20 ms timer and waits for it, and the
    // default task, told through a channel, spins 40 ms and waits too. At the next turn (no
    // park and no preemption in between, so the 2 s timer is still pending) the expired timer
    // wakes the task, its queue becomes active, and the period is 10 ms. The task then runs
    // busy for 500 ms: told to yield about every 10 ms (about 45 here; 10 allows for a loaded
    // machine), where keeping the 2 s timer tells it 0 times. (Upstream glommio recomputes the
    // period only when a queue is activated or emptied, and leaves a running queue out: hence
    // the timer, which makes the activation happen between turns.)
    let ex = glommio::LocalExecutorBuilder::default().preempt_timer(Duration::from_secs(2)).make().unwrap();
    let seen = ex.run(async {
        let tq = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(Duration::from_millis(10)),
            "latency-sensitive",
        );
        let (tx, rx) = glommio::channels::local_channel::new_bounded::<()>(1);
        let busy = glommio::spawn_local_into(
            async move {
                let mut sleep = std::pin::pin!(glommio::timer::sleep(Duration::from_millis(20)));
                // Registered here (first poll), before the default task is told.
                assert!(futures_lite::future::poll_once(sleep.as_mut()).await.is_none());
                tx.send(()).await.unwrap();
                sleep.await;
                let mut seen = 0u64;
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(500) {
                    if glommio::executor().need_preempt() {
                        seen += 1;
                        futures_lite::future::yield_now().await;
                    }
                }
                seen
            },
            tq,
        )
        .unwrap();
        rx.recv().await.unwrap();
        // Let the 20 ms timer expire before this turn ends.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(40) {}
        busy.await
    });
    assert!((10..=100).contains(&seen), "told to yield {seen} times in 500 ms with a 10 ms latency queue and a 2 s preempt timer");
}
