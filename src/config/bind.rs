//! `--bind` addresses: `HOST:PORT`, `[IPV6]:PORT`, `HOST` (port 8000), `unix:PATH`
//! and `fd://N`, as Gunicorn spells them.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddress {
    /// `host:port`, resolved when binding (a name may give several addresses).
    Tcp(String),
    Unix(PathBuf),
    /// An already-listening socket inherited from the parent process.
    Fd(i32),
}

/// Gunicorn's spelling (`--print-config`, `rgunctl config`): `HOST:PORT`, `unix:PATH`,
/// `fd://N`.
impl std::fmt::Display for BindAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddress::Tcp(a) => f.write_str(a),
            BindAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            BindAddress::Fd(n) => write!(f, "fd://{n}"),
        }
    }
}

/// clap value parser for `--bind`.
pub fn parse(s: &str) -> Result<BindAddress, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(BindAddress::Unix(PathBuf::from(path)));
    }
    if let Some(n) = s.strip_prefix("fd://") {
        return n
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .map(BindAddress::Fd)
            .ok_or_else(|| format!("{n:?} is not a file descriptor"));
    }
    if s.is_empty() {
        return Err("empty address".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unterminated [IPv6] address")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "8000",
            None => return Err(format!("unexpected {after:?} after the IPv6 address")),
        };
        (format!("[{host}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                if h.is_empty() {
                    "0.0.0.0".to_owned()
                } else {
                    h.to_owned()
                },
                p,
            ),
            Some(_) => return Err("IPv6 addresses must be written [ADDR]:PORT".into()),
            None => (s.to_owned(), "8000"),
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    Ok(BindAddress::Tcp(format!("{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorn_spellings() {
        assert_eq!(
            parse("127.0.0.1:80"),
            Ok(BindAddress::Tcp("127.0.0.1:80".into()))
        );
        assert_eq!(
            parse("[::1]:8000"),
            Ok(BindAddress::Tcp("[::1]:8000".into()))
        );
        assert_eq!(
            parse("localhost"),
            Ok(BindAddress::Tcp("localhost:8000".into()))
        );
        assert_eq!(
            parse("unix:/tmp/x.sock"),
            Ok(BindAddress::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(parse("fd://3"), Ok(BindAddress::Fd(3)));
        assert!(parse("host:notaport").is_err());
        assert!(parse("::1:80").is_err());
    }
}
