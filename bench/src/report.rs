//! Reports: latency percentiles from HDR histograms, and the final send/sink reports as text
//! for people and JSON for programs.
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// A new latency histogram in microseconds (1 µs .. 1 hour, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Percentiles {
    /// Summarise a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    fn text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// The final report of `blaster send`.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Target rate in open loop.
    pub target_rate: Option<f64>,
    /// Messages whose transaction was started.
    pub sent: u64,
    /// Of those, sent with BDAT (RFC 3030) rather than DATA.
    pub sent_bdat: u64,
    /// Messages accepted (250 after data).
    pub accepted: u64,
    /// Messages refused temporarily (4xx).
    pub temp_failures: u64,
    /// Messages refused permanently (5xx).
    pub perm_failures: u64,
    /// Connection or protocol errors.
    pub errors: u64,
    /// Wall time of the run.
    pub duration_s: f64,
    /// Accepted messages per second.
    pub msgs_per_s: f64,
    /// Accepted megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Intended send time (open loop) or start of transaction (closed loop) to the final reply.
    pub accept_latency: Percentiles,
}

impl SendReport {
    /// Human-readable text.
    pub fn text(&self) -> String {
        let rate = self.target_rate.map(|r| format!(" at {r:.0} msg/s")).unwrap_or_default();
        format!(
            "blaster send ({}{rate}): sent {} ({} by BDAT) accepted {} temp {} perm {} errors {}\n  {:.2} s, {:.0} msg/s, {:.2} MB/s\n  accept latency: {}\n",
            self.mode,
            self.sent,
            self.sent_bdat,
            self.accepted,
            self.temp_failures,
            self.perm_failures,
            self.errors,
            self.duration_s,
            self.msgs_per_s,
            self.mb_per_s,
            self.accept_latency.text()
        )
    }
}

/// Per-domain figures in the sink report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DomainReport {
    /// Recipients received for the domain.
    pub recipients: u64,
    /// Recipients per second over the domain's active period.
    pub per_s: f64,
    /// Peak connections concurrently carrying mail for the domain.
    pub peak_connections: usize,
}

/// Per source IP figures in the sink report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceReport {
    /// Messages accepted from it.
    pub messages: u64,
    /// EHLO names it used.
    pub ehlo: std::collections::BTreeSet<String>,
    /// Messages accepted per Unix second.
    pub per_second: BTreeMap<u64, u64>,
}

/// The final report of `blaster sink`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SinkReport {
    /// Messages accepted with 250 after DATA or `BDAT ... LAST`.
    pub received: u64,
    /// Of those, the messages that came by BDAT (RFC 3030) rather than DATA.
    pub received_bdat: u64,
    /// Recipients in those messages.
    pub recipients: u64,
    /// (id, recipient) pairs seen more than once, counting every extra copy.
    pub duplicates: u64,
    /// Messages whose body digest did not match.
    pub corrupted: u64,
    /// Messages without blaster headers.
    pub unstamped: u64,
    /// Expected (id, recipient) pairs never received (`--expect`).
    pub missing: Option<u64>,
    /// Up to 20 of the missing ids.
    pub missing_sample: Vec<String>,
    /// Fault replies given: name → count.
    pub faults: BTreeMap<String, u64>,
    /// Connections refused over `--max-connections`.
    pub shaping_violations: u64,
    /// Peak concurrent connections.
    pub peak_connections: usize,
    /// Connections accepted in all (divided by `received`: what a message costs in connections).
    pub connections: u64,
    /// Peak concurrent connections per source IP.
    pub peak_connections_per_ip: BTreeMap<String, usize>,
    /// Per destination domain.
    pub domains: BTreeMap<String, DomainReport>,
    /// Per source IP: messages, EHLO names, rate over time.
    pub sources: BTreeMap<String, SourceReport>,
    /// Domains with a reply script: when their RCPTs came (Unix seconds).
    pub scripted_attempts: BTreeMap<String, Vec<f64>>,
    /// Wall time from first to last message.
    pub duration_s: f64,
    /// Messages per second over that time.
    pub msgs_per_s: f64,
    /// From X-Blaster-Sent to receipt.
    pub end_to_end_latency: Percentiles,
}

impl SinkReport {
    /// Human-readable text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "blaster sink: received {} msgs ({} by BDAT, {} rcpts) in {:.2} s = {:.0} msg/s\n  duplicates {}  corrupted {}  unstamped {}{}\n  end-to-end latency: {}\n  peak connections {}  connections accepted {}  shaping violations {}\n",
            self.received,
            self.received_bdat,
            self.recipients,
            self.duration_s,
            self.msgs_per_s,
            self.duplicates,
            self.corrupted,
            self.unstamped,
            self.missing.map(|m| format!("  missing {m}")).unwrap_or_default(),
            self.end_to_end_latency.text(),
            self.peak_connections,
            self.connections,
            self.shaping_violations
        );
        for (k, v) in &self.faults {
            s.push_str(&format!("  fault {k}: {v}\n"));
        }
        for (ip, n) in &self.peak_connections_per_ip {
            s.push_str(&format!("  source {ip}: peak {n} connections\n"));
        }
        for (d, r) in &self.domains {
            s.push_str(&format!("  domain {d}: {} rcpts, {:.0}/s, peak {} connections\n", r.recipients, r.per_s, r.peak_connections));
        }
        if !self.missing_sample.is_empty() {
            s.push_str(&format!("  missing e.g.: {}\n", self.missing_sample.join(" ")));
        }
        s
    }
}
