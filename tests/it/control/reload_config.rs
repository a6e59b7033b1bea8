//! Reloads and the configuration file: the re-read file is adopted only once the new
//! generation serves; a changed `workers` applies; a configuration file or master hook
//! that hangs fails the reload while `status` still answers.

use super::*;

/// Waits until the master has exactly one worker, ready, that is not `old`.
fn wait_for_replacement(server: &Server, old: i32) -> i32 {
    let mut new = 0;
    let replaced = wait_until(Duration::from_secs(30), || {
        let st = status(&server.ctl_path);
        let workers = st["workers"].as_array().cloned().unwrap_or_default();
        match &workers[..] {
            [w] if w["pid"] != json!(old) && w["state"] == json!("idle") => {
                new = w["pid"].as_i64().unwrap() as i32;
                true
            }
            _ => false,
        }
    });
    assert!(
        replaced,
        "worker {old} was not replaced; log:\n{}",
        server.log()
    );
    new
}

#[test]
fn a_failed_reload_leaves_the_serving_configuration_in_charge() {
    // Regression: the master adopted the re-read configuration before the new
    // generation booted and kept it after the rollback, so a replacement worker of the
    // serving generation started with the rejected settings (here: an app that does
    // not import).
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "wsgi_app = 'lifecycle_app:application'\nkeepalive = 3\n",
    )
    .unwrap();
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    std::fs::write(
        &conf,
        "wsgi_app = 'no_such_module_8812:application'\nkeepalive = 7\n",
    )
    .unwrap();
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("no_such_module_8812"), "{}", run.stderr);

    let settings = ctl(&server, &["--json", "config"]);
    let settings = settings.assert_ok("config").json();
    assert_eq!(settings["keepalive"], json!(3), "{settings}");
    assert_eq!(settings["wsgi_app"], json!("lifecycle_app:application"));
    let st = status(&server.ctl_path);
    assert_eq!(
        st["master"]["app"],
        json!("lifecycle_app:application"),
        "{st}"
    );

    let old = server.worker_pids()[0];
    ctl(&server, &["kill", &old.to_string()]).assert_ok("kill");
    wait_for_replacement(&server, old);
    assert_eq!(server.get("/").text(), "ok");
}

#[test]
fn a_changed_workers_setting_applies_on_reload_and_scale_wins_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("nworkers.log");
    let conf = dir.path().join("gunicorn.conf.py");
    let write_conf = |workers: u32| {
        let text = format!(
            "wsgi_app = 'lifecycle_app:application'\nworkers = {workers}\n\ndef nworkers_changed(server, new, old):\n    with open({:?}, 'a') as f:\n        f.write('changed %s %s\\n' % (new, old))\n",
            record.to_str().unwrap()
        );
        std::fs::write(&conf, text).unwrap();
    };
    let recorded = |needle: &str| {
        wait_until(Duration::from_secs(15), || {
            std::fs::read_to_string(&record)
                .unwrap_or_default()
                .contains(needle)
        })
    };
    write_conf(2);
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .workers_from_config(2)
        .start();
    // At start-up, as in Gunicorn: set from nothing.
    assert!(
        recorded("changed 2 None\n"),
        "{:?}",
        std::fs::read_to_string(&record)
    );

    // A count set at run time survives a reload while the file says the same.
    ctl(&server, &["scale", "3", "--wait"]).assert_ok("scale");
    assert!(recorded("changed 3 2\n"));
    ctl(&server, &["reload"]).assert_ok("reload, file unchanged");
    assert_eq!(
        status(&server.ctl_path)["master"]["workers_target"],
        json!(3)
    );

    // A changed file value wins, and the hook hears of it.
    write_conf(1);
    ctl(&server, &["reload"]).assert_ok("reload, workers = 1");
    assert_eq!(
        status(&server.ctl_path)["master"]["workers_target"],
        json!(1)
    );
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 1),
        "{:?}",
        server.worker_pids()
    );
    assert!(
        recorded("changed 1 3\n"),
        "{:?}",
        std::fs::read_to_string(&record)
    );
}

#[test]
fn a_hung_configuration_file_fails_the_reload_and_status_answers_meanwhile() {
    // Regression: the file is evaluated on every reload in a child the master waited
    // for without limit; one that hung froze the master and its control socket.
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("hang");
    let inside = dir.path().join("inside");
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!(
            "import os, time\nwsgi_app = 'lifecycle_app:application'\nif os.path.exists({:?}):\n    open({:?}, 'w').close()\n    time.sleep(3600)\n",
            hang.to_str().unwrap(),
            inside.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    std::fs::write(&hang, "").unwrap();
    let ctl_path = server.ctl_path.clone();
    let reload = std::thread::spawn(move || {
        run_bounded(
            rgunctl_cmd(Some(&ctl_path), &["reload"]),
            Duration::from_secs(60),
        )
    });
    assert!(wait_until(Duration::from_secs(10), || inside.exists()));
    let mut c = Raw::connect(&server.ctl_path);
    let asked = Instant::now();
    let st = ok(&c.call(json!({"id": 1, "cmd": "status"})), &json!(1));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "status waited for the file"
    );
    assert_eq!(st["master"]["generation"], json!(1), "{st}");

    let run = reload.join().unwrap();
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("did not finish within 10 s"),
        "{}",
        run.stderr
    );
    // The evaluating child is gone; the old generation serves on.
    assert!(
        wait_until(Duration::from_secs(10), || children_of(server.pid()).len()
            == 1),
        "{:?}",
        children_of(server.pid())
    );
    assert_eq!(server.get("/").text(), "ok");
}

#[test]
fn a_slow_master_hook_is_abandoned_and_status_answers_meanwhile() {
    // Regression: a master hook blocked the loop (and the control socket) for 30 s.
    let (_dir, inside, server) = start_with_hook(
        "def on_reload(server):\n    open(_inside, 'w').close()\n    time.sleep(3600)\n",
    );
    server.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || inside.exists()));
    let mut c = Raw::connect(&server.ctl_path);
    let asked = Instant::now();
    // A command that changes something waits for the hook; status and ping do not.
    c.send_json(&json!({"id": 1, "cmd": "scale", "workers": 2}));
    ok(&c.call(json!({"id": 2, "cmd": "status"})), &json!(2));
    ok(&c.call(json!({"id": 3, "cmd": "ping"})), &json!(3));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "status waited for the hook"
    );
    let scaled = ok(&c.recv(), &json!(1));
    assert!(
        asked.elapsed() > Duration::from_secs(5),
        "scale did not wait: {scaled}"
    );
    assert_eq!(scaled["target"], json!(2), "{scaled}");
    server.wait_for_log(
        "the on_reload hook did not return within 10 s",
        Duration::from_secs(20),
    );
    // The master carried on: the reload completes.
    server.wait_for_log("Reloaded: generation 2", Duration::from_secs(30));
    assert_eq!(server.get("/").text(), "ok");
    // The hook host, still inside the hook, does not outlive the master.
    let host: Vec<i32> = children_of(server.pid())
        .into_iter()
        .filter(|p| !server.worker_pids().contains(p))
        .collect();
    assert_eq!(host.len(), 1, "{host:?}");
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/{}",
            host[0]
        ))
        .exists()),
        "hook host {} outlived the master",
        host[0]
    );
}

#[test]
fn a_signal_during_a_master_hook_is_handled_after_it() {
    // Regression: while the master waited for a hook, a signal's wake-up was taken for
    // a control-socket event (its token is above the control server's) and dropped: a
    // TERM sent during a pre_fork hook was never handled (unless another signal, say a
    // SIGCHLD, came later).
    let (_dir, inside, mut server) = start_with_hook(
        "def pre_fork(server, worker):\n    if worker.age >= 1:\n        open(_inside, 'w').close()\n        time.sleep(2)\n",
    );
    server.signal(libc::SIGTTIN);
    assert!(wait_until(Duration::from_secs(10), || inside.exists()));
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.log()
    );
    server.assert_log_has("Handling signal: term");
}

/// Starts rgun on a configuration file that serves `lifecycle_app` and defines `hook`
/// (Python source; `time` is imported, and `_inside` names the file the hook creates to
/// say it is running). Returns the directory holding both, that file's path, and the
/// server.
fn start_with_hook(hook: &str) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!(
            "import time\nwsgi_app = 'lifecycle_app:application'\n_inside = {:?}\n\n{hook}",
            inside.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    (dir, inside, server)
}
