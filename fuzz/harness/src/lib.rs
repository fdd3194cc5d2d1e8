//! Fuzz harnesses for ringpost's parsers and sans-I/O state machines.
//!
//! One module per fuzz target, each with `run(data: &[u8])`: it feeds the bytes to the code under
//! test and asserts invariants, panicking on a violation. The same functions run under
//! libFuzzer (`fuzz/targets`, via `cargo fuzz`, see `perf/fuzz.sh`) and in the ordinary test
//! suite, which replays every file of `fuzz/corpus/<target>/` (`tests/replay.rs`), so CI checks
//! the corpus without cargo-fuzz.
//!
//! Only this file names engine and spool paths: when a module moves between crates, fix the
//! `use` lines below and nothing else.
#![warn(missing_docs)]

pub(crate) use ringpost_admin_proto as admin_proto;
pub(crate) use ringpost_engine::account::dsn as engine_dsn;
pub(crate) use ringpost_engine::outbound::dns::wire as dns;
pub(crate) use ringpost_engine::smtp;
pub(crate) use ringpost_spool as spool;

pub mod address;
pub mod admin_frame;
pub mod dns_wire;
pub mod dsn;
pub mod smtp_client;
pub mod smtp_server;
pub mod spool_record;
pub mod spool_recovery;

/// A target's harness: runs one input, panics when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every target: its name (the corpus directory and cargo-fuzz binary) and its harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("address", address::run),
    ("admin_frame", admin_frame::run),
    ("dns_wire", dns_wire::run),
    ("dsn", dsn::run),
    ("smtp_client", smtp_client::run),
    ("smtp_server", smtp_server::run),
    ("spool_record", spool_record::run),
    ("spool_recovery", spool_recovery::run),
];

/// Checks that wire-form text has only CRLF line ends: no CR without LF, no LF without CR.
pub(crate) fn assert_crlf_only(what: &str, b: &[u8]) {
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\r' => assert!(b.get(i + 1) == Some(&b'\n'), "{what}: bare CR at {i}: {:?}", String::from_utf8_lossy(b)),
            b'\n' => assert!(i > 0 && b[i - 1] == b'\r', "{what}: bare LF at {i}: {:?}", String::from_utf8_lossy(b)),
            _ => {}
        }
    }
}
