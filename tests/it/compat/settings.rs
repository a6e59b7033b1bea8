//! Gunicorn 27's own list of settings (`gunicorn.config.KNOWN_SETTINGS`, read from the
//! venv's Gunicorn) against docs/gunicorn-compat.md and a real rgun: every setting has a
//! row, none is "not yet", at most six are "n/a" and each says why; a configuration
//! file naming every setting at Gunicorn's default (and defining every hook) is taken
//! by `rgun --print-config` without a warning, and lists each; the n/a ones, set to
//! something else, are warned of as not provided, not as unknown.

use std::collections::BTreeMap;

use crate::support::{repo_root, rgun, venv_python};

/// Most settings rgun may decline.
const MAX_NOT_APPLICABLE: usize = 6;

/// One of Gunicorn's settings: its name, whether it is a server hook, and its default
/// as a Python literal (None when the default is no literal, e.g. a function).
#[derive(Debug, serde::Deserialize)]
struct Known {
    name: String,
    hook: bool,
    default: Option<String>,
}

const LIST_SETTINGS: &str = r#"
import ast, enum, json
import gunicorn
from gunicorn.config import KNOWN_SETTINGS
out = []
for s in KNOWN_SETTINGS:
    value = s.default.value if isinstance(s.default, enum.Enum) else s.default
    try:
        ast.literal_eval(repr(value))
        literal = repr(value)
    except (ValueError, SyntaxError):
        literal = None
    out.append({"name": s.name, "hook": callable(s.default), "default": literal})
print(gunicorn.__version__)
print(json.dumps(out))
"#;

fn known_settings() -> (String, Vec<Known>) {
    let out = venv_python(LIST_SETTINGS, &[], &repo_root());
    let text = String::from_utf8(out).unwrap();
    let (version, json) = text.split_once('\n').unwrap();
    (version.to_owned(), serde_json::from_str(json).unwrap())
}

/// The compat doc's status and note for each name: the settings table (name, flag,
/// status, note) and the hooks table (name, status, note).
fn documented() -> BTreeMap<String, (String, String)> {
    let doc = std::fs::read_to_string(repo_root().join("docs/gunicorn-compat.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut table = "";
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            table = heading;
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let name = rest.split('`').next().unwrap().to_owned();
        let cells: Vec<&str> = line.split(" | ").collect();
        let (status, note) = match table {
            "Settings" => (cells[2], cells.get(3).copied().unwrap_or("")),
            "Server hooks" => (cells[1], cells.get(2).copied().unwrap_or("")),
            _ => continue,
        };
        let note = note.trim_end_matches('|').trim().to_owned();
        rows.insert(name, (status.trim().to_owned(), note));
    }
    rows
}

#[test]
fn gunicorn_27_known_settings_are_all_documented_and_accepted() {
    let (version, known) = known_settings();
    assert_eq!(
        version, "27.0.1",
        "tests/requirements.txt pins Gunicorn 27.0.1"
    );
    let rows = documented();
    let mut tally: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for k in &known {
        let name = k.name.as_str();
        let (status, note) = rows
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no row in docs/gunicorn-compat.md"));
        assert!(
            ["same", "same, not compared", "different", "n/a"].contains(&status.as_str()),
            "{name}: status {status:?}"
        );
        if status == "n/a" {
            assert!(!note.is_empty(), "{name} is n/a without a reason");
        }
        tally.entry(status.clone()).or_default().push(name);
    }
    for (status, names) in &tally {
        println!("{status}: {} {names:?}", names.len());
    }
    let not_applicable = tally.get("n/a").map_or(0, Vec::len);
    println!(
        "Gunicorn {version}: {} settings; n/a {not_applicable}, not yet 0, unknown 0",
        known.len()
    );
    assert!(
        not_applicable <= MAX_NOT_APPLICABLE,
        "{not_applicable} n/a: {:?}",
        tally["n/a"]
    );

    // The code: a file naming every setting at Gunicorn's default and defining every
    // hook rgun runs is taken without a word, and --print-config shows each.
    let provided = |k: &&Known| rows.get(&k.name).is_some_and(|(status, _)| status != "n/a");
    let mut file = String::new();
    for k in known.iter().filter(provided) {
        if k.hook {
            file.push_str(&format!("def {}(*args):\n    pass\n", k.name));
        } else {
            let default = k.default.as_deref().expect("a literal default");
            file.push_str(&format!("{} = {default}\n", k.name));
        }
    }
    let (stdout, stderr) = print_config(&file);
    assert!(
        stderr.is_empty(),
        "warnings for Gunicorn's defaults:\n{stderr}\n{file}"
    );
    for k in known.iter().filter(provided) {
        assert!(
            stdout
                .lines()
                .any(|l| l.split(" = ").next().unwrap().trim() == k.name),
            "--print-config does not show {}:\n{stdout}",
            k.name
        );
    }

    // The settings rgun does not provide, set: a warning naming each, none "unknown".
    let declined: Vec<&Known> = known
        .iter()
        .filter(|k| !k.hook && rows.get(&k.name).is_some_and(|(s, _)| s == "n/a"))
        .collect();
    let file: String = declined
        .iter()
        .map(|k| format!("{} = {}\n", k.name, non_default(k)))
        .collect();
    let (_, stderr) = print_config(&file);
    assert!(!stderr.contains("unknown"), "{stderr}");
    for k in &declined {
        assert!(
            stderr.contains("does not provide") && stderr.contains(&k.name),
            "{}: not warned of:\n{stderr}",
            k.name
        );
    }
}

/// A value other than Gunicorn's default for a setting rgun declines.
fn non_default(k: &Known) -> &'static str {
    match k.default.as_deref() {
        Some("False") => "True",
        Some("[]") => "['a=1']",
        _ => "'some.module:thing'",
    }
}

/// Gunicorn 27 names `http2_cleartext`'s mechanism; rgun takes the ones it serves and
/// refuses the h2c upgrade, naming the setting. Gunicorn's `sendfile = False` and
/// `default_proc_name` are taken too.
#[test]
fn gunicorn_27_values_rgun_handles_its_own_way_in_a_file() {
    for (value, shown) in [("'off'", "False"), ("'prior-knowledge'", "True")] {
        let (stdout, _) = print_config(&format!(
            "http2_cleartext = {value}\nsendfile = False\ndefault_proc_name = 'blog'\n"
        ));
        for line in [
            format!("http2_cleartext                    = {shown}"),
            "sendfile                           = False".into(),
            "default_proc_name                  = blog".into(),
        ] {
            assert!(stdout.contains(&line), "{line:?} not in\n{stdout}");
        }
    }
    for value in ["'upgrade'", "'both'"] {
        let (status, _, stderr) = run_print_config(&format!("http2_cleartext = {value}\n"));
        assert_eq!(status, Some(1), "{stderr}");
        assert!(
            stderr.contains("setting 'http2_cleartext'") && stderr.contains("no h2c upgrade"),
            "{stderr}"
        );
    }
}

/// `rgun -c FILE --print-config` with `text` as the file, which must succeed: its
/// stdout and stderr.
fn print_config(text: &str) -> (String, String) {
    let (status, stdout, stderr) = run_print_config(text);
    assert_eq!(status, Some(0), "{stderr}\n{text}");
    (stdout, stderr)
}

fn run_print_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, text).unwrap();
    let out = rgun()
        .args([
            "-c",
            conf.to_str().unwrap(),
            "--print-config",
            "app:application",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
