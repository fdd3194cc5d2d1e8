//! The admin socket's frame decoder (`ringpost-admin-proto`), fed what a local client sends:
//! the daemon runs exactly this loop over its input buffer.
//!
//! Input: raw bytes on the admin socket. Invariants: no panic; a frame is cut only when all
//! its bytes are there and never uses more than the buffer; an accepted request re-encodes to
//! a frame that decodes to the same request; an error always names the id an error frame
//! would carry and is answerable (the error reply fits a frame). The same bytes read as
//! replies (what ringctl decodes) never panic either.
use crate::admin_proto::{decode, encode, ErrorKind, Reply, Request, MAX_FRAME_BYTES};

/// Harness entry point.
pub fn run(data: &[u8]) {
    let mut rest = data;
    loop {
        match decode::<Request>(rest) {
            Ok(Some((id, request, used))) => {
                assert!((9..=rest.len()).contains(&used), "used {used} of {}", rest.len());
                assert!(used - 4 <= MAX_FRAME_BYTES);
                let again = encode(id, &request).expect("a decoded request re-encodes");
                let (id2, back, n) = decode::<Request>(&again).expect("re-encoded decodes").expect("whole");
                assert_eq!((id2, &back, n), (id, &request, again.len()));
                rest = &rest[used..];
            }
            Ok(None) => break,
            Err(e) => {
                let reply = Reply::error(ErrorKind::from(&e), e.to_string());
                encode(e.id(), &reply).expect("an error reply fits a frame");
                break;
            }
        }
    }
    let _ = decode::<Reply>(data);
}
