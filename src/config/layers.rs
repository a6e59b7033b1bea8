//! Where settings come from, in Gunicorn's order: the configuration file, then
//! `GUNICORN_CMD_ARGS`/`RGUN_CMD_ARGS`, then the command line, the later winning (also
//! for repeatable options, which a later layer replaces rather than extends).

use std::path::Path;

use clap::Parser;

use super::{file, BindAddress, Config};

/// Environment variables whose contents are parsed as extra command-line arguments,
/// after the configuration file and before the real command line.
pub const ARGS_ENV_VARS: [&str; 2] = ["GUNICORN_CMD_ARGS", "RGUN_CMD_ARGS"];

/// Splits a string the way a POSIX shell splits words (quotes and backslashes).
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.push(chars.next().ok_or("unterminated double quote")?),
                        Some(ch) => word.push(ch),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("trailing backslash")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Why the layered command line could not be parsed.
#[derive(Debug)]
pub enum LayerError {
    Env(String),
    File(String),
    Clap(clap::Error),
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerError::Env(m) | LayerError::File(m) => f.write_str(m),
            LayerError::Clap(e) => {
                let rendered = e.render().to_string();
                f.write_str(
                    rendered
                        .lines()
                        .next()
                        .unwrap_or("invalid command line")
                        .trim_start_matches("error: "),
                )
            }
        }
    }
}

/// A configuration file's bad value, as one line naming the file, the line and the
/// Gunicorn setting: `FILE, line 3: setting 'timeout': invalid value '...' for
/// '--timeout <INT>': ...`.
fn file_setting_error(e: &clap::Error, loc: &str, lines: &[(String, u64)]) -> String {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid value")
        .trim_start_matches("error: ")
        .to_owned();
    // A long value (a `logconfig_dict`) is named by its start: the line is about why.
    let first = match e.get(clap::error::ContextKind::InvalidValue) {
        Some(clap::error::ContextValue::String(v)) if v.chars().count() > 60 => {
            let start: String = v.chars().take(40).collect();
            first.replacen(&format!("'{v}'"), &format!("'{start}...'"), 1)
        }
        _ => first,
    };
    let flag = match e.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(arg)) => {
            arg.split_whitespace().next().unwrap_or("").to_owned()
        }
        _ => String::new(),
    };
    match file::SETTINGS.iter().find(|(_, f, _)| *f == flag) {
        Some((name, _, _)) => match lines.iter().find(|(n, _)| n == name) {
            Some((_, line)) => format!("{loc}, line {line}: setting '{name}': {first}"),
            None => format!("{loc}: setting '{name}': {first}"),
        },
        None => format!("{loc}: {first}"),
    }
}

impl Config {
    /// Parses the process's command line; prints one line and exits 2 on a bad one.
    pub fn from_args() -> Config {
        match Config::parse_layers(crate::process::original_args()) {
            Ok(cfg) => cfg,
            Err(LayerError::Env(msg)) => {
                eprintln!("rgun: {msg}");
                std::process::exit(2);
            }
            Err(LayerError::File(msg)) => {
                eprintln!("rgun: {msg}");
                std::process::exit(1);
            }
            Err(LayerError::Clap(e)) => match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    e.exit()
                }
                _ => {
                    // clap explains over several lines; the first paragraph names the
                    // problem, and we print it as one line.
                    let rendered = e.render().to_string();
                    let summary: Vec<&str> = rendered
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    eprintln!("rgun: {}", summary.join(" ").trim_start_matches("error: "));
                    std::process::exit(2);
                }
            },
        }
    }

    /// Parses `GUNICORN_CMD_ARGS`/`RGUN_CMD_ARGS` then the command line, with
    /// Gunicorn's precedence: the command line wins, also for repeatable options (a
    /// `-b` on the command line replaces the environment's binds).
    pub fn parse_layers(cli: &[std::ffi::OsString]) -> Result<Config, LayerError> {
        Config::parse_layers_waiting(cli, &mut file::poll_readable)
    }

    /// [`Config::parse_layers`], calling `wait` while the configuration file evaluates
    /// (the master answers its control socket meanwhile).
    pub fn parse_layers_waiting(
        cli: &[std::ffi::OsString],
        wait: file::WaitReadable<'_>,
    ) -> Result<Config, LayerError> {
        use clap::CommandFactory;
        let (prog, rest) = match cli.split_first() {
            Some((p, r)) => (p.clone(), r),
            None => (std::ffi::OsString::from("rgun"), &[][..]),
        };
        // The environment's arguments, then the command line's.
        let mut upper = vec![prog.clone()];
        for var in ARGS_ENV_VARS {
            if let Ok(text) = std::env::var(var) {
                let words =
                    split_args(&text).map_err(|e| LayerError::Env(format!("{var}: {e}")))?;
                upper.extend(words.into_iter().map(Into::into));
            }
        }
        upper.extend(rest.iter().cloned());
        // Which configuration file? (-c from either, else ./gunicorn.conf.py if present.)
        let lenient = |args: &[std::ffi::OsString]| {
            Config::command()
                .ignore_errors(true)
                .try_get_matches_from(args)
                .ok()
        };
        let location = lenient(&upper)
            .and_then(|m| m.get_one::<String>("config").cloned())
            .or_else(|| {
                Path::new("gunicorn.conf.py")
                    .exists()
                    .then(|| "gunicorn.conf.py".to_owned())
            });
        let file = match &location {
            Some(loc) => {
                file::load(loc, wait).map_err(|e| LayerError::File(format!("{loc}: {e}")))?
            }
            None => file::FileSettings::default(),
        };
        if let Some(loc) = &location {
            let (not_provided, unknown): (Vec<&str>, Vec<&str>) = file
                .unknown
                .iter()
                .map(String::as_str)
                .partition(|name| file::NOT_PROVIDED.iter().any(|(n, _)| n == name));
            if !not_provided.is_empty() {
                eprintln!(
                    "rgun: warning: {loc}: Gunicorn setting(s) rgun does not provide, ignored: {} (see docs/gunicorn-compat.md)",
                    not_provided.join(", ")
                );
            }
            if !unknown.is_empty() {
                eprintln!(
                    "rgun: warning: {loc}: unknown setting(s) ignored: {}",
                    unknown.join(", ")
                );
            }
        }
        if let Some(loc) = &location {
            // The file's values on their own first, so that a bad one is the file's
            // error (exit 1) and names the setting, not only the flag it became.
            let mut file_argv = vec![prog.clone()];
            file_argv.extend(file.args.iter().map(Into::into));
            if let Err(e) = Config::try_parse_from(&file_argv) {
                return Err(LayerError::File(file_setting_error(&e, loc, &file.lines)));
            }
        }
        let mut argv = vec![prog.clone()];
        argv.extend(file.args.iter().map(Into::into));
        argv.extend(upper.iter().skip(1).cloned());
        let mut cfg = Config::try_parse_from(&argv).map_err(LayerError::Clap)?;
        cfg.hooks = file.hooks;
        cfg.apply_log_plan();
        cfg.loglevel.make_ascii_lowercase();
        cfg.config = location;
        if cfg.app.is_empty() {
            cfg.app = std::mem::take(&mut cfg.wsgi_app);
        }
        if cfg.app.is_empty() && !cfg.print_config && cfg.generate.is_none() {
            return Err(LayerError::Clap(Config::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no application: give MODULE:CALLABLE, or wsgi_app in the configuration file",
            )));
        }
        // Repeatable options are replaced, not extended, by a higher layer: the file's
        // give way to the environment's, which give way to the command line's.
        let mut cli_argv = vec![prog];
        cli_argv.extend(rest.iter().cloned());
        for higher in [lenient(&upper), lenient(&cli_argv)].into_iter().flatten() {
            if let Some(binds) = higher.get_many::<BindAddress>("bind") {
                cfg.bind = binds.cloned().collect();
            }
            if let Some(env) = higher.get_many::<(String, String)>("env") {
                cfg.env = env.cloned().collect();
            }
            if let Some(apps) = higher.get_many::<super::DirtyAppSpec>("dirty_apps") {
                cfg.dirty.dirty_apps = apps.cloned().collect();
            }
        }
        if cfg.bind.is_empty() {
            cfg.bind = port_default_bind()?.into_iter().collect();
        }
        Ok(cfg)
    }
}

/// Gunicorn's default bind when `PORT` is set (as Heroku-style platforms do) and no
/// layer gives one: `0.0.0.0:$PORT`.
fn port_default_bind() -> Result<Option<BindAddress>, LayerError> {
    let Some(port) = std::env::var_os("PORT") else {
        return Ok(None);
    };
    let port = port.to_string_lossy();
    match port.parse::<u16>() {
        Ok(_) => Ok(Some(BindAddress::Tcp(format!("0.0.0.0:{port}")))),
        Err(_) => Err(LayerError::Env(format!(
            "PORT={port:?} is not a port number (with no --bind, rgun listens on 0.0.0.0:$PORT)"
        ))),
    }
}
