//! The `rgun` binary: command line → configuration → the master loop. Only this file
//! turns errors into exit statuses.

use rgun::config::Config;

fn main() {
    let cfg = Config::from_args();
    if let Err(e) = rgun::log::init_error_log(&cfg.error_logfile, &cfg.loglevel) {
        eprintln!("rgun: {e}");
        std::process::exit(1);
    }
    match rgun::master::run(cfg) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rgun: {e:#}");
            std::process::exit(1);
        }
    }
}
