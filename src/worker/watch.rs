//! `--reload` (development): the worker notices when a source file of a loaded Python
//! module, or a `--reload-extra-file` (patterns expanded afresh at every check), changes
//! and exits gracefully, so the master starts a worker that imports the new code.
//!
//! Two engines (`--reload-engine`): `poll` compares modification times at every loop
//! sweep (once a second), like Gunicorn's; `inotify` (and `auto`, where the kernel
//! allows) watches the files' directories through one inotify descriptor that the
//! event loop polls beside its sockets, so a change wakes the worker at once; the sweep
//! only adds watches for modules imported and files matched since. Creating a file is
//! no change (a pattern's new match is watched from then on, and its first edit
//! counts), as in Gunicorn. Nothing here stops the worker: it only names the file.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use pyo3::prelude::*;

use crate::config::reloader::{ExtraFile, ReloadEngine};

pub struct SourceWatch {
    extra: Vec<ExtraFile>,
    how: How,
}

enum How {
    Poll { seen: HashMap<PathBuf, SystemTime> },
    Kernel(Kernel),
}

/// The inotify engine's state: the directories watched (each file is watched through
/// its directory, so an editor's rename-over-the-file is seen) and the files that
/// count.
struct Kernel {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    watched: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

/// What in a watched directory may mean a changed file; only events naming a watched
/// file count.
fn event_mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
}

/// The events that change a watched file's content or replace it.
fn changes() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
}

impl SourceWatch {
    /// The watch for `engine`; `auto` and `inotify` fall back to polling (with a
    /// warning for `inotify`) when the kernel refuses an inotify instance.
    pub fn new(engine: ReloadEngine, extra: Vec<ExtraFile>) -> SourceWatch {
        let how = match engine {
            ReloadEngine::Poll => How::poll(),
            ReloadEngine::Auto | ReloadEngine::Inotify => {
                match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                    Ok(inotify) => How::Kernel(Kernel {
                        inotify,
                        dirs: HashMap::new(),
                        watched: HashSet::new(),
                        files: HashSet::new(),
                    }),
                    Err(e) => {
                        if engine == ReloadEngine::Inotify {
                            tracing::warn!("--reload-engine inotify: no inotify instance ({e}); polling instead");
                        }
                        How::poll()
                    }
                }
            }
        };
        match how {
            How::Kernel(_) => tracing::debug!("--reload: watching through inotify"),
            How::Poll { .. } => tracing::debug!("--reload: polling modification times"),
        }
        SourceWatch { extra, how }
    }

    /// The descriptor the event loop polls for the inotify engine's events.
    pub fn fd(&self) -> Option<RawFd> {
        match &self.how {
            How::Kernel(k) => Some(k.inotify.as_fd().as_raw_fd()),
            How::Poll { .. } => None,
        }
    }

    /// The periodic check (every loop sweep): returns a watched file that changed.
    /// With inotify it also starts watching files that appeared since.
    pub fn changed(&mut self, py: Python<'_>) -> Option<PathBuf> {
        let files = self.files(py);
        match &mut self.how {
            How::Poll { seen } => poll_changes(seen, &files),
            How::Kernel(k) => {
                let changed = k.take_events();
                if let Err(e) = k.watch_all(files) {
                    tracing::warn!(
                        "--reload: cannot watch more directories ({e}); polling instead"
                    );
                    self.how = How::poll();
                    return changed;
                }
                changed
            }
        }
    }

    /// The inotify descriptor is readable: returns a watched file that changed.
    pub fn events_ready(&mut self) -> Option<PathBuf> {
        match &mut self.how {
            How::Kernel(k) => k.take_events(),
            How::Poll { .. } => None,
        }
    }

    /// Everything watched now: the loaded modules' sources and the extra files, with
    /// each pattern expanded again.
    fn files(&self, py: Python<'_>) -> Vec<PathBuf> {
        let mut files = module_files(py);
        for entry in &self.extra {
            files.extend(entry.expand());
        }
        // A module found through a relative sys.path entry has a relative __file__;
        // the watches and events name absolute paths.
        files
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect()
    }
}

impl How {
    fn poll() -> How {
        How::Poll {
            seen: HashMap::new(),
        }
    }
}

/// The first file whose modification time moved since the last check; a file seen
/// for the first time is only recorded.
fn poll_changes(seen: &mut HashMap<PathBuf, SystemTime>, files: &[PathBuf]) -> Option<PathBuf> {
    let mut changed = None;
    for path in files {
        let Ok(mtime) = std::fs::metadata(path).and_then(|m| m.modified()) else {
            continue;
        };
        match seen.insert(path.clone(), mtime) {
            Some(before) if before != mtime && changed.is_none() => changed = Some(path.clone()),
            _ => {}
        }
    }
    changed
}

impl Kernel {
    /// Watches the directory of every file (and of a symlink's target) not yet
    /// watched. `Err` only when the kernel has no watches left.
    fn watch_all(&mut self, files: Vec<PathBuf>) -> Result<(), Errno> {
        for file in files {
            if self.files.contains(&file) {
                continue;
            }
            let target = std::fs::read_link(&file)
                .ok()
                .and_then(|_| std::fs::canonicalize(&file).ok());
            for path in std::iter::once(file).chain(target) {
                if let Some(dir) = path.parent() {
                    self.watch_dir(dir)?;
                }
                self.files.insert(path);
            }
        }
        Ok(())
    }

    fn watch_dir(&mut self, dir: &Path) -> Result<(), Errno> {
        if self.watched.contains(dir) {
            return Ok(());
        }
        match self.inotify.add_watch(dir, event_mask()) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_owned());
                self.watched.insert(dir.to_owned());
                Ok(())
            }
            Err(e @ (Errno::ENOSPC | Errno::ENOMEM)) => Err(e),
            // Gone or unreadable: the next sweep tries again.
            Err(_) => Ok(()),
        }
    }

    /// Reads every waiting event; returns the first watched file one names. A queue
    /// overflow (events lost) counts as a change of whatever was watched.
    fn take_events(&mut self) -> Option<PathBuf> {
        let mut changed = None;
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                _ => return changed,
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    changed = changed.or_else(|| Some(PathBuf::from("(inotify events lost)")));
                    continue;
                }
                if event
                    .mask
                    .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
                {
                    if let Some(dir) = self.dirs.remove(&event.wd) {
                        self.watched.remove(&dir);
                    }
                    continue;
                }
                if changed.is_some() || !event.mask.intersects(changes()) {
                    continue;
                }
                let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), &event.name) else {
                    continue;
                };
                let path = dir.join(name);
                if self.files.contains(&path) {
                    changed = Some(path);
                }
            }
        }
    }
}

/// The `.py` files behind `sys.modules`.
fn module_files(py: Python<'_>) -> Vec<PathBuf> {
    let collect = || -> PyResult<Vec<PathBuf>> {
        let modules = py.import("sys")?.getattr("modules")?.call_method0("copy")?;
        let mut files = Vec::new();
        for module in modules.call_method0("values")?.try_iter()? {
            let Ok(file) = module?.getattr("__file__") else {
                continue;
            };
            if let Ok(f) = file.extract::<String>() {
                if f.ends_with(".py") {
                    files.push(PathBuf::from(f));
                }
            }
        }
        Ok(files)
    };
    collect().unwrap_or_default()
}
