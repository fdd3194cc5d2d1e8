//! Per-destination queues on the owning core: a ready FIFO per destination, a retry schedule,
//! and the dispatcher that decides when a connection is opened (queue manager apart from the
//! delivery agent: this module decides *what goes when*; `deliver` only speaks SMTP).
use crate::config::DeliverySection;
use crate::shard::core::Core;
use crate::outbound::agent as deliver;
use crate::message::SpooledMessage;
use crate::outbound::retry::RetryPolicy;
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Some recipients of one message bound for one destination.
pub struct Delivery {
    /// The message.
    pub msg: Arc<SpooledMessage>,
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far.
    pub attempts: u32,
}

#[derive(Default)]
struct Destination {
    ready: VecDeque<Delivery>,
    connections: usize,
    idle: usize,
    wake: Rc<Event>,
}

/// All destination queues of one core.
pub struct Queues {
    dests: RefCell<HashMap<String, Destination>>,
    retry: RefCell<BTreeMap<(Instant, u64), (String, Delivery)>>,
    retry_seq: Cell<u64>,
    retry_wake: Event,
    /// The backoff policy.
    pub policy: RetryPolicy,
    max_connections: usize,
}

impl Queues {
    /// Empty queues.
    pub fn new(d: &DeliverySection) -> Self {
        Self {
            dests: RefCell::new(HashMap::new()),
            retry: RefCell::new(BTreeMap::new()),
            retry_seq: Cell::new(0),
            retry_wake: Event::new(),
            policy: RetryPolicy {
                first: Duration::from_secs_f64(d.retry_first_s),
                factor: d.retry_factor,
                max: Duration::from_secs_f64(d.retry_max_s),
                max_age: Duration::from_secs_f64(d.max_age_s),
            },
            max_connections: d.max_connections_per_destination,
        }
    }

    /// Queue a delivery as ready now.
    pub fn enqueue(&self, core: &Rc<Core>, domain: String, d: Delivery) {
        self.dests.borrow_mut().entry(domain.clone()).or_default().ready.push_back(d);
        self.dispatch(core, &domain);
    }

    /// Queue a delivery for later.
    pub fn schedule(&self, domain: String, d: Delivery, after: Duration) {
        let seq = self.retry_seq.get();
        self.retry_seq.set(seq + 1);
        self.retry.borrow_mut().insert((Instant::now() + after, seq), (domain, d));
        self.retry_wake.notify(1);
    }

    /// Wake an idle connection or open a new one, within the destination's connection limit.
    fn dispatch(&self, core: &Rc<Core>, domain: &str) {
        let mut dests = self.dests.borrow_mut();
        let dest = dests.get_mut(domain).expect("dispatch of unknown destination");
        if dest.ready.is_empty() {
            return;
        }
        if dest.idle > 0 {
            dest.wake.notify(1);
        } else if dest.connections < self.max_connections && !core.shared.stopping() {
            dest.connections += 1;
            glommio::spawn_local(deliver::run_connection(core.clone(), domain.to_string())).detach();
        }
    }

    /// Next ready delivery for a connection to `domain`.
    pub fn pop(&self, domain: &str) -> Option<Delivery> {
        self.dests.borrow_mut().get_mut(domain)?.ready.pop_front()
    }

    /// Take every ready delivery of `domain` (the destination is unreachable).
    pub fn drain(&self, domain: &str) -> Vec<Delivery> {
        self.dests.borrow_mut().get_mut(domain).map(|d| d.ready.drain(..).collect()).unwrap_or_default()
    }

    /// Wait up to `idle` for more work for `domain`; returns it, or `None` to close.
    pub async fn wait_for_work(&self, domain: &str, idle: Duration) -> Option<Delivery> {
        if let Some(d) = self.pop(domain) {
            return Some(d);
        }
        let wake = self.dests.borrow().get(domain)?.wake.clone();
        let listener = wake.listen();
        if let Some(d) = self.pop(domain) {
            return Some(d);
        }
        self.set_idle(domain, 1);
        futures_lite::future::or(async { listener.await }, glommio::timer::sleep(idle)).await;
        self.set_idle(domain, -1);
        self.pop(domain)
    }

    fn set_idle(&self, domain: &str, delta: isize) {
        if let Some(d) = self.dests.borrow_mut().get_mut(domain) {
            d.idle = d.idle.saturating_add_signed(delta);
        }
    }

    /// A connection to `domain` ended; reopen one if work arrived meanwhile.
    pub fn connection_closed(&self, core: &Rc<Core>, domain: &str) {
        let again = {
            let mut dests = self.dests.borrow_mut();
            let d = dests.get_mut(domain).expect("closing unknown destination");
            d.connections -= 1;
            if d.connections == 0 && d.ready.is_empty() {
                dests.remove(domain);
                false
            } else {
                d.connections == 0
            }
        };
        if again {
            self.dispatch(core, domain);
        }
    }

    /// The retry timer: moves due deliveries back to their ready queues. Runs for the life of
    /// the core.
    pub async fn run_retry_timer(core: Rc<Core>) {
        let q = &core.queues;
        while !core.shared.stopping() {
            let listener = q.retry_wake.listen();
            let now = Instant::now();
            let due: Vec<(String, Delivery)> = {
                let mut retry = q.retry.borrow_mut();
                let later = retry.split_off(&(now, u64::MAX));
                std::mem::replace(&mut *retry, later).into_values().collect()
            };
            for (domain, d) in due {
                q.enqueue(&core, domain, d);
            }
            let wait = q.retry.borrow().keys().next().map(|(t, _)| t.saturating_duration_since(now)).unwrap_or(Duration::from_secs(1));
            futures_lite::future::or(async { listener.await }, glommio::timer::sleep(wait.min(Duration::from_secs(1)))).await;
        }
    }
}
