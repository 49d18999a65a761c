//! The demo's faults: how each one shows in the sample service's own telemetry as its course
//! runs (`f` from 0 at the injection to 1 at the failure), and what the service does once it has
//! failed. Without I/O: the service and the tests read the same functions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault the demo can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Fault {
    /// Memory use climbs until the process is killed for it.
    MemoryLeak,
    /// The disk fills until writes, and so requests, fail.
    DiskFill,
    /// Errors of the service's own dependencies climb until its retries no longer hide them.
    ErrorRamp,
    /// Requests slow down until they time out.
    LatencyCreep,
    /// Its workers' CPU fills until it stops answering.
    CpuHog,
    /// The node dies at once, with no warning (not predictable: the reactive path).
    SuddenCrash,
    /// No fault: a healthy control run.
    None,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::MemoryLeak,
        Fault::DiskFill,
        Fault::ErrorRamp,
        Fault::LatencyCreep,
        Fault::CpuHog,
        Fault::SuddenCrash,
        Fault::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::MemoryLeak => "memory_leak",
            Fault::DiskFill => "disk_fill",
            Fault::ErrorRamp => "error_ramp",
            Fault::LatencyCreep => "latency_creep",
            Fault::CpuHog => "cpu_hog",
            Fault::SuddenCrash => "sudden_crash",
            Fault::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Whether its telemetry warns before it fails.
    pub fn predictable(self) -> bool {
        !matches!(self, Fault::SuddenCrash | Fault::None)
    }

    /// The metric that shows it, if any.
    pub fn metric(self) -> Option<&'static str> {
        match self {
            Fault::MemoryLeak => Some("mem_used_ratio"),
            Fault::DiskFill => Some("disk_used_ratio"),
            Fault::ErrorRamp => Some("error_rate"),
            Fault::LatencyCreep => Some("latency_ms"),
            Fault::CpuHog => Some("cpu_busy"),
            Fault::SuddenCrash | Fault::None => None,
        }
    }
}

/// The metrics of a healthy instance, and where each one fails.
const BASE: [(&str, f64, f64); 5] = [
    ("mem_used_ratio", 0.35, 1.0),
    ("disk_used_ratio", 0.40, 1.0),
    ("error_rate", 0.0, 0.25),
    ("latency_ms", 20.0, 1000.0),
    ("cpu_busy", 0.30, 1.0),
];

/// The limits the demo's resource type is configured with (the engine's defaults cover the
/// first three; latency and CPU saturation are this service's own).
pub const LIMITS_TOML: &str = "limits = [\n  \
    { prefix = \"mem_used_ratio\", value = 0.95, direction = \"above\" },\n  \
    { prefix = \"disk_used_ratio\", value = 0.95, direction = \"above\" },\n  \
    { prefix = \"error_rate\", value = 0.05, direction = \"above\" },\n  \
    { prefix = \"latency_ms\", value = 500.0, direction = \"above\" },\n  \
    { prefix = \"cpu_busy\", value = 0.95, direction = \"above\" },\n]\n";

/// What the service does at some point of a fault's course.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// Its telemetry.
    pub metrics: BTreeMap<String, f64>,
    /// How it answers requests.
    pub behaviour: Behaviour,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// Answers, after this long.
    Serve(Duration),
    /// Exits (killed for its memory).
    Exit,
    /// Answers every request with an error (`/healthz` too).
    Error(u16),
    /// Answers nothing (requests time out).
    Hang,
}

/// The condition of an instance with `fault` at `f` of its course (`f < 0`: not injected yet),
/// with `noise` in [-1, 1] (a little jitter on every metric, as real telemetry has).
pub fn condition(fault: Fault, f: f64, noise: f64) -> Condition {
    let f = if fault.predictable() { f.max(0.0) } else { 0.0 };
    let mut metrics = BTreeMap::new();
    for (name, base, fails_at) in BASE {
        let ramping = fault.metric() == Some(name);
        let v = if ramping {
            base + (fails_at - base) * f.min(1.0)
        } else {
            base
        };
        let jitter = (fails_at - base).abs() * 0.005 * noise;
        metrics.insert(name.to_owned(), (v + jitter).max(0.0));
    }
    let failed = fault.predictable() && f >= 1.0;
    let behaviour = match (fault, failed) {
        (Fault::MemoryLeak, true) => Behaviour::Exit,
        (Fault::DiskFill, true) => Behaviour::Error(507),
        (Fault::ErrorRamp, true) => Behaviour::Error(500),
        (Fault::LatencyCreep | Fault::CpuHog, true) => Behaviour::Hang,
        // Latency creeps for real: requests are slowed by a fifth of the latency it added.
        (Fault::LatencyCreep, false) => Behaviour::Serve(Duration::from_secs_f64(
            (metrics["latency_ms"] - BASE[3].1).max(0.0) / 5000.0,
        )),
        _ => Behaviour::Serve(Duration::ZERO),
    };
    Condition { metrics, behaviour }
}

/// The course's length at `speed` (the telemetry comes `speed` times faster too, so the engine
/// sees the same course in samples).
pub fn course(speed: f64) -> Duration {
    Duration::from_secs_f64(90.0 / speed.max(0.1))
}

/// Samples a second the service pushes at `speed`.
pub fn rate(speed: f64) -> f64 {
    10.0 * speed.max(0.1)
}

/// The horizon of the demo's resource type at `speed` (30 s at speed 1: the default 5-minute
/// horizon at one sample a second, seen ten times faster).
pub fn horizon(speed: f64) -> Duration {
    Duration::from_secs_f64(30.0 / speed.max(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_ramps_its_own_metric_and_fails_at_the_end_of_its_course() {
        for fault in Fault::ALL {
            let start = condition(fault, 0.0, 0.0);
            let half = condition(fault, 0.5, 0.0);
            let end = condition(fault, 1.0, 0.0);
            for (name, base, fails_at) in BASE {
                assert_eq!(start.metrics[name], base, "{fault:?} {name}");
                if fault.metric() == Some(name) {
                    assert!(half.metrics[name] > base && half.metrics[name] < fails_at);
                    assert_eq!(end.metrics[name], fails_at);
                } else {
                    assert_eq!(end.metrics[name], base, "{fault:?} {name}");
                }
            }
            let failed = !matches!(end.behaviour, Behaviour::Serve(_));
            assert_eq!(failed, fault.predictable(), "{fault:?}");
            assert!(matches!(half.behaviour, Behaviour::Serve(_)), "{fault:?}");
            // Before injection, a healthy instance.
            assert_eq!(
                condition(fault, -1.0, 0.0),
                condition(Fault::None, 0.0, 0.0)
            );
        }
        // Every ramp crosses its limit before it fails.
        for fault in Fault::ALL.into_iter().filter(|f| f.predictable()) {
            let name = fault.metric().expect("a metric");
            let limit: f64 = match name {
                "latency_ms" => 500.0,
                "error_rate" => 0.05,
                _ => 0.95,
            };
            assert!(
                condition(fault, 0.99, 0.0).metrics[name] > limit,
                "{fault:?}"
            );
        }
        assert_eq!(Fault::parse("cpu_hog"), Some(Fault::CpuHog));
        assert_eq!(Fault::parse("nope"), None);
    }
}
