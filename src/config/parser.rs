//! The HTTP parser's settings: Gunicorn's `--http-parser` (which of its two parsers to
//! use), accepted for compatibility. rgun has one parser, in Rust (`http::head`), so
//! every choice means that one; nothing here parses a request.

#[derive(Debug, Clone, clap::Args)]
pub struct ParserArgs {
    /// Gunicorn's choice between its C and Python HTTP parsers (auto, fast, python).
    /// rgun has one parser, written in Rust, which every value selects.
    #[arg(long = "http-parser", value_name = "STRING", default_value = "auto", ignore_case = true, value_parser = ["auto", "fast", "python"])]
    pub http_parser: String,
}

impl ParserArgs {
    /// These settings as `rgunctl config` and `--print-config` show them.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("http_parser".into(), self.http_parser.clone().into());
        m
    }
}
