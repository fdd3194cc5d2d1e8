//! ringpost's DKIM signatures checked by a second, independent verifier: mail-auth's
//! `verify_dkim`, with the test keys served from a pre-filled TXT cache instead of DNS.
use base64::Engine;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt};
use ringpost_engine::dkim::{load_key, BodyHashStream, DkimAlgorithm, DkimConfig, DkimKey, Signers};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _valid_until: Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/benches/keys")
}

fn entry(domain: &str, selector: &str, alg: DkimAlgorithm, file: &str) -> ringpost_engine::dkim::SigningEntry {
    let c = DkimConfig {
        domain: domain.into(),
        selector: selector.into(),
        algorithm: alg,
        key_file: keys_dir().join(file),
        headers: None,
        oversign: None,
    };
    let key = load_key(alg, &std::fs::read_to_string(&c.key_file).unwrap(), &c.key_file).unwrap();
    Signers::entry(&c, key)
}

/// DNS TXT record text for a key, the way an operator publishes it.
fn txt_for(alg: DkimAlgorithm, file: &str) -> String {
    let pem = std::fs::read_to_string(keys_dir().join(file)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    match load_key(alg, &pem, std::path::Path::new(file)).unwrap() {
        DkimKey::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", b64.encode(k.public_key())),
        DkimKey::Rsa(k) => format!("v=DKIM1; k=rsa; p={}", b64.encode(k.public_key_spki())),
    }
}

fn sign(signers: &Signers, message: &[u8]) -> Vec<u8> {
    let mut stream = BodyHashStream::new();
    // Stream the message in odd-sized pieces, dot-stuffed, as a session would.
    let wire = ringpost_engine::smtp::data::dot_stuff(message);
    for piece in wire.chunks(7) {
        stream.write_wire(piece);
    }
    let (headers, bh) = stream.finish();
    let mut out = signers.sign(&headers.unwrap(), &bh, 1_795_000_000).unwrap();
    out.extend_from_slice(message);
    out
}

#[test]
fn mail_auth_verifies_rsa_ed25519_and_dual_signatures() {
    let signers = Signers::from_entries(vec![
        entry("dual.test", "rsa", DkimAlgorithm::RsaSha256, "rsa2048-test-only.pem"),
        entry("dual.test", "ed", DkimAlgorithm::Ed25519Sha256, "ed25519-test-only.pem"),
    ]);
    let cache = TxtCache(Mutex::new(HashMap::new()));
    let far = Instant::now() + std::time::Duration::from_secs(3600);
    for (name, alg, file) in [
        ("rsa._domainkey.dual.test.", DkimAlgorithm::RsaSha256, "rsa2048-test-only.pem"),
        ("ed._domainkey.dual.test.", DkimAlgorithm::Ed25519Sha256, "ed25519-test-only.pem"),
    ] {
        let key = DomainKey::parse(txt_for(alg, file).as_bytes()).unwrap();
        cache.insert(name.into(), Txt::DomainKey(Arc::new(key)), far);
    }
    let bodies: [&[u8]; 4] = [
        "Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße — naïve ✓\r\n".as_bytes(),
        b"\r\n",
        b"\r\n.\r\n..two\r\n.lead\r\ntrailing   \r\n\r\n\r\n",
        b"X-Long: a b c\r\n\tfolded d e f\r\n\tmore g h\r\n\r\nbody\r\n",
    ];
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let auth = MessageAuthenticator::new_system_conf().or_else(|_| MessageAuthenticator::new_cloudflare()).unwrap();
    for body in bodies {
        let mut msg = b"From: News <news@dual.test>\r\nTo: <r@example.org>\r\nSubject: mail-auth check\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@dual.test>\r\n".to_vec();
        msg.extend_from_slice(body);
        let signed = sign(&signers, &msg);
        let parsed = AuthenticatedMessage::parse(&signed).expect("parsable message");
        let results = rt.block_on(auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache)));
        assert_eq!(results.len(), 2, "dual signed");
        for r in &results {
            assert_eq!(r.result(), &DkimResult::Pass, "{:?} for body {:?}", r.result(), String::from_utf8_lossy(body));
        }
    }
}
