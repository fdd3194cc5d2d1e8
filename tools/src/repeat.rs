//! `--every INTERVAL`: run a one-shot command again and again over one kept connection, as
//! `watch` would, until Ctrl-C or `--count` replies. A monitoring agent that polls ringpost
//! this way costs the host one process and one connection instead of one per poll.
use crate::client::Conn;
use crate::live;
use crate::show;
use ringpost_admin_proto::{Reply, Request};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What `--every` does: how often, how many times (none: until interrupted), how to print.
pub struct Every {
    /// Time from one request to the next (a slow reply delays the next one, never stacks).
    pub interval: Duration,
    /// Stop after this many replies.
    pub count: Option<u64>,
    /// One compact JSON object per reply, a line each (else a table per reply).
    pub json: bool,
}

/// Poll `request` as `every` says. Exit codes as for one call: 3 when the connection fails
/// (or breaks), 1 when the daemon refuses, 0 otherwise.
pub fn run(path: &Path, request: &Request, timeout: Duration, every: &Every) -> ExitCode {
    live::catch_signals();
    let mut conn = match Conn::open(path, timeout) {
        Ok(c) => c,
        Err(e) => return fail(path, e),
    };
    let mut next = Instant::now();
    let mut done = 0u64;
    while !live::interrupted() && every.count.is_none_or(|c| done < c) {
        let reply = match conn.call(request) {
            Ok(r) => r,
            Err(e) => return fail(path, e),
        };
        done += 1;
        if every.json {
            println!("{}", serde_json::to_string(&reply).expect("replies serialise"));
        } else {
            println!("{}", show::human(&reply));
        }
        if let Reply::Error(e) = reply {
            eprintln!("ringctl: refused ({:?}): {}", e.kind, e.message);
            return ExitCode::from(1);
        }
        // After a slow reply the next poll waits a full interval: polls never stack up.
        next = (next + every.interval).max(Instant::now());
        live::sleep_until(next);
    }
    ExitCode::SUCCESS
}

fn fail(path: &Path, e: std::io::Error) -> ExitCode {
    eprintln!("ringctl: {}: {e}", path.display());
    ExitCode::from(3)
}
