//! `blaster sink --count-log FILE`: the number of messages received so far, written at every
//! whole wall-clock second as `UNIX_SECOND TOTAL` lines, by a plain thread.
//!
//! Why a thread of its own: a benchmark that toggles something in whole-second blocks
//! (bench/admin-poll.sh MODE=interleave) needs the sink's counts even if the sink's executors
//! never get to write the final report, and a std thread does not depend on them. The
//! counter it reads is the relaxed atomic the sessions bump when they answer 250.
use crate::sink::SinkShared;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The running writer; [`CountLog::finish`] stops it (no extra line is written at the end).
pub struct CountLog {
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl CountLog {
    /// Create (truncate) `path` and start writing a line at each whole second.
    pub fn start(path: &Path, shared: Arc<SinkShared>) -> std::io::Result<Self> {
        let mut file = std::fs::File::create(path)?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::Builder::new().name("count-log".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                // Sleep to the next whole second, in slices so `finish` is quick.
                let to_next = Duration::from_secs(now.as_secs() + 1).saturating_sub(now);
                std::thread::sleep(to_next.min(Duration::from_millis(200)));
                let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                if after.as_secs() > now.as_secs() {
                    let total = shared.received.load(Ordering::Relaxed);
                    // one write per line: a killed sink leaves no half line behind
                    let _ = file.write_all(format!("{} {}\n", after.as_secs(), total).as_bytes());
                }
            }
        })?;
        Ok(Self { done, thread })
    }

    /// Stop the writer.
    pub fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines land on consecutive whole seconds and carry the counter as it was then.
    #[test]
    fn a_line_per_whole_second_with_the_running_total() {
        let dir = std::env::temp_dir().join(format!("count-log-{}", std::process::id()));
        let shared = Arc::new(SinkShared::default());
        let log = CountLog::start(&dir, shared.clone()).unwrap();
        shared.received.fetch_add(7, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2300));
        shared.received.fetch_add(5, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1100));
        log.finish();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let rows: Vec<(u64, u64)> = text
            .lines()
            .map(|l| {
                let (s, n) = l.split_once(' ').unwrap();
                (s.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        assert!((3..=4).contains(&rows.len()), "{text}");
        assert!(rows.windows(2).all(|w| w[1].0 == w[0].0 + 1), "not consecutive seconds: {text}");
        assert_eq!(rows.first().unwrap().1, 7, "{text}");
        assert_eq!(rows.last().unwrap().1, 12, "{text}");
    }
}
