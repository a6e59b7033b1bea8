//! Packaging: the Debian package built by `scripts/package` (a dev-profile wheel for
//! Debian's python3.11, to keep the suite fast) holds the package for that Python, the
//! console scripts, units, logrotate snippet, example config, man pages, completions and
//! docs, and its `rgun` runs; the unit files pass `systemd-analyze verify`; the example
//! configuration parses; the pip-installed rgun runs in its venv's own interpreter.

use std::path::PathBuf;
use std::process::Command;

use crate::support::repo_root;

/// Cargo's target directory for this build: this test binary is
/// `<target>/<profile>/deps/it-*`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps")
        .to_owned()
}

fn build_deb() -> PathBuf {
    build_deb_in(&target_dir())
}

/// Runs `scripts/package` with `CARGO_TARGET_DIR=target` and returns the newest .deb
/// in `target/debian`.
fn build_deb_in(target: &std::path::Path) -> PathBuf {
    // One build at a time: they share ./target/generated.
    static PACKAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PACKAGING.lock().unwrap_or_else(|e| e.into_inner());
    let mut package = Command::new(repo_root().join("scripts/package"));
    package
        .env("RGUN_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo_root());
    crate::support::succeeding(package, "scripts/package");
    let dir = target.join("debian");
    let mut debs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().expect("a .deb in <target>/debian")
}

/// What `dpkg-deb OPTION DEB` prints (`-c`: the files, `-I`: the control information).
fn dpkg_deb(option: &str, deb: &std::path::Path) -> String {
    let out = Command::new("dpkg-deb")
        .arg(option)
        .arg(deb)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn package_honours_cargo_target_dir() {
    // Regression: scripts/package assumed ./target, so with CARGO_TARGET_DIR elsewhere
    // it ran stale (or missing) binaries from ./target and left the .deb there. A
    // target directory whose `debug` is this build's keeps this cheap.
    let other = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target_dir().join("debug"), other.path().join("debug")).unwrap();
    let deb = build_deb_in(other.path());
    assert!(deb.starts_with(other.path()), "{}", deb.display());
    let list = dpkg_deb("-c", &deb);
    assert!(list.contains("./usr/bin/rgun"), "{list}");
}

#[test]
fn debian_package_holds_everything() {
    let deb = build_deb();
    let list = dpkg_deb("-c", &deb);
    for path in [
        "./usr/bin/rgun",
        "./usr/bin/rgunctl",
        "./usr/lib/python3/dist-packages/rgun/__main__.py",
        "./usr/lib/python3/dist-packages/rgun/_rgun.cpython-311-x86_64-linux-gnu.so",
        "./lib/systemd/system/rgun@.service",
        "./lib/systemd/system/rgun@.socket",
        "./etc/logrotate.d/rgun",
        "./etc/rgun/example.conf.py",
        "./usr/share/man/man1/rgun.1",
        "./usr/share/man/man1/rgunctl.1",
        "./usr/share/bash-completion/completions/rgun",
        "./usr/share/bash-completion/completions/rgunctl",
        "./usr/share/zsh/vendor-completions/_rgunctl",
        "./usr/share/doc/rgun/docs/control-protocol.md",
        "./usr/share/doc/rgun/docs/configuration.md",
    ] {
        assert!(
            list.lines().any(|l| l.contains(path)),
            "{path} missing from the package:\n{list}"
        );
    }
    let info = dpkg_deb("-I", &deb);
    assert!(info.contains("Package: rgun"), "{info}");
    assert!(
        info.contains("Depends: adduser, libc6, python3.11"),
        "{info}"
    );
    assert!(
        info.contains("postinst"),
        "the package creates its system user: {info}"
    );
    assert!(
        info.contains("conffiles") || info.contains("/etc/rgun/example.conf.py"),
        "{info}"
    );
    // Unpacked, its rgun runs on Debian's python3.11 (with the package's files on the
    // path, as /usr/lib/python3/dist-packages is once installed).
    let root = tempfile::tempdir().unwrap();
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(x.success());
    let out = Command::new(root.path().join("usr/bin/rgun"))
        .arg("--version")
        .env(
            "PYTHONPATH",
            root.path().join("usr/lib/python3/dist-packages"),
        )
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
}

#[test]
fn unit_files_pass_systemd_analyze() {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        // scripts/test installs it when run as root (CI).
        crate::support::skip(
            "unit_files_pass_systemd_analyze",
            "systemd-analyze is not installed",
        );
        return;
    }
    // The units name /usr/bin/rgun; verify a copy that points at the built binaries.
    let dir = tempfile::tempdir().unwrap();
    let bin = crate::support::rgun_bin();
    let ctl = crate::support::rgunctl_bin();
    for unit in ["rgun@.service", "rgun@.socket"] {
        let text = std::fs::read_to_string(repo_root().join("packaging").join(unit)).unwrap();
        let text = text
            .replace("/usr/bin/rgunctl", ctl.to_str().unwrap())
            .replace("/usr/bin/rgun", bin.to_str().unwrap());
        std::fs::write(dir.path().join(unit.replace('@', "@test")), text).unwrap();
    }
    for unit in ["rgun@test.service", "rgun@test.socket"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join(unit))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Missing dependencies of the host (no running systemd in a container) are not
        // the unit's fault; anything about our unit's own lines is.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("rgun@test")).collect();
        assert!(ours.is_empty(), "{unit}:\n{err}");
    }
}

#[test]
fn example_config_parses() {
    let out = crate::support::rgun()
        .args([
            "-c",
            "packaging/example.conf.py",
            "--print-config",
            "demo.app:application",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("unknown setting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What users run: the venv's console script starts the venv's own interpreter (no
/// `VIRTUAL_ENV` set), the master is that interpreter, and workers import the rgun
/// package pip installed there.
#[test]
fn installed_rgun_runs_the_venvs_own_interpreter() {
    let s = crate::support::ServerBuilder::new("interpreter_app:application").start();
    let r = s.get("/");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let field = |k: &str| PathBuf::from(v[k].as_str().unwrap_or_else(|| panic!("{k}: {v}")));
    let venv = crate::support::venv().canonicalize().unwrap();
    assert_eq!(field("prefix").canonicalize().unwrap(), venv, "{v}");
    assert!(v["virtual_env"].is_null(), "{v}");
    assert_eq!(
        field("executable")
            .parent()
            .unwrap()
            .canonicalize()
            .unwrap(),
        venv.join("bin"),
        "{v}"
    );
    assert!(field("rgun").starts_with(&venv), "{v}");
    let master_exe = std::fs::read_link(format!("/proc/{}/exe", s.child.id())).unwrap();
    assert_eq!(
        master_exe,
        venv.join("bin/python").canonicalize().unwrap(),
        "the master is the venv's interpreter"
    );
}

/// `python -m rgun` is the same entry point as the console script.
#[test]
fn python_dash_m_rgun_runs_the_server_entry_point() {
    let out = Command::new(crate::support::venv().join("bin/python"))
        .args(["-m", "rgun", "--version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
}
