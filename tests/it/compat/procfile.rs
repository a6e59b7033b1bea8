//! The ways of running Gunicorn that the reviewed applications' Procfiles use (a
//! Django site, a Flask blog, a FastAPI app), run as a platform runs them: `PORT` set,
//! no bind, logs on stdout and stderr. rgun and Gunicorn 27 get the same command line
//! and requests and a TERM; their stdout (access lines) and error-log records are
//! compared, rgun's additional records set aside as in `lifecycle.rs`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{digits_as_n, records};
use crate::support::{apps_dir, gunicorn_bin, read_response, wait_until};

/// rgun's records beside Gunicorn's (each explained in `lifecycle.rs`'s `RGUN_ONLY`),
/// and Gunicorn's own `was sent SIGTERM!` for a worker that a TERM ended.
const SET_ASIDE: [&str; 3] = [
    "All N workers ready",
    "Stopping (",
    "Worker (pid:N) was sent SIGTERM!",
];

/// One run: stdout's lines and the error log's records (who, level, text) with numbers
/// as `N`, each sorted (workers write in any order).
struct Run {
    stdout: Vec<String>,
    records: Vec<(String, String, String)>,
}

fn numbers_as_n(text: &str) -> String {
    digits_as_n(text)
        .replace("Starting rgun N.N.N", "Starting SERVER")
        .replace("Starting gunicorn N.N.N", "Starting SERVER")
}

/// `GET path` on 127.0.0.1:port: the status, or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(raw.as_bytes()).ok()?;
    read_response(&mut std::io::BufReader::new(s), false).map(|r| r.status)
}

/// Records of the log that say a server is ready: `(text, how many)`.
type Ready = (&'static str, usize);

/// Runs `program args` with `PORT` set until its stderr has the `ready` records, sends
/// `paths`, then TERM, and waits for it to exit 0.
fn run(program: &Command, args: &[&str], paths: &[&str], ready: Ready) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(program.get_program());
    cmd.args(program.get_args())
        .args(args)
        .current_dir(apps_dir())
        .env("PORT", port.to_string())
        .env_remove("WEB_CONCURRENCY")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child: Child = cmd.spawn().expect("spawn the server");
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let limit = Duration::from_secs(30);
    let (text, n) = ready;
    let booted = wait_until(limit, || stderr().matches(text).count() >= n);
    assert!(booted, "{}", stderr());
    let statuses: Vec<Option<u16>> = paths.iter().map(|p| get(port, p)).collect();
    assert!(
        statuses.iter().all(Option::is_some),
        "{statuses:?}\n{}",
        stderr()
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", stderr());
    let master = child.id();
    let mut stdout: Vec<String> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(numbers_as_n)
        .collect();
    stdout.sort();
    let mut records: Vec<_> = records(&stderr())
        .into_iter()
        .map(|r| {
            let who = if r.pid == master { "master" } else { "worker" };
            (who.to_owned(), r.level, numbers_as_n(&r.lines.join("\n")))
        })
        .filter(|(_, _, text)| !SET_ASIDE.iter().any(|s| text.starts_with(s)))
        .collect();
    records.sort();
    Run { stdout, records }
}

/// Both servers' runs of one command line.
fn both(args: &[&str], paths: &[&str], ready: Ready) -> [Run; 2] {
    let mut rgun = crate::support::rgun();
    rgun.arg("--no-control-socket");
    let mut gunicorn = Command::new(gunicorn_bin());
    gunicorn.arg("--no-control-socket");
    [
        run(&rgun, args, paths, ready),
        run(&gunicorn, args, paths, ready),
    ]
}

#[test]
fn procfile_command_lines_run_as_under_gunicorn() {
    // (Two workers where the Procfiles say four: the same records, half the load.)
    let lines: [(&[&str], &[&str], Ready); 3] = [
        // web: gunicorn mysite.wsgi --log-file -
        (
            &["djapp.wsgi", "--log-file", "-"],
            &["/", "/nope"],
            ("Booting worker", 1),
        ),
        // gunicorn -b :$PORT -w 4 --access-logfile - --error-logfile - microblog:app
        (
            &[
                "-w",
                "2",
                "--access-logfile",
                "-",
                "--error-logfile",
                "-",
                "flask_app:app",
            ],
            &["/", "/nope"],
            ("Booting worker", 2),
        ),
        // web: gunicorn -w 4 -k uvicorn.workers.UvicornWorker main:app
        (
            &[
                "-w",
                "2",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "fastapi_app:app",
            ],
            &["/items/1", "/nope"],
            ("Application startup complete.", 2),
        ),
    ];
    for (args, paths, ready) in lines {
        let [rgun, gunicorn] = both(args, paths, ready);
        assert_eq!(rgun.stdout, gunicorn.stdout, "{args:?}: stdout");
        // The access lines, where the command line asks for them on stdout.
        let access = args.contains(&"--access-logfile");
        assert_eq!(rgun.stdout.len(), if access { paths.len() } else { 0 });
        assert_eq!(rgun.records, gunicorn.records, "{args:?}: the error log");
        let master = |text: &str| ("master".to_owned(), "INFO".to_owned(), text.to_owned());
        for record in [
            master("Starting SERVER"),
            master("Handling signal: term"),
            master("Shutting down: Master"),
        ] {
            assert!(rgun.records.contains(&record), "{record:?}: {args:?}");
        }
    }
}
