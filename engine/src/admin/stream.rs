//! Streaming replies: `trace` and `top` answer one request with frames until the client
//! closes the connection (or stops reading: the writer drops it after its timeout).
//!
//! Neither ever waits on the client: a stream pushes a frame only while fewer than
//! [`STREAM_FRAMES_MAX`] of the connection's frames wait to be written, and otherwise skips it
//! (a trace counts the events it skipped as dropped). The cores hand trace events over a
//! bounded channel with `try_send` (`crate::trace`), so a slow trace client costs a core
//! nothing but the events it drops.
use super::conn::Outbox;
use super::Admin;
use crate::shard::admin_ops::CoreOp;
use crate::trace::{Subscription, TRACE_QUEUE};
use futures_lite::StreamExt;
use ringpost_admin_proto::{encode, ErrorKind, QueueSort, Reply, TopFrame, TraceBatch};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frames of a connection waiting to be written past which a stream skips its next frame.
pub const STREAM_FRAMES_MAX: usize = 8;
/// Most events in one trace frame.
const TRACE_BATCH_MAX: usize = 256;
/// How long a trace gathers events before sending what it has (and checks the client is there).
const TRACE_FLUSH: Duration = Duration::from_millis(200);
/// Subscription ids, unique in the process.
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Admin {
    /// Serve a `Trace` request on `out` until the client goes.
    pub(super) async fn trace(&self, out: &Rc<Outbox>, id: u32, client: Option<String>, dest: Option<String>) {
        let client = match client.as_deref().map(str::parse::<std::net::IpAddr>).transpose() {
            Ok(c) => c,
            Err(e) => return out.push_reply(id, &Reply::error(ErrorKind::Refused, format!("--client: {e}"))),
        };
        let (tx, mut rx) = futures_channel::mpsc::channel(TRACE_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sub_id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        let dest = dest.map(|d| d.to_ascii_lowercase());
        let sub = Subscription { id: sub_id, client, dest, tx, dropped: dropped.clone() };
        if let Err(e) = self.ask_all(|| CoreOp::TraceOn(sub.clone())).await {
            let _ = self.ask_all(|| CoreOp::TraceOff(sub_id)).await;
            return out.push_reply(id, &e);
        }
        drop(sub);
        // The first (empty) frame says every core is subscribed.
        out.push_reply(id, &Reply::Trace(TraceBatch { events: Vec::new(), dropped_total: 0 }));
        let mut skipped = 0u64;
        while out.open() {
            let first = futures_lite::future::or(async { rx.next().await.map(Some) }, async {
                glommio::timer::sleep(TRACE_FLUSH).await;
                Some(None)
            })
            .await;
            let Some(first) = first else { break };
            let mut events: Vec<_> = first.into_iter().collect();
            while events.len() < TRACE_BATCH_MAX {
                match rx.try_recv() {
                    Ok(e) => events.push(e),
                    _ => break,
                }
            }
            if events.is_empty() {
                continue;
            }
            if out.waiting() >= STREAM_FRAMES_MAX {
                skipped += events.len() as u64;
                continue;
            }
            let dropped_total = dropped.load(Ordering::Relaxed) + skipped;
            out.push_reply(id, &Reply::Trace(TraceBatch { events, dropped_total }));
        }
        let _ = self.ask_all(|| CoreOp::TraceOff(sub_id)).await;
    }

    /// Serve a `Top` request on `out`: a frame every interval until the client goes.
    pub(super) async fn top(&self, out: &Rc<Outbox>, id: u32, interval_ms: u32, dests: u32) {
        let every = Duration::from_millis(interval_ms.clamp(200, 10_000) as u64);
        while out.open() {
            let frame = match (self.status().await, self.queue(dests.min(100), QueueSort::Total).await) {
                (Ok(Reply::Status(status)), Ok(Reply::Queue(queue))) => Reply::Top(TopFrame { unix_ms: unix_ms(), status, queue }),
                (Err(e), _) | (_, Err(e)) => e,
                _ => Reply::error(ErrorKind::Unavailable, "unexpected core answer"),
            };
            if out.waiting() < STREAM_FRAMES_MAX {
                out.push_reply(id, &frame);
            }
            let mut slept = Duration::ZERO;
            while slept < every && out.open() {
                let step = TRACE_FLUSH.min(every - slept);
                glommio::timer::sleep(step).await;
                slept += step;
            }
        }
    }
}

impl Outbox {
    /// Queue `reply` as a frame with request id `id`.
    pub(super) fn push_reply(&self, id: u32, reply: &Reply) {
        let frame = encode(id, reply)
            .unwrap_or_else(|e| encode(id, &Reply::error(ErrorKind::Unavailable, format!("reply too large: {e}"))).expect("small reply"));
        self.push(frame);
    }
}
