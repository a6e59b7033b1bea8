//! Reloads: under load with changing code, broken deploys rolled back, SIGHUP, busy,
//! `--preload` re-execution, and the scale target surviving a reload.

use super::*;

// ---------------------------------------------------------------------------------
// 4. Reloads under load while the code changes
// ---------------------------------------------------------------------------------

#[test]
fn five_reloads_under_load_switch_the_code_without_failures() {
    let (code, server) = deploy_server(2, "v0");
    assert_eq!(version_of(&server), "v0");
    let load = Load::start(server.port);
    for n in 1..=5 {
        let version = format!("v{n}");
        write_deploy(code.path(), &version, "");
        let run = ctl(&server, &["reload"]);
        run.assert_ok("reload");
        assert!(
            run.stdout
                .contains(&format!("generation {} -> {}", n, n + 1)),
            "{}",
            run.stdout
        );
        wait_for_version(&server, &version, Duration::from_secs(10));
        let st = status(&server.ctl_path);
        assert_eq!(st["master"]["generation"], json!(n + 1));
        assert_eq!(st["master"]["state"], json!("running"));
    }
    let stats = load.finish();
    eprintln!(
        "reloads under load: {} ok, {} reconnects",
        stats.ok, stats.reconnects
    );
    assert_no_failures(&stats, &server);
    // The old generations are all gone.
    assert!(
        wait_until(Duration::from_secs(30), || server.worker_pids().len() == 2),
        "old workers remain: {:?}",
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["generation"] == json!(6)),
        "{st}"
    );
    assert_eq!(st["totals"]["reloads"], json!(5));
    assert_no_zombie_children(&server);
}

// ---------------------------------------------------------------------------------
// 5. A deploy that cannot be imported
// ---------------------------------------------------------------------------------

#[test]
fn failed_deploy_keeps_the_old_code_and_is_reported() {
    let (code, server) = deploy_server(2, "good-1");
    let old_pids = {
        let mut p = server.worker_pids();
        p.sort();
        p
    };
    write_deploy(
        code.path(),
        "bad",
        "raise RuntimeError(\"deploy exploded: marker-7731\")",
    );
    let run = ctl(&server, &["reload"]);
    assert_eq!(
        run.code,
        Some(1),
        "reload of a broken deploy: stdout {} stderr {}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("RuntimeError") && run.stderr.contains("deploy exploded: marker-7731"),
        "stderr lacks the Python error: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Traceback") || run.stderr.contains("deployed.py"),
        "stderr lacks the traceback: {}",
        run.stderr
    );
    // The old generation keeps serving, untouched.
    assert_eq!(version_of(&server), "good-1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut p = server.worker_pids();
            p.sort();
            p == old_pids
        }),
        "the serving workers changed: {:?} -> {:?}",
        old_pids,
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["generation"], json!(1), "{st}");
    assert_eq!(st["master"]["state"], json!("running"), "{st}");
    for _ in 0..10 {
        assert_eq!(version_of(&server), "good-1");
    }

    write_deploy(code.path(), "good-2", "");
    ctl(&server, &["reload"]).assert_ok("reload of the fixed deploy");
    wait_for_version(&server, "good-2", Duration::from_secs(10));

    let h = ctl(&server, &["--json", "history"]);
    h.assert_ok("history --json");
    let entries = h.json()["entries"].as_array().cloned().expect("entries");
    let reloads: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == json!("reload"))
        .collect();
    assert_eq!(reloads.len(), 2, "{entries:?}");
    assert_eq!(reloads[0]["outcome"], json!("failed"));
    assert!(
        reloads[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("marker-7731")),
        "{:?}",
        reloads[0]
    );
    assert!(reloads[0]["duration_ms"].as_u64().is_some());
    assert_eq!(reloads[1]["outcome"], json!("ok"));
    assert!(reloads[1]["error"].is_null());
    let human = ctl(&server, &["history"]);
    human.assert_ok("history");
    assert!(
        human.stdout.contains("failed") && human.stdout.contains("ok"),
        "{}",
        human.stdout
    );
    assert_no_zombie_children(&server);
}

#[test]
fn ping_and_status_answer_during_a_slow_reload_and_a_second_reload_is_busy() {
    let (code, server) = deploy_server(1, "slow-1");
    write_deploy(code.path(), "slow-2", "time.sleep(6)");
    let mut c = Raw::connect(&server.ctl_path);
    // Both in one write: the second arrives while the first is surely running.
    c.send(b"{\"id\":1,\"cmd\":\"reload\",\"wait\":false}\n{\"id\":2,\"cmd\":\"reload\"}\n");
    let r = ok(&c.recv(), &json!(1));
    assert_eq!(r["generation"], json!(2), "{r}");
    assert_eq!(err_code(&c.recv(), &json!(2)), "busy");
    let t = Instant::now();
    ok(&c.call(json!({"id": 3, "cmd": "ping"})), &json!(3));
    let st = ok(&c.call(json!({"id": 4, "cmd": "status"})), &json!(4));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "ping/status waited for the reload"
    );
    assert_eq!(st["master"]["state"], json!("reloading"), "{st}");
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["generation"] == json!(2) && w["state"] == json!("booting")),
        "{st}"
    );
    assert_eq!(version_of(&server), "slow-1");
    wait_for_version(&server, "slow-2", Duration::from_secs(30));
    let st = ok(&c.call(json!({"id": 5, "cmd": "status"})), &json!(5));
    assert_eq!(st["master"]["generation"], json!(2), "{st}");
    assert_eq!(st["master"]["state"], json!("running"), "{st}");
}

// ---------------------------------------------------------------------------------
// 6. SIGHUP
// ---------------------------------------------------------------------------------

#[test]
fn sighup_reloads_the_changed_code() {
    let (code, server) = deploy_server(2, "hup-1");
    assert_eq!(version_of(&server), "hup-1");
    write_deploy(code.path(), "hup-2", "");
    server.signal(libc::SIGHUP);
    wait_for_version(&server, "hup-2", Duration::from_secs(30));
    let h = ok(
        &Raw::connect(&server.ctl_path).call(json!({"id": 1, "cmd": "history"})),
        &json!(1),
    );
    let last = h["entries"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["action"], json!("reload"));
    assert_eq!(last["trigger"], json!("signal HUP"));
    assert!(
        wait_until(Duration::from_secs(10), || status(&server.ctl_path)
            ["master"]["state"]
            == json!("running")),
        "reload never finished"
    );
    assert_eq!(status(&server.ctl_path)["master"]["generation"], json!(2));
}

// ---------------------------------------------------------------------------------
// --preload: the app lives in the master, so a reload re-executes the master
// ---------------------------------------------------------------------------------

#[test]
fn preload_reload_brings_new_code_without_failures() {
    let code = tempfile::tempdir().expect("tempdir");
    let imports = code.path().join("imports.log");
    let hook = format!(
        "open({:?}, 'a').write('%d\\n' % os.getpid())",
        imports.to_str().unwrap()
    );
    write_deploy(code.path(), "p0", &hook);
    let server = ServerBuilder::new("deployed:application")
        .workers(2)
        .args(["--preload", "--chdir", code.path().to_str().unwrap()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    assert_eq!(version_of(&server), "p0");
    // Imported once, in the master, not in each worker.
    let imported = std::fs::read_to_string(&imports).unwrap();
    assert_eq!(
        imported.lines().collect::<Vec<_>>(),
        vec![server.pid().to_string()],
        "{imported}"
    );
    let load = Load::start(server.port);
    let mut master = server.pid();
    let mut cleanup = Vec::new();
    for n in 1..=2 {
        let version = format!("p{n}");
        write_deploy(code.path(), &version, &hook);
        ctl(&server, &["reload"]).assert_ok("reload");
        wait_for_version(&server, &version, Duration::from_secs(20));
        let st = status(&server.ctl_path);
        let new_master = st["master"]["pid"].as_i64().unwrap() as i32;
        assert_ne!(new_master, master, "a new master serves the new code");
        assert_eq!(st["master"]["generation"], json!(n + 1));
        master = new_master;
        cleanup.push(crate::support::KillOnDrop(new_master));
    }
    // A broken deploy: the reload fails with the traceback and the current master stays.
    write_deploy(
        code.path(),
        "broken",
        "raise RuntimeError('preload exploded: marker-5150')",
    );
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("marker-5150"), "{}", run.stderr);
    assert_eq!(version_of(&server), "p2");
    assert_eq!(
        status(&server.ctl_path)["master"]["pid"].as_i64().unwrap() as i32,
        master
    );
    let stats = load.finish();
    assert_no_failures(&stats, &server);
    // Stop the master this test caused to exist (the first one already left).
    ctl(&server, &["stop"]).assert_ok("stop");
    assert!(
        wait_until(Duration::from_secs(15), || unsafe { libc::kill(master, 0) }
            != 0),
        "the last master did not stop"
    );
}

#[test]
fn the_scale_target_survives_a_reload() {
    let (code, server) = deploy_server(1, "t0");
    ctl(&server, &["scale", "3", "--wait"]).assert_ok("scale");
    write_deploy(code.path(), "t1", "");
    ctl(&server, &["reload"]).assert_ok("reload");
    wait_for_version(&server, "t1", Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(20), || server.worker_pids().len() == 3),
        "{:?}",
        server.worker_pids()
    );
    let st = status(&server.ctl_path);
    assert_eq!(st["master"]["workers_target"], json!(3));
    assert!(
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["generation"] == json!(2)),
        "{st}"
    );
}

// ---------------------------------------------------------------------------------
// 8. The configuration file on a reload: adopted only when it serves, a changed
//    `workers`, and a file or hook that hangs
// ---------------------------------------------------------------------------------

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
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!(
            "import time\nwsgi_app = 'lifecycle_app:application'\n\ndef on_reload(server):\n    open({:?}, 'w').close()\n    time.sleep(3600)\n",
            inside.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
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
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!(
            "import time\nwsgi_app = 'lifecycle_app:application'\n\ndef pre_fork(server, worker):\n    if worker.age >= 1:\n        open({:?}, 'w').close()\n        time.sleep(2)\n",
            inside.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut server = ServerBuilder::new("")
        .args(["-c", conf.to_str().unwrap()])
        .start();
    server.signal(libc::SIGTTIN);
    assert!(wait_until(Duration::from_secs(10), || inside.exists()));
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("Handling signal: term"),
        "{}",
        server.log()
    );
}

/// ASGI: a generation whose lifespan startup fails is rolled back, and the reload's
/// answer carries the application's message.
#[test]
fn asgi_reload_whose_lifespan_startup_fails_rolls_back_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail");
    let server = ServerBuilder::new("asgi_app:flaky_startup")
        .args(["-k", "asgi"])
        .env("ASGI_FAIL_FLAG", flag.to_str().unwrap())
        .workers(2)
        .start();
    let mut old_pids = server.worker_pids();
    old_pids.sort();
    std::fs::write(&flag, "x").unwrap();
    let run = ctl(&server, &["reload"]);
    assert_eq!(
        run.code,
        Some(1),
        "stdout {} stderr {}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("Application startup failed")
            && run.stderr.contains("cache warm-up failed: marker-5521"),
        "{}",
        run.stderr
    );
    assert_eq!(server.get("/").text(), "Hello, ASGI!");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut p = server.worker_pids();
            p.sort();
            p == old_pids
        }),
        "the serving workers changed: {old_pids:?} -> {:?}",
        server.worker_pids()
    );
    std::fs::remove_file(&flag).unwrap();
    ctl(&server, &["reload"]).assert_ok("reload once start-up works again");
}
