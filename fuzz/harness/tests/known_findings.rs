//! Reproducers of what the fuzzers found in engine code, now fixed: each test replays the
//! fuzzer's raw input from fuzz/artifacts/<target>/ and a minimal hand-made vector through the
//! same harness the fuzz target runs, so the finding cannot come back unnoticed.
//! A new finding is added here with its reproducer, and lands together with its fix.
use std::path::PathBuf;

/// Run the raw fuzzer input `fuzz/artifacts/<target>/<name>` through `run`.
fn replay_artifact(target: &str, name: &str, run: fn(&[u8])) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts").join(target).join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    run(&data);
}

/// fuzz/artifacts/smtp_server/crash-1b1b…: `555 5.5.4 Unsupported parameter {p}` echoed the
/// client's parameter verbatim, so a CR (or NUL, or any control byte) inside a MAIL parameter
/// went out inside our reply line. RFC 5321 replies are CRLF lines of printable text.
#[test]
fn unsupported_parameter_reply_carries_no_bare_cr() {
    ringpost_fuzz_harness::smtp_server::run(b"\x01EHLO c.test\r\nMAIL FROM:<a@b.test> X\rY\r\n");
    replay_artifact("smtp_server", "crash-1b1b41437483bf860638c3bc060ea09ca0aeb2e0", ringpost_fuzz_harness::smtp_server::run);
}

/// fuzz/artifacts/smtp_server/crash-424f…: the same echo, reached through a longer session.
#[test]
fn second_fuzzer_input_of_the_parameter_echo_passes() {
    replay_artifact("smtp_server", "crash-424f8450e7be5a6b6a1f4b30b1e06890352bd16a", ringpost_fuzz_harness::smtp_server::run);
}

/// fuzz/artifacts/dsn/crash-3a41…: the DSN copied remote text into one line without a length
/// limit; a remote reply of 1000+ octets made a DSN line longer than RFC 5322's 998 octets,
/// which ringpost's own server refuses (500 5.5.2 line longer than 1000 octets) when relaying it.
#[test]
fn long_remote_diagnostic_keeps_dsn_lines_within_998_octets() {
    let mut input = b"s@b.test\x00r@x.test\x00550 ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1200));
    ringpost_fuzz_harness::dsn::run(&input);
    replay_artifact("dsn", "crash-3a4108f102b3c7a2c36c87dfb50f8136f9e27e81", ringpost_fuzz_harness::dsn::run);
}

/// fuzz/artifacts/smtp_server/reply-line-over-512-octets: the same echo made the 555 reply
/// line longer than RFC 5321's 512 octets (4.5.3.1.5) when the parameter was long.
#[test]
fn unsupported_parameter_reply_stays_within_512_octets() {
    let mut input = b"\x01EHLO c.test\r\nMAIL FROM:<a@b.test> ".to_vec();
    input.extend(std::iter::repeat_n(b'X', 480));
    input.extend_from_slice(b"\r\n");
    ringpost_fuzz_harness::smtp_server::run(&input);
    replay_artifact("smtp_server", "reply-line-over-512-octets", ringpost_fuzz_harness::smtp_server::run);
}
