//! The TLS server configuration from Gunicorn's settings: the certificate chain and
//! key (PEM; PKCS#1, PKCS#8 or SEC1 keys), client certificates checked against
//! `--ca-certs` (`--cert-reqs` 0 none, 1 optional, 2 required), `--ciphers` mapped to
//! rustls's suites, TLS 1.2 and 1.3 only, and the shared session tickets. Built by the
//! master before it forks (and again on a reload); workers inherit the result.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};

use super::tickets::SharedTickets;

/// What the TLS settings say, read from the configuration.
pub struct TlsOptions<'a> {
    pub certfile: &'a Path,
    /// The key's file; None: the key is in the certificate file.
    pub keyfile: Option<&'a Path>,
    pub ca_certs: Option<&'a Path>,
    /// 0: no client certificate asked for; 1: asked for, optional; 2: required.
    pub cert_reqs: u8,
    pub ciphers: Option<&'a str>,
    /// The ALPN names offered, in order of preference (`--http-protocols`).
    pub alpn: Vec<Vec<u8>>,
}

/// The configuration every TLS connection of a generation of workers starts from;
/// `Err` is one line naming the file or setting at fault.
pub fn server_config(o: &TlsOptions<'_>) -> Result<Arc<ServerConfig>, String> {
    let mut crypto = provider::default_provider();
    if let Some(list) = o.ciphers {
        crypto.cipher_suites = cipher_suites(list)?;
    }
    let crypto = Arc::new(crypto);
    let certs = CertificateDer::pem_file_iter(o.certfile)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read the certificate file {}: {e}",
                o.certfile.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", o.certfile.display()));
    }
    let key_path = o.keyfile.unwrap_or(o.certfile);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "cannot read a private key (PKCS#1, PKCS#8 or SEC1 PEM) from {}: {e}",
            key_path.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&crypto))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("--ciphers: {e}"))?;
    let builder = match (o.cert_reqs, o.ca_certs) {
        (0, _) => builder.with_no_client_auth(),
        (_, None) => return Err("--cert-reqs 1 or 2 needs --ca-certs".to_owned()),
        (reqs, Some(path)) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read --ca-certs {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(format!("no CA certificate in {}", path.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto);
            let verifier = if reqs == 1 {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("--ca-certs {}: {e}", path.display()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the key in {} does not fit the certificate in {}: {e}",
            key_path.display(),
            o.certfile.display()
        )
    })?;
    config.ticketer = SharedTickets::get()?;
    config.alpn_protocols = o.alpn.clone();
    Ok(Arc::new(config))
}

/// OpenSSL's cipher names (and the IANA ones), separated by `:` or `,`, to rustls's
/// suites. As with Python's `set_ciphers`, TLS 1.2 names do not touch TLS 1.3: its
/// suites all stay unless the list names some of them.
fn cipher_suites(list: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    use provider::cipher_suite as cs;
    const NAMES: &[(&str, &str, SupportedCipherSuite)] = &[
        ("TLS_AES_128_GCM_SHA256", "", cs::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", "", cs::TLS13_AES_256_GCM_SHA384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            "",
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for name in list
        .split([':', ','])
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let Some((_, _, suite)) = NAMES
            .iter()
            .find(|(openssl, iana, _)| name == *openssl || (!iana.is_empty() && name == *iana))
        else {
            let known: Vec<&str> = NAMES.iter().map(|(n, _, _)| *n).collect();
            return Err(format!(
                "--ciphers: {name:?} is not a cipher suite rgun offers (rustls has no cipher-string keywords); name suites separated by ':' from {}",
                known.join(", ")
            ));
        };
        if !chosen.contains(suite) {
            chosen.push(*suite);
        }
    }
    if chosen.is_empty() {
        return Err("--ciphers names no cipher suite".to_owned());
    }
    if !chosen.iter().any(|s| s.tls13().is_some()) {
        chosen.extend(NAMES[..3].iter().map(|(_, _, s)| *s));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_and_iana_names_map_and_tls13_stays() {
        let suites =
            cipher_suites("ECDHE-RSA-AES128-GCM-SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
                .unwrap();
        assert_eq!(suites.len(), 5);
        assert_eq!(
            suites[0],
            provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        let only13 = cipher_suites("TLS_AES_256_GCM_SHA384").unwrap();
        assert_eq!(
            only13,
            vec![provider::cipher_suite::TLS13_AES_256_GCM_SHA384]
        );
        let e = cipher_suites("ECDHE+AESGCM:!aNULL").unwrap_err();
        assert!(e.contains("\"ECDHE+AESGCM\""), "{e}");
        assert!(cipher_suites(":").is_err());
    }
}
