//! The HTTP parser's settings: Gunicorn's `--http-parser` (which of its two parsers to
//! use), accepted for compatibility — rgun has one parser, in Rust (`http::head`), so
//! every choice means that one — and Gunicorn's lenient-parsing switches, off by
//! default, which `http::lenient` applies to heads the strict parser refused. Nothing
//! here parses a request.

use crate::http::lenient::Leniency;

#[derive(Debug, Clone, clap::Args)]
pub struct ParserArgs {
    /// Gunicorn's choice between its C and Python HTTP parsers (auto, fast, python).
    /// rgun has one parser, written in Rust, which every value selects.
    #[arg(long = "http-parser", value_name = "STRING", default_value = "auto", ignore_case = true, value_parser = ["auto", "fast", "python"])]
    pub http_parser: String,

    /// Accept obsolete folding (a field value continued on lines starting with a space
    /// or tab), joined with one space. Refused with 400 by default.
    #[arg(long = "permit-obsolete-folding")]
    pub permit_obsolete_folding: bool,

    /// Accept and drop spaces and tabs between a header name and its colon. Refused
    /// with 400 by default.
    #[arg(long = "strip-header-spaces")]
    pub strip_header_spaces: bool,

    /// Accept any token as a method, not only 3 to 20 characters without lower-case
    /// letters or `#`.
    #[arg(long = "permit-unconventional-http-method")]
    pub permit_unconventional_http_method: bool,

    /// Accept any HTTP/D.D version, not only 1.0 and 1.1 (served as 1.0 below 1.1,
    /// else as 1.1; SERVER_PROTOCOL shows the client's).
    #[arg(long = "permit-unconventional-http-version")]
    pub permit_unconventional_http_version: bool,

    /// Upper-case the method (with --permit-unconventional-http-method; without it a
    /// method in lower case is refused, as in Gunicorn).
    #[arg(long = "casefold-http-method")]
    pub casefold_http_method: bool,
}

impl ParserArgs {
    pub fn leniency(&self) -> Leniency {
        Leniency {
            obsolete_folding: self.permit_obsolete_folding,
            strip_header_spaces: self.strip_header_spaces,
            unconventional_method: self.permit_unconventional_http_method,
            unconventional_version: self.permit_unconventional_http_version,
            casefold_method: self.casefold_http_method,
        }
    }

    /// These settings as `rgunctl config` and `--print-config` show them.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("http_parser".into(), self.http_parser.clone().into());
        for (name, on) in [
            ("permit_obsolete_folding", self.permit_obsolete_folding),
            ("strip_header_spaces", self.strip_header_spaces),
            (
                "permit_unconventional_http_method",
                self.permit_unconventional_http_method,
            ),
            (
                "permit_unconventional_http_version",
                self.permit_unconventional_http_version,
            ),
            ("casefold_http_method", self.casefold_http_method),
        ] {
            m.insert(name.into(), on.into());
        }
        m
    }
}
