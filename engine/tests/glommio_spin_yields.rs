//! Guard for ringpost's glommio patch 6 (vendor/glommio/PATCHED.md): an executor that spins
//! before parking offers its CPU to other runnable threads between polls (`sched_yield`).
//!
//! Why it matters: ringpost spins before parking by default (`engine.spin_before_park_us`) so a
//! core under load stays awake between events instead of sleeping and being woken for each
//! one. On a machine it shares with the processes that talk to it (load generators, an
//! injecting application, the kernel's I/O workers), a spin that does not yield takes half of
//! its CPU from them for the whole spin window.
//!
//! How it shows it: a busy thread and a spinning executor pinned to the same CPU. The busy
//! thread's fixed amount of work takes about as long as it does alone when the executor
//! yields, and about twice as long when it spins without yielding (the scheduler then shares
//! the CPU between them). The bound sits between the two. This file holds only this test, so
//! no other test of the same binary runs beside it.
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pin the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; sched_setaffinity
    // reads `size_of::<cpu_set_t>()` bytes from it and only changes this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin to cpu {cpu}");
    }
}

/// A fixed amount of integer work; returns how long it took.
fn work(rounds: u64) -> Duration {
    let started = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    for i in 0..rounds {
        x = black_box(x.rotate_left(7) ^ i).wrapping_mul(0x0100_0000_01B3);
    }
    black_box(x);
    started.elapsed()
}

#[test]
fn a_spinning_executor_leaves_its_cpu_to_a_busy_thread() {
    pin_to(0);
    // About 150 ms of work alone; the best of three, so one preemption does not set the base.
    let mut rounds = 1_000_000;
    while work(rounds) < Duration::from_millis(150) {
        rounds *= 2;
    }
    let alone = (0..3).map(|_| work(rounds)).min().unwrap();

    // An executor on the same CPU whose only task sleeps 4 s on a timer, with a spin window
    // longer than that: it spins (polling, and yielding between polls) the whole time.
    let spinning = Arc::new(AtomicBool::new(false));
    let flag = spinning.clone();
    let executor = std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
            .spin_before_park(Duration::from_secs(10))
            .make()
            .unwrap();
        ex.run(async move {
            flag.store(true, Ordering::Release);
            glommio::timer::sleep(Duration::from_secs(4)).await;
        });
    });
    while !spinning.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let beside = work(rounds);
    let beside_again = work(rounds);
    executor.join().unwrap();

    let beside = beside.min(beside_again);
    let ratio = beside.as_secs_f64() / alone.as_secs_f64();
    eprintln!("work alone {alone:?}, beside the spinning executor {beside:?} ({ratio:.2}x)");
    // Yielding: about 1.0x. Spinning without yielding: about 2x (a fair share of one CPU).
    assert!(ratio < 1.5, "the spinning executor took {ratio:.2}x the busy thread's time: it does not yield its CPU");
}
