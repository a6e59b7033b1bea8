//! The master reads the TLS certificate and key (before any worker drops privileges,
//! so root-only key files work) and builds the configuration workers inherit across
//! fork. A reload calls it again with the re-read configuration, so a renewed
//! certificate is served by the next generation without a restart.

use crate::config::Config;
use crate::net::tls_setup;

/// Fills `cfg.tls_server` from its TLS settings; `Err` is one line naming the problem.
pub fn load(cfg: &mut Config) -> Result<(), String> {
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
