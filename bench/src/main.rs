//! `blaster`: SMTP load generator (`send`) and instrumented receiver (`sink`).
use blaster::send::{self, Counters, SendOpts};
use blaster::sink::{self, SinkOpts, SinkShared};
use blaster::workload::{parse_domains, parse_size, BodyStyle};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// blaster: open-loop SMTP load generator and instrumented sink.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inject mail into an SMTP server.
    Send(SendArgs),
    /// Receive mail like a set of real destinations, check it, and report.
    Sink(SinkArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    }))
}

#[derive(Args)]
struct SendArgs {
    /// Server to inject into (host:port).
    #[arg(long)]
    to: SocketAddr,
    /// Concurrent connections, spread over the cores.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Executors (pinned threads); default: all CPUs.
    #[arg(long)]
    cores: Option<usize>,
    /// Stop after this many messages (default 10000 unless --duration is given).
    #[arg(long, short = 'n')]
    messages: Option<u64>,
    /// Stop after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Open loop: send at this many messages/s on schedule; latency counts from the intended send
    /// time. Without it: closed loop, as fast as the server accepts.
    #[arg(long)]
    rate: Option<f64>,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Recipient domains: a count (d0.test, d1.test, ... uniform) or weights like
    /// gmail.test=40,yahoo.test=20,outlook.test=10.
    #[arg(long, default_value = "10")]
    domains: String,
    /// Message size: fixed (1024, 4k), a range (1k-64k) or weights (1k=50,10k=30,100k=20).
    #[arg(long, default_value = "1k")]
    size: String,
    /// Put UTF-8 text in bodies and send BODY=8BITMIME.
    #[arg(long)]
    eight_bit: bool,
    /// Put lines starting with "." in bodies (exercises dot-stuffing).
    #[arg(long)]
    dot_lines: bool,
    /// Do not pipeline even when the server offers PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not use BDAT even when the server offers CHUNKING (RFC 3030).
    #[arg(long)]
    no_chunking: bool,
    /// Envelope sender.
    #[arg(long, default_value = "blaster@blaster.test")]
    from: String,
    /// Write the id and accepted recipients of every accepted message here (for `sink --expect`).
    #[arg(long)]
    accepted_log: Option<PathBuf>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (repeatable).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Executors; default: all CPUs.
    #[arg(long)]
    cores: Option<usize>,
    /// Share of RCPTs answered 451 4.3.0 (0..1).
    #[arg(long, default_value_t = 0.0)]
    rcpt_temp: f64,
    /// Share of RCPTs answered 550 5.1.1.
    #[arg(long, default_value_t = 0.0)]
    rcpt_perm: f64,
    /// Share of messages answered 451 4.3.0 after DATA.
    #[arg(long, default_value_t = 0.0)]
    data_temp: f64,
    /// Share of messages answered 554 5.6.0 after DATA.
    #[arg(long, default_value_t = 0.0)]
    data_perm: f64,
    /// Share of connections answered 421 at the banner.
    #[arg(long, default_value_t = 0.0)]
    banner_421: f64,
    /// Added latency before every reply (e.g. 5ms).
    #[arg(long, value_parser = duration, default_value = "0s")]
    delay: Duration,
    /// Concurrent connection cap; excess connections get 421 and count as shaping violations.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Exit after accepting this many messages.
    #[arg(long)]
    exit_after: Option<u64>,
    /// Exit after this long.
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Accepted-ids file from `blaster send --accepted-log`: report every one not received.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Reply script `DOMAIN=REPLY`: every RCPT for DOMAIN gets REPLY (repeatable), e.g.
    /// `yahoo.test=421 4.7.0 [TSS04] Messages temporarily deferred`.
    #[arg(long)]
    reply: Vec<String>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write `UNIX_SECOND TOTAL_RECEIVED` at every whole second to this file (from a thread of
    /// its own, so the counts survive a sink that never gets to its report).
    #[arg(long)]
    count_log: Option<PathBuf>,
}

fn cores(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Send(a) => run_send(a),
        Cmd::Sink(a) => run_sink(a),
    }
}

fn run_send(a: SendArgs) -> ExitCode {
    let domains = match parse_domains(&a.domains) {
        Ok(d) => d,
        Err(e) => return usage(&format!("--domains: {e}")),
    };
    let sizes = match parse_size(&a.size) {
        Ok(s) => s,
        Err(e) => return usage(&format!("--size: {e}")),
    };
    let opts = SendOpts {
        to: a.to,
        connections: a.connections.max(1),
        cores: cores(a.cores).min(a.connections.max(1)),
        messages: a.messages.or(if a.duration.is_some() { None } else { Some(10_000) }),
        duration: a.duration,
        rate: a.rate,
        rcpts: a.rcpts.max(1),
        domains,
        sizes,
        style: BodyStyle { eight_bit: a.eight_bit, dot_lines: a.dot_lines },
        pipelining: !a.no_pipelining,
        chunking: !a.no_chunking,
        from: a.from,
        progress: !a.quiet,
    };
    let counters = Arc::new(Counters::default());
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, counters.stop.clone());
    }
    let out = send::run(opts, counters);
    if let Some(path) = a.accepted_log {
        let mut text = out.accepted_ids.join("\n");
        text.push('\n');
        // Write then rename, so a sink waiting on the file never reads half of it.
        let tmp = path.with_extension("partial");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            eprintln!("blaster: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out.report).unwrap());
    } else {
        print!("{}", out.report.text());
    }
    ExitCode::SUCCESS
}

fn run_sink(a: SinkArgs) -> ExitCode {
    for (name, v) in
        [("rcpt-temp", a.rcpt_temp), ("rcpt-perm", a.rcpt_perm), ("data-temp", a.data_temp), ("data-perm", a.data_perm), ("banner-421", a.banner_421)]
    {
        if !(0.0..=1.0).contains(&v) {
            return usage(&format!("--{name} must be between 0 and 1"));
        }
    }
    let opts = SinkOpts {
        listen: a.listen,
        cores: cores(a.cores),
        rcpt_temp: a.rcpt_temp,
        rcpt_perm: a.rcpt_perm,
        data_temp: a.data_temp,
        data_perm: a.data_perm,
        banner_421: a.banner_421,
        delay: a.delay,
        max_connections: a.max_connections,
        exit_after: a.exit_after,
        duration: a.duration,
        expect: a.expect,
        replies: a.reply.iter().filter_map(|r| r.split_once('=')).map(|(d, r)| (d.to_ascii_lowercase(), r.to_string())).collect(),
    };
    if opts.replies.len() != a.reply.len() {
        return usage("--reply takes DOMAIN=REPLY");
    }
    let shared = Arc::new(SinkShared::default());
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, shared.stop.clone());
    }
    let counts = match a.count_log.as_deref().map(|p| blaster::count_log::CountLog::start(p, shared.clone())).transpose() {
        Ok(c) => c,
        Err(e) => return usage(&format!("--count-log: {e}")),
    };
    let report = sink::run(opts, shared);
    if let Some(c) = counts {
        c.finish();
    }
    let json = serde_json::to_string_pretty(&report).unwrap();
    if let Some(p) = &a.report {
        let _ = std::fs::write(p, &json);
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report.text());
    }
    if report.missing.is_some_and(|m| m > 0) || report.corrupted > 0 {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("blaster: {msg}");
    ExitCode::from(2)
}
