//! The shipped Prometheus material against Debian's real `prometheus` and `promtool`:
//! the alert rules checked and unit-tested (`packaging/prometheus/`), the copy in
//! docs/operations.md the same as the file, and a Prometheus scraping a running rgun
//! every second while it serves traffic and rolls back a broken deploy, whose HTTP API
//! answers the request rate, the p99 from `histogram_quantile`, the failed reload (and
//! the alert it fires), and every query of the Grafana dashboard
//! (`packaging/grafana/rgun.json`) with data; and the dirty pool's families scraped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::metrics_port;
use crate::support::{repo_root, skip, wait_until, write_file, Server, ServerBuilder};

fn packaging(path: &str) -> PathBuf {
    repo_root().join("packaging").join(path)
}

/// `tool` from Debian's `prometheus` package (scripts/test installs it as root);
/// `None` after saying the test skips.
fn tool(test: &str, tool: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/bin").join(tool);
    if path.exists() {
        Some(path)
    } else {
        skip(
            test,
            &format!("{} is missing (apt-get install prometheus)", path.display()),
        );
        None
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = tool("promtool_checks_and_unit_tests_the_alert_rules", "promtool") else {
        return;
    };
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(packaging("prometheus"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has its unit test.
    let rules = std::fs::read_to_string(packaging("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(packaging("prometheus/alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test in alerts.test.yml"
        );
    }
}

#[test]
fn the_alert_rules_in_the_docs_are_the_shipped_file() {
    let rules = std::fs::read_to_string(packaging("prometheus/alerts.yml")).unwrap();
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    assert!(
        doc.contains(&format!("```yaml\n{rules}```\n")),
        "docs/operations.md's alert rules differ from packaging/prometheus/alerts.yml"
    );
}

/// A Prometheus server on a loopback port, with its data in `dir`.
struct Prometheus {
    port: u16,
    process: std::process::Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, rgun_metrics: u16) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: rgun\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{rgun_metrics}\"]\n",
            rules = packaging("prometheus/alerts.yml").display()
        );
        let config = write_file(dir, "prometheus.yml", &config);
        // Prometheus takes no inherited socket: a port the kernel just handed out.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            process: child,
        };
        let up = wait_until(Duration::from_secs(60), || {
            p.query("up").is_some_and(|r| sample(&r, 0) == Some(1.0))
        });
        assert!(
            up,
            "prometheus did not scrape rgun within 60 s; its log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        p
    }

    /// `GET path` on Prometheus's HTTP API: the JSON body (`None` if it cannot be had).
    fn get(&self, path: &str) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (_, body) = out.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// An instant query's answer (`status`, `data`), whatever its status.
    fn answer(&self, promql: &str) -> Value {
        self.get(&format!("/api/v1/query?query={}", encode(promql)))
            .unwrap_or(Value::Null)
    }

    /// An instant query's result vector, when it succeeded.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let a = self.answer(promql);
        (a["status"] == "success")
            .then(|| a["data"]["result"].as_array().cloned())
            .flatten()
    }

    /// Waits (bounded) until `promql` has a first sample for which `f` holds.
    fn wait_for(&self, promql: &str, limit: Duration, f: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        let ok = wait_until(limit, || {
            last = self.query(promql).and_then(|r| sample(&r, 0));
            last.is_some_and(&f)
        });
        assert!(ok, "{promql}: last value {last:?} after {limit:?}");
        last.unwrap()
    }
}

/// The value of a result vector's `i`th sample.
fn sample(result: &[Value], i: usize) -> Option<f64> {
    result.get(i)?["value"][1].as_str()?.parse().ok()
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard (panels' targets and the instance
/// variable's query), with Grafana's variables as Grafana would fill them in for a
/// 1 s scrape interval and every instance.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(packaging("grafana/rgun.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("rgun.json is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            let title = panel["title"].as_str().unwrap_or("?");
            out.push((title.to_owned(), expr.to_owned()));
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's; Prometheus answers METRIC.
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .unwrap_or(q);
            out.push((format!("variable {}", var["name"]), metric.to_owned()));
        }
    }
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$__rate_interval", "15s")
                .replace("$instance", ".*");
            (t, e)
        })
        .collect()
}

/// Six seconds of requests: 2xx, 4xx, 5xx, and one request in 25 that takes 0.3 s.
/// Returns how many of each class were sent, and how many slow ones.
fn mixed_load(server: &Server) -> ([u64; 3], u64) {
    let (mut sent, mut slow) = ([0u64; 3], 0u64);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(6) {
        i += 1;
        let (path, status, class) = match i % 10 {
            7 => ("/missing", 404, 1),
            9 => ("/boom", 500, 2),
            _ if i.is_multiple_of(25) => ("/sleep?0.3", 200, 0),
            _ => ("/", 200, 0),
        };
        assert_eq!(server.get(path).status, status, "{path}");
        sent[class] += 1;
        slow += u64::from(path.starts_with("/sleep"));
    }
    (sent, slow)
}

#[test]
fn a_real_prometheus_scrapes_rgun_and_answers_the_dashboard_and_alerts() {
    let test = "a_real_prometheus_scrapes_rgun_and_answers_the_dashboard_and_alerts";
    let Some(binary) = tool(test, "prometheus") else {
        return;
    };
    let code = tempfile::tempdir().unwrap();
    let app = std::fs::read_to_string(crate::support::apps_dir().join("observed_app.py")).unwrap();
    write_file(code.path(), "scraped_app.py", &app);
    let server = ServerBuilder::new("scraped_app:application")
        .workers(2)
        .env("PYTHONPATH", code.path().to_str().unwrap())
        .args(["--metrics-bind", "127.0.0.1:0"])
        .start();
    let data = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&binary, data.path(), metrics_port(&server));

    let (sent, slow) = mixed_load(&server);
    let total: u64 = sent.iter().sum();
    // The rate while the load ran, and the p99 from the histogram: the slow requests
    // are 1 in 25 (4%), so the 99th percentile is in the (0.25, 0.5] bucket.
    let rate = prom.wait_for(
        "sum(rate(rgun_requests_total[5s]))",
        Duration::from_secs(10),
        |v| v > 0.0,
    );
    let p99 = prom.wait_for(
        "histogram_quantile(0.99, sum by (le) (rate(rgun_request_duration_seconds_bucket[30s])))",
        Duration::from_secs(10),
        |v| v.is_finite(),
    );
    assert!(
        (0.25..=0.5).contains(&p99),
        "p99 {p99} s ({slow} of {total} slow)"
    );

    // A broken deploy, rolled back.
    write_file(
        code.path(),
        "scraped_app.py",
        "raise ImportError('a broken deploy, on purpose, for the Prometheus test')\n",
    );
    let out = crate::support::ctl(&server, &["reload"]);
    assert_eq!(out.code, Some(1), "{out:?}");

    // Prometheus's counts are the ones sent, once a scrape has seen them all.
    let scraped = |class: &str| format!("sum(rgun_requests_total{{status=\"{class}\"}})");
    for (class, n) in [("2xx", sent[0]), ("4xx", sent[1]), ("5xx", sent[2])] {
        prom.wait_for(&scraped(class), Duration::from_secs(20), |v| v == n as f64);
    }
    prom.wait_for(
        "sum(rgun_request_duration_seconds_count)",
        Duration::from_secs(20),
        |v| v == total as f64,
    );
    prom.wait_for(
        "rgun_reloads_total{result=\"failed\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    // The rule file is loaded and its alert for the rolled-back reload fires.
    let fired = wait_until(Duration::from_secs(20), || {
        prom.get("/api/v1/alerts").is_some_and(|a| {
            a["data"]["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["labels"]["alertname"] == "RgunReloadFailed" && x["state"] == "firing")
        })
    });
    assert!(fired, "{:?}", prom.get("/api/v1/alerts"));

    // Every dashboard query parses and returns data.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    for (title, expr) in &queries {
        let a = prom.answer(expr);
        assert_eq!(a["status"], "success", "panel {title:?}: {expr}\n{a}");
        let result = a["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "panel {title:?} has no data: {expr}");
    }
    assert!(rate > 0.0);
}

/// With a dirty pool (`--dirty-app`), a real Prometheus scrapes its families: the
/// workers ready, the calls answered and failed, their mean time, the queue.
#[test]
fn a_real_prometheus_scrapes_the_dirty_pool() {
    let test = "a_real_prometheus_scrapes_the_dirty_pool";
    let Some(binary) = tool(test, "prometheus") else {
        return;
    };
    let server = ServerBuilder::new("dirty_example:app")
        .args([
            "--dirty-app",
            "dirty_example:ComputeApp",
            "--dirty-app",
            "dirty_example:ToolsApp",
            "--dirty-workers",
            "2",
            "--metrics-bind",
            "127.0.0.1:0",
        ])
        .start();
    let data = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&binary, data.path(), metrics_port(&server));
    for n in 0..5 {
        let fib = server.get(&format!("/fibonacci?n={n}")).json();
        assert!(fib["ok"]["result"].is_u64(), "{fib}");
    }
    assert_eq!(server.get("/boom").json()["error"]["type"], "DirtyAppError");
    let limit = Duration::from_secs(20);
    prom.wait_for("rgun_dirty_workers", limit, |v| v == 2.0);
    prom.wait_for("rgun_dirty_calls_total", limit, |v| v == 6.0);
    prom.wait_for("rgun_dirty_errors_total", limit, |v| v == 1.0);
    prom.wait_for("rgun_dirty_timeouts_total", limit, |v| v == 0.0);
    let mean = prom.wait_for(
        "rgun_dirty_call_seconds_total / rgun_dirty_calls_total",
        limit,
        |v| v > 0.0,
    );
    assert!(mean < 5.0, "a trivial call's mean {mean} s");
    prom.wait_for("rgun_dirty_queued + rgun_dirty_in_flight", limit, |v| {
        v == 0.0
    });
}
