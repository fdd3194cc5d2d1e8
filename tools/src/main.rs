//! `ringctl`: operate a running ringpost over its admin socket. Every command sends one
//! request and prints the reply as a table (default) or as JSON (`--json`).
//!
//! Exit codes: 0 ok, 1 refused by the daemon (the error is printed), 2 usage, 3 cannot
//! connect (no daemon, wrong socket, no permission).
mod client;
mod live;
mod repeat;
mod show;

use clap::{Parser, Subcommand, ValueEnum};
use ringpost_admin_proto::{BounceTarget, QueueSort, Reply, Request, SuppressOp, Target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The daemon's embedded default configuration: the socket path comes from its `[admin]`.
const DEFAULT_CONFIG: &str = include_str!("../../config/ringpost.toml");

const EXAMPLES: &str = "\
Examples:
  ringctl status                         per-core sessions, queues, spool and totals
  ringctl queue --limit 20 --sort oldest destinations whose oldest mail waits longest
  ringctl msg 0100000100000000C0         where each recipient of a message stands
  ringctl msg '<20261126.42@app.example>' the same, by the Message-ID header (brackets optional);
                                         finished messages too, for [admin] history (1h)
  ringctl suspend example.com --for 30m  hold mail for example.com for 30 minutes
  ringctl resume example.com             deliver it again
  ringctl suspend --all                  hold every destination
  ringctl bounce example.com --reason 'domain retired'
  ringctl bounce --msg 0100000100000000C0
  ringctl retry --all                    try every waiting recipient now
  ringctl drain                          421 to new sessions, keep delivering (--off: accept again)
  ringctl reload                         re-read the config file; prints what changed
  ringctl trace                          live SMTP conversations in and out (Ctrl-C ends it)
  ringctl trace --client 192.0.2.7       only sessions from that client
  ringctl trace --dest example.com       only deliveries to that domain
  ringctl top                            live view of rates, queues, connections (q quits)
  ringctl suppress add bob@example.com --reason 'asked to be removed'
  ringctl suppress check bob@example.com exit 0 if suppressed (with why), 1 if not
  ringctl suppress list --limit 100
  ringctl suppress remove bob@example.com
  ringctl --json status                  the same data as JSON, for scripts
  ringctl --every 1s --json status       poll over one connection: a JSON line a second
  ringctl --json trace                   one JSON object per batch of events, one per line

Exit codes: 0 ok, 1 refused by the daemon, 2 usage error, 3 cannot connect.";

/// Operate a running ringpost over its admin socket.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Admin socket (default: `[admin] socket` of --config, else of the embedded default).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read the socket path from this ringpost configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the reply as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon's reply.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    /// Run status, queue or msg again every INTERVAL (100ms, 1s, 5m) over one kept connection
    /// until Ctrl-C, printing each reply (with --json: one JSON object per line).
    #[arg(long, global = true, value_name = "INTERVAL", value_parser = parse_every)]
    every: Option<Duration>,
    /// With --every: stop after this many replies.
    #[arg(long, global = true, value_name = "N", requires = "every", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per core: sessions, queued recipients, spool, commit rounds, totals since start.
    Status,
    /// Per destination: ready, waiting, in flight, connections, oldest age, last response.
    Queue {
        /// Most destinations shown.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Order (largest first, except name).
        #[arg(long, value_enum, default_value_t = Sort::Total)]
        sort: Sort,
    },
    /// One message by queue id (as in "250 2.0.0 Ok: queued as ID") or by its Message-ID
    /// header: envelope and each recipient's state; finished ones for `[admin] history`.
    Msg {
        /// The queue id, or the Message-ID (with or without <>).
        id: String,
    },
    /// Stop delivering to a destination; its mail waits, nothing is lost.
    Suspend {
        /// Destination domain.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        dest: Option<String>,
        /// Every destination.
        #[arg(long)]
        all: bool,
        /// Resume by itself after this long (90s, 30m, 2h, 1d).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        for_: Option<Duration>,
    },
    /// Deliver again to a suspended destination.
    Resume {
        /// Destination domain.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        dest: Option<String>,
        /// Every destination.
        #[arg(long)]
        all: bool,
    },
    /// Fail queued recipients now (Bounce events, DSNs to the senders).
    Bounce {
        /// Destination domain.
        #[arg(required_unless_present = "msg", conflicts_with = "msg")]
        dest: Option<String>,
        /// A message's queued recipients instead.
        #[arg(long, value_name = "ID")]
        msg: Option<String>,
        /// Reason given in the DSN and the log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make recipients waiting for a retry ready now.
    Retry {
        /// Destination domain.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        dest: Option<String>,
        /// Every destination.
        #[arg(long)]
        all: bool,
    },
    /// Answer new sessions 421 and keep delivering (--off: accept again).
    Drain {
        /// Accept mail again.
        #[arg(long)]
        off: bool,
    },
    /// Re-read the configuration file: apply what can change live, name what needs a restart.
    Reload,
    /// Live SMTP conversations (commands and replies; never bodies; AUTH redacted) until Ctrl-C.
    Trace {
        /// Only inbound sessions from this client IP.
        #[arg(long, value_name = "IP")]
        client: Option<String>,
        /// Only deliveries to this destination domain.
        #[arg(long, value_name = "DOMAIN")]
        dest: Option<String>,
    },
    /// Live view: rates in and out, queues, connections, top destinations (q or Ctrl-C quits).
    Top {
        /// Refresh interval (200ms..10s; 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Destinations listed, largest queue first.
        #[arg(long, default_value_t = 10)]
        dests: u32,
        /// Stop after this many frames (default: until q).
        #[arg(long, value_name = "N")]
        frames: Option<u64>,
    },
    /// The suppression list: addresses refused at RCPT with 550 5.1.1.
    Suppress {
        #[command(subcommand)]
        op: SuppressCmd,
    },
}

#[derive(Subcommand, Debug)]
enum SuppressCmd {
    /// Suppress an address (durable before the reply).
    Add {
        /// The address.
        addr: String,
        /// Why (shown in the 550 reply to RCPT).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a suppression (exit 1 when it was not listed).
    Remove {
        /// The address.
        addr: String,
    },
    /// The suppressed addresses, sorted.
    List {
        /// Most entries shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Whether an address is suppressed and why (exit 1 when it is not).
    Check {
        /// The address.
        addr: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Sort {
    Total,
    Ready,
    Waiting,
    Oldest,
    Name,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.checked_mul(mult).ok_or("duration too long")?))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| format!("{s:?}: expected 500ms, 1s, 2s"));
    }
    parse_duration(s)
}

/// An `--every` interval: at least 10 ms, so a typo cannot spin the daemon's cores.
fn parse_every(s: &str) -> Result<Duration, String> {
    let d = parse_interval(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?}: at least 10ms"));
    }
    Ok(d)
}

fn target(dest: Option<String>) -> Target {
    dest.map_or(Target::All, Target::Domain)
}

fn request(c: Command) -> Request {
    match c {
        Command::Status => Request::Status,
        Command::Queue { limit, sort } => {
            let sort = match sort {
                Sort::Total => QueueSort::Total,
                Sort::Ready => QueueSort::Ready,
                Sort::Waiting => QueueSort::Waiting,
                Sort::Oldest => QueueSort::Oldest,
                Sort::Name => QueueSort::Name,
            };
            Request::Queue { limit, sort }
        }
        Command::Msg { id } => Request::Msg { id },
        Command::Suspend { dest, for_, .. } => Request::Suspend { target: target(dest), for_s: for_.map(|d| d.as_secs()) },
        Command::Resume { dest, .. } => Request::Resume { target: target(dest) },
        Command::Bounce { dest, msg, reason } => {
            let target = match (dest, msg) {
                (_, Some(id)) => BounceTarget::Msg(id),
                (Some(d), None) => BounceTarget::Domain(d),
                (None, None) => unreachable!("clap requires one"),
            };
            Request::Bounce { target, reason }
        }
        Command::Retry { dest, .. } => Request::Retry { target: target(dest) },
        Command::Drain { off } => Request::Drain { on: !off },
        Command::Reload => Request::Reload,
        Command::Trace { client, dest } => Request::Trace { client, dest },
        Command::Top { interval, dests, .. } => Request::Top { interval_ms: interval.as_millis().min(u32::MAX as u128) as u32, dests },
        Command::Suppress { op } => Request::Suppress(match op {
            SuppressCmd::Add { addr, reason } => SuppressOp::Add { addr, reason },
            SuppressCmd::Remove { addr } => SuppressOp::Remove { addr },
            SuppressCmd::List { limit } => SuppressOp::List { limit },
            SuppressCmd::Check { addr } => SuppressOp::Check { addr },
        }),
    }
}

/// The socket: --socket, else `[admin] socket` of --config, else of the embedded default.
fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    let text = match &cli.config {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        None => DEFAULT_CONFIG.to_string(),
    };
    let v: toml::Value = toml::from_str(&text).map_err(|e| format!("reading [admin] socket: {e}"))?;
    let socket = v.get("admin").and_then(|a| a.get("socket")).and_then(|s| s.as_str()).unwrap_or("var/run/ringpost.sock");
    if socket.is_empty() {
        return Err("the configuration has no admin socket ([admin] socket = \"\")".into());
    }
    Ok(socket.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match socket_path(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringctl: {e}");
            return ExitCode::from(2);
        }
    };
    let (json, timeout) = (cli.json, Duration::from_secs(cli.timeout.max(1)));
    if cli.every.is_some() && !matches!(cli.command, Command::Status | Command::Queue { .. } | Command::Msg { .. }) {
        eprintln!("ringctl: --every repeats status, queue or msg only (trace and top stream by themselves)");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Trace { .. } => return live::trace(&path, &request(cli.command), json),
        Command::Top { frames, .. } => return live::top(&path, &request(cli.command), json, frames),
        _ => {}
    }
    if let Some(interval) = cli.every {
        let every = repeat::Every { interval, count: cli.count, json };
        return repeat::run(&path, &request(cli.command), timeout, &every);
    }
    let reply = match client::call(&path, &request(cli.command), timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringctl: {}: {e}", path.display());
            return ExitCode::from(3);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reply).expect("replies serialise"));
    } else {
        print!("{}", show::human(&reply));
    }
    match reply {
        Reply::Error(e) => {
            if json {
                eprintln!("ringctl: {:?}: {}", e.kind, e.message);
            }
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("5w").is_err() && parse_duration("m").is_err());
    }

    #[test]
    fn the_default_socket_is_the_embedded_configs() {
        let cli = Cli::parse_from(["ringctl", "status"]);
        assert_eq!(socket_path(&cli).unwrap(), PathBuf::from("var/run/ringpost.sock"));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
