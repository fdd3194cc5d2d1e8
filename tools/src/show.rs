//! Replies as text for a terminal: aligned tables, one line per action.
use ringpost_admin_proto::{MsgStatus, QueueReport, Reply, Status, SuppressionReport, TraceBatch, TraceKind, TraceSide};
use std::fmt::Write;

/// A table: a header row and rows, columns padded to their widest cell (numbers right-aligned).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            let numeric = !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit() || ch == '.');
            let sep = if i == last { "" } else { "  " };
            if numeric {
                let _ = write!(out, "{c:>w$}{sep}");
            } else if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}{sep}");
            }
        }
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

pub fn status(s: &Status) -> String {
    let mut out = format!("ringpost {}  up {}  {}\n", s.version, age(s.uptime_s), if s.draining { "DRAINING" } else { "accepting" });
    let header = [
        "core",
        "sessions",
        "live",
        "ready",
        "waiting",
        "flight",
        "dests",
        "conns",
        "segments",
        "spool_MiB",
        "rounds",
        "accepted",
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "suspended",
    ];
    let mut rows = Vec::new();
    for c in &s.cores {
        let n = [c.sessions, c.messages_live, c.rcpts_ready, c.rcpts_waiting, c.rcpts_in_flight, c.destinations, c.connections_out, c.spool_segments];
        let mut row = vec![c.core.to_string()];
        row.extend(n.iter().map(u64::to_string));
        row.push(format!("{}", c.spool_bytes >> 20));
        row.extend([c.commit_rounds, c.accepted, c.delivered, c.deferred, c.bounced, c.expired].iter().map(u64::to_string));
        row.push(if c.suspended.is_empty() { "-".into() } else { c.suspended.join(",") });
        rows.push(row);
    }
    out.push_str(&table(&header, &rows));
    out
}

fn age(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn queue(q: &QueueReport) -> String {
    let rows: Vec<Vec<String>> = q
        .destinations
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.core.to_string(),
                d.ready.to_string(),
                d.waiting.to_string(),
                d.in_flight.to_string(),
                d.connections.to_string(),
                d.oldest_age_s.map_or("-".into(), age),
                if d.suspended { "suspended".into() } else { "-".into() },
                d.last_response.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(&["destination", "core", "ready", "waiting", "flight", "conns", "oldest", "state", "last response"], &rows);
    let _ = writeln!(out, "{} of {} destinations", q.destinations.len(), q.total_destinations);
    // Sites (issue 11): the domains sharing one MX set, and what a rule holds on their paths.
    let mut sites: std::collections::BTreeMap<&str, (Vec<&str>, std::collections::BTreeSet<&str>)> = Default::default();
    for d in &q.destinations {
        if let Some(site) = &d.site {
            let e = sites.entry(site.as_str()).or_default();
            e.0.push(&d.domain);
            e.1.extend(d.shaping.iter().map(String::as_str));
        }
    }
    for (site, (domains, held)) in sites {
        let _ = writeln!(out, "site {site}: {}", domains.join(", "));
        for h in held {
            let _ = writeln!(out, "  {h}");
        }
    }
    out
}

fn msg(m: &MsgStatus) -> String {
    let mut out = format!("message {}{}\n", m.id, if m.finished { "  (finished: from the history)" } else { "" });
    let mid = m.message_id.as_deref().map_or("-".to_string(), |v| format!("<{v}>"));
    let _ = writeln!(out, "  msg-id   {mid}\n  from     <{}>\n  size     {} octets\n  received {} (unix ms)", m.sender, m.size, m.received_unix_ms);
    let rows: Vec<Vec<String>> = m
        .recipients
        .iter()
        .map(|r| {
            vec![
                r.recipient.clone(),
                format!("{:?}", r.state),
                r.attempts.to_string(),
                r.next_attempt_unix_ms.map_or("-".into(), |t| t.to_string()),
                r.category.clone().unwrap_or_else(|| "-".into()),
                r.last_response.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(&["recipient", "state", "attempts", "next_attempt_ms", "category", "last response"], &rows));
    out
}

/// The reply as a human reads it.
pub fn human(reply: &Reply) -> String {
    match reply {
        Reply::Error(e) => format!("refused ({:?}): {}\n", e.kind, e.message),
        Reply::Status(s) => status(s),
        Reply::Queue(q) => queue(q),
        Reply::Msg(m) => msg(m),
        Reply::Done(d) => format!("{}\n", d.summary),
        Reply::Reload(r) => {
            let list = |v: &[String]| if v.is_empty() { "nothing".to_string() } else { v.join(", ") };
            format!("reloaded {}\n  applied live:       {}\n  needs a restart:    {}\n", r.path, list(&r.applied), list(&r.needs_restart))
        }
        Reply::Suppression(r) => suppression(r),
        Reply::Trace(b) => trace(b),
        Reply::Top(t) => format!("top frame at {} ms\n{}{}", t.unix_ms, status(&t.status), queue(&t.queue)),
    }
}

fn suppression(r: &SuppressionReport) -> String {
    let mut out = format!("{}\n", r.summary);
    if !r.entries.is_empty() {
        let rows: Vec<Vec<String>> = r
            .entries
            .iter()
            .map(|e| {
                let how = if e.manual { "manual" } else { "bounce" };
                vec![e.addr.clone(), e.category.clone(), how.into(), e.since_unix_s.to_string(), e.reason.clone()]
            })
            .collect();
        out.push_str(&table(&["address", "category", "added", "since_unix_s", "reason"], &rows));
    }
    out
}

/// Trace events, one line each: time (UTC), core, in/out and connection number, peer, who
/// spoke (`C:` client side, `S:` server side, `++` opened, `--` closed), text (a multi-line
/// reply is indented under its first line).
pub fn trace(b: &TraceBatch) -> String {
    let mut out = String::new();
    for e in &b.events {
        let secs = e.unix_ms / 1000;
        let (h, m, s, ms) = (secs / 3600 % 24, secs / 60 % 60, secs % 60, e.unix_ms % 1000);
        // As in RFC 5321's examples: C: what the client side sent, S: what the server side
        // answered (inbound we are S, outbound we are C).
        let arrow = match e.kind {
            TraceKind::Open => "++",
            TraceKind::Close => "--",
            TraceKind::Reply => "S:",
            TraceKind::Command | TraceKind::Body => "C:",
        };
        let side = match e.side {
            TraceSide::In => "in ",
            TraceSide::Out => "out",
        };
        let peer = match &e.domain {
            Some(d) => format!("{d} {}", e.peer),
            None => e.peer.clone(),
        };
        let text = match e.kind {
            TraceKind::Open => "connected".to_string(),
            TraceKind::Close => "closed".to_string(),
            _ => e.text.replace('\n', "\n                                  "),
        };
        let _ = writeln!(out, "{h:02}:{m:02}:{s:02}.{ms:03} c{} {side} #{:<5} {peer} {arrow} {text}", e.core, e.conn);
    }
    out
}
