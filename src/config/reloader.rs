//! `--reload`'s settings beside the switch itself: Gunicorn's `reload_engine` (how a
//! worker learns that a file changed) and `reload_extra_files` (files and glob patterns
//! watched beside the application's Python sources). Patterns are expanded here, afresh
//! at every call, so a file created after start-up is found; nothing here watches.

use std::path::{Path, PathBuf};

/// How a worker notices changed files (`--reload-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadEngine {
    /// The kernel's inotify where it can be had, else polling.
    Auto,
    /// Modification times compared once a second.
    Poll,
    /// The kernel's inotify: a change wakes the worker's event loop at once.
    Inotify,
}

impl ReloadEngine {
    pub fn name(self) -> &'static str {
        match self {
            ReloadEngine::Auto => "auto",
            ReloadEngine::Poll => "poll",
            ReloadEngine::Inotify => "inotify",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReloaderArgs {
    /// How --reload notices changes: auto (inotify where available, else poll), poll
    /// (modification times every second) or inotify (the kernel tells at once).
    #[arg(
        long = "reload-engine",
        value_name = "STRING",
        default_value = "auto",
        value_enum
    )]
    pub reload_engine: ReloadEngine,

    /// With --reload, also restart workers when this file changes (repeatable). An
    /// entry with `*`, `?` or `[` is a glob pattern (`**` for any depth), expanded
    /// again at every check so that files created later are watched; relative to the
    /// directory rgun starts in.
    #[arg(long = "reload-extra-file", value_name = "FILES", value_parser = parse_extra_file)]
    pub reload_extra_files: Vec<ExtraFile>,
}

impl ReloaderArgs {
    /// These settings as `rgunctl config` and `--print-config` show them.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("reload_engine".into(), self.reload_engine.name().into());
        let extra: Vec<String> = self
            .reload_extra_files
            .iter()
            .map(ExtraFile::text)
            .collect();
        m.insert("reload_extra_files".into(), extra.into());
        m
    }

    /// Warns (in the error log) of the patterns that match no file now: they are
    /// expanded again at every check, so this is only a warning, as in Gunicorn. At
    /// start-up and when a reload reads the configuration again.
    pub fn warn_of_patterns_matching_nothing(&self) {
        for pattern in self
            .reload_extra_files
            .iter()
            .filter_map(ExtraFile::matches_nothing)
        {
            tracing::warn!("--reload-extra-file: pattern {pattern} currently matches no files");
        }
    }
}

/// One `--reload-extra-file` entry, made absolute against the directory rgun started
/// in (not `--chdir`, applied later), as Gunicorn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraFile {
    Path(PathBuf),
    /// A glob pattern, already valid; `text` is how it was given.
    Pattern {
        absolute: String,
        text: String,
    },
}

impl ExtraFile {
    /// What the entry names now: the path, or the pattern's current matches (sorted).
    pub fn expand(&self) -> Vec<PathBuf> {
        match self {
            ExtraFile::Path(p) => vec![p.clone()],
            ExtraFile::Pattern { absolute, .. } => glob_matches(absolute),
        }
    }

    /// A pattern that matches nothing now (Gunicorn warns of it, and so does rgun).
    pub fn matches_nothing(&self) -> Option<&str> {
        match self {
            ExtraFile::Pattern { absolute, text } if glob_matches(absolute).is_empty() => {
                Some(text)
            }
            _ => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            ExtraFile::Path(p) => p.display().to_string(),
            ExtraFile::Pattern { text, .. } => text.clone(),
        }
    }
}

/// Whether Gunicorn reads an entry as a glob pattern.
fn is_pattern(entry: &str) -> bool {
    entry.contains(['*', '?', '['])
}

/// Python's `glob.glob(pattern, recursive=True)`'s matching rules: `*` and `?` stay
/// inside one path component and skip names starting with a dot, `**` alone in a
/// component spans directories.
const GLOB_RULES: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

fn glob_matches(pattern: &str) -> Vec<PathBuf> {
    let Ok(paths) = glob::glob_with(pattern, GLOB_RULES) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
    found.sort();
    found
}

fn parse_extra_file(entry: &str) -> Result<ExtraFile, String> {
    let here = std::env::current_dir().map_err(|e| format!("cannot tell the directory: {e}"))?;
    extra_file_in(&here, entry)
}

/// `entry` read against `here`: a literal path must exist (as in Gunicorn), a pattern
/// must be a valid glob.
fn extra_file_in(here: &Path, entry: &str) -> Result<ExtraFile, String> {
    if entry.is_empty() {
        return Err("an empty path".into());
    }
    if !is_pattern(entry) {
        let path = here.join(entry);
        if !path.exists() {
            return Err(format!("file {entry} does not exist"));
        }
        return Ok(ExtraFile::Path(path));
    }
    let absolute = if entry.starts_with('/') {
        entry.to_owned()
    } else {
        let dir = glob::Pattern::escape(&here.to_string_lossy());
        format!("{}/{entry}", dir.trim_end_matches('/'))
    };
    glob::Pattern::new(&absolute).map_err(|e| format!("not a valid pattern {entry:?}: {e}"))?;
    Ok(ExtraFile::Pattern {
        absolute,
        text: entry.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a.html",
            "b.html",
            ".hidden.html",
            "sub/c.html",
            "sub/deep/d.html",
            "sub/x.txt",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        dir
    }

    fn names(dir: &Path, entry: &str) -> Vec<String> {
        extra_file_in(dir, entry)
            .unwrap()
            .expand()
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn patterns_expand_as_python_glob_does() {
        let dir = tree();
        let d = dir.path();
        assert_eq!(names(d, "*.html"), ["a.html", "b.html"]);
        assert_eq!(names(d, "?.html"), ["a.html", "b.html"]);
        assert_eq!(names(d, "[a].html"), ["a.html"]);
        assert_eq!(names(d, "sub/*.html"), ["sub/c.html"]);
        assert_eq!(
            names(d, "**/*.html"),
            ["a.html", "b.html", "sub/c.html", "sub/deep/d.html"]
        );
        assert!(names(d, "*.css").is_empty());
        assert_eq!(names(d, ".hidden.html"), [".hidden.html"]);
    }

    #[test]
    fn a_pattern_is_expanded_afresh_each_time() {
        let dir = tree();
        let entry = extra_file_in(dir.path(), "*.css").unwrap();
        assert_eq!(entry.matches_nothing(), Some("*.css"));
        std::fs::write(dir.path().join("late.css"), "").unwrap();
        assert_eq!(entry.expand(), [dir.path().join("late.css")]);
        assert_eq!(entry.matches_nothing(), None);
    }

    #[test]
    fn a_missing_literal_path_is_refused_a_bad_pattern_too() {
        let dir = tree();
        assert!(extra_file_in(dir.path(), "nope.html")
            .unwrap_err()
            .contains("does not exist"));
        assert!(extra_file_in(dir.path(), "a[.html").is_err());
        assert_eq!(
            extra_file_in(dir.path(), "a.html").unwrap(),
            ExtraFile::Path(dir.path().join("a.html"))
        );
    }

    #[test]
    fn a_directory_with_glob_characters_is_taken_literally() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("we[ir]d");
        std::fs::create_dir(&odd).unwrap();
        std::fs::write(odd.join("t.html"), "").unwrap();
        assert_eq!(names(&odd, "*.html"), ["t.html"]);
    }
}
