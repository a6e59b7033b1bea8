//! Autoscaling's settings (`--workers-min`, `--workers-max`, `--workers-idle`): setting
//! either bound turns it on, and `--workers` is then the count to start with. The rule
//! itself is `crate::autoscale`; the master samples and acts (`master::scaling`).

use super::{Config, WorkerKind, Workers};

#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Autoscaling's floor: with --workers-min or --workers-max the master adds workers
    /// while they are saturated and retires them when idle, between the two bounds
    /// (--workers is the count to start with).
    #[arg(long = "workers-min", value_name = "INT", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers_min: Option<u32>,

    /// Autoscaling's ceiling [default: with --workers-min, 2 × CPUs + 1 for sync and
    /// gthread workers, the CPUs for ASGI workers].
    #[arg(long = "workers-max", value_name = "INT", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers_max: Option<u32>,

    /// Autoscaling: seconds of low load before workers are retired.
    #[arg(long = "workers-idle", value_name = "INT", default_value_t = crate::autoscale::DEFAULT_IDLE_SECS, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub workers_idle: u64,
}

/// Autoscaling's range, the count to start with, and how the ceiling was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalingPlan {
    pub floor: u32,
    pub ceiling: u32,
    pub start: u32,
    /// How a default ceiling was derived (None when `--workers-max` gave it).
    pub ceiling_how: Option<String>,
}

impl ScalingArgs {
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("workers_min".into(), self.workers_min.into());
        m.insert("workers_max".into(), self.workers_max.into());
        m.insert("workers_idle".into(), self.workers_idle.into());
        m
    }
}

impl Config {
    /// Autoscaling's plan, None when it is off. `Err`: the bounds contradict.
    pub fn scaling_plan(&self) -> Result<Option<ScalingPlan>, String> {
        let s = &self.scaling;
        if s.workers_min.is_none() && s.workers_max.is_none() {
            return Ok(None);
        }
        let floor = s.workers_min.unwrap_or(1);
        let (ceiling, ceiling_how) = match s.workers_max {
            Some(n) => (n, None),
            None => {
                let cpus = crate::sizing::cpu_budget();
                let (n, rule) = default_ceiling(self.worker_kind(), cpus.workers);
                (n.max(floor), Some(format!("{rule}; {}", cpus.how)))
            }
        };
        if floor > ceiling {
            return Err(format!(
                "workers_min ({floor}) is above workers_max ({ceiling})"
            ));
        }
        // An explicit count starts there; `auto` and the default start at the floor.
        let start = match self.workers {
            Some(Workers::Count(n)) => n.clamp(floor, ceiling),
            _ => floor,
        };
        Ok(Some(ScalingPlan {
            floor,
            ceiling,
            start,
            ceiling_how,
        }))
    }
}

/// The ceiling when none is given, from the CPUs this process may use: a sync or
/// gthread worker waiting on I/O holds no CPU, so such workers may outnumber the CPUs
/// (Gunicorn's advice, 2 × CPUs + 1); an ASGI worker's loop is its I/O multiplexer
/// and fills one CPU when busy, so one per CPU.
pub fn default_ceiling(kind: WorkerKind, cpus: u32) -> (u32, String) {
    match kind {
        WorkerKind::Wsgi => (
            (2 * cpus + 1).min(crate::sizing::MAX_AUTO_WORKERS),
            format!("2 × {cpus} CPUs + 1 (a sync worker waiting on I/O is not a CPU)"),
        ),
        WorkerKind::Asgi => (cpus, format!("{cpus} CPUs, one ASGI loop each")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["rgun"];
        all.extend_from_slice(args);
        all.push("app:app");
        Config::try_parse_from(all).expect("parses")
    }

    #[test]
    fn off_unless_a_bound_is_given() {
        assert_eq!(parse(&["-w", "3"]).scaling_plan(), Ok(None));
    }

    #[test]
    fn the_start_count_is_clamped_into_the_bounds() {
        let plan = |args: &[&str]| parse(args).scaling_plan().unwrap().unwrap();
        let p = plan(&["--workers-min", "2", "--workers-max", "6", "-w", "9"]);
        assert_eq!((p.floor, p.ceiling, p.start), (2, 6, 6));
        let p = plan(&["--workers-min", "2", "--workers-max", "6"]);
        assert_eq!(p.start, 2, "without -w, the floor");
        let p = plan(&["--workers-max", "4", "-w", "3"]);
        assert_eq!((p.floor, p.start, p.ceiling_how), (1, 3, None));
    }

    #[test]
    fn a_floor_above_the_ceiling_is_refused() {
        let err = parse(&["--workers-min", "5", "--workers-max", "2"])
            .scaling_plan()
            .unwrap_err();
        assert_eq!(err, "workers_min (5) is above workers_max (2)");
    }

    #[test]
    fn default_ceiling_by_worker_kind() {
        assert_eq!(default_ceiling(WorkerKind::Wsgi, 2).0, 5);
        assert_eq!(default_ceiling(WorkerKind::Asgi, 2).0, 2);
        let p = parse(&["--workers-min", "1"])
            .scaling_plan()
            .unwrap()
            .unwrap();
        assert!(p.ceiling >= 3, "at least 2 × 1 CPU + 1: {p:?}");
        assert!(p.ceiling_how.unwrap().contains("is not a CPU"));
    }
}
