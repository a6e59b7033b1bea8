//! Reloads: under load with changing code, broken deploys rolled back, SIGHUP, overlapping
//! reloads coalesced,
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
fn ping_and_status_answer_during_a_slow_reload() {
    let (code, server) = deploy_server(1, "slow-1");
    write_deploy(code.path(), "slow-2", "time.sleep(6)");
    let mut c = Raw::connect(&server.ctl_path);
    let r = ok(
        &c.call(json!({"id": 1, "cmd": "reload", "wait": false})),
        &json!(1),
    );
    assert_eq!(r["generation"], json!(2), "{r}");
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

/// Regression (issue 25): a reload asked for during another was refused as `busy`
/// (exit 1, which a deploy script reads as a broken deploy), so of ten overlapping
/// deploys the ninth could end up serving.
#[test]
fn ten_overlapping_reloads_end_serving_the_last_code_and_all_are_answered() {
    ten_overlapping_reloads(&[]);
}

/// The same with `--preload`, where each reload re-executes the master: the clients
/// waiting (or still connecting) while it imports are carried across `execve`.
#[test]
fn ten_overlapping_preload_reloads_end_serving_the_last_code_and_all_are_answered() {
    ten_overlapping_reloads(&["--preload"]);
}

/// Ten deploys 0.3 s apart, of an app that takes 1 s to import, under load.
fn ten_overlapping_reloads(args: &[&str]) {
    let slow_import = "time.sleep(1)";
    let code = tempfile::tempdir().expect("tempdir");
    write_deploy(code.path(), "v0", slow_import);
    let server = ServerBuilder::new("deployed:application")
        .workers(2)
        .args(args.iter().copied())
        .arg("--chdir")
        .arg(code.path().to_str().unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .start();
    let load = Load::start(server.port);
    let mut runs = Vec::new();
    for n in 1..=10 {
        write_deploy(code.path(), &format!("v{n}"), slow_import);
        let cmd = rgunctl_cmd(Some(&server.ctl_path), &["--json", "reload"]);
        runs.push(std::thread::spawn(move || {
            run_bounded(cmd, Duration::from_secs(120))
        }));
        std::thread::sleep(Duration::from_millis(300));
    }
    let answers: Vec<Value> = runs
        .into_iter()
        .map(|t| {
            let run = t.join().expect("rgunctl thread");
            run.assert_ok("an overlapping reload");
            serde_json::from_str(&run.stdout).expect("rgunctl --json reload")
        })
        .collect();
    // Every answer came once the generation carrying its code served, so the last
    // deploy serves once the old workers are gone (one woken for a client that
    // connected at once serves it before it goes).
    server.wait_for_the_old_workers_to_go();
    assert_eq!(version_of(&server), "v10", "{answers:?}");
    let stats = load.finish();
    assert_no_failures(&stats, &server);
    let st = status(&server.ctl_path);
    let serving = st["master"]["generation"].clone();
    // The latest generation answered serves now; the ten cost fewer generations than
    // deploys. (Not asserted: that answers grow in the order the clients were
    // started, which a loaded machine may not keep: 0.3 s apart, a client started
    // later can connect first.)
    let generations: Vec<u64> = answers
        .iter()
        .map(|a| a["generation"].as_u64().expect("generation"))
        .collect();
    eprintln!("ten overlapping reloads: answered with generations {generations:?}");
    let latest = generations.iter().max().copied();
    assert_eq!(json!(latest), serving, "{answers:?}");
    assert!(
        latest.is_some_and(|g| g < 11),
        "nothing was coalesced: {answers:?}"
    );
    server.assert_log_has("Reload queued");
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
    let mut server = server;
    let load = Load::start(server.port);
    let master = server.pid();
    for n in 1..=2 {
        let version = format!("p{n}");
        write_deploy(code.path(), &version, &hook);
        ctl(&server, &["reload"]).assert_ok("reload");
        wait_for_version(&server, &version, Duration::from_secs(20));
        let st = status(&server.ctl_path);
        // Regression (issue 25, item 0): a new master used to serve the new code.
        assert_eq!(
            st["master"]["pid"],
            json!(master),
            "the master re-executed in place"
        );
        assert_eq!(st["master"]["generation"], json!(n + 1));
        assert_eq!(st["totals"]["reloads"], json!(n), "{st}");
        // Whoever started rgun sees it run throughout.
        assert!(server.child.try_wait().unwrap().is_none());
    }
    let imported = std::fs::read_to_string(&imports).unwrap();
    assert_eq!(imported.lines().count(), 3, "{imported}");
    assert!(
        imported.lines().all(|p| p == master.to_string()),
        "{imported}"
    );
    // A broken deploy: the reload fails with the traceback and generation 3 serves on.
    write_deploy(
        code.path(),
        "broken",
        "raise RuntimeError('preload exploded: marker-5150')",
    );
    let run = ctl(&server, &["reload"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("marker-5150"), "{}", run.stderr);
    assert!(
        run.stderr.contains("generation 3 keeps serving"),
        "{}",
        run.stderr
    );
    assert_eq!(version_of(&server), "p2");
    assert_eq!(status(&server.ctl_path)["master"]["pid"], json!(master));
    // The workers serving on were adopted across execve: shown as ready, not stopping.
    let shown = ctl(&server, &["status"]);
    let rgunctl_status = &shown.assert_ok("status").stdout;
    assert!(rgunctl_status.contains("workers 2/2"), "{rgunctl_status}");
    // Fixed again: the next reload brings it in.
    write_deploy(code.path(), "p3", &hook);
    ctl(&server, &["reload"]).assert_ok("reload after a broken deploy");
    wait_for_version(&server, "p3", Duration::from_secs(20));
    let stats = load.finish();
    assert_no_failures(&stats, &server);
    ctl(&server, &["stop"]).assert_ok("stop");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
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
