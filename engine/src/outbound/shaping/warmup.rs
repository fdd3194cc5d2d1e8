//! IP warm-up (`[[warmup]]`): a new source sends at most the day's volume of its schedule,
//! in total or per site. The count is host-wide (one counter per source, or per source and
//! site) and survives restarts: before a counter passes what is on disk, a larger allowance
//! is written and fsynced (`warmup.state` in the spool directory), and a restart resumes from
//! that allowance. A crash can therefore lose up to one allowance step of the day's volume
//! (a tenth of the cap), never reset the count to zero, never exceed the cap.
//!
//! Counting happens when a message is assigned to the source (each attempt counts), so the
//! cap bounds what the source is given to send. Only sources under warm-up pay for the lock
//! (held for memory updates only); every other source never reaches this module. In the
//! daemon the file is written on glommio's blocking pool, half a step ahead of need, so a
//! core never waits for the fsync; an assignment that finds the next message not yet
//! covered on disk waits a moment instead.
use crate::config::{days_from_date, WarmupConfig, WarmupOverflow, WarmupScope};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const DAY_MS: u64 = 86_400_000;

/// One source's schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    start_day: i64,
    daily: Vec<u64>,
    /// Total or per site.
    pub scope: WarmupScope,
    /// What happens over the cap.
    pub overflow: WarmupOverflow,
}

impl Plan {
    /// From a validated `[[warmup]]`.
    pub fn new(w: &WarmupConfig) -> Self {
        Self { start_day: days_from_date(&w.start).unwrap_or(0), daily: w.daily.clone(), scope: w.scope, overflow: w.overflow }
    }

    /// The cap of day `day` (days since the epoch, UTC): day 1 of the schedule before and on
    /// its start, none once the schedule is over.
    pub fn cap(&self, day: i64) -> Option<u64> {
        let i = (day - self.start_day).max(0) as usize;
        self.daily.get(i).copied()
    }
}

/// The UTC day of `now_ms` and the Unix ms when the next one begins.
pub fn day_of(now_ms: u64) -> (i64, u64) {
    let day = now_ms / DAY_MS;
    (day as i64, (day + 1) * DAY_MS)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counter {
    day: i64,
    count: u64,
    /// Allowance already on disk for `day`.
    reserved: u64,
}

/// Every warm-up schedule and its counters, host-wide.
#[derive(Debug, Default)]
pub struct Warmup {
    plans: HashMap<usize, Plan>,
    counters: Arc<Mutex<HashMap<String, Counter>>>,
    file: Option<PathBuf>,
    /// Save on glommio's blocking pool (the daemon) instead of in the caller (tests).
    background: bool,
    /// A background save is in flight (one at a time, so files land in order).
    saving: Arc<AtomicBool>,
    /// No background save before this Unix ms (set after a failure).
    retry_after_ms: Arc<AtomicU64>,
}

/// Clears the in-flight flag however the save task ends (done, failed, dropped).
struct SavingGuard(Arc<AtomicBool>);

impl Drop for SavingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How long an assignment waits when the next message is not yet covered on disk.
pub const SAVE_WAIT_MS: u64 = 20;

/// After a failed save, no new one is tried for this long (the error is logged once per try).
const SAVE_RETRY_MS: u64 = 1_000;

impl Warmup {
    /// Schedules by source index; counters resumed from `file` (absent: start at zero).
    pub fn new(plans: HashMap<usize, Plan>, file: Option<PathBuf>) -> Self {
        let counters = file.as_ref().map(load).unwrap_or_default();
        Self { plans, counters: Arc::new(Mutex::new(counters)), file, background: false, saving: Arc::default(), retry_after_ms: Arc::default() }
    }

    /// Write allowances on glommio's blocking pool: a core never waits for the fsync (an
    /// assignment past the durable allowance waits a moment instead). Callers must then run
    /// on a glommio executor.
    pub fn saving_in_background(mut self) -> Self {
        self.background = true;
        self
    }

    /// The schedule of source `src`, if it is warming up.
    pub fn plan(&self, src: usize) -> Option<&Plan> {
        self.plans.get(&src)
    }

    /// Count one message from `src` to `site` at `now_ms`. `Err(t)`: the day's cap is
    /// reached, the next day begins at Unix ms `t`.
    pub fn try_take(&self, src: usize, site: &str, now_ms: u64) -> Result<(), u64> {
        let Some(plan) = self.plans.get(&src) else { return Ok(()) };
        let (day, next_day) = day_of(now_ms);
        let Some(cap) = plan.cap(day) else { return Ok(()) };
        let key = match plan.scope {
            WarmupScope::Total => format!("{src}"),
            WarmupScope::PerSite => format!("{src}|{site}"),
        };
        let mut all = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let c = all.entry(key.clone()).or_default();
        if c.day != day {
            *c = Counter { day, count: 0, reserved: 0 };
        }
        if c.count >= cap {
            return Err(next_day);
        }
        let (count, reserved, step) = (c.count, c.reserved, (cap / 10).max(1));
        if let Some(file) = &self.file {
            let target = (count + step).min(cap);
            if count >= reserved && !self.background {
                c.reserved = target;
                if let Err(e) = save(file, &all) {
                    tracing::error!("warm-up state not saved: {e}");
                }
            } else if count >= reserved {
                // Not covered on disk yet: never send past what a restart would resume from.
                self.save_in_background(&mut all, file, (key, day, target), now_ms);
                return Err(now_ms + SAVE_WAIT_MS);
            } else if self.background && count + step / 2 >= reserved && target > reserved {
                // Half a step before the allowance runs out: extend it ahead of need.
                self.save_in_background(&mut all, file, (key.clone(), day, target), now_ms);
            }
        }
        all.get_mut(&key).expect("entry made above").count += 1;
        Ok(())
    }

    /// Write the allowances with `key`'s raised to `target` on the blocking pool; once the
    /// file is durable, `key` may count up to `target`. Past days' counters are dropped.
    fn save_in_background(&self, all: &mut HashMap<String, Counter>, file: &Path, (key, day, target): (String, i64, u64), now_ms: u64) {
        if self.retry_after_ms.load(Ordering::Acquire) > now_ms || self.saving.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = SavingGuard(self.saving.clone());
        all.retain(|_, c| c.day >= day);
        let lines: String =
            all.iter().map(|(k, c)| format!("{k}\t{}\t{}\n", c.day, if *k == key { target.max(c.reserved) } else { c.reserved })).collect();
        let (file, counters, retry_after) = (file.to_path_buf(), self.counters.clone(), self.retry_after_ms.clone());
        glommio::spawn_local(async move {
            let _guard = guard;
            let written = glommio::executor().spawn_blocking(move || save_lines(&file, &lines)).await;
            match written {
                Ok(()) => {
                    let mut all = counters.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(c) = all.get_mut(&key).filter(|c| c.day == day) {
                        c.reserved = c.reserved.max(target);
                    }
                }
                Err(e) => {
                    tracing::error!("warm-up state not saved (warm-up sources wait; next try in 1 s): {e}");
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    retry_after.store(now + SAVE_RETRY_MS, Ordering::Release);
                }
            }
        })
        .detach();
    }

    /// Messages counted today for `src` (total scope; for `ringctl` and tests).
    pub fn count(&self, src: usize, site: &str, now_ms: u64) -> u64 {
        let day = day_of(now_ms).0;
        let all = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        [format!("{src}"), format!("{src}|{site}")].iter().filter_map(|k| all.get(k)).filter(|c| c.day == day).map(|c| c.count).sum()
    }
}

/// `key day reserved` lines; a restart counts from the reserved allowance.
fn load(path: &PathBuf) -> HashMap<String, Counter> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split('\t');
            let (k, day, reserved) = (w.next()?, w.next()?.parse().ok()?, w.next()?.parse().ok()?);
            Some((k.to_string(), Counter { day, count: reserved, reserved }))
        })
        .collect()
}

/// Write the allowances durably (`crate::durable_file`).
fn save(path: &Path, all: &HashMap<String, Counter>) -> std::io::Result<()> {
    let lines: String = all.iter().map(|(k, c)| format!("{k}\t{}\t{}\n", c.day, c.reserved)).collect();
    save_lines(path, &lines)
}

/// Replace `path` with `lines`, durably.
fn save_lines(path: &Path, lines: &str) -> std::io::Result<()> {
    crate::durable_file::replace_bytes(path, lines.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(daily: &[u64], scope: WarmupScope) -> Plan {
        Plan::new(&WarmupConfig { source: "ip2".into(), start: "2026-12-01".into(), daily: daily.to_vec(), scope, overflow: WarmupOverflow::Wait })
    }

    const DEC1: u64 = 20_788 * DAY_MS;

    #[test]
    fn the_day_picks_the_cap_and_the_schedule_ends() {
        let p = plan(&[50, 100, 500], WarmupScope::Total);
        assert_eq!(p.cap(20_780), Some(50), "before the start: day 1's volume");
        assert_eq!(p.cap(20_789), Some(100));
        assert_eq!(p.cap(20_790), Some(500));
        assert_eq!(p.cap(20_791), None, "warm-up over");
        assert_eq!(day_of(DEC1 + 5), (20_788, DEC1 + DAY_MS));
    }

    #[test]
    fn the_cap_holds_until_the_next_day_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("warmup.state");
        let w = Warmup::new(HashMap::from([(1, plan(&[100, 200], WarmupScope::Total))]), Some(file.clone()));
        let t = DEC1 + 1000;
        assert!((0..100).all(|_| w.try_take(1, "s", t).is_ok()));
        assert_eq!(w.try_take(1, "s", t), Err(DEC1 + DAY_MS), "the 101st waits for the next day");
        assert_eq!(w.try_take(0, "s", t), Ok(()), "other sources are not capped");
        let again = Warmup::new(HashMap::from([(1, plan(&[100, 200], WarmupScope::Total))]), Some(file.clone()));
        assert_eq!(again.try_take(1, "s", t), Err(DEC1 + DAY_MS), "a restart does not reset the count");
        assert!(again.try_take(1, "s", DEC1 + DAY_MS).is_ok(), "the next day has its own cap");
        let partial = Warmup::new(HashMap::from([(1, plan(&[100], WarmupScope::Total))]), Some(dir.path().join("p.state")));
        assert!((0..15).all(|_| partial.try_take(1, "s", t).is_ok()));
        let resumed = Warmup::new(HashMap::from([(1, plan(&[100], WarmupScope::Total))]), Some(dir.path().join("p.state")));
        assert_eq!(resumed.count(1, "s", t), 20, "resumes at the fsynced allowance (15 used, 20 reserved)");
    }

    #[test]
    fn per_site_scope_counts_each_site() {
        let w = Warmup::new(HashMap::from([(1, plan(&[2], WarmupScope::PerSite))]), None);
        assert!(w.try_take(1, "a", DEC1).is_ok() && w.try_take(1, "a", DEC1).is_ok());
        assert!(w.try_take(1, "a", DEC1).is_err());
        assert!(w.try_take(1, "b", DEC1).is_ok(), "another site has its own cap");
    }

    #[test]
    fn in_the_daemon_nothing_is_counted_past_what_is_on_disk_and_the_core_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.state");
        let f2 = file.clone();
        let (first, taken, on_disk) = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let w = Warmup::new(HashMap::from([(1, plan(&[100], WarmupScope::Total))]), Some(f2.clone())).saving_in_background();
                // Nothing is on disk yet: the first one waits for the background save.
                let first = w.try_take(1, "s", DEC1);
                let mut taken = 0;
                for _ in 0..400 {
                    if w.try_take(1, "s", DEC1).is_ok() {
                        taken += 1;
                        let reserved: u64 = std::fs::read_to_string(&f2).unwrap().split('\t').nth(2).unwrap().trim().parse().unwrap();
                        assert!(reserved >= taken, "counted {taken} with only {reserved} on disk");
                    }
                    glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                }
                (first, taken, std::fs::read_to_string(&f2).unwrap())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(first, Err(DEC1 + SAVE_WAIT_MS), "the first waits for the first allowance");
        assert_eq!(taken, 100, "the cap, every one covered on disk first");
        assert_eq!(on_disk.trim(), "1\t20788\t100");
    }
}
