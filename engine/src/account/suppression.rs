//! The suppression list: recipients never to be sent to again, host-wide.
//!
//! A recipient lands here when a delivery to it bounced with a category that says the mailbox
//! is gone (`bad-mailbox`, `inactive-mailbox` by default), or by hand (`ringctl suppress add`).
//! Sending to such addresses again is what gets a sender's IPs blocked by mailbox providers.
//!
//! Lookups are on the RCPT path of every core, so the set is a lock-free concurrent map
//! (papaya) keyed by a 64-bit keyed hash of the normalised address: 16 bytes of key and value
//! per entry plus the map's overhead, whatever the address length, and O(1) lookups. The
//! addresses themselves live only in the journal file (`add`/`remove` JSON lines), which is
//! replayed at start and compacted when mostly dead. A change is durable (written and
//! fdatasynced, on glommio's blocking pool so no core stalls) before it takes effect.
use crate::account::bounce_class::BounceCategory;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest reason text kept in the journal.
const MAX_REASON: usize = 300;
/// Longest reason of a hand-made entry kept in memory (for the RCPT refusal).
const MAX_NOTE: usize = 120;

/// What the list knows about one suppressed address (the address itself is in the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// Why it was added.
    pub category: BounceCategory,
    /// When, Unix seconds.
    pub since_s: u64,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
struct JournalLine {
    op: Op,
    addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    category: Option<BounceCategory>,
    #[serde(default)]
    time_s: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    /// Added by hand (`ringctl suppress add`): its reason is kept in memory for the refusal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    manual: bool,
}

/// One live entry of the journal, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The address as added.
    pub addr: String,
    /// Category and time.
    pub entry: Suppressed,
    /// Why.
    pub reason: String,
    /// Added by hand.
    pub manual: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Add,
    Remove,
}

/// A journal that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("suppression list {path}: {source}")]
pub struct SuppressionError {
    /// The journal file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The host-wide suppression list. Shared by every core (`Arc`); reads never block.
pub struct SuppressionList {
    path: PathBuf,
    map: papaya::HashMap<u64, Suppressed>,
    /// Reasons of hand-made entries (few: an operator types them), cut to [`MAX_NOTE`].
    notes: papaya::HashMap<u64, Box<str>>,
    keys: std::hash::RandomState,
}

impl SuppressionList {
    /// Load (replaying) the journal at `path`, creating its directory; compacts it when most
    /// of its lines are dead. Blocking: call before the cores serve.
    pub fn open(path: &Path) -> Result<Self, SuppressionError> {
        let err = |source| SuppressionError { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let list = Self { path: path.to_path_buf(), map: papaya::HashMap::new(), notes: papaya::HashMap::new(), keys: std::hash::RandomState::new() };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
        };
        let lines = list.replay(&text);
        drop(text);
        if lines > 1000 && lines > 2 * list.len() {
            compact(path, &live_lines(path).map_err(err)?).map_err(err)?;
        }
        Ok(list)
    }

    /// Apply every journal line to the map (addresses are not kept); returns the line count.
    fn replay(&self, text: &str) -> usize {
        let mut lines = 0;
        let map = self.map.pin();
        let notes = self.notes.pin();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            // A torn last line (crash mid-write) was never acknowledged: skip it.
            let Ok(j) = serde_json::from_str::<JournalLine>(l) else { continue };
            let key = self.key(&j.addr);
            match j.op {
                Op::Add => {
                    map.insert(key, Suppressed { category: j.category.unwrap_or(BounceCategory::Other), since_s: j.time_s });
                    match j.manual {
                        true => notes.insert(key, note_of(&j.reason)),
                        false => notes.remove(&key),
                    };
                }
                Op::Remove => {
                    map.remove(&key);
                    notes.remove(&key);
                }
            }
        }
        lines
    }

    fn key(&self, addr: &str) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write(normalise(addr).as_bytes());
        h.finish()
    }

    /// Whether `addr` is suppressed, and why.
    pub fn check(&self, addr: &str) -> Option<Suppressed> {
        self.map.pin().get(&self.key(addr)).copied()
    }

    /// The operator's reason for a hand-made entry.
    pub fn note(&self, addr: &str) -> Option<String> {
        self.notes.pin().get(&self.key(addr)).map(|n| n.to_string())
    }

    /// Suppress `addr` by hand with the operator's `reason` (category `other`); durable before
    /// it takes effect, and the reason is shown in the RCPT refusal.
    pub async fn add_manual(&self, addr: &str, reason: &str, now_s: u64) -> Result<(), SuppressionError> {
        // It goes into an SMTP reply: no line breaks or other controls.
        let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let reason = cut_reason(&reason);
        let line = JournalLine { op: Op::Add, addr: addr.to_string(), category: Some(BounceCategory::Other), time_s: now_s, reason, manual: true };
        self.append(&line).await?;
        let key = self.key(addr);
        self.notes.pin().insert(key, note_of(&line.reason));
        self.map.pin().insert(key, Suppressed { category: BounceCategory::Other, since_s: now_s });
        Ok(())
    }

    /// Number of suppressed addresses.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is suppressed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Suppress `addr`; durable before it takes effect. Runs the file I/O on glommio's
    /// blocking pool (call from a core).
    pub async fn add(&self, addr: &str, category: BounceCategory, reason: &str, now_s: u64) -> Result<(), SuppressionError> {
        let reason = cut_reason(reason);
        let line = JournalLine { op: Op::Add, addr: addr.to_string(), category: Some(category), time_s: now_s, reason, manual: false };
        self.append(&line).await?;
        self.notes.pin().remove(&self.key(addr));
        self.map.pin().insert(self.key(addr), Suppressed { category, since_s: now_s });
        Ok(())
    }

    /// Lift the suppression of `addr`; durable before it takes effect. True if it was listed.
    pub async fn remove(&self, addr: &str, now_s: u64) -> Result<bool, SuppressionError> {
        if self.check(addr).is_none() {
            return Ok(false);
        }
        let line = JournalLine { op: Op::Remove, addr: addr.to_string(), category: None, time_s: now_s, reason: String::new(), manual: false };
        self.append(&line).await?;
        self.notes.pin().remove(&self.key(addr));
        Ok(self.map.pin().remove(&self.key(addr)).is_some())
    }

    /// Every live entry with its address and reason, read from the journal (not the hot map).
    pub fn list(&self) -> Result<Vec<(String, Suppressed, String)>, SuppressionError> {
        Ok(self.entries()?.into_iter().map(|e| (e.addr, e.entry, e.reason)).collect())
    }

    /// Every live entry, sorted by address, read from the journal (blocking file read).
    pub fn entries(&self) -> Result<Vec<ListEntry>, SuppressionError> {
        let live = live_lines(&self.path).map_err(|source| SuppressionError { path: self.path.clone(), source })?;
        let mut out: Vec<_> = live
            .into_iter()
            .map(|j| ListEntry {
                entry: Suppressed { category: j.category.unwrap_or(BounceCategory::Other), since_s: j.time_s },
                addr: j.addr,
                reason: j.reason,
                manual: j.manual,
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        Ok(out)
    }

    async fn append(&self, line: &JournalLine) -> Result<(), SuppressionError> {
        let mut bytes = serde_json::to_vec(line).expect("a journal line serialises");
        bytes.push(b'\n');
        let path = self.path.clone();
        let write = move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&bytes)?;
            f.sync_data()
        };
        glommio::executor().spawn_blocking(write).await.map_err(|source| SuppressionError { path: self.path.clone(), source })
    }
}

/// The journal's live add lines (the latest per address), for listing and compaction.
fn live_lines(path: &Path) -> std::io::Result<Vec<JournalLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut live: std::collections::HashMap<String, JournalLine> = std::collections::HashMap::new();
    for j in text.lines().filter_map(|l| serde_json::from_str::<JournalLine>(l).ok()) {
        match j.op {
            Op::Add => live.insert(normalise(&j.addr), j),
            Op::Remove => live.remove(&normalise(&j.addr)),
        };
    }
    Ok(live.into_values().collect())
}

fn cut_reason(reason: &str) -> String {
    let mut reason = reason.to_string();
    reason.truncate(reason.char_indices().nth(MAX_REASON).map_or(reason.len(), |(i, _)| i));
    reason
}

fn note_of(reason: &str) -> Box<str> {
    reason.char_indices().nth(MAX_NOTE).map_or(reason, |(i, _)| &reason[..i]).into()
}

/// Addresses compare case-insensitively: what providers do, and what a sender expects.
fn normalise(addr: &str) -> String {
    addr.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase()
}

/// Rewrite the journal with only its live entries, durably (`crate::durable_file`): a crash
/// leaves either the old or the new journal.
fn compact(path: &Path, live: &[JournalLine]) -> std::io::Result<()> {
    crate::durable_file::replace(path, |w| {
        for j in live {
            serde_json::to_writer(&mut *w, j).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
#[path = "suppression_tests.rs"]
mod tests;
