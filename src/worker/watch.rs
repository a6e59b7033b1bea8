//! `--reload` (development): the worker notices when a source file of a loaded Python
//! module changes and exits gracefully, so the master starts a worker that imports the
//! new code. Polls modification times once per loop sweep (every second), like
//! Gunicorn's `poll` reload engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use pyo3::prelude::*;

#[derive(Default)]
pub struct SourceWatch {
    seen: HashMap<PathBuf, SystemTime>,
}

impl SourceWatch {
    /// Returns the first source file that changed since the last call.
    pub fn changed(&mut self, py: Python<'_>) -> Option<PathBuf> {
        let mut changed = None;
        for path in module_files(py) {
            let Ok(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
                continue;
            };
            match self.seen.insert(path.clone(), mtime) {
                Some(before) if before != mtime && changed.is_none() => changed = Some(path),
                _ => {}
            }
        }
        changed
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
