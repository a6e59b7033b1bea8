//! Logging as an application sees it in a worker, beside Gunicorn: the
//! `gunicorn.error` and `gunicorn.access` loggers with the same levels, handlers and
//! formats (so borrowing their handlers writes lines in the server's format), and the
//! order of the first records (the worker's boot before the application's import).

use serde_json::Value;

use super::{records, APP};
use crate::support::{wait_until, Server, ServerBuilder};

/// `/loggers`'s description, with each handler's file named by its role.
fn loggers(server: &Server) -> Value {
    let mut described = server.get("/loggers").json();
    let roles = [
        (
            server.log_path.to_string_lossy().into_owned(),
            "the error log",
        ),
        (
            server.access_path.to_string_lossy().into_owned(),
            "the access log",
        ),
    ];
    for name in ["error", "access"] {
        for handler in described[name]["handlers"].as_array_mut().unwrap() {
            if let Some(file) = handler["file"].as_str() {
                let role = roles.iter().find(|(path, _)| path == file);
                handler["file"] = role.map_or_else(|| file.into(), |(_, role)| (*role).into());
            }
        }
    }
    described
}

#[test]
fn gunicorns_loggers_are_set_up_in_every_worker_as_gunicorn_sets_them_up() {
    for level in ["info", "debug"] {
        let args = ["--log-level", level];
        let rgun = ServerBuilder::new(APP).args(args).start();
        let gunicorn = ServerBuilder::new(APP).args(args).gunicorn().start();
        let seen = loggers(&rgun);
        assert_eq!(seen, loggers(&gunicorn), "--log-level {level}");
        assert_eq!(
            seen["error"]["handlers"][0]["file"], "the error log",
            "{seen}"
        );
        assert_eq!(
            seen["access"]["handlers"][0]["file"], "the access log",
            "{seen}"
        );
        for server in [&rgun, &gunicorn] {
            assert_eq!(server.get("/app_logger").status, 200);
            let logged = wait_until(std::time::Duration::from_secs(10), || {
                server
                    .access_log()
                    .contains("an access line from the app\n")
                    && server.log().contains("from the app's own logger")
            });
            assert!(logged, "{}\n{}", server.log(), server.access_log());
            let mine: Vec<_> = records(&server.log())
                .into_iter()
                .filter(|r| r.lines[0].contains("from the app"))
                .map(|r| (r.level, r.lines))
                .collect();
            let mut expected = vec![(
                "WARNING".to_owned(),
                vec!["from the app's own logger".to_owned()],
            )];
            if level == "debug" {
                expected.push(("DEBUG".into(), vec!["a debug line from the app".into()]));
            }
            assert_eq!(mine, expected, "--log-level {level}:\n{}", server.log());
        }
    }
}

#[test]
fn a_worker_logs_its_boot_before_the_application_is_imported() {
    for server in [
        ServerBuilder::new(APP).start(),
        ServerBuilder::new(APP).gunicorn().start(),
    ] {
        let log = records(&server.log());
        let position = |text: &str| log.iter().position(|r| r.lines[0].starts_with(text));
        let booted = position("Booting worker with pid: ").expect("a boot record");
        let imported = position("compat_app imported").expect("the import's record");
        assert!(booted < imported, "{}", server.log());
        let pid = log[booted].lines[0].rsplit(' ').next().unwrap();
        assert_eq!(log[imported].pid.to_string(), pid, "{}", server.log());
        assert_eq!(log[imported].level, "INFO");
    }
}
