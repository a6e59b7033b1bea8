//! `workers = "auto"` and `--max-worker-rss auto` in real cgroups: a child of the
//! cgroup v1 `cpu` hierarchy with a quota of 1.5 CPUs gives 2 workers, and a memory
//! child with a 512 MiB limit gives each worker 80% of it shared out. (cgroup v2 files
//! are parsed against fixtures in `sizing`'s unit tests.) Needs root, as CI runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{running_as_root, skip, ServerBuilder};

/// A cgroup directory made for the test, removed when dropped (once its processes
/// have gone).
struct Cgroup(PathBuf);

impl Cgroup {
    fn make(parent: &Path, files: &[(&str, &str)]) -> Cgroup {
        let dir = parent.join(format!("rgun-test-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        for (name, value) in files {
            std::fs::write(dir.join(name), value)
                .unwrap_or_else(|e| panic!("write {value} to {}: {e}", dir.join(name).display()));
        }
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        crate::support::wait_until(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

/// Where the v1 hierarchy with `controller` is mounted and our cgroup in it.
fn v1_dir(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut right = right.split(' ');
        let fields: Vec<&str> = left.split(' ').collect();
        (right.next()? == "cgroup" && right.nth(1)?.split(',').any(|o| o == controller))
            .then(|| (fields[3].to_owned(), PathBuf::from(fields[4])))
    })?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
        ctl.split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    let rel = own
        .strip_prefix(&mount.0)
        .unwrap_or(&own)
        .trim_start_matches('/');
    Some(mount.1.join(rel))
}

fn affinity_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[test]
fn workers_auto_follows_a_cgroup_v1_cpu_quota_and_rss_auto_the_memory_limit() {
    let test = "workers_auto_follows_a_cgroup_v1_cpu_quota_and_rss_auto_the_memory_limit";
    if !running_as_root(test) {
        return;
    }
    let (Some(cpu), Some(memory)) = (v1_dir("cpu"), v1_dir("memory")) else {
        skip(
            test,
            "this machine mounts no cgroup v1 cpu and memory hierarchies",
        );
        return;
    };
    let cpu = Cgroup::make(
        &cpu,
        &[
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "150000"),
        ],
    );
    let memory = Cgroup::make(&memory, &[("memory.limit_in_bytes", "536870912")]);
    // 1.5 CPUs, rounded up: 2 (fewer only if the affinity mask allows fewer).
    let want = 2.min(affinity_cpus());
    let server = ServerBuilder::new("lifecycle_app:application")
        .workers_from_config(want)
        .args(["-w", "auto", "--max-worker-rss", "auto"])
        .in_cgroups(&[cpu.0.clone(), memory.0.clone()])
        .start();
    let log = server.log();
    assert!(
        log.contains(&format!("workers = auto: {want} (cgroup v1 "))
            && log.contains("cfs_quota_us 150000 / cfs_period_us 100000 = 1.50 CPUs"),
        "{log}"
    );
    let each = 512 * 8 / 10 / u64::from(want);
    assert!(
        log.contains("max_worker_rss = auto: 80% of 512 MiB shared by the workers")
            && log.contains(&format!("{each} MiB each at {want} workers")),
        "{log}"
    );
    assert_eq!(server.worker_pids().len(), want as usize);
    drop(server);

    // The same from the environment, as Heroku-style platforms set it.
    let server = ServerBuilder::new("lifecycle_app:application")
        .workers_from_config(want)
        .env("WEB_CONCURRENCY", "auto")
        .in_cgroups(std::slice::from_ref(&cpu.0))
        .start();
    assert!(server.log().contains(&format!("workers = auto: {want} (")));
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn auto_in_a_configuration_file_and_bad_values_named() {
    let dir = tempfile::tempdir().unwrap();
    let conf = crate::support::write_file(
        dir.path(),
        "auto.conf.py",
        "workers = \"auto\"\nmax_worker_rss = \"auto\"\n",
    );
    let out = crate::support::rgun()
        .arg("-c")
        .arg(&conf)
        .args(["--print-config", "lifecycle_app:application"])
        .env_remove("WEB_CONCURRENCY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        crate::support::has_setting(&printed, "max_worker_rss", "auto"),
        "{printed}"
    );
    let workers = printed
        .lines()
        .find(|l| l.starts_with("workers "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u32>().ok());
    assert!(workers.is_some_and(|n| n >= 1), "{printed}");

    let bad = crate::support::write_file(dir.path(), "bad.conf.py", "workers = \"lots\"\n");
    let out = crate::support::rgun()
        .arg("-c")
        .arg(&bad)
        .arg("lifecycle_app:application")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'workers' must be an integer or \"auto\""),
        "{err}"
    );
    let out = crate::support::rgun()
        .args(["-w", "0", "lifecycle_app:application"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
