//! Where syslog lines go and under which facility: `SyslogAddress` and Gunicorn's
//! facility names. Shared by `--log-syslog-to`/`--log-syslog-facility`
//! (`observability`) and a logging configuration's `SysLogHandler` (`logconfig`);
//! parses nothing itself.

use std::path::PathBuf;

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Udp(String),
    Tcp(String),
    /// `stream`: `#stream` given (else a datagram socket, or a stream one if that is
    /// what the path is).
    Unix {
        path: PathBuf,
        stream: bool,
    },
}

impl Default for SyslogAddress {
    fn default() -> Self {
        SyslogAddress::Udp("localhost:514".into())
    }
}

impl std::fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogAddress::Udp(a) => write!(f, "udp://{a}"),
            SyslogAddress::Tcp(a) => write!(f, "tcp://{a}"),
            SyslogAddress::Unix { path, .. } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Gunicorn's facility names.
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" | "security" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}
