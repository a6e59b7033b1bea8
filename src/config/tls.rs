//! Gunicorn's SSL settings. With `--certfile` every listener speaks TLS (rustls; the
//! master loads the files, `net::tls_setup` builds the configuration). The
//! `ssl_context` hook, a Python `ssl.SSLContext` factory, has no place in rustls and
//! is refused.

use std::path::{Path, PathBuf};

use crate::net::tls_setup::TlsOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// TLS certificate file (PEM: the server certificate, then its chain). Turns TLS on.
    #[arg(long = "certfile", value_name = "FILE")]
    pub certfile: Option<PathBuf>,

    /// TLS private key file (PEM: PKCS#1, PKCS#8 or SEC1) [default: in --certfile].
    #[arg(long = "keyfile", value_name = "FILE")]
    pub keyfile: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long = "ca-certs", value_name = "FILE")]
    pub ca_certs: Option<PathBuf>,

    /// Client certificates: 0 not asked for, 1 optional (verified when sent), 2 required.
    #[arg(long = "cert-reqs", value_name = "INT", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub cert_reqs: u8,

    /// Cipher suites, OpenSSL or IANA names separated by ':' (TLS 1.2 names leave the
    /// TLS 1.3 suites on) [default: rustls's safe set].
    #[arg(long = "ciphers", value_name = "CIPHERS")]
    pub ciphers: Option<String>,

    /// Deprecated in Gunicorn and ignored: rgun speaks TLS 1.2 and 1.3 only.
    #[arg(long = "ssl-version", value_name = "VERSION")]
    pub ssl_version: Option<String>,

    /// Accepted for Gunicorn compatibility: the handshake always runs in the event loop,
    /// before the request.
    #[arg(long = "do-handshake-on-connect")]
    pub do_handshake_on_connect: bool,

    /// Accepted for Gunicorn compatibility: a client's EOF without close_notify is
    /// always an ordinary end of stream.
    #[arg(long = "suppress-ragged-eofs")]
    pub suppress_ragged_eofs: bool,
}

/// Gunicorn's `ssl_version` default, `ssl.PROTOCOL_TLS` (also spelled by name).
const DEFAULT_SSL_VERSIONS: &[&str] = &["2", "TLS", "SSLv23", "TLS_SERVER", "PROTOCOL_TLS"];

impl TlsArgs {
    /// The options for `tls_setup::server_config`, or None without `--certfile`. `Err`:
    /// a setting that needs TLS without it, or the `ssl_context` hook.
    pub fn options(&self, hooks: &[String]) -> Result<Option<TlsOptions<'_>>, String> {
        if hooks.iter().any(|h| h == "ssl_context") {
            return Err("the ssl_context hook is not supported: rgun's TLS is rustls, not Python's ssl module; use certfile, keyfile, ca_certs, cert_reqs and ciphers".to_owned());
        }
        let Some(certfile) = self.certfile.as_deref() else {
            if self.keyfile.is_some() || self.ca_certs.is_some() || self.cert_reqs != 0 {
                return Err("--keyfile, --ca-certs and --cert-reqs need --certfile".to_owned());
            }
            return Ok(None);
        };
        Ok(Some(TlsOptions {
            certfile,
            keyfile: self.keyfile.as_deref(),
            ca_certs: self.ca_certs.as_deref(),
            cert_reqs: self.cert_reqs,
            ciphers: self.ciphers.as_deref(),
            alpn: vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()],
        }))
    }

    /// Gunicorn's warning for a non-default `--ssl-version`.
    pub fn deprecation_warning(&self) -> Option<&'static str> {
        self.ssl_version
            .as_deref()
            .filter(|v| !DEFAULT_SSL_VERSIONS.contains(v))
            .map(|_| {
                "option `ssl_version` is deprecated and it is ignored: rgun speaks TLS 1.2 and 1.3"
            })
    }

    /// `--print-config`'s and `rgunctl config`'s view, Gunicorn's names.
    pub fn settings_json(&self) -> serde_json::Value {
        let path = |p: &Option<PathBuf>| p.as_deref().map(Path::display).map(|d| d.to_string());
        serde_json::json!({
            "certfile": path(&self.certfile),
            "keyfile": path(&self.keyfile),
            "ca_certs": path(&self.ca_certs),
            "cert_reqs": self.cert_reqs,
            "ciphers": self.ciphers,
            "ssl_version": self.ssl_version.as_deref().unwrap_or("2"),
            "do_handshake_on_connect": self.do_handshake_on_connect,
            "suppress_ragged_eofs": true,
        })
    }
}
