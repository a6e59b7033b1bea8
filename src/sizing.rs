//! What this process may use, as a container sees it: the CPU it may run on (cgroup v2
//! `cpu.max`, cgroup v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, the affinity mask that
//! cpusets and `taskset` set) and the memory it may hold (cgroup v2 `memory.max`, v1
//! `memory.limit_in_bytes`), for `workers = "auto"` and `--max-worker-rss auto`.
//!
//! The cgroup files are found as the kernel describes them (`/proc/self/cgroup` for
//! the process's cgroup, `/proc/self/mountinfo` for where each hierarchy is mounted),
//! and each limit is the smallest along the path from the process's cgroup up to the
//! mount's root, since a parent's limit binds its children. Reading only: nothing here
//! writes, and everything takes a root directory so tests run against fixtures.

use std::path::{Path, PathBuf};

/// The most workers `auto` gives (the `--workers` range).
pub const MAX_AUTO_WORKERS: u32 = 1024;

/// A worker count and how it was derived, for the start-up line.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuBudget {
    pub workers: u32,
    pub how: String,
}

/// A memory limit in bytes and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub how: String,
}

/// The CPUs this process may use, rounded up, at least 1: the smallest of the cgroup
/// quota (v2 or v1) and the affinity mask.
pub fn cpu_budget() -> CpuBudget {
    cpu_budget_at(Path::new("/"), affinity_cpus())
}

/// The cgroup memory limit, if any.
pub fn memory_limit() -> Option<MemoryLimit> {
    memory_limit_at(Path::new("/"))
}

/// `cpu_budget` with `/proc` and the cgroup mounts under `root`, and the affinity
/// count given.
pub fn cpu_budget_at(root: &Path, affinity: Option<u32>) -> CpuBudget {
    let quota = cgroup_files(root, "cpu")
        .into_iter()
        .find_map(|(version, dirs)| quota_along(root, version, &dirs));
    let mut cpus: Option<(f64, String)> = quota;
    if let Some(n) = affinity {
        if cpus.as_ref().is_none_or(|(q, _)| f64::from(n) < *q) {
            cpus = Some((f64::from(n), format!("the affinity mask allows {n} CPUs")));
        } else if let Some((_, how)) = &mut cpus {
            how.push_str(&format!("; the affinity mask allows {n}"));
        }
    }
    match cpus {
        Some((n, how)) => CpuBudget {
            workers: (n.ceil() as u32).clamp(1, MAX_AUTO_WORKERS),
            how,
        },
        None => CpuBudget {
            workers: 1,
            how: "no CPU quota or affinity mask could be read".into(),
        },
    }
}

/// `memory_limit` with `/proc` and the cgroup mounts under `root`.
pub fn memory_limit_at(root: &Path) -> Option<MemoryLimit> {
    let (version, dirs) = cgroup_files(root, "memory").into_iter().next()?;
    let (file, parse): (&str, fn(&str) -> Option<u64>) = match version {
        Version::V2 => ("memory.max", parse_memory_max),
        Version::V1 => ("memory.limit_in_bytes", parse_memory_limit_v1),
    };
    dirs.iter()
        .filter_map(|d| {
            let text = std::fs::read_to_string(d.join(file)).ok()?;
            Some((parse(&text)?, d.join(file)))
        })
        .min_by_key(|(bytes, _)| *bytes)
        .map(|(bytes, path)| MemoryLimit {
            bytes,
            how: format!("{} = {bytes}", strip_root(root, &path)),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The smallest quota (in CPUs) along `dirs`, with where it was read.
fn quota_along(root: &Path, version: Version, dirs: &[PathBuf]) -> Option<(f64, String)> {
    dirs.iter()
        .filter_map(|d| match version {
            Version::V2 => {
                let text = std::fs::read_to_string(d.join("cpu.max")).ok()?;
                let cpus = parse_cpu_max(&text)?;
                let path = strip_root(root, &d.join("cpu.max"));
                Some((
                    cpus,
                    format!("cgroup v2 {path} is {:?} = {cpus:.2} CPUs", text.trim()),
                ))
            }
            Version::V1 => {
                let quota = std::fs::read_to_string(d.join("cpu.cfs_quota_us")).ok()?;
                let period = std::fs::read_to_string(d.join("cpu.cfs_period_us")).ok()?;
                let cpus = parse_cfs(&quota, &period)?;
                Some((
                    cpus,
                    format!(
                        "cgroup v1 {}: cfs_quota_us {} / cfs_period_us {} = {cpus:.2} CPUs",
                        strip_root(root, d),
                        quota.trim(),
                        period.trim()
                    ),
                ))
            }
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The directories holding `controller`'s files for this process, from its own cgroup
/// up to the mount's root, for each hierarchy that has it (v1 first: when a
/// controller is bound to a v1 hierarchy it is not in the v2 one).
fn cgroup_files(root: &Path, controller: &str) -> Vec<(Version, Vec<PathBuf>)> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    let cgroups = read("proc/self/cgroup");
    let mounts = read("proc/self/mountinfo");
    let mut found = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let version = if controllers.is_empty() {
            Version::V2
        } else if controllers.split(',').any(|c| c == controller) {
            Version::V1
        } else {
            continue;
        };
        let Some((mount_root, mount_point)) = find_mount(&mounts, version, controller) else {
            continue;
        };
        let Some(rel) = Path::new(path).strip_prefix(&mount_root).ok() else {
            continue;
        };
        let base = root.join(mount_point.strip_prefix("/").unwrap_or(&mount_point));
        let mut dirs = Vec::new();
        let mut at = Some(rel);
        while let Some(r) = at {
            dirs.push(base.join(r));
            at = r.parent();
        }
        found.push((version, dirs));
    }
    found.sort_by_key(|(v, _)| *v == Version::V2);
    found
}

/// (root inside the hierarchy, mount point) of the hierarchy with `controller` (v1)
/// or of the unified hierarchy (v2), from `/proc/self/mountinfo`.
fn find_mount(mountinfo: &str, version: Version, controller: &str) -> Option<(PathBuf, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next();
        let super_options = right.next().unwrap_or("");
        let wanted = match version {
            Version::V2 => fstype == "cgroup2",
            Version::V1 => fstype == "cgroup" && super_options.split(',').any(|o| o == controller),
        };
        if !wanted {
            return None;
        }
        Some((unescape(fields.get(3)?)?, unescape(fields.get(4)?)?))
    })
}

/// mountinfo escapes spaces and such as `\040`.
fn unescape(field: &str) -> Option<PathBuf> {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let code =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 4]).ok()?, 8).ok()?;
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

fn strip_root(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if root != Path::new("/") => format!("/{}", rel.display()),
        _ => path.display().to_string(),
    }
}

/// cgroup v2 `cpu.max`: `QUOTA PERIOD` in microseconds, or `max PERIOD` (no limit).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// cgroup v1 `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// cgroup v2 `memory.max`: bytes, or `max`.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// cgroup v1 `memory.limit_in_bytes`: no limit reads as a huge number (the largest
/// page-aligned `i64`), taken as none.
pub fn parse_memory_limit_v1(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 62).then_some(bytes)
}

/// CPUs in this process's affinity mask (cpusets, `taskset`).
fn affinity_cpus() -> Option<u32> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    u32::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake root: `/proc/self/{cgroup,mountinfo}` and cgroup files, from text.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const V2_MOUNTINFO: &str = "24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n\
        30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";

    #[test]
    fn parses_cgroup_files() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("250000\n", "100000\n"), Some(2.5));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit_v1("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit_v1("1073741824\n"), Some(1 << 30));
    }

    #[test]
    fn a_kubernetes_pod_on_cgroup_v2() {
        // A container's cgroup namespace: its cgroup is `/`, mounted at /sys/fs/cgroup.
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            ("sys/fs/cgroup/cpu.max", "250000 100000\n"),
            ("sys/fs/cgroup/memory.max", "1073741824\n"),
        ]);
        let b = cpu_budget_at(root.path(), Some(8));
        assert_eq!(b.workers, 3, "{b:?}");
        assert!(
            b.how
                .contains("cgroup v2 /sys/fs/cgroup/cpu.max is \"250000 100000\" = 2.50 CPUs"),
            "{b:?}"
        );
        assert!(b.how.contains("affinity mask allows 8"), "{b:?}");
        let m = memory_limit_at(root.path()).unwrap();
        assert_eq!(m.bytes, 1 << 30);
    }

    #[test]
    fn a_parent_limit_binds_and_affinity_can_be_smaller() {
        // No cgroup namespace: the process sits deep in the hierarchy; the slice above
        // it has the tighter limit.
        let root = tree(&[
            ("proc/self/cgroup", "0::/kubepods.slice/pod1/ctr\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            (
                "sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max",
                "max 100000\n",
            ),
            (
                "sys/fs/cgroup/kubepods.slice/pod1/cpu.max",
                "120000 100000\n",
            ),
            ("sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/kubepods.slice/pod1/ctr/memory.max", "max\n"),
            ("sys/fs/cgroup/kubepods.slice/memory.max", "268435456\n"),
        ]);
        let b = cpu_budget_at(root.path(), Some(16));
        assert_eq!(b.workers, 2, "{b:?}");
        assert!(b.how.contains("kubepods.slice/pod1/cpu.max"), "{b:?}");
        assert_eq!(memory_limit_at(root.path()).unwrap().bytes, 256 << 20);
        let b = cpu_budget_at(root.path(), Some(1));
        assert_eq!(b.workers, 1);
        assert!(
            b.how.starts_with("the affinity mask allows 1 CPUs"),
            "{b:?}"
        );
    }

    #[test]
    fn no_limit_anywhere_is_the_affinity_mask() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/user.slice\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            ("sys/fs/cgroup/user.slice/cpu.max", "max 100000\n"),
        ]);
        let b = cpu_budget_at(root.path(), Some(4));
        assert_eq!(b.workers, 4);
        assert_eq!(memory_limit_at(root.path()), None);
        assert_eq!(cpu_budget_at(root.path(), None).workers, 1);
    }

    #[test]
    fn cgroup_v1_hierarchies() {
        let mountinfo =
            "40 30 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
            41 30 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
            42 30 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let root = tree(&[
            (
                "proc/self/cgroup",
                "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
            ),
            ("proc/self/mountinfo", mountinfo),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "150000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            (
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "536870912\n",
            ),
        ]);
        let b = cpu_budget_at(root.path(), Some(2));
        assert_eq!(b.workers, 2, "{b:?}");
        assert!(
            b.how
                .contains("cfs_quota_us 150000 / cfs_period_us 100000 = 1.50 CPUs"),
            "{b:?}"
        );
        assert_eq!(memory_limit_at(root.path()).unwrap().bytes, 512 << 20);
    }
}
