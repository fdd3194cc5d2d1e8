//! The delivery log: one JSON object per line, per event, per recipient.
//!
//! Each core buffers its own lines and appends them with one `write` on an `O_APPEND` file, so
//! cores never coordinate and lines never interleave. Flushed by the core's flusher task every
//! few tens of milliseconds and at shutdown.
use serde::Serialize;
use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

/// Kinds of events.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum EventKind {
    /// The message was accepted and made durable.
    Reception,
    /// A recipient was accepted by the destination (final).
    Delivery,
    /// An attempt failed temporarily; a retry is scheduled (not final).
    TransientFailure,
    /// A recipient was permanently refused (final).
    Bounce,
    /// A recipient's lifetime ran out (final).
    Expiration,
}

/// One log line.
#[derive(Debug, Serialize)]
pub struct LogEvent<'a> {
    /// Event kind.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Queue id.
    pub id: &'a str,
    /// Envelope sender.
    pub sender: &'a str,
    /// The recipient (Reception: all of them, comma separated).
    pub recipient: &'a str,
    /// Remote host:port, when one was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The remote or local response text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// TLS protocol and cipher of the connection, when it was encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Time since reception.
    pub queue_time_ms: u64,
    /// Core that wrote the event.
    pub core: usize,
    /// Wire size of the message.
    pub size: u64,
}

/// The other end of an event: its address and the TLS it used.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// `host[ip]:port` or `ip:port`.
    pub remote: String,
    /// Negotiated TLS, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
}

/// A core's buffered log writer.
pub struct DeliveryLog {
    file: Option<std::fs::File>,
    buf: RefCell<Vec<u8>>,
}

impl DeliveryLog {
    /// Open (create) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Some(file), buf: RefCell::new(Vec::with_capacity(64 * 1024)) })
    }

    /// Queue one event line.
    pub fn write(&self, e: &LogEvent<'_>) {
        let mut b = self.buf.borrow_mut();
        if serde_json::to_writer(&mut *b, e).is_ok() {
            b.push(b'\n');
        }
    }

    /// Write buffered lines (one `write` call; complete lines only).
    pub fn flush(&self) {
        let data = std::mem::take(&mut *self.buf.borrow_mut());
        if data.is_empty() {
            return;
        }
        if let Some(f) = &self.file {
            let mut f: &std::fs::File = f;
            if let Err(e) = f.write_all(&data) {
                tracing::error!("delivery log write failed: {e}");
            }
        }
        let mut b = self.buf.borrow_mut();
        if b.capacity() < data.capacity() {
            *b = Vec::with_capacity(data.capacity());
        }
    }
}
