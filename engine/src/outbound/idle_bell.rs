//! The bell an idle outbound connection waits on: rung by its own core when work comes for it
//! ([`crate::outbound::queue::Dispatch::WakeIdle`]) or when it must QUIT (its idle time ran
//! out, its slot is wanted, a suspension, shutdown).
//!
//! Why not `event_listener::Event`: with 4,000 paths each message wakes an idle connection,
//! and an `Event` costs a listener allocation, a lock and a removal per idle episode (about
//! 1.5 % of the daemon's samples in the sixth session's profile of 1,000 sites × 4 sources).
//! Both sides of this bell live on one core, so a flag and a waker in `Cell`s are enough.
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A one-core doorbell: [`IdleBell::ring`] wakes the task waiting in [`IdleBell::wait`]; a
/// ring with nobody waiting is kept until the next wait takes it (or [`IdleBell::clear`]).
#[derive(Default)]
pub struct IdleBell {
    rung: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for IdleBell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleBell").field("rung", &self.rung.get()).finish_non_exhaustive()
    }
}

impl IdleBell {
    /// A new, silent bell.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Ring: the waiting task (if any) is woken; the ring is kept until taken.
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// True when rung and not yet taken (for tests: the daemon only rings and waits).
    #[cfg(test)]
    pub fn is_rung(&self) -> bool {
        self.rung.get()
    }

    /// Forget a ring not yet taken (one meant for an episode that is over).
    pub fn clear(&self) {
        self.rung.set(false);
    }

    /// Resolves once rung (at once when a ring is pending), taking the ring.
    pub fn wait(&self) -> Wait<'_> {
        Wait(self)
    }
}

/// The future of [`IdleBell::wait`].
#[derive(Debug)]
pub struct Wait<'a>(&'a IdleBell);

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let bell = self.0;
        if bell.rung.replace(false) {
            return Poll::Ready(());
        }
        // Keep the stored waker when it would wake the same task (no clone per poll).
        let w = match bell.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        bell.waker.set(Some(w));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn a_ring_wakes_the_waiter_once_and_is_taken() {
        let bell = IdleBell::new();
        let mut wait = Box::pin(bell.wait());
        assert!(block_on(poll_once(&mut wait)).is_none(), "silent: pending");
        bell.ring();
        assert!(block_on(poll_once(&mut wait)).is_some(), "rung: ready");
        assert!(!bell.is_rung(), "the wait took the ring");
        assert!(block_on(poll_once(Box::pin(bell.wait()))).is_none(), "a taken ring does not wake the next wait");
    }

    #[test]
    fn a_ring_before_the_wait_is_kept_until_taken_or_cleared() {
        let bell = IdleBell::new();
        bell.ring();
        assert!(block_on(poll_once(Box::pin(bell.wait()))).is_some(), "kept for the next wait");
        bell.ring();
        bell.clear();
        assert!(block_on(poll_once(Box::pin(bell.wait()))).is_none(), "cleared");
    }

    #[test]
    fn the_ring_wakes_the_stored_waker() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let bell = IdleBell::new();
        let mut wait = Box::pin(bell.wait());
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "polled twice: one waker kept");
        bell.ring();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken exactly once");
        bell.ring();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waker was taken by the first ring");
    }
}
