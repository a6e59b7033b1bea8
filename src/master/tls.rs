//! The master reads the TLS certificate and key (before any worker drops privileges,
//! so root-only key files work) and builds the configuration workers inherit across
//! fork. A reload calls it again with the re-read configuration, so a renewed
//! certificate is served by the next generation without a restart. It also refuses
//! HTTP/2 for an ASGI worker, which serves HTTP/1 only so far.

use crate::config::{Config, WorkerKind};
use crate::net::tls_setup;

/// Fills `cfg.tls_server` from its TLS settings; `Err` is one line naming the problem.
pub fn load(cfg: &mut Config) -> Result<(), String> {
    if cfg.http2.enabled() && cfg.worker_kind() == WorkerKind::Asgi {
        return Err("HTTP/2 (--http-protocols h2, --http2-cleartext) is for WSGI applications only so far; an ASGI worker speaks HTTP/1".to_owned());
    }
    if let Some(warning) = cfg.tls.deprecation_warning() {
        tracing::warn!("{warning}");
    }
    cfg.tls_server = match cfg.tls.options(&cfg.hooks)? {
        Some(mut options) => {
            options.alpn = cfg.http2.http_protocols.alpn();
            Some(tls_setup::server_config(&options)?)
        }
        None => None,
    };
    Ok(())
}
