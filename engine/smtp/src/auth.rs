//! SMTP AUTH (RFC 4954) mechanisms PLAIN (RFC 4616) and LOGIN, sans I/O: turns the AUTH line
//! and its continuation lines into a user name and password, or a reply.
use base64::Engine;

/// Where an AUTH exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthState {
    /// PLAIN without an initial response: waiting for it.
    PlainResponse,
    /// LOGIN: waiting for the user name.
    LoginUser,
    /// LOGIN: waiting for the password of this user.
    LoginPassword(String),
}

/// Result of feeding the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send `334 <challenge>` and wait for the next line.
    Challenge(&'static str, AuthState),
    /// Credentials complete: verify them.
    Credentials(String, String),
    /// Malformed, cancelled or unsupported: (code, enhanced, text).
    Fail(u16, (u8, u16, u16), &'static str),
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

fn plain(resp: &str) -> AuthStep {
    // authzid NUL authcid NUL passwd
    let Some(raw) = b64(resp) else { return AuthStep::Fail(501, (5, 5, 2), "Invalid base64") };
    let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    if parts.len() != 3 {
        return AuthStep::Fail(501, (5, 5, 2), "Malformed PLAIN response");
    }
    match (std::str::from_utf8(parts[1]), std::str::from_utf8(parts[2])) {
        (Ok(u), Ok(p)) if !u.is_empty() => AuthStep::Credentials(u.to_string(), p.to_string()),
        _ => AuthStep::Fail(501, (5, 5, 2), "Malformed PLAIN response"),
    }
}

/// Start an exchange from the arguments of `AUTH` (mechanism and optional initial response).
pub fn start(args: &str) -> AuthStep {
    let mut it = args.split_whitespace();
    let mech = it.next().unwrap_or("").to_ascii_uppercase();
    let initial = it.next();
    match (mech.as_str(), initial) {
        ("PLAIN", Some("=")) => AuthStep::Fail(501, (5, 5, 2), "Empty PLAIN response"),
        ("PLAIN", Some(r)) => plain(r),
        ("PLAIN", None) => AuthStep::Challenge("", AuthState::PlainResponse),
        ("LOGIN", Some(u)) => match b64(u).and_then(|u| String::from_utf8(u).ok()) {
            Some(u) => AuthStep::Challenge("UGFzc3dvcmQ6", AuthState::LoginPassword(u)),
            None => AuthStep::Fail(501, (5, 5, 2), "Invalid base64"),
        },
        ("LOGIN", None) => AuthStep::Challenge("VXNlcm5hbWU6", AuthState::LoginUser),
        _ => AuthStep::Fail(504, (5, 5, 4), "Unrecognized authentication type"),
    }
}

/// Feed a continuation line (`*` cancels, RFC 4954 4).
pub fn next(state: AuthState, line: &str) -> AuthStep {
    if line.trim() == "*" {
        return AuthStep::Fail(501, (5, 7, 0), "Authentication cancelled");
    }
    match state {
        AuthState::PlainResponse => plain(line),
        AuthState::LoginUser => match b64(line).and_then(|u| String::from_utf8(u).ok()) {
            Some(u) => AuthStep::Challenge("UGFzc3dvcmQ6", AuthState::LoginPassword(u)),
            None => AuthStep::Fail(501, (5, 5, 2), "Invalid base64"),
        },
        AuthState::LoginPassword(u) => match b64(line).and_then(|p| String::from_utf8(p).ok()) {
            Some(p) => AuthStep::Credentials(u, p),
            None => AuthStep::Fail(501, (5, 5, 2), "Invalid base64"),
        },
    }
}

/// Check `password` against an Argon2 PHC hash (`$argon2id$...`). Slow on purpose: run it off
/// the event loop.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Hash a password for the configuration (`ringpost --hash-password`).
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashing").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        assert_eq!(start(&format!("PLAIN {}", enc(b"\0app\0s3cret"))), AuthStep::Credentials("app".into(), "s3cret".into()));
        let AuthStep::Challenge("", st) = start("plain") else { panic!() };
        assert_eq!(next(st, &enc(b"admin\0app\0pw")), AuthStep::Credentials("app".into(), "pw".into()));
        assert!(matches!(start("PLAIN !!!"), AuthStep::Fail(501, ..)));
        assert!(matches!(start(&format!("PLAIN {}", enc(b"no-nuls"))), AuthStep::Fail(501, ..)));
    }

    #[test]
    fn login_exchange_and_cancel() {
        let AuthStep::Challenge("VXNlcm5hbWU6", st) = start("LOGIN") else { panic!() };
        let AuthStep::Challenge("UGFzc3dvcmQ6", st) = next(st, &enc(b"app")) else { panic!() };
        assert_eq!(next(st, &enc(b"pw")), AuthStep::Credentials("app".into(), "pw".into()));
        assert!(matches!(next(AuthState::LoginUser, "*"), AuthStep::Fail(501, (5, 7, 0), _)));
        assert!(matches!(start("CRAM-MD5"), AuthStep::Fail(504, ..)));
    }

    #[test]
    fn argon2_hashes_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }
}
