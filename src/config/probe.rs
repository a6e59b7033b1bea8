//! `--reload-probe`: a request every new worker must answer (with the expected status)
//! before it counts as ready, so a deploy that fails only once a request arrives — a
//! Django URLconf imported on the first request — fails its reload and is rolled back
//! instead of serving 500s. rgun's own setting (Gunicorn has none).

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Before a new worker counts as ready (at start-up, in a reload, as a
    /// replacement), it calls the application once with `GET PATH` (a path, with an
    /// optional query) and must get --reload-probe-status; otherwise it fails to boot and
    /// a reload is rolled back, with the probe's answer and the errors the application
    /// logged as the reason.
    #[arg(long = "reload-probe", value_name = "PATH", value_parser = parse_path)]
    pub reload_probe: Option<String>,

    /// The probe's Host header (one your application accepts, e.g. in Django's
    /// ALLOWED_HOSTS).
    #[arg(long = "reload-probe-host", value_name = "HOST", default_value = "localhost", value_parser = parse_host)]
    pub reload_probe_host: String,

    /// The status the probe's answer must have.
    #[arg(long = "reload-probe-status", value_name = "CODE", default_value_t = 200, allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub reload_probe_status: u16,
}

/// What a worker checks before it reports ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    pub host: String,
    pub status: u16,
}

impl ProbeArgs {
    /// The probe, when one is set.
    pub fn probe(&self) -> Option<Probe> {
        self.reload_probe.as_ref().map(|path| Probe {
            path: path.clone(),
            host: self.reload_probe_host.clone(),
            status: self.reload_probe_status,
        })
    }

    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("reload_probe".into(), self.reload_probe.clone().into());
        m.insert(
            "reload_probe_host".into(),
            self.reload_probe_host.clone().into(),
        );
        m.insert(
            "reload_probe_status".into(),
            self.reload_probe_status.into(),
        );
        m
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{s:?} is not a request path: it starts with / and has no spaces or control characters"
        ));
    }
    Ok(s.to_owned())
}

fn parse_host(s: &str) -> Result<String, String> {
    if s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') {
        return Err(format!(
            "{s:?} is not a Host header value such as example.com:8000"
        ));
    }
    Ok(s.to_owned())
}
