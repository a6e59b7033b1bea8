//! The `rgunctl` binary: the command line in `cli`, with this process's arguments.

fn main() -> std::process::ExitCode {
    rgunctl::cli::run(std::env::args_os())
}
