//! Packaging: the Debian package built by `scripts/package` (from the debug build, to
//! keep the suite fast) holds the binaries, units, logrotate snippet, example config,
//! man pages, completions and docs; the unit files pass `systemd-analyze verify`; the
//! example configuration parses.

use std::path::PathBuf;
use std::process::Command;

use crate::support::repo_root;

/// Cargo's target directory for this build (where `rgun` was built).
fn target_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rgun"));
    bin.parent().and_then(|p| p.parent()).unwrap().to_owned()
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
    let out = Command::new(repo_root().join("scripts/package"))
        .env("RGUN_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo_root())
        .output()
        .expect("run scripts/package");
    assert!(
        out.status.success(),
        "scripts/package failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = target.join("debian");
    let mut debs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().expect("a .deb in <target>/debian")
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
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("./usr/bin/rgun"), "{list}");
}

#[test]
fn debian_package_holds_everything() {
    let deb = build_deb();
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for path in [
        "./usr/bin/rgun",
        "./usr/bin/rgunctl",
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
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: rgun"), "{info}");
    assert!(
        info.contains("Depends: adduser, libc6, libpython3.11"),
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
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rgun"));
    let ctl = bin.with_file_name("rgunctl");
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
    let out = Command::new(env!("CARGO_BIN_EXE_rgun"))
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
