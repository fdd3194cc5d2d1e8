//! Reproducers of what the fuzzers found in engine code, kept failing on purpose until the
//! engine is fixed (this branch only adds tests). Run with `cargo test -p ringpost-fuzz-harness
//! --release -- --ignored`; un-ignore each once its fix lands. The raw fuzzer inputs are in
//! fuzz/artifacts/<target>/.

/// fuzz/artifacts/smtp_server/crash-1b1b…: `555 5.5.4 Unsupported parameter {p}` echoes the
/// client's parameter verbatim, so a CR (or NUL, or any control byte) inside a MAIL parameter
/// goes out inside our reply line. RFC 5321 replies are CRLF lines of printable text.
#[test]
#[ignore = "known finding: server echoes control bytes of a MAIL parameter in its 555 reply"]
fn unsupported_parameter_reply_carries_a_bare_cr() {
    ringpost_fuzz_harness::smtp_server::run(b"\x01EHLO c.test\r\nMAIL FROM:<a@b.test> X\rY\r\n");
}

/// fuzz/artifacts/dsn/crash-3a41…: the DSN copies remote text into one line without a length
/// limit; a remote reply of 1000+ octets makes a DSN line longer than RFC 5322's 998 octets,
/// which ringpost's own server refuses (500 5.5.2 line longer than 1000 octets) when relaying it.
#[test]
#[ignore = "known finding: DSN lines are unbounded (remote diagnostic copied whole)"]
fn long_remote_diagnostic_makes_an_overlong_dsn_line() {
    let mut input = b"s@b.test\0r@x.test\0550 ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1200));
    ringpost_fuzz_harness::dsn::run(&input);
}

/// fuzz/artifacts/smtp_server/reply-line-over-512-octets: the same echo makes the 555 reply line
/// longer than RFC 5321's 512 octets (4.5.3.1.5) when the parameter is long.
#[test]
#[ignore = "known finding: 555 reply line exceeds 512 octets for a long MAIL parameter"]
fn unsupported_parameter_reply_exceeds_512_octets() {
    let mut input = b"\x01EHLO c.test\r\nMAIL FROM:<a@b.test> ".to_vec();
    input.extend(std::iter::repeat_n(b'X', 480));
    input.extend_from_slice(b"\r\n");
    ringpost_fuzz_harness::smtp_server::run(&input);
}
