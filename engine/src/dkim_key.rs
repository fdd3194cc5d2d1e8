//! The DKIM private keys ringpost signs with: RSA through aws-lc-rs, Ed25519 through
//! mail-auth's own key (ring).
//!
//! Why not mail-auth's `DkimKey` for RSA: with the `ring` feature its RSA key signs with
//! ring, which has no AVX-512 code for RSA. aws-lc does (its IFMA Montgomery multiplication),
//! and on this machine's CPU (AMD EPYC with AVX-512 IFMA) it signs RSA-2048 2.2–2.4 times as
//! fast: `cargo bench -p blaster --bench hot_paths -- dkim_sign`, ringpost's whole signing
//! path, 585 → 246 µs a signature (perf/RESULTS.md, seventeenth session). RSA
//! PKCS#1 v1.5 signatures are deterministic, so both libraries produce the same bytes
//! (checked by a test below). Switching mail-auth itself to its `aws-lc-rs` feature would
//! also switch hickory's and rustls' providers through its feature list; this keeps the TLS
//! stack on ring and changes only the signing key.
use mail_auth::common::crypto::{Algorithm, CryptoError, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rustls_pki_types::PrivateKeyDer;

/// An RSA private key (at least 2048 bits, checked by [`crate::dkim::load_key`]) that signs
/// with aws-lc.
pub struct RsaKey {
    inner: aws_lc_rs::rsa::KeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl RsaKey {
    /// From a PKCS#1 or PKCS#8 DER private key.
    pub fn from_key_der(der: PrivateKeyDer<'_>) -> Result<Self, String> {
        let inner = match der {
            PrivateKeyDer::Pkcs1(k) => aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err("unsupported key format (PKCS#1 or PKCS#8 expected)".into()),
        }
        .map_err(|e| e.to_string())?;
        Ok(Self { inner, rng: aws_lc_rs::rand::SystemRandom::new() })
    }

    /// The public key as DER `RSAPublicKey` (RFC 8017), the form a DKIM `p=` may carry.
    pub fn public_key(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        self.inner.public_key().as_ref().to_vec()
    }

    /// The public key as DER SubjectPublicKeyInfo, what `openssl pkey -pubout` writes and
    /// operators usually publish in `p=`.
    pub fn public_key_spki(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        self.inner.public_key().as_der().map(|d| d.as_ref().to_vec()).unwrap_or_default()
    }

    /// The modulus in bits, exactly (a 2047-bit modulus is 2047, not its 256 bytes × 8).
    pub fn bits(&self) -> usize {
        use aws_lc_rs::signature::KeyPair;
        let n = self.inner.public_key().modulus();
        let bytes = n.big_endian_without_leading_zero();
        bytes.len() * 8 - bytes.first().map_or(0, |b| b.leading_zeros() as usize)
    }

    /// The public exponent (e), or `None` when it does not fit 64 bits.
    pub fn exponent(&self) -> Option<u64> {
        use aws_lc_rs::signature::KeyPair;
        let e = self.inner.public_key().exponent();
        let bytes = e.big_endian_without_leading_zero();
        (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    /// Sign once and time a few more: the first signature seeds aws-lc's random generator
    /// (for RSA blinding; its CPU-jitter seeding takes tens of ms, once per process) and sets
    /// up the key's Montgomery state, which must not happen on a core's first message. The
    /// result, the median of five timed signatures in µs, is what this key costs on this CPU:
    /// aws-lc's AVX-512 IFMA code makes RSA-2048 about 250 µs on the project VM, where a CPU
    /// without it takes about twice that.
    pub fn warm_up(&self) -> u64 {
        let mut times = [0u64; 5];
        let _ = self.sign(&b"ringpost warm-up"[..]);
        for t in &mut times {
            let started = std::time::Instant::now();
            let _ = self.sign(&b"ringpost warm-up"[..]);
            *t = started.elapsed().as_micros() as u64;
        }
        times.sort_unstable();
        times[2].max(1)
    }
}

impl SigningKey for RsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(512);
        input.write(&mut data);
        let mut signature = vec![0; self.inner.public_modulus_len()];
        self.inner
            .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &self.rng, &data, &mut signature)
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// One configured DKIM key.
pub enum DkimKey {
    /// rsa-sha256.
    Rsa(RsaKey),
    /// ed25519-sha256 (RFC 8463).
    Ed25519(Ed25519Key),
}

impl SigningKey for DkimKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self {
            DkimKey::Rsa(k) => k.sign(input),
            DkimKey::Ed25519(k) => k.sign(input),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            DkimKey::Rsa(_) => Algorithm::RsaSha256,
            DkimKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    fn test_key_pem() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/benches/keys/rsa2048-test-only.pem");
        std::fs::read_to_string(path).unwrap()
    }

    /// PKCS#1 v1.5 is deterministic: aws-lc must produce byte for byte what ring (mail-auth's
    /// key, the library ringpost signed with before) produces for the same input.
    #[test]
    fn signs_the_same_bytes_as_ring() {
        let pem = test_key_pem();
        let ours = RsaKey::from_key_der(PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
        let ring = mail_auth::common::crypto::RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(ours.bits(), 2048);
        assert_eq!(ours.public_key(), ring.public_key());
        // SubjectPublicKeyInfo: the rsaEncryption OID, then the same RSAPublicKey as a bit string.
        let spki = ours.public_key_spki();
        assert!(spki.windows(9).any(|w| w == [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01]) && spki.ends_with(&ours.public_key()));
        for text in [&b""[..], b"from:a@b.test\r\nsubject:x\r\n", &[0x5a; 3000]] {
            let a = ours.sign(text).unwrap();
            let b = ring.sign(text).unwrap();
            assert_eq!(a.len(), 256);
            assert_eq!(a, b, "signatures differ for {} bytes", text.len());
        }
    }

    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`, as opendkim-genkey writes) and PKCS#8 forms of one key
    /// sign alike.
    #[test]
    fn pkcs1_and_pkcs8_forms_load_the_same_key() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/benches/keys/");
        let pkcs1 = std::fs::read_to_string(format!("{dir}rsa2048-pkcs1-test-only.pem")).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let a = RsaKey::from_key_der(PrivateKeyDer::from_pem_slice(pkcs1.as_bytes()).unwrap()).unwrap();
        let b = RsaKey::from_key_der(PrivateKeyDer::from_pem_slice(test_key_pem().as_bytes()).unwrap()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.sign(&b"x"[..]).unwrap(), b.sign(&b"x"[..]).unwrap());
        assert_eq!((a.bits(), a.exponent()), (2048, Some(65_537)));
    }

    #[test]
    fn a_non_rsa_key_is_refused() {
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        assert!(RsaKey::from_key_der(PrivateKeyDer::from_pem_slice(ed.as_bytes()).unwrap()).is_err());
    }
}
