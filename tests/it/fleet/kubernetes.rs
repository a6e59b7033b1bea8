//! `packaging/kubernetes/`: the manifests pass `kubernetes-validate --strict` (the
//! schemas the pinned release bundles; as root the check runs with no network at all,
//! `unshare --net`), a broken copy does not, the Deployment's and the Dockerfile's
//! flags are flags rgun accepts, and the numbers `docs/deploying.md` gives are the
//! manifests' numbers.

use std::process::Command;

use crate::support::{repo_root, rgun, venv, venv_python};

const MANIFESTS: [&str; 5] = [
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "hpa.yaml",
    "prometheus-adapter.yaml",
];

/// `kubernetes-validate --strict` on `files`, offline when we may cut the network.
fn validate(files: &[std::path::PathBuf]) -> std::process::Output {
    let tool = venv().join("bin").join("kubernetes-validate");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("unshare");
        c.arg("--net").arg(&tool);
        c
    } else {
        Command::new(&tool)
    };
    cmd.args(["--strict", "--quiet"])
        .args(files)
        .output()
        .expect("run kubernetes-validate (pinned in tests/requirements.txt)")
}

#[test]
fn the_manifests_pass_the_kubernetes_schema_and_a_broken_one_does_not() {
    let dir = repo_root().join("packaging/kubernetes");
    let files: Vec<_> = MANIFESTS.iter().map(|f| dir.join(f)).collect();
    let out = validate(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let text = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    std::fs::write(&broken, text.replace("periodSeconds:", "periodSecond:")).unwrap();
    let out = validate(&[broken]);
    assert!(!out.status.success(), "a misspelt field passed");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("periodSecond"),
        "{out:?}"
    );
}

/// The Deployment's facts, read with PyYAML (which kubernetes-validate brings):
/// rgun's arguments, terminationGracePeriodSeconds, the probes' paths and ports.
fn deployment() -> serde_json::Value {
    let script = "import json, sys, yaml\n\
        d = yaml.safe_load(open(sys.argv[1]))\n\
        pod = d['spec']['template']['spec']\n\
        c = pod['containers'][0]\n\
        ports = {p['name']: p['containerPort'] for p in c['ports']}\n\
        print(json.dumps({'command': c['command'], 'grace': pod['terminationGracePeriodSeconds'],\n\
        \x20   'ready': [c['readinessProbe']['httpGet']['path'], ports[c['readinessProbe']['httpGet']['port']]],\n\
        \x20   'live': [c['livenessProbe']['httpGet']['path'], ports[c['livenessProbe']['httpGet']['port']]],\n\
        \x20   'lifecycle': 'lifecycle' in c}))\n";
    let manifest = repo_root().join("packaging/kubernetes/deployment.yaml");
    let out = venv_python(script, &[manifest.as_os_str()], &repo_root());
    serde_json::from_slice(&out).unwrap()
}

fn flag(command: &[String], name: &str) -> String {
    command
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} missing from {command:?}"))
        .to_owned()
}

#[test]
fn the_deployment_agrees_with_rgun_and_with_deploying_md() {
    let d = deployment();
    let command: Vec<String> = serde_json::from_value(d["command"].clone()).unwrap();
    assert_eq!(command[0], "rgun");
    // Flags rgun accepts (print-config parses them all and imports nothing).
    let out = rgun()
        .args(&command[1..])
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let delay: u64 = flag(&command, "--shutdown-delay").parse().unwrap();
    let graceful: u64 = flag(&command, "--graceful-timeout").parse().unwrap();
    let grace = d["grace"].as_u64().unwrap();
    assert!(grace > delay + graceful, "{grace} <= {delay} + {graceful}");
    // The probes are the master's, on the operations listener.
    let ops: u64 = flag(&command, "--metrics-bind")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(d["ready"], serde_json::json!(["/readyz", ops]));
    assert_eq!(d["live"], serde_json::json!(["/livez", ops]));
    assert_eq!(d["lifecycle"], false, "no preStop hook");
    assert_eq!(flag(&command, "--workers"), "auto");

    let doc = std::fs::read_to_string(repo_root().join("docs/deploying.md")).unwrap();
    for fact in [
        format!("terminationGracePeriodSeconds: {grace}"),
        format!("--shutdown-delay={delay}"),
        format!("--graceful-timeout={graceful}"),
        "packaging/kubernetes/".to_owned(),
    ] {
        assert!(
            doc.contains(&fact),
            "docs/deploying.md does not say {fact:?}"
        );
    }
    for file in MANIFESTS.iter().chain(&["Dockerfile"]) {
        assert!(doc.contains(file), "docs/deploying.md does not name {file}");
    }

    // The Dockerfile's command line is rgun's too.
    let dockerfile =
        std::fs::read_to_string(repo_root().join("packaging/kubernetes/Dockerfile")).unwrap();
    assert!(dockerfile.starts_with("# ") && dockerfile.contains("FROM python:3.12-slim"));
    let cmd_line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let cmd: Vec<String> = serde_json::from_str(cmd_line).unwrap();
    let out = rgun().args(&cmd).arg("--print-config").output().unwrap();
    assert!(out.status.success(), "{out:?}");
}
