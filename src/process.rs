//! Process hygiene, Gunicorn-style: daemon mode, the pidfile, the umask, and the
//! privilege drop workers do before importing the application; what /proc says about a
//! process (threads, resident memory).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::unistd::{Gid, Group, Uid, User};

/// Forks into the background (`-D`): the parent exits 0, the grandchild continues in a
/// new session with stdin/stdout (and stderr, unless it is a log file) on /dev/null.
pub fn daemonize(error_log_is_stderr: bool) -> anyhow::Result<()> {
    /// The parent exits; the child goes on.
    fn fork_away() -> anyhow::Result<()> {
        // SAFETY: called from the entry point before any thread exists.
        match unsafe { crate::python::fork_interpreter(crate::python::Inherit::AllBut(&[])) }
            .context("fork failed")?
        {
            crate::python::Forked::Parent(_) => std::process::exit(0),
            crate::python::Forked::Child(signals) => signals.release(),
        }
        Ok(())
    }
    fork_away()?;
    nix::unistd::setsid().context("setsid failed")?;
    fork_away()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in [0, 1] {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    if error_log_is_stderr {
        nix::unistd::dup2(null.as_raw_fd(), 2)?;
    }
    Ok(())
}

/// A pidfile we wrote and remove on exit.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Refuses when the file names a live process other than us.
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let alive = pid > 0
                    && pid != std::process::id() as i32
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
                if alive {
                    bail!(
                        "pidfile {} names a running process ({pid}): is rgun already running?",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {}", path.display()))?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }

    /// USR2: the old master moves aside to `<pidfile>.oldbin`, as Gunicorn does, so
    /// the new master can write the pidfile.
    pub fn rename_to_oldbin(&mut self) {
        let mut old = self.path.clone().into_os_string();
        old.push(".oldbin");
        let old = PathBuf::from(old);
        if std::fs::rename(&self.path, &old).is_ok() {
            self.path = old;
        }
    }

    /// The upgrade failed: the pidfile is ours again.
    pub fn restore_from_oldbin(&mut self) {
        if let Some(orig) = self
            .path
            .to_str()
            .and_then(|p| p.strip_suffix(".oldbin"))
            .map(PathBuf::from)
        {
            if std::fs::rename(&self.path, &orig).is_ok() {
                self.path = orig;
            }
        }
    }

    pub fn remove(&self) {
        // Only ours: a successor may have rewritten it.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Who workers run as (`-u`, `-g`, `--initgroups`), resolved once in the master.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    /// With `--initgroups`: the user name for initgroups(3).
    pub initgroups: Option<(std::ffi::CString, Gid)>,
}

impl Identity {
    pub fn resolve(
        user: Option<&str>,
        group: Option<&str>,
        initgroups: bool,
    ) -> anyhow::Result<Identity> {
        let user = match user {
            None => None,
            Some(u) => Some(match u.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id))?.unwrap_or_else(|| anon_user(id)),
                Err(_) => {
                    User::from_name(u)?.with_context(|| format!("--user: no such user {u:?}"))?
                }
            }),
        };
        let gid = match group {
            None => user.as_ref().map(|u| u.gid),
            Some(g) => Some(match g.parse::<u32>() {
                Ok(id) => Gid::from_raw(id),
                Err(_) => {
                    Group::from_name(g)?
                        .with_context(|| format!("--group: no such group {g:?}"))?
                        .gid
                }
            }),
        };
        let initgroups = match (&user, initgroups) {
            (Some(u), true) => Some((
                std::ffi::CString::new(u.name.clone())?,
                gid.unwrap_or(u.gid),
            )),
            _ => None,
        };
        Ok(Identity {
            uid: user.map(|u| u.uid),
            gid,
            initgroups,
        })
    }

    pub fn is_noop(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }

    /// In a worker: group first, then supplementary groups, then user.
    pub fn drop_privileges(&self) -> nix::Result<()> {
        if let Some((name, gid)) = &self.initgroups {
            nix::unistd::initgroups(name, *gid)?;
        }
        if let Some(gid) = self.gid {
            nix::unistd::setgid(gid)?;
        }
        if let Some(uid) = self.uid {
            nix::unistd::setuid(uid)?;
        }
        Ok(())
    }
}

fn anon_user(id: u32) -> User {
    User {
        name: id.to_string(),
        passwd: Default::default(),
        uid: Uid::from_raw(id),
        gid: Gid::from_raw(id),
        gecos: Default::default(),
        dir: PathBuf::from("/"),
        shell: PathBuf::from("/bin/sh"),
    }
}

/// The working directory at start (before `--chdir`), where relative configuration
/// paths are resolved when a reload re-reads them.
pub fn original_cwd() -> &'static std::path::Path {
    static CWD: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CWD.get_or_init(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")))
}

/// How this server was started, which is what a re-execution (USR2, a `--preload`
/// reload) runs again: the interpreter (`sys.executable`, the venv's `bin/python`), the
/// script that selects the entry point, and the program's arguments (`sys.argv`).
#[derive(Debug, Clone)]
pub struct StartCommand {
    pub interpreter: PathBuf,
    /// `[/venv/bin/rgun]` (the console script, as Gunicorn re-executes `sys.argv[0]`
    /// with `sys.executable`), or `[-m, rgun]` when `sys.argv[0]` names no file.
    pub entry: Vec<std::ffi::OsString>,
    /// `sys.argv`: the program name, then the command line.
    pub args: Vec<std::ffi::OsString>,
}

impl StartCommand {
    /// From `sys.executable` and `sys.argv`; a relative script path is resolved
    /// against the working directory now, before `--chdir` changes it.
    pub fn new(interpreter: PathBuf, args: Vec<std::ffi::OsString>) -> StartCommand {
        let script = args
            .first()
            .map(|a| original_cwd().join(a))
            .filter(|p| p.is_file());
        let entry = match script {
            Some(path) => vec![path.into_os_string()],
            None => vec!["-m".into(), "rgun".into()],
        };
        StartCommand {
            interpreter,
            entry,
            args,
        }
    }

    /// The command that starts this server again with the same arguments.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.interpreter);
        cmd.args(&self.entry).args(self.args.iter().skip(1));
        cmd
    }
}

static START: std::sync::OnceLock<StartCommand> = std::sync::OnceLock::new();

/// Records how the server was started; the entry point calls it first, once.
pub fn record_start(start: StartCommand) {
    let _ = START.set(start);
}

/// How the server was started (`record_start`; else this process's own arguments).
pub fn start_command() -> &'static StartCommand {
    START.get_or_init(|| {
        let interpreter =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        StartCommand::new(interpreter, std::env::args_os().collect())
    })
}

/// The program's arguments at start (`sys.argv`), which a reload parses again.
pub fn original_args() -> &'static [std::ffi::OsString] {
    &start_command().args
}

/// Sets the process title shown by `ps`/`top` (`rgun: master [app]`): the thread name
/// (15 bytes) and the argv area, as setproctitle does. Longer titles are truncated to
/// the space the original command line had.
pub fn set_title(title: &str) {
    let _ = start_command();
    let name =
        std::ffi::CString::new(title.bytes().take(15).collect::<Vec<u8>>()).unwrap_or_default();
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    let Some((start, end)) = argv_area() else {
        return;
    };
    let len = end.saturating_sub(start);
    if len < 2 {
        return;
    }
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's own argv area (from /proc/self/stat),
    // mapped and writable for the life of the process; the interpreter copied the
    // arguments into `sys.argv` at start-up, and nothing else reads that memory.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area[..n].copy_from_slice(&bytes[..n]);
        area[n..].fill(0);
    }
}

/// `arg_start` and `arg_end` from /proc/self/stat (fields 48 and 49).
fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3.
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}

/// How many threads this process has (from /proc; 1 if it cannot tell).
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// A process's resident memory in bytes, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    rss_pages(pid) * page_size()
}

/// A process's resident memory in pages, from /proc (0 if it cannot tell).
pub fn rss_pages(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
        .unwrap_or(0)
}

/// The size of a memory page in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}
