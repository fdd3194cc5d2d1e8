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
use std::sync::mpsc;
use std::time::Duration;

/// Runs `turns` yields on a fresh executor with the given preempt timer, on its own thread, and
/// reports whether it finished within `limit` (a parked executor never does: its thread leaks).
fn finishes(preempt: Duration, turns: u32, limit: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::default().preempt_timer(preempt).make().unwrap();
        ex.run(async move {
            // Two tasks hand the CPU back and forth, as a busy core's tasks do.
            let other = glommio::spawn_local(async move {
                for _ in 0..turns {
                    futures_lite::future::yield_now().await;
                }
            });
            for _ in 0..turns {
                futures_lite::future::yield_now().await;
            }
            other.await;
        });
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

#[test]
fn an_executor_never_parks_while_a_task_is_runnable() {
    assert!(
        finishes(Duration::from_micros(1), 200_000, Duration::from_secs(60)),
        "the executor parked with runnable tasks and nothing to wake it (glommio park bug)"
    );
}
