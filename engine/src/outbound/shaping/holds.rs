//! Suspensions and throttles that outlive a restart: what a `[[rule]]` put on a path, and
//! what `ringctl suspend --for` put on a destination, is kept in `holds.state` under the
//! spool directory until it ends, and a restart restores whatever is still in force (a path's
//! when the path is next made, a destination's when its core starts).
//!
//! The file is replaced whole (`crate::durable_file`) on glommio's blocking pool, never on a
//! core: a hold takes effect at once in memory and reaches the disk a moment later (one save
//! at a time; changes made while one runs are covered by the next). A crash in that moment
//! loses only that change, which a provider's next reply would make again.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A rule's hold is saved again only when it outgrows the saved one by more than this.
const EXTEND_SLACK_MS: u64 = 1_000;
/// After a failed save, the next one waits this long (the error is logged each time).
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

/// One hold: until when it suspends, until when and how much it slows, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldRecord {
    /// Suspended until this Unix ms (0: not suspended).
    pub suspended_until_ms: u64,
    /// Throttled until this Unix ms (0: not throttled).
    pub throttle_until_ms: u64,
    /// The throttle's rate factor.
    pub factor: f64,
    /// Why (a rule's name and the reply, or the operator's command).
    pub note: String,
}

impl HoldRecord {
    /// A suspension until `until_ms`.
    pub fn suspension(until_ms: u64, note: &str) -> Self {
        Self { suspended_until_ms: until_ms, throttle_until_ms: 0, factor: 1.0, note: note.into() }
    }

    fn ends_ms(&self) -> u64 {
        self.suspended_until_ms.max(self.throttle_until_ms)
    }

    fn line(&self, key: &str) -> String {
        let note: String = self.note.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        format!("{key}\t{}\t{}\t{}\t{note}\n", self.suspended_until_ms, self.throttle_until_ms, self.factor)
    }

    fn parse(line: &str) -> Option<(String, Self)> {
        let mut w = line.splitn(5, '\t');
        let key = w.next()?.to_string();
        let (s, t, f) = (w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.parse().ok()?);
        Some((key, Self { suspended_until_ms: s, throttle_until_ms: t, factor: f, note: w.next().unwrap_or("").to_string() }))
    }
}

/// The key of a path's hold.
pub fn path_key(path: &str) -> String {
    format!("path:{path}")
}

/// The key of a destination's hold (`*`: every destination).
pub fn domain_key(domain: &str) -> String {
    format!("domain:{domain}")
}

/// Every hold in force, host-wide, and where they are saved.
#[derive(Debug, Default)]
pub struct Holds {
    file: Option<PathBuf>,
    records: Arc<Mutex<BTreeMap<String, HoldRecord>>>,
    /// Bumped on every change; a save covers the changes up to the count it read.
    changes: Arc<AtomicU64>,
    saving: Arc<AtomicBool>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Holds {
    /// The holds saved in `file` that are still in force at `now_ms` (none: nothing saved).
    /// Blocking: called once, before the cores serve.
    pub fn load(file: Option<PathBuf>, now_ms: u64) -> Self {
        let text = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let records = text.lines().filter_map(HoldRecord::parse).filter(|(_, r)| r.ends_ms() > now_ms).collect();
        Self { file, records: Arc::new(Mutex::new(records)), ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HoldRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hold saved under `key`, if any (it may have ended since).
    pub fn get(&self, key: &str) -> Option<HoldRecord> {
        self.lock().get(key).cloned()
    }

    /// Destinations (`*`: all) suspended until a time, as saved.
    pub fn domains(&self) -> Vec<(String, u64)> {
        self.lock().iter().filter_map(|(k, r)| Some((k.strip_prefix("domain:")?.to_string(), r.suspended_until_ms))).collect()
    }

    /// Keep `rec` under `key` and save. Must run on a glommio executor when saving to a file.
    pub fn set(&self, key: String, rec: HoldRecord) {
        self.lock().insert(key, rec);
        self.save_soon();
    }

    /// Forget the holds whose key `drop` picks, and save if any was there.
    pub fn remove(&self, drop: impl Fn(&str) -> bool) {
        let removed = {
            let mut all = self.lock();
            let before = all.len();
            all.retain(|k, _| !drop(k));
            before != all.len()
        };
        if removed {
            self.save_soon();
        }
    }

    /// Save in the background unless a save is already running (it then saves again).
    fn save_soon(&self) {
        let Some(file) = self.file.clone() else { return };
        self.changes.fetch_add(1, Ordering::SeqCst);
        if self.saving.swap(true, Ordering::SeqCst) {
            return;
        }
        let (records, changes, saving) = (self.records.clone(), self.changes.clone(), self.saving.clone());
        glommio::spawn_local(async move {
            loop {
                let covered = changes.load(Ordering::SeqCst);
                let bytes: String = {
                    let mut all = records.lock().unwrap_or_else(|e| e.into_inner());
                    let now = wall_ms();
                    all.retain(|_, r| r.ends_ms() > now);
                    all.iter().map(|(k, r)| r.line(k)).collect()
                };
                let file = file.clone();
                let written = glommio::executor().spawn_blocking(move || crate::durable_file::replace_bytes(&file, bytes.as_bytes())).await;
                if let Err(e) = written {
                    tracing::error!("suspensions and throttles not saved (they hold until a restart; next try in 1 s): {e}");
                    glommio::timer::sleep(RETRY_AFTER_FAILURE).await;
                    continue;
                }
                saving.store(false, Ordering::SeqCst);
                if changes.load(Ordering::SeqCst) == covered || saving.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        })
        .detach();
    }

    /// Save now, in the caller (tests; a daemon saves in the background).
    pub fn save_blocking(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut bytes = Vec::new();
        for (k, r) in self.lock().iter() {
            bytes.write_all(r.line(k).as_bytes())?;
        }
        crate::durable_file::replace_bytes(file, &bytes)
    }
}

impl super::Shaping {
    /// A rule just suspended or throttled `p`: keep its state for a restart.
    pub fn keep_hold(&self, p: &super::PathLimits) {
        let rec = HoldRecord {
            suspended_until_ms: p.suspended_until_ms.load(Ordering::Acquire),
            throttle_until_ms: p.throttle_until_ms.load(Ordering::Acquire),
            factor: f64::from_bits(p.throttle_factor_bits.load(Ordering::Relaxed)),
            note: p.note.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let key = path_key(&p.key);
        // A storm of matching replies extends the hold at every reply: save only when the
        // saved one falls more than a second short (a restart loses at most that second).
        let covered = |old: &HoldRecord| {
            old.factor == rec.factor
                && old.suspended_until_ms + EXTEND_SLACK_MS >= rec.suspended_until_ms
                && old.throttle_until_ms + EXTEND_SLACK_MS >= rec.throttle_until_ms
        };
        if !self.holds.get(&key).is_some_and(|old| covered(&old)) {
            self.holds.set(key, rec);
        }
    }

    /// Put a hold saved before the restart on a path being made (an ended one is harmless:
    /// it holds nothing).
    pub(super) fn restore_hold(&self, p: &super::PathLimits) {
        let Some(h) = self.holds.get(&path_key(&p.key)) else { return };
        if h.suspended_until_ms > 0 {
            p.suspend(h.suspended_until_ms, &h.note);
        }
        if h.throttle_until_ms > 0 {
            p.throttle(h.factor, h.throttle_until_ms, &h.note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn holds_in_force_come_back_and_ended_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("holds.state");
        let h = Holds::load(Some(file.clone()), T0);
        h.lock().insert(path_key("ip2|mx.y.test"), HoldRecord::suspension(T0 + 60_000, "rule tss04: 421 4.7.0\t[TSS04]"));
        let throttle = HoldRecord { suspended_until_ms: 0, throttle_until_ms: T0 + 5_000, factor: 0.25, note: "rule s3150".into() };
        h.lock().insert(path_key("host|mx.o.test#2"), throttle.clone());
        h.lock().insert(domain_key("held.test"), HoldRecord::suspension(T0 + 30_000, "ringctl suspend"));
        h.save_blocking().unwrap();
        let again = Holds::load(Some(file.clone()), T0 + 10_000);
        assert_eq!(again.get(&path_key("ip2|mx.y.test")).unwrap().note, "rule tss04: 421 4.7.0 [TSS04]");
        assert_eq!(again.get(&path_key("host|mx.o.test#2")), None, "the throttle ended before the restart");
        assert_eq!(again.domains(), [("held.test".to_string(), T0 + 30_000)]);
        let later = Holds::load(Some(file), T0 + 60_000);
        assert!(later.get(&path_key("ip2|mx.y.test")).is_none() && later.domains().is_empty());
        let still = Holds::load(Some(dir.path().join("holds.state")), T0);
        assert_eq!(still.get(&path_key("host|mx.o.test#2")), Some(throttle));
    }

    #[test]
    fn a_daemon_saves_every_change_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("holds.state");
        let f = file.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let h = Holds::load(Some(f.clone()), 0);
                let until = wall_ms() + 3_600_000;
                for i in 0..50 {
                    h.set(domain_key(&format!("d{i}.test")), HoldRecord::suspension(until, "ringctl suspend"));
                }
                h.remove(|k| k == "domain:d7.test");
                while h.saving.load(Ordering::SeqCst) {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let back = Holds::load(Some(file), 0);
        assert_eq!(back.domains().len(), 49, "the last change reached the disk too");
        assert!(back.get("domain:d7.test").is_none() && back.get("domain:d8.test").is_some());
    }
}
