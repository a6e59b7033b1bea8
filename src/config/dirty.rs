//! The dirty pool's settings, Gunicorn 25's names (`dirty_apps`, `dirty_workers`,
//! `dirty_timeout`, `dirty_threads`, `dirty_graceful_timeout`): a separate pool of
//! stateful processes that HTTP workers call through `gunicorn.dirty`. The pool runs
//! when there are dirty workers and dirty apps, as in Gunicorn.

use super::MAX_DURATION_SECS;

#[derive(Debug, Clone, clap::Args)]
pub struct DirtyArgs {
    /// A dirty application: MODULE:CLASS (every dirty worker loads it) or
    /// MODULE:CLASS:N (only N of them do). Repeatable.
    #[arg(long = "dirty-app", value_name = "MODULE:CLASS[:N]", value_parser = parse_app)]
    pub dirty_apps: Vec<DirtyAppSpec>,

    /// Dirty worker processes (0: no dirty pool).
    #[arg(long = "dirty-workers", value_name = "INT", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub dirty_workers: u32,

    /// Seconds a dirty call may run; then its worker is aborted (its Python stacks
    /// logged), the caller gets DirtyTimeoutError and the worker is replaced (0: no
    /// limit).
    #[arg(long = "dirty-timeout", value_name = "INT", default_value_t = 300, allow_negative_numbers = true, value_parser = super::values::non_negative(MAX_DURATION_SECS))]
    pub dirty_timeout: u64,

    /// Calls one dirty worker runs at once, each on its own thread.
    #[arg(long = "dirty-threads", value_name = "INT", default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dirty_threads: u32,

    /// Seconds a stopping dirty worker has to finish its calls before it is killed.
    #[arg(long = "dirty-graceful-timeout", value_name = "INT", default_value_t = 30, allow_negative_numbers = true, value_parser = super::values::non_negative(MAX_DURATION_SECS))]
    pub dirty_graceful_timeout: u64,
}

/// One `--dirty-app`: the class to import and how many workers load it (`None`: as
/// the class's `workers` attribute says, else all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyAppSpec {
    /// `module:Class`, the name callers use in `execute()`.
    pub path: String,
    pub workers: Option<u32>,
}

impl std::fmt::Display for DirtyAppSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.workers {
            Some(n) => write!(f, "{}:{n}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

fn parse_app(s: &str) -> Result<DirtyAppSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let name_ok = |p: &str| {
        !p.is_empty()
            && p.split('.').all(|w| {
                w.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && w.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    let shape = "expected MODULE:CLASS or MODULE:CLASS:N";
    match parts.as_slice() {
        [module, class] | [module, class, _] if !(name_ok(module) && name_ok(class)) => {
            Err(format!("{s:?} is not an import path ({shape})"))
        }
        [module, class] => Ok(DirtyAppSpec {
            path: format!("{module}:{class}"),
            workers: None,
        }),
        [module, class, n] => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(DirtyAppSpec {
                path: format!("{module}:{class}"),
                workers: Some(n),
            }),
            _ => Err(format!(
                "{s:?}: the worker count {n:?} must be a whole number of at least 1"
            )),
        },
        _ => Err(format!("{s:?} is not an import path ({shape})")),
    }
}

impl DirtyArgs {
    /// The pool runs: dirty workers and apps both given.
    pub fn enabled(&self) -> bool {
        self.dirty_workers > 0 && !self.dirty_apps.is_empty()
    }

    /// `--print-config`'s and `rgunctl config`'s view.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        let apps: Vec<String> = self.dirty_apps.iter().map(ToString::to_string).collect();
        m.insert("dirty_apps".into(), apps.into());
        m.insert("dirty_workers".into(), self.dirty_workers.into());
        m.insert("dirty_timeout".into(), self.dirty_timeout.into());
        m.insert("dirty_threads".into(), self.dirty_threads.into());
        m.insert(
            "dirty_graceful_timeout".into(),
            self.dirty_graceful_timeout.into(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_gunicorn_reads_them() {
        assert_eq!(
            parse_app("pkg.ml:Model").unwrap(),
            DirtyAppSpec {
                path: "pkg.ml:Model".into(),
                workers: None
            }
        );
        assert_eq!(parse_app("a:B:2").unwrap().workers, Some(2));
        assert_eq!(parse_app("a:B:2").unwrap().to_string(), "a:B:2");
        for bad in [
            "a", "a:B:0", "a:B:x", "a:B:1:2", ":B", "a:", "a b:C", "1a:B",
        ] {
            assert!(parse_app(bad).is_err(), "{bad}");
        }
    }
}
