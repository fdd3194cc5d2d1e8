//! TLS for both directions with rustls (ring provider; TLS 1.2 and 1.3 only), and the
//! `Transport` that lets sessions and delivery agents speak over plain TCP or TLS alike.
//!
//! Inbound: the certificate and key come from `[tls]`; the config lives in a per-core cell so a
//! SIGHUP reload swaps it for new sessions without touching ones in flight. Outbound: the
//! verification mode is per policy: `none` (opportunistic SMTP's usual stance: encryption
//! without authentication) or `ca` (chain to `ca_file` and the MX host name).
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the inbound (STARTTLS) server configuration from PEM files.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, why: String| TlsError::Pem { path: path.into(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| pem(cert_file, format!("{e:?}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert_file, format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(pem(cert_file, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem(key_file, format!("{e:?}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Certificate checking for outbound TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt without authenticating the server.
    None,
    /// Verify the chain against this CA bundle and the server name.
    Ca(PathBuf),
}

/// Build an outbound client configuration.
pub fn client_config(verify: &Verify) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cfg = match verify {
        Verify::None => builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider()))).with_no_client_auth(),
        Verify::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Pem { path: path.clone(), why: format!("{e:?}") })? {
                let c = c.map_err(|e| TlsError::Pem { path: path.clone(), why: format!("{e:?}") })?;
                roots.add(c)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// Accepts any certificate but still checks the handshake signatures, so the session is
/// encrypted to whoever holds the key the server presented (opportunistic TLS).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection that is plain TCP or TLS over it.
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// Inbound TLS after STARTTLS.
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// Outbound TLS after STARTTLS.
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// Transient state while a handshake owns the stream.
    Taken,
}

impl Transport {
    /// The TCP stream underneath (for timeouts, addresses and raw writes).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Server(t) => t.get_ref().0,
            Transport::Client(t) => t.get_ref().0,
            Transport::Taken => panic!("transport used during a handshake"),
        }
    }

    /// Bound every later write on this connection: a write (TLS records, the close_notify of
    /// a TLS close, a plain send) that makes no progress for `timeout` fails with
    /// `ErrorKind::TimedOut`. glommio arms the timer only when a send would block, so the
    /// common case costs nothing. Used by `wire_write`, which sets it before each write.
    pub fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        if matches!(self, Transport::Taken) {
            return Err(io::ErrorKind::NotConnected.into());
        }
        // glommio refuses a zero timeout (EINVAL): the shortest it takes stands for "now".
        let timeout = timeout.max(Duration::from_nanos(1));
        self.tcp().set_write_timeout(Some(timeout)).map_err(io::Error::from)
    }

    /// True once TLS is active.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Server(_) | Transport::Client(_))
    }

    /// Negotiated protocol and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub fn tls_description(&self) -> Option<String> {
        let (v, c) = match self {
            Transport::Server(t) => (t.get_ref().1.protocol_version(), t.get_ref().1.negotiated_cipher_suite()),
            Transport::Client(t) => (t.get_ref().1.protocol_version(), t.get_ref().1.negotiated_cipher_suite()),
            _ => return None,
        };
        Some(format!("{:?} {:?}", v?, c?.suite()))
    }

    /// Run the server side of a handshake (after `220 Ready to start TLS`).
    pub async fn accept(&mut self, cfg: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Taken) else {
            return Err(io::Error::other("STARTTLS on a TLS connection"));
        };
        let tls = futures_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
        *self = Transport::Server(Box::new(tls));
        Ok(())
    }

    /// Run the client side of a handshake with `server_name`. On failure the connection is gone.
    pub async fn connect(&mut self, cfg: Arc<rustls::ClientConfig>, server_name: &str) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Taken) else {
            return Err(io::Error::other("STARTTLS on a TLS connection"));
        };
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = futures_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        *self = Transport::Client(Box::new(tls));
        Ok(())
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Server(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Transport::Client(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Transport::Taken => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Server(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Transport::Client(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Transport::Taken => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Server(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Transport::Client(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Transport::Taken => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Server(t) => Pin::new(t.as_mut()).poll_close(cx),
            Transport::Client(t) => Pin::new(t.as_mut()).poll_close(cx),
            Transport::Taken => Poll::Ready(Ok(())),
        }
    }
}
