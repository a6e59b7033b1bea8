//! Gunicorn's `forwarder_headers`: header fields whose names contain `_` (dropped
//! from every other peer, Gunicorn's `header_map = "drop"`) that a trusted front end
//! (`--forwarded-allow-ips`) may set. Each reaches the application as `HTTP_*`;
//! `SCRIPT_NAME` also sets the environ's `SCRIPT_NAME`, the rest of the path being
//! `PATH_INFO` (a path outside it is a 500, Gunicorn's "configuration problem"). No I/O.

use super::head::RequestHead;

/// A forwarded `SCRIPT_NAME` and the raw path after it.
pub type ScriptSplit<'a> = (&'a [u8], &'a [u8]);

/// The request's path does not start with the `SCRIPT_NAME` its front end forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct OutsideScriptName;

/// The names a trusted front end may set, upper case, or any (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwarderHeaders {
    Any,
    Names(Vec<Vec<u8>>),
}

impl Default for ForwarderHeaders {
    /// Gunicorn's default: `SCRIPT_NAME,PATH_INFO`.
    fn default() -> Self {
        ForwarderHeaders::parse("SCRIPT_NAME,PATH_INFO")
    }
}

impl ForwarderHeaders {
    /// A comma-separated list, as Gunicorn's setting; `*` anywhere in it means any.
    pub fn parse(list: &str) -> ForwarderHeaders {
        let names: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.contains(&"*") {
            return ForwarderHeaders::Any;
        }
        ForwarderHeaders::Names(
            names
                .iter()
                .map(|n| n.to_ascii_uppercase().into_bytes())
                .collect(),
        )
    }

    pub fn allows(&self, name: &[u8]) -> bool {
        match self {
            ForwarderHeaders::Any => true,
            ForwarderHeaders::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }

    /// The list as the setting's text.
    pub fn to_text(&self) -> String {
        match self {
            ForwarderHeaders::Any => "*".into(),
            ForwarderHeaders::Names(names) => names
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The (name, value) fields a trusted peer forwarded that this list allows.
    pub fn forwarded<'a>(
        &'a self,
        head_bytes: &'a [u8],
        head: &'a RequestHead,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        head.underscored
            .iter()
            .map(move |(n, v)| (&head_bytes[n.clone()], &head_bytes[v.clone()]))
            .filter(move |(name, _)| self.allows(name))
    }

    /// A forwarded `SCRIPT_NAME` (the last one), and the raw path after it; an error
    /// when the path does not start with it (Gunicorn's "configuration problem", 500).
    pub fn script_name<'a>(
        &'a self,
        head_bytes: &'a [u8],
        head: &'a RequestHead,
    ) -> Result<Option<ScriptSplit<'a>>, OutsideScriptName> {
        let Some(script) = self
            .forwarded(head_bytes, head)
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"SCRIPT_NAME"))
            .map(|(_, value)| value)
            .last()
        else {
            return Ok(None);
        };
        let path = &head_bytes[head.path.clone()];
        match path.strip_prefix(script) {
            Some(rest) => Ok(Some((script, rest))),
            None => Err(OutsideScriptName),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_head, HeadLimits};

    fn head(raw: &[u8]) -> RequestHead {
        let mut head = RequestHead::default();
        parse_head(raw, &HeadLimits::default(), &mut head)
            .unwrap()
            .unwrap();
        head
    }

    #[test]
    fn listed_names_only_and_script_name() {
        let raw =
            b"GET /app/x HTTP/1.1\r\nSCRIPT_NAME: /app\r\nREMOTE_USER: bob\r\nX_Other: 1\r\n\r\n";
        let h = head(raw);
        assert_eq!(
            h.headers.len(),
            0,
            "underscored names are not ordinary fields"
        );
        let default = ForwarderHeaders::default();
        let names: Vec<&[u8]> = default.forwarded(raw, &h).map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"SCRIPT_NAME"[..]]);
        assert_eq!(
            default.script_name(raw, &h),
            Ok(Some((&b"/app"[..], &b"/x"[..])))
        );
        assert_eq!(
            ForwarderHeaders::parse(" *, X").forwarded(raw, &h).count(),
            3
        );
        let outside = b"GET /other HTTP/1.1\r\nSCRIPT_NAME: /app\r\n\r\n";
        assert!(default.script_name(outside, &head(outside)).is_err());
        assert_eq!(
            ForwarderHeaders::parse("remote_user").to_text(),
            "REMOTE_USER"
        );
    }
}
