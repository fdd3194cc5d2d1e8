//! Each request: which cores to ask, and how their answers make one reply. Destination
//! commands go to the core that owns the destination; the rest to every core.
use super::Admin;
use crate::shard::admin_ops::{BouncePick, CoreAnswer, CoreOp, DoneMsg, MsgAnswer, OwnedMsg, QueuedAnswer};
use crate::shard::router::owner_core;
use ringpost_admin_proto::{
    BounceTarget, CoreStatus, DestStatus, Done, ErrorKind, MsgStatus, QueueReport, QueueSort, RcptState, RcptStatus, Reply, Request, Status,
    SuppressOp, Target, QUEUE_LIMIT_MAX,
};
use ringpost_spool::MsgRef;

impl Admin {
    /// Answer one request.
    pub async fn handle(&self, request: Request) -> Reply {
        let r = match request {
            Request::Status => self.status().await,
            Request::Queue { limit, sort } => self.queue(limit, sort).await,
            Request::Msg { id } => self.msg(&id).await,
            Request::Suspend { target, for_s } => {
                let what = match for_s {
                    Some(s) => format!("suspended for {s} s"),
                    None => "suspended".into(),
                };
                self.per_target(target, what, |d| CoreOp::Suspend(d, for_s)).await
            }
            Request::Resume { target } => self.per_target(target, "resumed".into(), CoreOp::Resume).await,
            Request::Retry { target } => self.retry(target).await,
            Request::Bounce { target, reason } => self.bounce(target, reason.unwrap_or_else(|| "no reason given".into())).await,
            Request::Drain { on } => self.drain(on).await,
            Request::Reload => Ok(self.reload().await),
            Request::Suppress(op) => self.suppress(op).await,
            Request::Trace { .. } | Request::Top { .. } => Err(Reply::error(ErrorKind::Refused, "a streaming request is served by its connection")),
        };
        r.unwrap_or_else(|e| e)
    }

    pub(super) async fn status(&self) -> Result<Reply, Reply> {
        let cores: Vec<CoreStatus> = self.ask_all(|| CoreOp::Status).await?.into_iter().filter_map(as_status).collect();
        let draining = self.draining.get();
        Ok(Reply::Status(Status { version: env!("CARGO_PKG_VERSION").into(), uptime_s: self.started.elapsed().as_secs(), draining, cores }))
    }

    pub(super) async fn queue(&self, limit: u32, sort: QueueSort) -> Result<Reply, Reply> {
        let mut all: Vec<DestStatus> = Vec::new();
        for a in self.ask_all(|| CoreOp::Queue).await? {
            if let CoreAnswer::Queue(d) = a {
                all.extend(d);
            }
        }
        let total = |d: &DestStatus| d.ready + d.waiting + d.in_flight;
        match sort {
            QueueSort::Total => all.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.domain.cmp(&b.domain))),
            QueueSort::Ready => all.sort_by(|a, b| b.ready.cmp(&a.ready).then_with(|| a.domain.cmp(&b.domain))),
            QueueSort::Waiting => all.sort_by(|a, b| b.waiting.cmp(&a.waiting).then_with(|| a.domain.cmp(&b.domain))),
            QueueSort::Oldest => all.sort_by(|a, b| b.oldest_age_s.cmp(&a.oldest_age_s).then_with(|| a.domain.cmp(&b.domain))),
            QueueSort::Name => all.sort_by(|a, b| a.domain.cmp(&b.domain)),
        }
        let total_destinations = all.len() as u64;
        all.truncate(limit.min(QUEUE_LIMIT_MAX) as usize);
        Ok(Reply::Queue(QueueReport { total_destinations, destinations: all }))
    }

    async fn msg(&self, id: &str) -> Result<Reply, Reply> {
        let msg_ref = match parse_queue_id(id) {
            Ok(m) => m,
            Err(not_a_queue_id) => self.find_message_id(id).await?.ok_or(not_a_queue_id)?,
        };
        if msg_ref.core as usize >= self.ncores() {
            return Err(not_found(id));
        }
        let answers: Vec<MsgAnswer> = self
            .ask_all(|| CoreOp::Msg(msg_ref))
            .await?
            .into_iter()
            .filter_map(|a| if let CoreAnswer::Msg(m) = a { Some(m) } else { None })
            .collect();
        let mut queued = Vec::new();
        let mut owner = MsgAnswer::default();
        for (core, mut a) in answers.into_iter().enumerate() {
            queued.append(&mut a.queued);
            if core == msg_ref.core as usize {
                owner = a;
            }
        }
        let qid = msg_ref.to_string();
        match (owner.owned.take(), owner.done.take()) {
            (Some(o), _) => Ok(Reply::Msg(live_status(qid, o, &owner, &queued))),
            (None, Some(d)) => Ok(Reply::Msg(done_status(qid, d))),
            (None, None) => Err(not_found(id)),
        }
    }

    /// The queue id of the message that carried `mid` (a Message-ID, brackets optional).
    async fn find_message_id(&self, mid: &str) -> Result<Option<MsgRef>, Reply> {
        let mid = mid.trim().trim_start_matches('<').trim_end_matches('>').to_string();
        let found = self.ask_all(|| CoreOp::FindMessageId(mid.clone())).await?;
        Ok(found.into_iter().find_map(|a| if let CoreAnswer::Found(m) = a { m } else { None }))
    }

    async fn suppress(&self, op: SuppressOp) -> Result<Reply, Reply> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match crate::shard::admin_ops::suppress(&self.shared, op, now_s).await {
            r @ Reply::Error(_) => Err(r),
            r => Ok(r),
        }
    }

    /// Send `op` to the owner of the target destination, or to every core for `All`.
    async fn per_target(&self, target: Target, what: String, op: impl Fn(Option<String>) -> CoreOp) -> Result<Reply, Reply> {
        match target {
            Target::Domain(d) => {
                let d = d.to_ascii_lowercase();
                let core = owner_core(&d, self.ncores());
                self.ask(core, op(Some(d.clone()))).await?;
                Ok(done(format!("{d} {what} (core {core})"), 1))
            }
            Target::All => {
                let n = self.ask_all(|| op(None)).await?.len();
                Ok(done(format!("every destination {what} ({n} cores)"), n as u64))
            }
        }
    }

    async fn retry(&self, target: Target) -> Result<Reply, Reply> {
        let (answers, name) = match target {
            Target::Domain(d) => {
                let d = d.to_ascii_lowercase();
                (vec![self.ask(owner_core(&d, self.ncores()), CoreOp::Retry(Some(d.clone()))).await?], d)
            }
            Target::All => (self.ask_all(|| CoreOp::Retry(None)).await?, "every destination".into()),
        };
        let n = count(answers);
        Ok(done(format!("{name}: {n} waiting deliveries made ready now"), n))
    }

    async fn bounce(&self, target: BounceTarget, reason: String) -> Result<Reply, Reply> {
        let (answers, name) = match target {
            BounceTarget::Domain(d) => {
                let d = d.to_ascii_lowercase();
                let core = owner_core(&d, self.ncores());
                (vec![self.ask(core, CoreOp::Bounce(BouncePick::Domain(d.clone()), reason.clone())).await?], d)
            }
            BounceTarget::Msg(id) => {
                let m = parse_queue_id(&id)?;
                (self.ask_all(|| CoreOp::Bounce(BouncePick::Msg(m), reason.clone())).await?, format!("message {id}"))
            }
        };
        let n = count(answers);
        Ok(done(format!("{name}: {n} queued recipients bounced ({reason}); recipients in flight finish their attempt"), n))
    }

    async fn drain(&self, on: bool) -> Result<Reply, Reply> {
        let n = self.ask_all(|| CoreOp::Drain(on)).await?.len() as u64;
        self.draining.set(on);
        let what = if on { "draining: new sessions get 421, delivery goes on" } else { "accepting mail again" };
        Ok(done(format!("{what} ({n} cores)"), n))
    }
}

/// A live message: each recipient from the queue holding it, else its final outcome, else in
/// flight (on a connection or between cores).
fn live_status(id: String, o: OwnedMsg, owner: &MsgAnswer, queued: &[QueuedAnswer]) -> MsgStatus {
    let recipients = o
        .recipients
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let i = i as u32;
            let recipient = addr.clone();
            if let Some(q) = queued.iter().find(|q| q.rcpt == i) {
                let (state, attempts, next_attempt_unix_ms, last_response) = (q.state, q.attempts, q.next_attempt_ms, q.last_response.clone());
                return RcptStatus { recipient, state, attempts, next_attempt_unix_ms, last_response, category: None };
            }
            if let Some(f) = owner.finals.iter().find(|f| f.rcpt == i) {
                let (state, attempts, last_response) = (f.state, f.attempts, Some(f.response.to_string()));
                return RcptStatus { recipient, state, attempts, next_attempt_unix_ms: None, last_response, category: f.category.map(String::from) };
            }
            let (state, last) = match o.failed.iter().find(|f| f.0 == *addr) {
                _ if o.open.contains(&i) => (RcptState::InFlight, None),
                Some((_, true, why)) => (RcptState::Expired, Some(why.clone())),
                Some((_, false, why)) => (RcptState::Bounced, Some(why.clone())),
                None => (RcptState::Delivered, None),
            };
            RcptStatus { recipient, state, attempts: 0, next_attempt_unix_ms: None, last_response: last, category: None }
        })
        .collect();
    let (sender, size, received_unix_ms, message_id) = (o.sender, o.size, o.received_ms, owner.message_id.clone());
    MsgStatus { id, message_id, finished: false, sender, size, received_unix_ms, recipients }
}

/// A finished message from the history.
fn done_status(id: String, d: DoneMsg) -> MsgStatus {
    let recipients = d
        .recipients
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let f = d.finals.iter().find(|f| f.rcpt == i as u32);
            RcptStatus {
                recipient: addr.to_string(),
                // Finished means final; a recipient with no note was settled before the restart.
                state: f.map_or(RcptState::Delivered, |f| f.state),
                attempts: f.map_or(0, |f| f.attempts),
                next_attempt_unix_ms: None,
                last_response: f.map(|f| f.response.to_string()),
                category: f.and_then(|f| f.category.map(String::from)),
            }
        })
        .collect();
    let message_id = d.message_id.map(String::from);
    MsgStatus { id, message_id, finished: true, sender: d.sender.into(), size: d.size, received_unix_ms: d.received_ms, recipients }
}

fn as_status(a: CoreAnswer) -> Option<CoreStatus> {
    match a {
        CoreAnswer::Status(s) => Some(s),
        _ => None,
    }
}

fn count(answers: Vec<CoreAnswer>) -> u64 {
    answers.into_iter().map(|a| if let CoreAnswer::Count(n) = a { n } else { 0 }).sum()
}

fn done(summary: String, count: u64) -> Reply {
    Reply::Done(Done { summary, count })
}

fn not_found(id: &str) -> Reply {
    Reply::error(ErrorKind::NotFound, format!("no live message {id} (delivered or failed already, or never queued here)"))
}

/// A queue id as printed in `250 ... queued as`: core (2 hex), segment (6), offset (10).
pub fn parse_queue_id(id: &str) -> Result<MsgRef, Reply> {
    let bad = || Reply::error(ErrorKind::NotFound, format!("{id:?} is not a queue id (18 hex digits, as in \"250 2.0.0 Ok: queued as ...\")"));
    if id.len() != 18 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let core = u16::from_str_radix(&id[..2], 16).map_err(|_| bad())?;
    let segment = u32::from_str_radix(&id[2..8], 16).map_err(|_| bad())?;
    let offset = u64::from_str_radix(&id[8..], 16).map_err(|_| bad())?;
    Ok(MsgRef { core, segment, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_parse_back_to_what_the_250_printed() {
        let m = MsgRef { core: 1, segment: 0x2a, offset: 0x1_0000_00c0 };
        assert_eq!(parse_queue_id(&m.to_string()).unwrap(), m);
        assert_eq!(parse_queue_id(&m.to_string().to_lowercase()).unwrap(), m);
        for bad in ["", "XYZ", "01000001000000000G", "0100000100000000C00"] {
            assert!(matches!(parse_queue_id(bad), Err(Reply::Error(e)) if e.kind == ErrorKind::NotFound), "{bad}");
        }
    }
}
