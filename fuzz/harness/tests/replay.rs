//! Replays every file of `fuzz/corpus/<target>/` through the same harness the fuzz target
//! runs, so `cargo test --workspace` (CI, no cargo-fuzz) catches a regression on any input the
//! fuzzer ever kept, including the reproducers of fixed crashes.
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target)
}

#[test]
fn every_corpus_file_passes_its_harness() {
    let mut total = 0;
    for (target, run) in ringpost_fuzz_harness::TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("corpus file");
            if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
                let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{target}: {} fails its harness: {}", f.display(), why.unwrap_or_default());
            }
        }
        total += files.len();
    }
    println!("replayed {total} corpus files");
}
