//! What the backlog memory tests share: a counting allocator (with glibc's chunk rounding, so
//! the figure is what malloc really hands out) and the process's resident heap as the kernel
//! sees it (`RssAnon`), which is what `bench/backlog.sh` measures on the daemon.
#![allow(dead_code)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Bytes malloc holds for the live allocations of this process.
pub static LIVE: AtomicIsize = AtomicIsize::new(0);

/// A glibc malloc chunk: the request plus an 8-byte header, rounded to 16, at least 32.
fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

/// The system allocator, counting.
pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(l.size()), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(chunk(l.size()), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new) - chunk(l.size()), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

/// Live bytes now.
pub fn live() -> isize {
    LIVE.load(Relaxed)
}

/// Resident anonymous memory of this process in bytes, after giving free heap pages back
/// (as the daemon does after recovery).
pub fn rss_anon() -> isize {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon in /proc/self/status");
    let kib: isize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
