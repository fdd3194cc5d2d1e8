//! Each request: which cores to ask, and how their answers make one reply. Destination
//! commands go to the core that owns the destination; the rest to every core.
use super::Admin;
use crate::shard::admin_ops::{BouncePick, CoreAnswer, CoreOp, MsgAnswer};
use crate::shard::router::owner_core;
use ringpost_admin_proto::{
    BounceTarget, CoreStatus, DestStatus, Done, ErrorKind, MsgStatus, QueueReport, QueueSort, RcptState, RcptStatus, Reply, Request, Status, Target,
    QUEUE_LIMIT_MAX,
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
        };
        r.unwrap_or_else(|e| e)
    }

    async fn status(&self) -> Result<Reply, Reply> {
        let cores: Vec<CoreStatus> = self.ask_all(|| CoreOp::Status).await?.into_iter().filter_map(as_status).collect();
        let draining = self.draining.get();
        Ok(Reply::Status(Status { version: env!("CARGO_PKG_VERSION").into(), uptime_s: self.started.elapsed().as_secs(), draining, cores }))
    }

    async fn queue(&self, limit: u32, sort: QueueSort) -> Result<Reply, Reply> {
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
        let msg_ref = parse_queue_id(id)?;
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
        let mut owned = None;
        for (core, a) in answers.into_iter().enumerate() {
            queued.extend(a.queued);
            if core == msg_ref.core as usize {
                owned = a.owned;
            }
        }
        let Some(o) = owned else { return Err(not_found(id)) };
        let recipients = o
            .recipients
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let i = i as u32;
                if let Some(q) = queued.iter().find(|q| q.rcpt == i) {
                    let (state, attempts, next_attempt_unix_ms, last_response) = (q.state, q.attempts, q.next_attempt_ms, q.last_response.clone());
                    return RcptStatus { recipient: addr.clone(), state, attempts, next_attempt_unix_ms, last_response };
                }
                let (state, last) = match o.failed.iter().find(|f| f.0 == *addr) {
                    _ if o.open.contains(&i) => (RcptState::InFlight, None),
                    Some((_, true, why)) => (RcptState::Expired, Some(why.clone())),
                    Some((_, false, why)) => (RcptState::Bounced, Some(why.clone())),
                    None => (RcptState::Delivered, None),
                };
                RcptStatus { recipient: addr.clone(), state, attempts: 0, next_attempt_unix_ms: None, last_response: last }
            })
            .collect();
        Ok(Reply::Msg(MsgStatus { id: id.to_string(), sender: o.sender, size: o.size, received_unix_ms: o.received_ms, recipients }))
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
