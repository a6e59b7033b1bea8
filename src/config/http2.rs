//! The HTTP/2 settings. HTTP/2 is off unless asked for: `--http2-cleartext` serves it
//! to clients that open with the HTTP/2 preface on a plain listener (prior knowledge,
//! "h2c"); HTTP/1 clients on the same listener are served as before.

#[derive(Debug, Clone, clap::Args)]
pub struct Http2Args {
    /// Serve HTTP/2 with prior knowledge (h2c) on plain listeners: a connection that
    /// opens with the HTTP/2 preface speaks HTTP/2, any other HTTP/1.
    #[arg(long = "http2-cleartext")]
    pub http2_cleartext: bool,
}

impl Http2Args {
    /// `--print-config`'s and `rgunctl config`'s view.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("http2_cleartext".into(), self.http2_cleartext.into());
        m
    }
}
