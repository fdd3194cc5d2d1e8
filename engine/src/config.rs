//! Configuration: the TOML file, its defaults, and validation with the offending key and line.
//!
//! The shipped `config/ringpost.toml` is embedded in the binary, so `ringpost` runs with no
//! flags. Unknown keys are errors: a misspelt limit must not silently fall back to a default.
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[path = "config_shaping.rs"]
mod shaping;
pub use shaping::*;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/ringpost.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Could not read the file.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type; the message names key, line and column.
    #[error("{0}")]
    Parse(String),
    /// A value out of range, naming the key.
    #[error("invalid value for `{key}`: {why}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Highest accepted `server.max_recipients`. Each recipient costs spool record space, memory
/// per open transaction and a queue entry; past this a transaction is a mailing-list explosion
/// better done upstream in batches (Postfix ships 1000, Exim 50 000 as a hard ceiling).
pub const MAX_RECIPIENTS_CEILING: usize = 10_000;

fn invalid(key: &'static str, why: String) -> ConfigError {
    ConfigError::Invalid { key, why }
}

/// Refuse `v` outside `lo..=hi`, naming the key, the range and its unit.
fn in_range<T: PartialOrd + std::fmt::Display>(key: &'static str, v: T, lo: T, hi: T, unit: &str) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, format!("{v} is outside {lo}..={hi} {unit}")));
    }
    Ok(())
}

/// toml's message (line, column, the offending line, what was expected), led by the dotted
/// key when the error points into a `key = value` line: toml itself shows only the line.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    match e.span().and_then(|span| dotted_key_at(text, span.start)) {
        Some(key) => format!("`{key}`: {e}"),
        None => e.to_string(),
    }
}

/// The dotted key of the `key = value` line holding byte `offset`, prefixed with the table
/// header above it (`[spool]`, `[[route]]`).
fn dotted_key_at(text: &str, offset: usize) -> Option<String> {
    let head = text.get(..offset)?;
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return None;
    }
    let table = head[..line_start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    match table.map(|t| t.trim_matches(|c| c == '[' || c == ']').trim()) {
        Some(t) => Some(format!("{t}.{key}")),
        None => Some(key.to_string()),
    }
}

/// Whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SMTP listener and session limits.
    pub server: ServerConfig,
    /// Spool location and durability.
    #[serde(default)]
    pub spool: SpoolSection,
    /// Executors.
    #[serde(default)]
    pub engine: EngineSection,
    /// Logs.
    #[serde(default)]
    pub log: LogSection,
    /// Outbound delivery behaviour.
    #[serde(default)]
    pub delivery: DeliverySection,
    /// Static routes.
    #[serde(default)]
    pub route: Vec<Route>,
    /// DNS resolver.
    #[serde(default)]
    pub dns: DnsSection,
    /// Inbound TLS (STARTTLS).
    #[serde(default)]
    pub tls: TlsSection,
    /// SMTP AUTH for upstream platforms.
    #[serde(default)]
    pub auth: AuthSection,
    /// DKIM signing keys (several for one domain: dual signing).
    #[serde(default)]
    pub dkim: Vec<crate::dkim::DkimConfig>,
    /// The suppression list.
    #[serde(default)]
    pub suppression: SuppressionSection,
    /// The admin socket (`ringctl`).
    #[serde(default)]
    pub admin: AdminSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Egress sources (local addresses and EHLO names).
    #[serde(default)]
    pub source: Vec<SourceConfig>,
    /// Pools of weighted sources.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// Per-site shaping, first match wins (then those of `delivery.shaping`).
    #[serde(default)]
    pub shape: Vec<ShapeConfig>,
    /// Adaptive rules on SMTP replies (then those of `delivery.shaping`).
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    /// Warm-up schedules of new sources.
    #[serde(default)]
    pub warmup: Vec<WarmupConfig>,
    /// Cluster-wide limits through Redis.
    #[serde(default)]
    pub cluster: crate::cluster_config::ClusterSection,
}

/// `[metrics]`: the Prometheus scrape endpoint, served by the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` to serve `GET /metrics` on; empty (the default): no endpoint.
    pub listen: String,
    /// Destinations with a queue gauge of their own (the largest by recipients queued; the
    /// rest add up under `destination="other"`). Bounds the series a scrape returns.
    pub destinations_top: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { listen: String::new(), destinations_top: 10 }
    }
}

impl MetricsSection {
    /// The address to listen on, when the endpoint is on (validated at load).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

/// What happens to a suppressed recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuppressionMode {
    /// Refused at RCPT with `550 5.1.1` and the reason: the injecting platform learns at once.
    Refuse,
    /// Accepted, then bounced at once (a DSN, a Bounce log line), never sent out: for
    /// platforms that only read DSNs.
    AcceptAndBounce,
}

/// `[suppression]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionSection {
    /// Consult and feed the list.
    pub enabled: bool,
    /// The journal; default `suppression.jsonl` in the spool directory (it is spool state).
    pub file: Option<PathBuf>,
    /// Bounce categories that add the recipient automatically.
    pub auto_categories: Vec<String>,
    /// Refuse at RCPT, or accept and bounce.
    pub mode: SuppressionMode,
}

impl Default for SuppressionSection {
    fn default() -> Self {
        // The two categories that say the mailbox is gone for good: retrying them is what
        // providers count against a sender.
        Self { enabled: true, file: None, auto_categories: vec!["bad-mailbox".into(), "inactive-mailbox".into()], mode: SuppressionMode::Refuse }
    }
}

impl Config {
    /// Where the suppression journal lives.
    pub fn suppression_file(&self) -> PathBuf {
        self.suppression.file.clone().unwrap_or_else(|| self.spool.dir.join("suppression.jsonl"))
    }
}

/// `[admin]`: the control socket `ringctl` talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Unix socket path (relative: to the working directory, like the spool); empty: none.
    pub socket: PathBuf,
    /// A group whose members may connect too (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// Admin connections open at once; more are closed at once.
    pub connections_max: usize,
    /// How long the admin task waits for a core's answer before replying `Timeout`.
    pub core_timeout_ms: u64,
    /// How long `ringctl msg` still answers for a finished message ("90s", "30m", "1h", "1d";
    /// "0" keeps none).
    pub history: String,
    /// Most finished messages each core keeps for `history` (the oldest leave first).
    pub history_max: usize,
}

impl AdminSection {
    /// `history` in milliseconds (validated at load).
    pub fn history_ms(&self) -> u64 {
        parse_span_s(&self.history).unwrap_or(3600) * 1000
    }
}

/// A span like "90", "90s", "30m", "1h", "1d", in seconds.
fn parse_span_s(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            socket: "var/run/ringpost.sock".into(),
            group: None,
            connections_max: 16,
            core_timeout_ms: 5000,
            history: "1h".into(),
            history_max: 100_000,
        }
    }
}

fn d_listen() -> Vec<String> {
    vec!["127.0.0.1:2525".into()]
}
fn d_hostname() -> String {
    "mta.example".into()
}
fn d_relay() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
const fn d_max_size() -> u64 {
    26_214_400
}
const fn d_max_rcpts() -> usize {
    1000
}
const fn d_conn_core() -> usize {
    2000
}
const fn d_conn_ip() -> usize {
    50
}
const fn d_conn_relay_ip() -> usize {
    1000
}
const fn d_cmd_timeout() -> u64 {
    300
}
const fn d_data_timeout() -> u64 {
    180
}
const fn d_write_timeout() -> u64 {
    300
}
const fn d_min_rate() -> u64 {
    500
}
const fn d_errors() -> u32 {
    20
}
const fn d_body_chunk() -> usize {
    131_072
}
const fn d_input_max() -> usize {
    65_536
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on (every core binds each with SO_REUSEPORT).
    #[serde(default = "d_listen")]
    pub listen: Vec<String>,
    /// Our name in the greeting, EHLO and Received lines.
    #[serde(default = "d_hostname")]
    pub hostname: String,
    /// Client networks allowed to relay (CIDR).
    #[serde(default = "d_relay")]
    pub relay_networks: Vec<String>,
    /// Domains accepted from anyone (none by default).
    #[serde(default)]
    pub local_domains: Vec<String>,
    /// Largest message in octets.
    #[serde(default = "d_max_size")]
    pub max_message_size: u64,
    /// Recipients per transaction (at least 100, RFC 5321 4.5.3.1.8; at most
    /// [`MAX_RECIPIENTS_CEILING`]).
    #[serde(default = "d_max_rcpts")]
    pub max_recipients: usize,
    /// Concurrent sessions per core.
    #[serde(default = "d_conn_core")]
    pub max_connections_per_core: usize,
    /// Concurrent sessions per client IP (across the host), for clients outside
    /// `relay_networks`.
    #[serde(default = "d_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Concurrent sessions per client IP in `relay_networks`. Separate and larger because
    /// those clients are our own injectors and relays, which open many parallel connections
    /// from one address (an application server, smtp-source, a Postfix in front); Postfix
    /// exempts `mynetworks` from its per-client limit altogether. Still bounded, so a runaway
    /// local client cannot take every session of the host (`max_connections_per_core` bounds
    /// the total).
    #[serde(default = "d_conn_relay_ip")]
    pub max_connections_per_relay_ip: usize,
    /// Seconds to wait for a complete command line (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(default = "d_cmd_timeout")]
    pub command_timeout_s: u64,
    /// Seconds to wait for each data block (RFC 5321 4.5.3.2.5: 3 minutes).
    #[serde(default = "d_data_timeout")]
    pub data_timeout_s: u64,
    /// Seconds a reply write may make no progress before the session is cut (a client that
    /// stops reading our replies).
    #[serde(default = "d_write_timeout")]
    pub write_timeout_s: u64,
    /// Minimum DATA rate in bytes/s once the block timeout has passed (trickle defence).
    #[serde(default = "d_min_rate")]
    pub min_data_rate: u64,
    /// Error replies before the session is closed with 421.
    #[serde(default = "d_errors")]
    pub hard_error_limit: u32,
    /// Bytes of message body gathered before they are appended to the spool as one chunk
    /// record: larger chunks mean fewer records and syscalls, smaller ones less memory per
    /// session in DATA.
    #[serde(default = "d_body_chunk")]
    pub body_chunk_bytes: usize,
    /// Most bytes a session's input buffer grows to (commands and pipelined batches): the
    /// per-session memory ceiling before DATA.
    #[serde(default = "d_input_max")]
    pub input_buffer_bytes_max: usize,
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Spool root directory.
    pub dir: PathBuf,
    /// `fsync` (default) or `none` (benchmarks only).
    pub durability: Durability,
    /// Preallocated bytes per segment.
    pub segment_size: u64,
    /// Appenders wait while this many bytes are written but not yet committed, so a flood
    /// of large bodies cannot grow memory without limit.
    pub pending_bytes_max: usize,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self { dir: "var/spool".into(), durability: Durability::Fsync, segment_size: 64 << 20, pending_bytes_max: 16 << 20 }
    }
}

/// `spool.durability`: whether a 250 waits for the spool's fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every accepted message is on stable storage before its 250 (the promise).
    Fsync,
    /// No fsync: benchmarks only, accepted mail is lost on a crash.
    None,
}

impl From<Durability> for ringpost_spool::shard::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Fsync => Self::Fsync,
            Durability::None => Self::None,
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::None => "none",
        })
    }
}

/// `engine.cores`: `"all"` or a number of executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "\"all\" or a number of cores")]
pub enum Cores {
    /// One executor per online CPU.
    All(AllCores),
    /// This many executors.
    Count(usize),
}

/// The word `all` of [`Cores::All`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllCores {
    /// Every online CPU.
    All,
}

/// Outbound TLS mode (`delivery.tls`, `route.tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// No STARTTLS, no delivery (temporary failure).
    Required,
    /// Never STARTTLS.
    Disabled,
}

/// Outbound certificate verification (`delivery.tls_verify`, `route.tls_verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsVerify {
    /// Encrypt without checking the certificate (what MX TLS without DANE/MTA-STS can do).
    None,
    /// Verify the chain against the CA bundle in `tls_ca_file`.
    Ca,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// `"all"` or a number of cores.
    pub cores: Cores,
    /// Microseconds an idle core keeps polling before parking in the kernel, offering its CPU
    /// to other threads between polls (glommio patch 6). 0, the default, parks after one such
    /// offer: with smtp-source's load, spins of 25–200 us were no faster (perf/RESULTS.md,
    /// fifteenth session), and a spin costs CPU at low rates (`bench/spin-cost.sh`).
    pub spin_before_park_us: u64,
    /// Messages each core-to-core channel holds before the sender waits (back-pressure
    /// between cores; memory is this times the message size times cores squared).
    pub mesh_capacity: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self { cores: Cores::All(AllCores::All), spin_before_park_us: 0, mesh_capacity: 4096 }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// JSON-lines delivery log path.
    pub delivery_log: PathBuf,
    /// Rotate the delivery log once it reaches this many bytes (`log` becomes `log.1`); 0 never
    /// rotates (leave it to an external logrotate with copytruncate).
    pub rotate_bytes: u64,
    /// Rotated delivery logs kept, `log.1` (newest) to `log.<keep>`.
    pub keep: u32,
}

impl Default for LogSection {
    fn default() -> Self {
        // 1 GiB is about 3 million events: hours at full rate, so a day's accounting spans a
        // few files and the disk use stays bounded at (keep + 1) GiB.
        Self { delivery_log: "var/log/delivery.jsonl".into(), rotate_bytes: 1 << 30, keep: 10 }
    }
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// First retry after this many seconds.
    pub retry_first_s: f64,
    /// Each retry waits this factor longer.
    pub retry_factor: f64,
    /// Retry interval cap in seconds.
    pub retry_max_s: f64,
    /// Bounce classification rules replacing the shipped `config/bounce-rules.toml`.
    pub bounce_rules: Option<PathBuf>,
    /// Give up (Expiration + DSN) after this many seconds in the queue.
    pub max_age_s: f64,
    /// TCP connect timeout.
    pub connect_timeout_s: u64,
    /// Concurrent connections per destination per core.
    pub max_connections_per_destination: usize,
    /// Outbound connections open at once on this host, all destinations together (shared out
    /// evenly between the cores). Past it, destinations wanting a connection take turns as
    /// connections close: a thousand destinations then share the host's connections instead
    /// of each opening its own and every connection slowing down (Postfix caps its delivery
    /// agents at 100 by default, `default_process_limit`). Default 8,000: with slow start a
    /// path holds about one connection, and 1,000 sites × 4 sources needed about 4,000 on a
    /// 2-core host without slowing down (perf/RESULTS.md, fifth session); at 2,000 those paths
    /// took turns and every turn was a new connection (0.25–0.48 connections per message).
    pub max_connections_total: usize,
    /// Recipients per outbound transaction.
    pub max_recipients_per_transaction: usize,
    /// Seconds an idle outbound connection waits for more mail before QUIT. Default 30
    /// (KumoMTA's is 60; Postfix caches 2 s, per destination): with thousands of paths a
    /// path's next message is often seconds away, and a new connection costs TCP and EHLO at
    /// both ends. An idle connection gives its place back at once when it is wanted: its
    /// core's slot under `max_connections_total` when a path waits there, its site's
    /// `max_connections` when that site's mail waits on another core.
    pub idle_timeout_s: f64,
    /// Port of MX hosts found through DNS (25; tests use another).
    pub mx_port: u16,
    /// Outbound TLS: `opportunistic` (STARTTLS when offered), `required`, `disabled`.
    pub tls: TlsMode,
    /// Certificate verification: `none` or `ca`.
    pub tls_verify: TlsVerify,
    /// CA bundle for `tls_verify = "ca"`.
    pub tls_ca_file: Option<PathBuf>,
    /// Opportunistic only: after a failed handshake, deliver in plaintext (Postfix `may`)
    /// instead of failing the attempt (KumoMTA's default).
    pub tls_plaintext_fallback: bool,
    /// Seconds to wait for the greeting and each command's reply (RFC 5321 4.5.3.2.1-4:
    /// 5 minutes).
    pub command_timeout_s: u64,
    /// Seconds to wait for the replies of a pipelined batch ending in DATA (RFC 5321
    /// 4.5.3.2.5 "DATA initiation": 2 minutes; never less than `command_timeout_s`, since the
    /// batch carries MAIL and RCPT too).
    pub data_init_timeout_s: u64,
    /// Seconds for sending the body and for the reply to its final dot (RFC 5321 4.5.3.2.6
    /// "DATA termination": 10 minutes; the server may be filtering the message).
    pub data_timeout_s: u64,
    /// Messages up to this many octets go as one `BDAT ... LAST` chunk in the same write as
    /// MAIL and RCPT when the receiver offers CHUNKING and PIPELINING (RFC 3030, RFC 2920):
    /// one round trip per message instead of DATA's two. Larger messages, and every message
    /// when 0, go with DATA, whose `354` comes before the body: a refused envelope then costs
    /// no body transfer (a greylisting 451 or a 550 at RCPT still costs the body of a small
    /// message). Default 64 KiB. A `[[route]]` can set its own (0 for a broken receiver).
    pub bdat_max_octets: u64,
    /// A file of `[[shape]]` and `[[rule]]` entries used after the configuration's own
    /// (e.g. the shipped `config/shaping-defaults.toml`); relative to the working directory.
    pub shaping: Option<PathBuf>,
}

impl Default for DeliverySection {
    fn default() -> Self {
        Self {
            retry_first_s: 300.0,
            retry_factor: 2.0,
            retry_max_s: 4000.0,
            max_age_s: 5.0 * 86400.0,
            bounce_rules: None,
            connect_timeout_s: 30,
            max_connections_per_destination: 32,
            max_connections_total: 8000,
            max_recipients_per_transaction: 100,
            idle_timeout_s: 30.0,
            mx_port: 25,
            tls: TlsMode::Opportunistic,
            tls_verify: TlsVerify::None,
            tls_ca_file: None,
            tls_plaintext_fallback: true,
            command_timeout_s: 300,
            data_init_timeout_s: 120,
            bdat_max_octets: 64 * 1024,
            shaping: None,
            data_timeout_s: 600,
        }
    }
}

/// `[tls]`: the certificate offered with STARTTLS (reloaded on SIGHUP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// `[auth]`: SMTP AUTH (PLAIN, LOGIN) for injecting platforms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Accounts; `password_hash` is an Argon2 PHC string (`ringpost --hash-password`).
    pub users: Vec<AuthUser>,
    /// Listen addresses where AUTH is offered without TLS (trusted networks only).
    pub plaintext_listeners: Vec<String>,
    /// Failed attempts per session before `421 4.7.0` and disconnect.
    pub max_failures: u32,
    /// Delay before answering a failed attempt (slows password guessing).
    pub failure_delay_ms: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self { users: Vec::new(), plaintext_listeners: Vec::new(), max_failures: 3, failure_delay_ms: 1000 }
    }
}

/// One AUTH account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// Argon2 PHC hash of the password; never the password itself.
    pub password_hash: String,
    /// The `[[pool]]` its messages leave from (overrides the `X-Ringpost-Pool` header).
    #[serde(default)]
    pub pool: Option<String>,
}

/// Outbound TLS policy for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// When to use STARTTLS.
    pub mode: TlsMode,
    /// How to check the server's certificate.
    pub verify: TlsVerify,
    /// CA bundle for `verify = "ca"`.
    pub ca_file: Option<PathBuf>,
    /// After a failed handshake under `opportunistic`, retry the delivery in plaintext.
    pub plaintext_fallback: bool,
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// `ip:port` nameservers; empty: those of /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Per-try timeout in milliseconds.
    pub timeout_ms: u64,
    /// Tries per nameserver.
    pub attempts: u32,
    /// Cap on negative-cache TTLs in seconds.
    pub negative_ttl_max_s: u32,
    /// Most answers each core's cache holds (expired, then least recently used, are evicted).
    pub cache_entries_max: usize,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self { nameservers: Vec::new(), timeout_ms: 2000, attempts: 2, negative_ttl_max_s: 3600, cache_entries_max: 100_000 }
    }
}

/// `[[route]]`: deliver a domain (or `"*"`) to fixed hosts, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Recipient domain, or `"*"` for every domain without a route of its own.
    pub domain: String,
    /// `host:port` list, tried in order.
    pub hosts: Vec<String>,
    /// Outbound TLS mode for this route (default: `delivery.tls`).
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// Verification for this route (default: `delivery.tls_verify`).
    #[serde(default)]
    pub tls_verify: Option<TlsVerify>,
    /// CA bundle for this route.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// TLS server name to verify (default: the host as written).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// `[delivery] bdat_max_octets` for this route's hosts (0: always DATA, for a receiver
    /// whose CHUNKING is broken).
    #[serde(default)]
    pub bdat_max_octets: Option<u64>,
}

/// A CIDR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parse `a.b.c.d/n` or `x::y/n` (a bare address is a host route).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().ok().filter(|p| *p <= max)? };
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Config {
    /// Parse and validate TOML text. Errors name the key (and, for syntax and type errors, the
    /// line and column).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(parse_message(text, &e)))?;
        cfg.include_shaping_file()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and parse a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text)
    }

    /// Check every section; each check names the key it refuses.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_spool()?;
        self.validate_engine()?;
        self.validate_delivery()?;
        self.validate_routes()?;
        self.validate_tls_and_auth()?;
        self.validate_shaping()?;
        self.validate_dns()?;
        self.validate_log()?;
        self.validate_admin()?;
        self.validate_metrics()?;
        self.cluster.validate().map_err(|(key, why)| ConfigError::Invalid { key, why })
    }

    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let l = &self.metrics.listen;
        if !l.is_empty() && l.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!("{l:?} is not an IP address and port (\"127.0.0.1:9425\"); leave it empty for no endpoint"),
            ));
        }
        in_range("metrics.destinations_top", self.metrics.destinations_top, 0, 100, "destinations")
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        if self.log.rotate_bytes > 0 && self.log.keep == 0 {
            return Err(invalid("log.keep", "must be at least 1 when rotate_bytes is set".into()));
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        // sun_path holds 108 bytes with its terminating NUL.
        in_range("admin.socket", a.socket.as_os_str().len(), 0, 107, "bytes of path")?;
        in_range("admin.connections_max", a.connections_max, 1, 1024, "connections")?;
        in_range("admin.core_timeout_ms", a.core_timeout_ms, 10, 600_000, "milliseconds")?;
        let Some(history_s) = parse_span_s(&a.history) else {
            return Err(invalid("admin.history", format!("{:?}: expected a number with s, m, h or d", a.history)));
        };
        in_range("admin.history", history_s, 0, 7 * 86_400, "seconds")?;
        in_range("admin.history_max", a.history_max, 0, 10_000_000, "messages per core")?;
        if a.group.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("admin.group", "empty group name (leave the key out for owner-only)".into()));
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if let Some(l) = s.listen.iter().find(|l| l.parse::<SocketAddr>().is_err()) {
            return Err(invalid("server.listen", format!("{l:?} is not ip:port")));
        }
        if let Some(n) = s.relay_networks.iter().find(|n| Network::parse(n).is_none()) {
            return Err(invalid("server.relay_networks", format!("{n:?} is not a CIDR network")));
        }
        if s.max_recipients < 100 {
            return Err(invalid("server.max_recipients", "must be at least 100 (RFC 5321 4.5.3.1.8)".into()));
        }
        if s.max_recipients > MAX_RECIPIENTS_CEILING {
            let n = s.max_recipients;
            return Err(invalid("server.max_recipients", format!("{n} is more than the ceiling of {MAX_RECIPIENTS_CEILING} per transaction")));
        }
        if s.max_message_size < 1024 {
            return Err(invalid("server.max_message_size", "must be at least 1024".into()));
        }
        // A chunk record must fit a segment (at least 4 MiB) beside the message record.
        in_range("server.body_chunk_bytes", s.body_chunk_bytes, 4096, 1 << 20, "bytes")?;
        // RFC 4954 4: an AUTH line may be 12 288 octets; the buffer starts at 4 KiB.
        in_range("server.input_buffer_bytes_max", s.input_buffer_bytes_max, 16 << 10, 1 << 20, "bytes")
    }

    fn validate_spool(&self) -> Result<(), ConfigError> {
        let s = &self.spool;
        if s.segment_size < (4 << 20) {
            return Err(invalid("spool.segment_size", "must be at least 4 MiB".into()));
        }
        if s.segment_size < self.server.max_recipients as u64 * 600 {
            return Err(invalid("spool.segment_size", "too small for a message record with max_recipients".into()));
        }
        // Below one body chunk every chunk would wait for its own commit round.
        in_range("spool.pending_bytes_max", s.pending_bytes_max, self.server.body_chunk_bytes, 1 << 30, "bytes (at least server.body_chunk_bytes)")
    }

    fn validate_engine(&self) -> Result<(), ConfigError> {
        if let Cores::Count(n) = self.engine.cores {
            in_range("engine.cores", n, 1, 1024, "cores")?;
        }
        in_range("engine.mesh_capacity", self.engine.mesh_capacity, 1, 1 << 20, "messages")
    }

    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        if !(d.retry_first_s > 0.0 && d.retry_factor >= 1.0 && d.retry_max_s >= d.retry_first_s && d.max_age_s > 0.0) {
            return Err(invalid("delivery", "need retry_first_s > 0, retry_factor >= 1, retry_max_s >= retry_first_s, max_age_s > 0".into()));
        }
        if d.max_connections_per_destination == 0 || d.max_recipients_per_transaction == 0 || d.max_connections_total == 0 {
            return Err(invalid("delivery", "connection and recipient limits must be at least 1".into()));
        }
        in_range("delivery.command_timeout_s", d.command_timeout_s, 1, 86_400, "seconds")?;
        in_range("delivery.data_init_timeout_s", d.data_init_timeout_s, 1, 86_400, "seconds")?;
        in_range("delivery.data_timeout_s", d.data_timeout_s, 1, 86_400, "seconds")?;
        if d.tls_verify == TlsVerify::Ca && d.tls_ca_file.is_none() {
            return Err(invalid("delivery.tls_ca_file", "tls_verify = \"ca\" needs tls_ca_file".into()));
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        for r in &self.route {
            let p = self.tls_policy(r);
            if p.verify == TlsVerify::Ca && p.ca_file.is_none() {
                return Err(invalid("route.tls_ca_file", format!("route {:?}: tls_verify = \"ca\" needs tls_ca_file", r.domain)));
            }
            if r.hosts.is_empty() {
                return Err(invalid("route.hosts", format!("route for {:?} has no hosts", r.domain)));
            }
            if let Some(h) = r.hosts.iter().find(|h| h.parse::<SocketAddr>().is_err()) {
                return Err(invalid("route.hosts", format!("{h:?} is not ip:port")));
            }
        }
        Ok(())
    }

    fn validate_tls_and_auth(&self) -> Result<(), ConfigError> {
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid("tls", "cert_file and key_file go together".into()));
        }
        for u in &self.auth.users {
            if argon2::password_hash::PasswordHash::new(&u.password_hash).is_err() {
                return Err(invalid(
                    "auth.users.password_hash",
                    format!("user {:?}: not a PHC hash (make one with ringpost --hash-password)", u.name),
                ));
            }
        }
        if let Some(l) = self.auth.plaintext_listeners.iter().find(|l| !self.server.listen.contains(l)) {
            return Err(invalid("auth.plaintext_listeners", format!("{l:?} is not one of server.listen")));
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.dns.nameservers.iter().find(|n| n.parse::<SocketAddr>().is_err()) {
            return Err(invalid("dns.nameservers", format!("{n:?} is not ip:port")));
        }
        if self.dns.cache_entries_max == 0 {
            return Err(invalid("dns.cache_entries_max", "must be at least 1".into()));
        }
        Ok(())
    }

    /// Number of executors to start on a host with `online` CPUs.
    pub fn core_count(&self, online: usize) -> usize {
        match self.engine.cores {
            Cores::Count(n) => n,
            Cores::All(_) => online.max(1),
        }
    }

    /// The outbound TLS policy of a route (route settings over `[delivery]` defaults).
    pub fn tls_policy(&self, r: &Route) -> TlsPolicy {
        let d = &self.delivery;
        TlsPolicy {
            mode: r.tls.unwrap_or(d.tls),
            verify: r.tls_verify.unwrap_or(d.tls_verify),
            ca_file: r.tls_ca_file.clone().or_else(|| d.tls_ca_file.clone()),
            plaintext_fallback: d.tls_plaintext_fallback,
        }
    }

    /// The default outbound TLS policy (destinations found through DNS).
    pub fn default_tls_policy(&self) -> TlsPolicy {
        let d = &self.delivery;
        TlsPolicy { mode: d.tls, verify: d.tls_verify, ca_file: d.tls_ca_file.clone(), plaintext_fallback: d.tls_plaintext_fallback }
    }

    /// Parsed relay networks.
    pub fn relay_networks(&self) -> Vec<Network> {
        self.server.relay_networks.iter().filter_map(|n| Network::parse(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.server.max_recipients, 1000);
        assert_eq!(c.spool.durability, Durability::Fsync);
    }

    #[test]
    fn unknown_key_is_reported_with_its_name_and_line() {
        let e = Config::parse("[server]\nlisten = [\"127.0.0.1:25\"]\nmax_recipents = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("`server.max_recipents`: ") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let e = Config::parse("[server]\nmax_recipients = 10\n").unwrap_err().to_string();
        assert!(e.contains("server.max_recipients"), "{e}");
        let e = Config::parse("[server]\n[engine]\ncores = 0\n").unwrap_err().to_string();
        assert_eq!(e, "invalid value for `engine.cores`: 0 is outside 1..=1024 cores");
    }

    /// A wrong enum word is refused by serde while parsing: the message shows the line, the
    /// key as written and the words accepted.
    fn refused(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn each_enum_rejects_a_wrong_word_naming_key_and_line() {
        let e = refused("[server]\n[spool]\ndir = \"x\"\ndurability = \"maybe\"\n");
        assert!(e.starts_with("`spool.durability`: ") && e.contains("line 4") && e.contains("`fsync` or `none`"), "{e}");
        let e = refused("[server]\n[delivery]\ntls = \"sometimes\"\n");
        assert!(e.starts_with("`delivery.tls`: ") && e.contains("line 3") && e.contains("`opportunistic`, `required`, `disabled`"), "{e}");
        let e = refused("[server]\n[delivery]\ntls_verify = \"CA\"\n");
        assert!(e.starts_with("`delivery.tls_verify`: ") && e.contains("line 3") && e.contains("`none` or `ca`"), "{e}");
        let e = refused("[server]\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:25\"]\ntls = \"yes\"\n");
        assert!(e.starts_with("`route.tls`: ") && e.contains("line 5") && e.contains("unknown variant `yes`"), "{e}");
        let e = refused("[server]\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:25\"]\ntls_verify = \"full\"\n");
        assert!(e.starts_with("`route.tls_verify`: ") && e.contains("line 5") && e.contains("unknown variant `full`"), "{e}");
        let e = refused("[server]\n[[dkim]]\ndomain = \"d\"\nselector = \"s\"\nalgorithm = \"rsa-sha1\"\nkey_file = \"k\"\n");
        assert!(e.starts_with("`dkim.algorithm`: ") && e.contains("line 5") && e.contains("`rsa-sha256` or `ed25519-sha256`"), "{e}");
        let e = refused("[server]\n[engine]\ncores = \"most\"\n");
        assert!(e.starts_with("`engine.cores`: ") && e.contains("line 3") && e.contains("\"all\" or a number of cores"), "{e}");
    }

    #[test]
    fn enum_words_parse_to_their_variants() {
        let c = Config::parse("[server]\n[spool]\ndurability = \"none\"\n[engine]\ncores = 3\n[delivery]\ntls = \"required\"\ntls_verify = \"ca\"\ntls_ca_file = \"/ca.pem\"\n[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:25\"]\ntls = \"disabled\"\ntls_verify = \"none\"\n").unwrap();
        assert_eq!(c.spool.durability, Durability::None);
        assert_eq!(ringpost_spool::Durability::from(c.spool.durability), ringpost_spool::Durability::None);
        assert_eq!((c.engine.cores, c.core_count(8)), (Cores::Count(3), 3));
        assert_eq!((c.delivery.tls, c.delivery.tls_verify), (TlsMode::Required, TlsVerify::Ca));
        let p = c.tls_policy(&c.route[0]);
        assert_eq!((p.mode, p.verify, p.ca_file.as_deref()), (TlsMode::Disabled, TlsVerify::None, Some(std::path::Path::new("/ca.pem"))));
        let d = Config::parse("[server]\n[engine]\ncores = \"all\"\n").unwrap();
        assert_eq!((d.engine.cores, d.core_count(8)), (Cores::All(AllCores::All), 8));
    }

    #[test]
    fn ca_verification_needs_a_ca_file() {
        let e = refused("[server]\n[delivery]\ntls_verify = \"ca\"\n");
        assert_eq!(e, "invalid value for `delivery.tls_ca_file`: tls_verify = \"ca\" needs tls_ca_file");
        let e = refused("[server]\n[[route]]\ndomain = \"x.test\"\nhosts = [\"127.0.0.1:25\"]\ntls_verify = \"ca\"\n");
        assert_eq!(e, "invalid value for `route.tls_ca_file`: route \"x.test\": tls_verify = \"ca\" needs tls_ca_file");
    }

    #[test]
    fn limits_default_to_the_former_constants() {
        for c in [Config::parse("[server]\n").unwrap(), Config::parse(DEFAULT_CONFIG).unwrap()] {
            assert_eq!(c.spool.pending_bytes_max, 16 << 20);
            assert_eq!(c.engine.mesh_capacity, 4096);
            assert_eq!(c.server.body_chunk_bytes, 128 * 1024);
            assert_eq!(c.server.input_buffer_bytes_max, 64 * 1024);
            let d = &c.delivery;
            assert_eq!((d.command_timeout_s, d.data_init_timeout_s, d.data_timeout_s), (300, 120, 600));
            assert_eq!((d.tls, d.tls_verify, c.engine.cores), (TlsMode::Opportunistic, TlsVerify::None, Cores::All(AllCores::All)));
        }
    }

    #[test]
    fn limits_are_configurable_within_their_ranges() {
        let c = Config::parse("[server]\nbody_chunk_bytes = 8192\ninput_buffer_bytes_max = 32768\n[spool]\npending_bytes_max = 8192\n[engine]\nmesh_capacity = 16\n[delivery]\ncommand_timeout_s = 7\ndata_init_timeout_s = 8\ndata_timeout_s = 9\n").unwrap();
        assert_eq!(
            (c.server.body_chunk_bytes, c.server.input_buffer_bytes_max, c.spool.pending_bytes_max, c.engine.mesh_capacity),
            (8192, 32768, 8192, 16)
        );
        assert_eq!((c.delivery.command_timeout_s, c.delivery.data_init_timeout_s, c.delivery.data_timeout_s), (7, 8, 9));
        let cases = [
            ("[server]\nbody_chunk_bytes = 4095\n", "invalid value for `server.body_chunk_bytes`: 4095 is outside 4096..=1048576 bytes"),
            ("[server]\nbody_chunk_bytes = 1048577\n", "invalid value for `server.body_chunk_bytes`: 1048577 is outside 4096..=1048576 bytes"),
            ("[server]\ninput_buffer_bytes_max = 4096\n", "invalid value for `server.input_buffer_bytes_max`: 4096 is outside 16384..=1048576 bytes"),
            (
                "[server]\n[spool]\npending_bytes_max = 131071\n",
                "invalid value for `spool.pending_bytes_max`: 131071 is outside 131072..=1073741824 bytes (at least server.body_chunk_bytes)",
            ),
            ("[server]\n[engine]\nmesh_capacity = 0\n", "invalid value for `engine.mesh_capacity`: 0 is outside 1..=1048576 messages"),
            ("[server]\n[delivery]\ncommand_timeout_s = 0\n", "invalid value for `delivery.command_timeout_s`: 0 is outside 1..=86400 seconds"),
            ("[server]\n[delivery]\ndata_init_timeout_s = 0\n", "invalid value for `delivery.data_init_timeout_s`: 0 is outside 1..=86400 seconds"),
            ("[server]\n[delivery]\ndata_timeout_s = 86401\n", "invalid value for `delivery.data_timeout_s`: 86401 is outside 1..=86400 seconds"),
        ];
        for (text, want) in cases {
            assert_eq!(refused(text), want, "{text}");
        }
    }

    #[test]
    fn max_recipients_is_bounded_on_both_sides() {
        for ok in [100, 1000, MAX_RECIPIENTS_CEILING] {
            let c = Config::parse(&format!("[server]\nmax_recipients = {ok}\n")).unwrap();
            assert_eq!(c.server.max_recipients, ok);
        }
        let e = Config::parse(&format!("[server]\nmax_recipients = {}\n", MAX_RECIPIENTS_CEILING + 1)).unwrap_err().to_string();
        assert_eq!(e, "invalid value for `server.max_recipients`: 10001 is more than the ceiling of 10000 per transaction");
        let e = Config::parse("[server]\nmax_recipients = 99\n").unwrap_err().to_string();
        assert!(e.contains("server.max_recipients") && e.contains("at least 100"), "{e}");
    }

    #[test]
    fn dns_cache_size_is_configurable_and_never_zero() {
        assert_eq!(Config::parse("[server]\n").unwrap().dns.cache_entries_max, 100_000);
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap().dns.cache_entries_max, 100_000);
        assert_eq!(Config::parse("[server]\n[dns]\ncache_entries_max = 5\n").unwrap().dns.cache_entries_max, 5);
        let e = Config::parse("[server]\n[dns]\ncache_entries_max = 0\n").unwrap_err().to_string();
        assert!(e.contains("dns.cache_entries_max"), "{e}");
    }

    #[test]
    fn relay_networks_have_their_own_larger_per_address_ceiling() {
        for c in [Config::parse("[server]\n").unwrap(), Config::parse(DEFAULT_CONFIG).unwrap()] {
            assert_eq!((c.server.max_connections_per_ip, c.server.max_connections_per_relay_ip), (50, 1000));
        }
        let c = Config::parse("[server]\nmax_connections_per_relay_ip = 7\n").unwrap();
        assert_eq!((c.server.max_connections_per_ip, c.server.max_connections_per_relay_ip), (50, 7));
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let c = Config::parse("[server]\n[spool]\ndir = \"/x\"\n[log]\n").unwrap();
        assert_eq!(c.spool.segment_size, 64 << 20);
        assert_eq!(c.spool.durability, Durability::Fsync);
        assert_eq!(c.server.max_message_size, 26_214_400);
    }

    #[test]
    fn admin_section_defaults_and_bounds() {
        for c in [Config::parse("[server]\n").unwrap(), Config::parse(DEFAULT_CONFIG).unwrap()] {
            assert_eq!(c.admin.socket, PathBuf::from("var/run/ringpost.sock"));
            assert_eq!((c.admin.group.as_deref(), c.admin.connections_max, c.admin.core_timeout_ms), (None, 16, 5000));
        }
        assert_eq!(Config::parse("[server]\n[admin]\nsocket = \"\"\n").unwrap().admin.socket, PathBuf::new());
        let long = format!("[server]\n[admin]\nsocket = \"/{}\"\n", "x".repeat(107));
        assert_eq!(refused(&long), "invalid value for `admin.socket`: 108 is outside 0..=107 bytes of path");
        assert_eq!(
            refused("[server]\n[admin]\nconnections_max = 0\n"),
            "invalid value for `admin.connections_max`: 0 is outside 1..=1024 connections"
        );
        assert!(refused("[server]\n[admin]\nsockt = \"x\"\n").starts_with("`admin.sockt`: "));
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set_and_a_bad_address_is_refused() {
        for c in [
            Config::parse("[server]\n").unwrap(),
            Config::parse(DEFAULT_CONFIG).unwrap(),
            Config::parse("[server]\n[metrics]\nlisten = \"\"\n").unwrap(),
        ] {
            assert_eq!(c.metrics.addr(), None);
        }
        let c = Config::parse("[server]\n[metrics]\nlisten = \"127.0.0.1:9425\"\n").unwrap();
        assert_eq!(c.metrics.addr(), Some("127.0.0.1:9425".parse().unwrap()));
        let e = refused("[server]\n[metrics]\nlisten = \"localhost\"\n");
        assert!(e.starts_with("invalid value for `metrics.listen`: \"localhost\" is not an IP address and port"), "{e}");
        assert!(refused("[server]\n[metrics]\nport = 1\n").starts_with("`metrics.port`: "));
        assert_eq!(Config::parse("[server]\n").unwrap().metrics.destinations_top, 10);
        let e = refused("[server]\n[metrics]\ndestinations_top = 101\n");
        assert_eq!(e, "invalid value for `metrics.destinations_top`: 101 is outside 0..=100 destinations");
    }

    #[test]
    fn cidr_matching() {
        let n = Network::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.0.0.2".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("10.0.0.1".parse().unwrap()));
        assert!(Network::parse("::1/128").unwrap().contains("::1".parse().unwrap()));
        assert!(Network::parse("1.2.3.4/33").is_none());
    }
}
