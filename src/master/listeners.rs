//! Opening the listening sockets, once, in the master. Workers inherit them across
//! fork and accept on them directly; nothing is proxied and nothing is per-worker.
//! Also the control socket, whose default path is named after the first listener.

use std::net::ToSocketAddrs;
use std::os::fd::FromRawFd;
use std::time::Duration;

use anyhow::{bail, Context};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{BindAddress, Config};
use crate::control::ControlServer;
use crate::net::{Listener, Local};

pub fn bind_all(cfg: &Config) -> anyhow::Result<Vec<Listener>> {
    if let Ok(inherited) = std::env::var(super::upgrade::INHERIT_ENV) {
        // A new master after USR2: the old master's sockets, not new ones.
        std::env::remove_var(super::upgrade::INHERIT_ENV);
        return inherited
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (fd, display) = pair.split_once('=').unwrap_or((pair, pair));
                let fd: i32 = fd
                    .parse()
                    .with_context(|| format!("bad inherited descriptor {pair:?}"))?;
                adopt_fd(fd, cfg.backlog, display.to_owned())
            })
            .collect();
    }
    if let Some(fds) = systemd_fds() {
        tracing::info!("Using {} socket(s) from systemd (LISTEN_FDS)", fds.len());
        return fds
            .into_iter()
            .map(|fd| adopt_fd(fd, cfg.backlog, format!("systemd fd {fd}")))
            .collect();
    }
    // As Gunicorn shows them: with --certfile every listener speaks TLS.
    let scheme = if cfg.tls.certfile.is_some() {
        "https"
    } else {
        "http"
    };
    let mut out = Vec::new();
    for bind in cfg.binds() {
        match &bind {
            BindAddress::Tcp(addr) => out.extend(bind_tcp(cfg, addr, scheme)?),
            BindAddress::Unix(path) => out.push(bind_unix(cfg, path)?),
            BindAddress::Fd(fd) => out.push(adopt_fd(*fd, cfg.backlog, format!("fd://{fd}"))?),
        }
    }
    Ok(out)
}

/// `HOST:PORT`: a listener on every address the name resolves to.
fn bind_tcp(cfg: &Config, addr: &str, scheme: &str) -> anyhow::Result<Vec<Listener>> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{addr} resolves to no address");
    }
    let mut out = Vec::new();
    for sa in addrs {
        let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if cfg.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if sa.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        bind_patiently(&socket, &sa.into(), &sa.to_string())?;
        socket.listen(cfg.backlog)?;
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?.as_socket().unwrap_or(sa);
        out.push(Listener {
            socket,
            local: Local {
                name: local_addr.ip().to_string(),
                port: local_addr.port().to_string(),
            },
            display: format!("{scheme}://{local_addr}"),
            unix_path: None,
        });
    }
    Ok(out)
}

/// `unix:PATH`, replacing a stale socket there (never another kind of file).
fn bind_unix(cfg: &Config, path: &std::path::Path) -> anyhow::Result<Listener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!(
                "cannot bind to unix:{}: the path exists and is not a socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let name = format!("unix:{}", path.display());
    bind_patiently(&socket, &SockAddr::unix(path)?, &name)?;
    socket.listen(cfg.backlog)?;
    socket.set_nonblocking(true)?;
    Ok(Listener {
        socket,
        local: Local {
            name: "localhost".into(),
            port: String::new(),
        },
        display: format!("unix:{}", path.display()),
        unix_path: Some(path.to_path_buf()),
    })
}

/// Opens the control socket (none with `--no-control-socket`, or yet for a new master
/// that takes the old one's over once ready). Without `--control-socket` the path is
/// the default for the first listener (`rgunctl::socket_path`), written into `cfg` so
/// that `config` and a later takeover see it; failing to open a default socket is a
/// warning, not a reason to refuse to serve, since nobody asked for it.
pub fn open_control(
    cfg: &mut Config,
    listeners: &[Listener],
    deferred_takeover: bool,
    registry: &mio::Registry,
) -> anyhow::Result<Option<ControlServer>> {
    if cfg.no_control_socket {
        return Ok(None);
    }
    let chosen = cfg.control_socket.is_some();
    let path = match &cfg.control_socket {
        Some(path) => path.clone(),
        None => {
            let first = listeners.first().map_or_else(String::new, instance_name);
            rgunctl::socket_path::instance_socket_path(&first)
        }
    };
    cfg.control_socket = Some(path.clone());
    if deferred_takeover {
        return Ok(None);
    }
    let opened = private_dir_for(&path, chosen)
        .and_then(|()| ControlServer::bind(&path, cfg.control_socket_mode, registry));
    match opened {
        Ok(mut server) if !chosen => {
            link_gunicorn_default(&mut server);
            Ok(Some(server))
        }
        Ok(server) => Ok(Some(server)),
        Err(e) if chosen => Err(e),
        Err(e) => {
            tracing::warn!("no control socket: {e:#}; choose a path with --control-socket");
            cfg.control_socket = None;
            Ok(None)
        }
    }
}

/// Without `--control-socket`, Gunicorn's default path (where `gunicornc` looks) is
/// linked to rgun's own default socket, unless another server answers there.
fn link_gunicorn_default(server: &mut ControlServer) {
    let Some(alias) = rgunctl::socket_path::gunicorn_default_socket() else {
        return;
    };
    // Where it is linked is logged with the start-up records (`ControlServer::alias`).
    if let Err(e) = server.link_alias(&alias) {
        tracing::info!("Control socket not linked for gunicornc: {e:#}");
    }
}

/// What a listener is called in its default control socket's name: `127.0.0.1:8000`,
/// `[::1]:8000`, `unix:/run/app.sock`.
fn instance_name(l: &Listener) -> String {
    match l.socket.local_addr() {
        Ok(addr) => match (addr.as_socket(), addr.as_pathname()) {
            (Some(sa), _) => sa.to_string(),
            (None, Some(path)) => format!("unix:{}", path.display()),
            (None, None) => l.display.clone(),
        },
        Err(_) => l.display.clone(),
    }
}

/// The default directory of control sockets (`/tmp/rgun-UID`, `$XDG_RUNTIME_DIR/rgun`)
/// is made private to this user; an existing one must already be (owned by us, no
/// access for others), since anyone could have made it in /tmp.
fn private_dir_for(path: &std::path::Path, chosen: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = rgunctl::socket_path::default_socket_dir();
    if chosen || path.parent() != Some(dir.as_path()) {
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is not a directory of ours that only we can use (uid {me}, mode 0700)",
            dir.display()
        );
    }
    Ok(())
}

/// How many times an address in use is tried, a second apart, as Gunicorn does: a
/// quick restart outlives the previous process's socket.
pub const BIND_ATTEMPTS: u32 = 5;
const BIND_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Binds `socket`, retrying (each failure logged) while the address is in use or not
/// yet available; other errors (a privileged port, a bad path) fail at once.
fn bind_patiently(socket: &Socket, addr: &SockAddr, name: &str) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        let Err(err) = socket.bind(addr) else {
            return Ok(());
        };
        let transient = matches!(
            err.raw_os_error(),
            Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
        );
        if !transient {
            return Err(err).with_context(|| format!("cannot bind to {name}"));
        }
        if attempt == BIND_ATTEMPTS {
            tracing::error!("cannot bind to {name}: {err} (attempt {attempt} of {BIND_ATTEMPTS})");
            return Err(err)
                .with_context(|| format!("cannot bind to {name} after {BIND_ATTEMPTS} attempts"));
        }
        tracing::error!(
            "cannot bind to {name}: {err} (attempt {attempt} of {BIND_ATTEMPTS}); retrying in 1 second"
        );
        std::thread::sleep(BIND_RETRY_PAUSE);
        attempt += 1;
    }
}

/// Sockets passed by systemd socket activation: `LISTEN_FDS` descriptors from 3 on, if
/// `LISTEN_PID` is us. The variables are removed so workers do not see them.
fn systemd_fds() -> Option<Vec<i32>> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    let count = std::env::var("LISTEN_FDS").ok()?;
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if pid.trim() != std::process::id().to_string() {
        return None;
    }
    let n: i32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    Some((3..3 + n).collect())
}

/// Takes ownership of an inherited listening socket (`fd://N`, systemd, upgrade).
pub fn adopt_fd(fd: i32, backlog: i32, display: String) -> anyhow::Result<Listener> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("cannot use {display}: the descriptor is not open");
    }
    // SAFETY: the descriptor is open and was handed to us to own.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let local = socket
        .local_addr()
        .with_context(|| format!("{display} is not a socket"))?;
    // As Gunicorn does: an inherited listener gets our backlog too.
    socket
        .listen(backlog)
        .with_context(|| format!("{display} is not a listening socket"))?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    let (name, port, unix_path) = match local.as_socket() {
        Some(sa) => (sa.ip().to_string(), sa.port().to_string(), None),
        None => ("localhost".into(), String::new(), None),
    };
    Ok(Listener {
        socket,
        local: Local { name, port },
        display,
        unix_path,
    })
}
