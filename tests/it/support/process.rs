//! Processes seen from /proc: children, memory, ids, and killing what a test caused.

pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Kills a process the test caused to exist but did not spawn itself (a new master
/// after USR2 or a `--preload` reload) and its children, even when the test fails.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let children = children_of(self.0);
        // SAFETY: signalling processes this test started (directly or through rgun).
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            for c in children {
                libc::kill(c, libc::SIGKILL);
            }
        }
    }
}

/// The ids on a `/proc/<pid>/status` line such as `Uid:` or `Gid:`.
pub fn proc_ids(pid: i32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
        .unwrap_or_default()
}

/// Gone, or a zombie nobody will run again.
pub fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| {
            st.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}
