//! The delivery log: one JSON object per line, per event, per recipient.
//!
//! Each core buffers its own lines and appends them with one `write` on an `O_APPEND` file, so
//! cores never coordinate and lines never interleave. Flushed by the core's flusher task every
//! few tens of milliseconds and at shutdown.
//!
//! Rotation by size (`[log] rotate_bytes`, `keep`): after a flush leaves the file at or over
//! the bound, the first core to claim the next generation (one atomic compare-exchange shared
//! by all cores) renames `log` to `log.1` (shifting `log.1` to `log.2` ... and dropping
//! `log.<keep>`); every core reopens `log` at its next flush when it sees the generation move.
//! A core that wrote in between wrote into what is now `log.1`: no line is lost or split.
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// For a failure (bounce, expiry, transient): its bounce category, e.g. `bad-mailbox`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'static str>,
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

/// When the log is rotated, shared by every core's writer.
#[derive(Debug)]
pub struct Rotation {
    /// Rotate once the file reaches this size; 0 never rotates.
    pub rotate_bytes: u64,
    /// Rotated files kept (`log.1` .. `log.<keep>`).
    pub keep: u32,
    /// Bumped by the core that rotates once the files are shifted; the others reopen when they
    /// see it move.
    pub generation: AtomicU64,
    /// The generation a core has claimed to rotate to: one rotation at a time, and only one
    /// core rotates a given file.
    claimed: AtomicU64,
}

impl Rotation {
    /// A rotation policy starting at generation 0.
    pub fn new(rotate_bytes: u64, keep: u32) -> Arc<Self> {
        Arc::new(Self { rotate_bytes, keep, generation: AtomicU64::new(0), claimed: AtomicU64::new(0) })
    }
}

/// A core's buffered log writer.
pub struct DeliveryLog {
    path: PathBuf,
    file: RefCell<Option<std::fs::File>>,
    buf: RefCell<Vec<u8>>,
    rotation: Arc<Rotation>,
    /// The generation `file` was opened at.
    generation: Cell<u64>,
}

impl DeliveryLog {
    /// Open (create) the log for appending.
    pub fn open(path: &Path, rotation: Arc<Rotation>) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let generation = rotation.generation.load(Ordering::Acquire);
        let file = open_append(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: RefCell::new(Some(file)),
            buf: RefCell::new(Vec::with_capacity(64 * 1024)),
            rotation,
            generation: Cell::new(generation),
        })
    }

    /// Queue one event line.
    pub fn write(&self, e: &LogEvent<'_>) {
        let mut b = self.buf.borrow_mut();
        if serde_json::to_writer(&mut *b, e).is_ok() {
            b.push(b'\n');
        }
    }

    /// Write buffered lines (one `write` call; complete lines only), then rotate if due.
    pub fn flush(&self) {
        let data = std::mem::take(&mut *self.buf.borrow_mut());
        if data.is_empty() {
            return;
        }
        self.reopen_if_rotated();
        let size = self.file.borrow().as_ref().map(|f| {
            let mut w: &std::fs::File = f;
            if let Err(e) = w.write_all(&data) {
                tracing::error!("delivery log write failed: {e}");
            }
            f.metadata().map(|m| m.len()).unwrap_or(0)
        });
        if self.rotation.rotate_bytes > 0 && size.is_some_and(|n| n >= self.rotation.rotate_bytes) {
            self.rotate();
        }
        let mut b = self.buf.borrow_mut();
        if b.capacity() < data.capacity() {
            *b = Vec::with_capacity(data.capacity());
        }
    }

    /// Another core rotated the log: write to the new file from now on.
    fn reopen_if_rotated(&self) {
        let now = self.rotation.generation.load(Ordering::Acquire);
        if now != self.generation.get() {
            self.generation.set(now);
            self.reopen();
        }
    }

    fn reopen(&self) {
        match open_append(&self.path) {
            Ok(f) => *self.file.borrow_mut() = Some(f),
            Err(e) => tracing::error!("delivery log {}: cannot reopen: {e}", self.path.display()),
        }
    }

    /// Claim the next generation, shift the files, then publish the generation; a core that
    /// loses the claim leaves the renaming to the winner and reopens once it is published.
    /// Publishing only after the renames keeps two shifts from ever running at once (a rename
    /// onto an existing name would drop that file).
    fn rotate(&self) {
        let g = self.generation.get();
        if self.rotation.claimed.compare_exchange(g, g + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let keep = self.rotation.keep.max(1);
        let _ = std::fs::remove_file(numbered(&self.path, keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, numbered(&self.path, 1)) {
            tracing::error!("delivery log {}: rotation failed: {e}", self.path.display());
        }
        self.generation.set(g + 1);
        self.reopen();
        self.rotation.generation.store(g + 1, Ordering::Release);
    }
}

/// `log.N`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> LogEvent<'static> {
        LogEvent {
            kind: EventKind::Delivery,
            time_ms: n as u64,
            id: "0100000100000040",
            sender: "a@b.test",
            recipient: "r@c.test",
            remote: None,
            response: Some("250 ok".into()),
            category: None,
            tls: None,
            attempts: 1,
            queue_time_ms: 3,
            core: 0,
            size: 1024,
        }
    }

    /// Every line of `path` and its rotated siblings, newest file last.
    fn all_lines(path: &Path, keep: u32) -> (Vec<u64>, usize) {
        let mut files: Vec<PathBuf> = (1..=keep + 1).rev().map(|i| numbered(path, i)).collect();
        files.push(path.to_path_buf());
        let mut times = Vec::new();
        let mut present = 0;
        for f in files.iter().filter(|f| f.exists()) {
            present += 1;
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
                times.push(v["time_ms"].as_u64().unwrap());
            }
        }
        (times, present)
    }

    #[test]
    fn two_writers_rotate_without_losing_or_splitting_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.jsonl");
        let rotation = Rotation::new(2_000, 100);
        let a = DeliveryLog::open(&path, rotation.clone()).unwrap();
        let b = DeliveryLog::open(&path, rotation.clone()).unwrap();
        for n in 0..400 {
            let w = if n % 3 == 0 { &a } else { &b };
            w.write(&event(n));
            if n % 7 == 0 {
                w.flush();
            }
        }
        a.flush();
        b.flush();
        let (mut times, files) = all_lines(&path, 100);
        times.sort_unstable();
        assert_eq!(times, (0..400).collect::<Vec<u64>>(), "every line once, none split");
        assert!(files > 10, "only {files} files: the log did not rotate at 2,000 bytes");
        assert_eq!(rotation.generation.load(Ordering::Relaxed) as usize, files - 1, "one generation per rotated file");
        for i in 1..files as u32 {
            let len = std::fs::metadata(numbered(&path, i)).unwrap().len();
            assert!(len < 2_000 + 7 * 300, "log.{i} is {len} bytes: rotation came late");
        }
    }

    #[test]
    fn only_keep_rotated_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.jsonl");
        let log = DeliveryLog::open(&path, Rotation::new(500, 2)).unwrap();
        for n in 0..100 {
            log.write(&event(n));
            log.flush();
        }
        assert!(path.exists() && numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "keep = 2 left a third rotated file");
        let (times, _) = all_lines(&path, 2);
        assert_eq!(*times.last().unwrap(), 99, "the newest line is in the live file");
    }

    #[test]
    fn zero_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.jsonl");
        let log = DeliveryLog::open(&path, Rotation::new(0, 2)).unwrap();
        for n in 0..50 {
            log.write(&event(n));
            log.flush();
        }
        assert!(!numbered(&path, 1).exists());
        assert_eq!(all_lines(&path, 2).0.len(), 50);
    }

    #[test]
    fn cores_racing_to_rotate_rotate_once_per_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.jsonl");
        let rotation = Rotation::new(20_000, 1_000);
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (path, rotation) = (path.clone(), rotation.clone());
                std::thread::spawn(move || {
                    let log = DeliveryLog::open(&path, rotation).unwrap();
                    for n in 0..3000 {
                        log.write(&event(t * 10_000 + n));
                        log.flush();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let (times, files) = all_lines(&path, 1_000);
        assert_eq!(times.len(), 12_000, "lines lost or doubled");
        for i in 1..files as u32 {
            let len = std::fs::metadata(numbered(&path, i)).unwrap().len();
            assert!(len >= 20_000, "log.{i} was rotated at {len} bytes: two cores rotated the same file");
        }
    }
}
