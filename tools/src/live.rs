//! The streaming commands: `trace` prints events as they come; `top` redraws a terminal view
//! from a `Top` frame a second. Both end on Ctrl-C (SIGINT or SIGTERM, or the byte 0x03 while
//! the terminal is raw) or when the daemon closes; `top` also on `q`, and restores the
//! terminal however it ends.
use crate::client;
use crate::show;
use ringpost_admin_proto::{Reply, Request, TopFrame};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by SIGINT/SIGTERM: the stream ends at its next tick.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// How often a stream checks for Ctrl-C and keys while no frame comes.
const TICK: Duration = Duration::from_millis(100);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Make SIGINT and SIGTERM end the command at its next tick instead of killing it.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// True once SIGINT or SIGTERM came (after [`catch_signals`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sleep until `at`, in ticks, returning early on Ctrl-C.
pub fn sleep_until(at: std::time::Instant) {
    while !interrupted() {
        let left = at.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(TICK));
    }
}

fn exit_for(result: std::io::Result<Option<Reply>>, path: &Path) -> ExitCode {
    match result {
        Err(e) => {
            eprintln!("ringctl: {}: {e}", path.display());
            ExitCode::from(3)
        }
        Ok(Some(Reply::Error(e))) => {
            eprintln!("ringctl: refused ({:?}): {}", e.kind, e.message);
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
    }
}

/// `ringctl trace`: print each batch of events until Ctrl-C or the daemon closes.
pub fn trace(path: &Path, request: &Request, json: bool) -> ExitCode {
    catch_signals();
    let mut dropped = 0;
    let mut out = std::io::stdout();
    let result = client::stream(path, request, TICK, &|| INTERRUPTED.load(Ordering::Relaxed), &mut |reply| {
        let Reply::Trace(b) = reply else { return true };
        if b.dropped_total > dropped {
            if !json {
                let _ = writeln!(out, "-- {} events dropped (the trace could not keep up) --", b.dropped_total - dropped);
            }
            dropped = b.dropped_total;
        }
        let text = if json { format!("{}\n", serde_json::to_string(b).expect("replies serialise")) } else { show::trace(b) };
        // A closed pipe (`ringctl trace | head`) ends the trace.
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_ok()
    });
    if dropped > 0 {
        eprintln!("ringctl: {dropped} trace events were dropped in all");
    }
    exit_for(result, path)
}

/// The terminal in raw mode (no echo, no line buffering, Ctrl-C as a byte, reads that do not
/// wait), restored when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd and fails otherwise.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid termios for the same fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        // Alternate screen, cursor hidden.
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Some(Self { saved })
    }

    /// `q`, `Q` or Ctrl-C typed.
    fn quit_typed(&self) -> bool {
        let mut buf = [0u8; 64];
        match std::io::stdin().read(&mut buf) {
            Ok(n) => buf[..n].iter().any(|b| matches!(b, b'q' | b'Q' | 0x03)),
            Err(_) => false,
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        // SAFETY: restoring the attributes read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// `ringctl top`: redraw on each frame until q, Ctrl-C, `frames` frames, or the daemon closes.
/// With `--json`, or when standard output is not a terminal, frames are printed one after
/// the other instead (JSON: one object per line).
pub fn top(path: &Path, request: &Request, json: bool, frames: Option<u64>) -> ExitCode {
    catch_signals();
    let tty = !json && std::io::stdout().is_terminal();
    let raw = if tty && std::io::stdin().is_terminal() { RawTerminal::enter() } else { None };
    let quit = std::cell::Cell::new(false);
    let stop = || {
        if raw.as_ref().is_some_and(RawTerminal::quit_typed) {
            quit.set(true);
        }
        quit.get() || INTERRUPTED.load(Ordering::Relaxed)
    };
    let (mut seen, mut prev): (u64, Option<TopFrame>) = (0, None);
    let mut out = std::io::stdout();
    let result = client::stream(path, request, TICK, &stop, &mut |reply| {
        let Reply::Top(f) = reply else { return true };
        let text = match (json, tty) {
            (true, _) => format!("{}\n", serde_json::to_string(f).expect("replies serialise")),
            (false, true) => format!("\x1b[H\x1b[2J{}", render(f, prev.as_ref())),
            (false, false) => format!("{}\n", render(f, prev.as_ref())),
        };
        prev = Some(f.clone());
        seen += 1;
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_ok() && frames.is_none_or(|n| seen < n) && !stop()
    });
    drop(raw);
    exit_for(result, path)
}

/// Per-second rate of a counter between two frames.
fn rate(now: u64, before: Option<u64>, dt_ms: u64) -> String {
    match before {
        Some(b) if dt_ms > 0 => format!("{:.1}", now.saturating_sub(b) as f64 * 1000.0 / dt_ms as f64),
        _ => "-".into(),
    }
}

/// One screen of `top`.
pub fn render(f: &TopFrame, prev: Option<&TopFrame>) -> String {
    let s = &f.status;
    let sum = |st: &ringpost_admin_proto::Status, pick: fn(&ringpost_admin_proto::CoreStatus) -> u64| st.cores.iter().map(pick).sum::<u64>();
    let dt = prev.map_or(0, |p| f.unix_ms.saturating_sub(p.unix_ms));
    let r = |pick: fn(&ringpost_admin_proto::CoreStatus) -> u64| rate(sum(s, pick), prev.map(|p| sum(&p.status, pick)), dt);
    let state = if s.draining { "DRAINING" } else { "accepting" };
    let mut out = format!("ringpost {}  up {}s  {}  {} cores        (q quits)\n\n", s.version, s.uptime_s, state, s.cores.len());
    out.push_str(&format!(
        "rates /s   in {} msg   delivered {} rcpt   deferred {}   bounced {}   expired {}\n",
        r(|c| c.accepted),
        r(|c| c.delivered),
        r(|c| c.deferred),
        r(|c| c.bounced),
        r(|c| c.expired)
    ));
    out.push_str(&format!(
        "queued     ready {}   waiting {}   in flight {}   live messages {}   destinations {}\n",
        sum(s, |c| c.rcpts_ready),
        sum(s, |c| c.rcpts_waiting),
        sum(s, |c| c.rcpts_in_flight),
        sum(s, |c| c.messages_live),
        sum(s, |c| c.destinations)
    ));
    out.push_str(&format!(
        "connections  in {}   out {}      spool {} segments, {} MiB   totals: accepted {} delivered {} bounced {}\n\n",
        sum(s, |c| c.sessions),
        sum(s, |c| c.connections_out),
        sum(s, |c| c.spool_segments),
        sum(s, |c| c.spool_bytes) >> 20,
        sum(s, |c| c.accepted),
        sum(s, |c| c.delivered),
        sum(s, |c| c.bounced)
    ));
    out.push_str("top destinations by queue\n");
    out.push_str(&show::queue(&f.queue));
    out
}
