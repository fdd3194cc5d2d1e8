//! Outbound TLS policy decisions: which client configuration a destination uses and what a
//! missing or failed STARTTLS means for the delivery attempt.
use crate::config::{Config, TlsMode, TlsPolicy, TlsVerify};
use crate::tls::{client_config, TlsError, Verify};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Client configurations built once at start-up: one that encrypts without verifying, and
/// one per CA bundle named in the configuration.
pub struct ClientConfigs {
    none: Arc<rustls::ClientConfig>,
    by_ca: HashMap<PathBuf, Arc<rustls::ClientConfig>>,
}

impl ClientConfigs {
    /// Build every configuration the policies in `cfg` can ask for.
    pub fn build(cfg: &Config) -> Result<Self, TlsError> {
        let mut by_ca = HashMap::new();
        let policies = cfg.route.iter().map(|r| cfg.tls_policy(r)).chain(std::iter::once(cfg.default_tls_policy()));
        for p in policies {
            if let (TlsVerify::Ca, Some(ca)) = (p.verify, p.ca_file.clone()) {
                if let std::collections::hash_map::Entry::Vacant(slot) = by_ca.entry(ca.clone()) {
                    slot.insert(client_config(&Verify::Ca(ca))?);
                }
            }
        }
        Ok(Self { none: client_config(&Verify::None)?, by_ca })
    }

    /// The configuration for a policy.
    pub fn for_policy(&self, p: &TlsPolicy) -> Arc<rustls::ClientConfig> {
        match (p.verify, &p.ca_file) {
            (TlsVerify::Ca, Some(ca)) => self.by_ca.get(ca).cloned().unwrap_or_else(|| self.none.clone()),
            _ => self.none.clone(),
        }
    }
}

/// What to do when the server did not offer STARTTLS, or the handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFallback {
    /// Go on in plaintext.
    Plaintext,
    /// Fail this attempt temporarily (retry later).
    Defer,
}

/// Decide for a server that does not offer STARTTLS.
pub fn not_offered(p: &TlsPolicy) -> TlsFallback {
    if p.mode == TlsMode::Required {
        TlsFallback::Defer
    } else {
        TlsFallback::Plaintext
    }
}

/// Decide after a failed handshake (the connection is gone either way; plaintext means a new
/// connection without STARTTLS).
pub fn handshake_failed(p: &TlsPolicy) -> TlsFallback {
    if p.mode == TlsMode::Opportunistic && p.plaintext_fallback {
        TlsFallback::Plaintext
    } else {
        TlsFallback::Defer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mode: TlsMode, fallback: bool) -> TlsPolicy {
        TlsPolicy { mode, verify: TlsVerify::None, ca_file: None, plaintext_fallback: fallback }
    }

    #[test]
    fn policy_table() {
        assert_eq!(not_offered(&p(TlsMode::Opportunistic, true)), TlsFallback::Plaintext);
        assert_eq!(not_offered(&p(TlsMode::Required, true)), TlsFallback::Defer);
        assert_eq!(handshake_failed(&p(TlsMode::Opportunistic, true)), TlsFallback::Plaintext);
        assert_eq!(handshake_failed(&p(TlsMode::Opportunistic, false)), TlsFallback::Defer);
        assert_eq!(handshake_failed(&p(TlsMode::Required, true)), TlsFallback::Defer);
    }
}
