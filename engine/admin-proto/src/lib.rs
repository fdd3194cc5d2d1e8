//! The admin socket's protocol, shared by the daemon and `ringctl`: one Rust type for every
//! request ([`Request`]) and every reply ([`Reply`]), and the frame codec ([`frame`]) that
//! carries them. Payloads are postcard (serde); nothing is hand-encoded. See
//! `docs/admin-protocol.md` for the wire format and each command's meaning.
//!
//! This crate does no I/O and knows nothing of the engine: changing a type here changes both
//! sides at once, and a version bump ([`frame::PROTOCOL_VERSION`]) is how an incompatible
//! change is told apart.
#![warn(missing_docs)]

pub mod frame;

pub use frame::{decode, encode, split_frame, FrameError, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Per-core counters and gauges.
    Status,
    /// Per-destination queues, sorted, at most `limit` of them.
    Queue {
        /// Most destinations returned (the daemon caps it at [`QUEUE_LIMIT_MAX`]).
        limit: u32,
        /// Order of the listing.
        sort: QueueSort,
    },
    /// One message by its queue id (as in `250 ... queued as`) or its `Message-ID` header
    /// (with or without the angle brackets): live, or finished within `[admin] history`.
    Msg {
        /// The queue id or the Message-ID.
        id: String,
    },
    /// Stop delivering to a destination (queued mail waits, nothing is lost).
    Suspend {
        /// A domain or every destination.
        target: Target,
        /// Resume by itself after this many seconds (none: until `Resume`).
        for_s: Option<u64>,
    },
    /// Deliver again to a suspended destination.
    Resume {
        /// A domain or every destination.
        target: Target,
    },
    /// Fail queued recipients now: Bounce events and DSNs, as for a 5xx reply.
    Bounce {
        /// A destination's queued recipients, or one message's.
        target: BounceTarget,
        /// Put in the DSN's diagnostic and the log.
        reason: Option<String>,
    },
    /// Make recipients waiting for a retry ready now.
    Retry {
        /// A domain or every destination.
        target: Target,
    },
    /// `on`: answer new sessions 421 and keep delivering; off: accept again.
    Drain {
        /// Drain (true) or accept again (false).
        on: bool,
    },
    /// Re-read the configuration file and apply what can change live.
    Reload,
    /// Read or change the suppression list.
    Suppress(SuppressOp),
    /// Stream the SMTP conversations in and out (commands and replies, never bodies) until the
    /// connection closes: `Reply::Trace` frames, all with this request's id.
    Trace {
        /// Only inbound sessions from this client IP (and no outbound conversation).
        client: Option<String>,
        /// Only outbound conversations with this destination domain (and no inbound session).
        dest: Option<String>,
    },
    /// Stream a `Reply::Top` frame every `interval_ms` until the connection closes.
    Top {
        /// Milliseconds between frames (the daemon keeps it within 200..=10 000).
        interval_ms: u32,
        /// Destinations listed per frame, largest queue first (capped at 100).
        dests: u32,
    },
}

/// A suppression list command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuppressOp {
    /// Suppress an address by hand; durable (fsynced) before the reply.
    Add {
        /// The address.
        addr: String,
        /// Why (shown in the RCPT refusal and by `check`).
        reason: Option<String>,
    },
    /// Lift a suppression; durable before the reply. `NotFound` when it was not listed.
    Remove {
        /// The address.
        addr: String,
    },
    /// The entries, sorted by address, at most `limit` (capped at [`SUPPRESS_LIMIT_MAX`]).
    List {
        /// Most entries returned.
        limit: u32,
    },
    /// One address: its entry, or `NotFound`.
    Check {
        /// The address.
        addr: String,
    },
}

/// Most entries one suppression listing returns.
pub const SUPPRESS_LIMIT_MAX: u32 = 10_000;

/// Most destinations one `Queue` reply lists.
pub const QUEUE_LIMIT_MAX: u32 = 5000;

/// A destination or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// One destination domain.
    Domain(String),
    /// Every destination on every core.
    All,
}

/// What `Bounce` fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BounceTarget {
    /// Every queued recipient of a destination domain.
    Domain(String),
    /// Every queued recipient of one message (queue id).
    Msg(String),
}

/// Order of a queue listing (largest first, except `Name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSort {
    /// Recipients ready + waiting + in flight.
    Total,
    /// Recipients ready now.
    Ready,
    /// Recipients waiting for a retry.
    Waiting,
    /// Age of the oldest message.
    Oldest,
    /// Domain name, ascending.
    Name,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The request failed or was refused.
    Error(ErrorReply),
    /// Answer to `Status`.
    Status(Status),
    /// Answer to `Queue`.
    Queue(QueueReport),
    /// Answer to `Msg`.
    Msg(MsgStatus),
    /// Answer to `Suspend`, `Resume`, `Bounce`, `Retry`, `Drain`.
    Done(Done),
    /// Answer to `Reload`.
    Reload(ReloadReport),
    /// Answer to `Suppress`.
    Suppression(SuppressionReport),
    /// One frame of a `Trace` stream.
    Trace(TraceBatch),
    /// One frame of a `Top` stream.
    Top(TopFrame),
}

/// Answer to a suppression command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionReport {
    /// What was done (`add`, `remove`) or asked, for a human.
    pub summary: String,
    /// Addresses suppressed in all.
    pub total: u64,
    /// The entries concerned (for `List`, sorted by address, at most the limit).
    pub entries: Vec<SuppressEntry>,
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressEntry {
    /// The address as added.
    pub addr: String,
    /// The bounce category (`other` for one added by hand).
    pub category: String,
    /// When it was added, Unix seconds.
    pub since_unix_s: u64,
    /// Why: the operator's reason, or the bounce's reply.
    pub reason: String,
    /// Added by hand (`ringctl suppress add`), not by a bounce.
    pub manual: bool,
}

/// Some trace events, and how many were dropped since the trace began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBatch {
    /// Events in the order each core made them (cores interleave by time).
    pub events: Vec<TraceEvent>,
    /// Events dropped since the trace began because its queue was full (the daemon never
    /// waits for a trace client).
    pub dropped_total: u64,
}

/// One line of an SMTP conversation, or its start or end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// When, Unix ms.
    pub unix_ms: u64,
    /// The core it happened on.
    pub core: u32,
    /// Inbound session or outbound connection.
    pub side: TraceSide,
    /// Session or connection number, unique on its core.
    pub conn: u64,
    /// The other end: the client's `ip:port`, or the server's `host[ip]:port`.
    pub peer: String,
    /// Outbound only: the destination domain.
    pub domain: Option<String>,
    /// What happened.
    pub kind: TraceKind,
    /// The command or reply line(s), CRLF removed; AUTH credentials redacted; never a body.
    pub text: String,
}

/// Which conversation an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceSide {
    /// A client talking to us.
    In,
    /// Us talking to a destination.
    Out,
}

/// What a trace event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceKind {
    /// The conversation began (connection made or accepted).
    Open,
    /// A command (or pipelined commands) sent by the client side.
    Command,
    /// A reply from the server side.
    Reply,
    /// A message body passed (its size only).
    Body,
    /// The conversation ended.
    Close,
}

/// One frame of `top`: the status, and the largest destinations by queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopFrame {
    /// Daemon-side time of the snapshot, Unix ms (rates are differences between frames).
    pub unix_ms: u64,
    /// As `Status` answers.
    pub status: Status,
    /// As `Queue` answers, sorted by total.
    pub queue: QueueReport,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The payload did not decode; the connection is closed.
    Malformed,
    /// The frame was over [`MAX_FRAME_BYTES`]; the connection is closed.
    Oversized,
    /// Another protocol version; the connection is closed.
    UnknownVersion,
    /// No such message or destination.
    NotFound,
    /// The request is valid but was refused (for a reload: the new config does not validate).
    Refused,
    /// A core did not answer in time.
    Timeout,
    /// The daemon could not do it (shutting down, a core gone).
    Unavailable,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, for a human.
    pub message: String,
}

/// Answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// New sessions are answered 421.
    pub draining: bool,
    /// One entry per core, in core order.
    pub cores: Vec<CoreStatus>,
}

/// One core's counters (since start) and gauges (now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStatus {
    /// Core index.
    pub core: u32,
    /// Open inbound sessions.
    pub sessions: u64,
    /// Messages this core accepted that still have a recipient open.
    pub messages_live: u64,
    /// Recipients queued here (destinations this core owns): ready to go.
    pub rcpts_ready: u64,
    /// Recipients queued here waiting for their next attempt.
    pub rcpts_waiting: u64,
    /// Recipients handed to a connection and not yet answered.
    pub rcpts_in_flight: u64,
    /// Destinations with a queue or a connection on this core.
    pub destinations: u64,
    /// Destinations suspended on this core (`*`: all).
    pub suspended: Vec<String>,
    /// Outbound connections open.
    pub connections_out: u64,
    /// Spool segment files.
    pub spool_segments: u64,
    /// Bytes those segments take on disk (preallocated).
    pub spool_bytes: u64,
    /// Group-commit rounds completed.
    pub commit_rounds: u64,
    /// Messages accepted (250 sent), DSNs included.
    pub accepted: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipient attempts deferred (each transient failure counts).
    pub deferred: u64,
    /// Recipients bounced.
    pub bounced: u64,
    /// Recipients expired.
    pub expired: u64,
}

/// Answer to `Queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Destinations known on every core before the limit.
    pub total_destinations: u64,
    /// The destinations, sorted, at most the limit.
    pub destinations: Vec<DestStatus>,
}

/// One destination's queue on the core that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestStatus {
    /// Destination domain.
    pub domain: String,
    /// The core owning it.
    pub core: u32,
    /// Recipients ready to go.
    pub ready: u64,
    /// Recipients waiting for their next attempt.
    pub waiting: u64,
    /// Recipients handed to a connection, not yet answered.
    pub in_flight: u64,
    /// Open connections.
    pub connections: u64,
    /// Seconds since the oldest queued message here was received (none: nothing queued).
    pub oldest_age_s: Option<u64>,
    /// Suspended (by name or by `suspend --all`).
    pub suspended: bool,
    /// The last reply from the destination (or about it), if any was seen.
    pub last_response: Option<String>,
    /// The site (sorted MX hosts, or `route:` hosts) the domain's mail goes to, once known.
    #[serde(default)]
    pub site: Option<String>,
    /// Paths (source|site) of that site a rule suspended or throttled: until when and why.
    #[serde(default)]
    pub shaping: Vec<String>,
}

/// Answer to `Msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgStatus {
    /// Queue id.
    pub id: String,
    /// The `Message-ID` header's value without angle brackets (none: the message had none).
    pub message_id: Option<String>,
    /// Every recipient is final: answered from the history (`[admin] history`).
    pub finished: bool,
    /// Envelope sender (empty: null sender).
    pub sender: String,
    /// Size as relayed, octets.
    pub size: u64,
    /// Reception time, Unix ms.
    pub received_unix_ms: u64,
    /// Every recipient in envelope order.
    pub recipients: Vec<RcptStatus>,
}

/// One recipient of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptStatus {
    /// Address.
    pub recipient: String,
    /// Where it stands.
    pub state: RcptState,
    /// Attempts made so far (0 when final and unknown).
    pub attempts: u32,
    /// Next attempt, Unix ms (waiting recipients only).
    pub next_attempt_unix_ms: Option<u64>,
    /// The last reply about it, if known.
    pub last_response: Option<String>,
    /// Final bounces and expiries: the bounce category (`bad-mailbox`, ...).
    pub category: Option<String>,
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// In a ready queue.
    Queued,
    /// On a connection now.
    InFlight,
    /// Waiting for its next attempt.
    Deferred,
    /// Suspended destination: waits for `resume`.
    Suspended,
    /// Final: delivered.
    Delivered,
    /// Final: bounced.
    Bounced,
    /// Final: expired.
    Expired,
    /// Open, but no queue holds it now (between cores, or being settled).
    Moving,
}

/// Answer to an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// What was done, for a human.
    pub summary: String,
    /// How many things it touched (destinations, recipients or cores: the summary says).
    pub count: u64,
}

/// Answer to `Reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file read.
    pub path: String,
    /// Settings changed and applied live.
    pub applied: Vec<String>,
    /// Settings changed that need a restart (left as they were).
    pub needs_restart: Vec<String>,
}

impl Reply {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error(ErrorReply { kind, message: message.into() })
    }
}

impl From<&FrameError> for ErrorKind {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::TooShort { .. } | FrameError::Malformed { .. } => ErrorKind::Malformed,
            FrameError::Oversized { .. } => ErrorKind::Oversized,
            FrameError::UnknownVersion { .. } => ErrorKind::UnknownVersion,
        }
    }
}

#[cfg(test)]
mod tests;
