//! cargo-fuzz entry point; the harness (and its invariants) lives in fuzz/harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringpost_fuzz_harness::admin_frame::run(data));
