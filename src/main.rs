//! The `rgun` binary: command line → configuration → the master loop. Only this file
//! turns errors into exit statuses.

use rgun::config::Config;

fn main() {
    rgun::process::original_args();
    rgun::process::original_exe();
    rgun::process::original_cwd();
    let cfg = Config::from_args();
    if let Some(what) = &cfg.generate {
        if let Err(e) = rgun::config::reference::generate(what) {
            eprintln!("rgun: {e}");
            std::process::exit(2);
        }
        return;
    }
    if cfg.print_config {
        let text = cfg.print_config_text(cfg.worker_count().unwrap_or(1) as usize);
        // A reader that went away (`rgun --print-config | head`) is no error.
        if let Err(e) = rgun::config::reference::write_stdout(text.as_bytes()) {
            eprintln!("rgun: cannot write the settings: {e}");
            std::process::exit(1);
        }
        return;
    }
    if cfg.daemon {
        if let Err(e) = rgun::process::daemonize(cfg.error_logfile == "-") {
            eprintln!("rgun: cannot daemonize: {e:#}");
            std::process::exit(1);
        }
    }
    if let Err(e) = rgun::log::init_error_log(&cfg.error_logfile, &cfg.loglevel) {
        eprintln!("rgun: {e}");
        std::process::exit(1);
    }
    if cfg.check_config {
        std::process::exit(rgun::master::check_config(&cfg));
    }
    match rgun::master::run(cfg) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rgun: {e:#}");
            std::process::exit(1);
        }
    }
}
