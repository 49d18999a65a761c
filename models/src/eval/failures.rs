//! The failure-injection replay: seeded synthetic telemetry with precursors of real failure modes
//! (memory leak, disk fill, error-rate ramp, queue backlog, CPU runaway) and benign look-alikes
//! (cache warm-up that plateaus, temporary files that recede, a traffic burst), run through a
//! predictor, and scored by what an operator cares about: failures caught at least 30 s ahead, the
//! lead time, and false alarms per resource-hour. Static thresholds and Prometheus-style
//! `predict_linear` run over the same telemetry as baselines.

use std::collections::{BTreeMap, VecDeque};

use crate::anomaly::iforest::SplitMix64;
use crate::engine::{Direction, EngineConfig, Limit, ResourceEngine, default_limits};

/// One kind of injected behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    MemoryLeak,
    DiskFill,
    ErrorRamp,
    QueueBacklog,
    CpuRunaway,
    CacheWarmup,
    TempFiles,
    TrafficBurst,
    // The second family (`wild`): other shapes, other habits.
    /// A leak that pauses (a plateau) and resumes, in steps.
    SteppedLeak,
    /// A disk that fills faster and faster.
    AcceleratingFill,
    /// A queue backing up, behind latency-like heavy-tailed noise.
    QueueRunaway,
    /// CPU climbing to just under its limit, pegged there, then over.
    CpuPegged,
    /// An error rate ramping in bursts.
    ErrorBursts,
    /// A deploy: memory and CPU shift to a new level and stay (benign).
    DeployShift,
    /// A disk that climbs to 0.92 and is cleaned up (benign: a near miss).
    NearMiss,
    /// A strong daily-like cycle of CPU and queue (benign).
    BusyCycle,
}

/// A family of scenarios: the first written beside the engine (`classic`; the engine's settings
/// were chosen on its seed 1007) and a second with other habits (`wild`) that nothing was tuned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Classic,
    Wild,
}

impl Family {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "classic" => Some(Family::Classic),
            "wild" => Some(Family::Wild),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Classic => "classic",
            Family::Wild => "wild",
        }
    }

    pub fn scenarios(self) -> [Scenario; 8] {
        match self {
            Family::Classic => Scenario::ALL,
            Family::Wild => Scenario::WILD,
        }
    }
}

impl Scenario {
    pub const WILD: [Scenario; 8] = [
        Scenario::SteppedLeak,
        Scenario::AcceleratingFill,
        Scenario::QueueRunaway,
        Scenario::CpuPegged,
        Scenario::ErrorBursts,
        Scenario::DeployShift,
        Scenario::NearMiss,
        Scenario::BusyCycle,
    ];

    pub const ALL: [Scenario; 8] = [
        Scenario::MemoryLeak,
        Scenario::DiskFill,
        Scenario::ErrorRamp,
        Scenario::QueueBacklog,
        Scenario::CpuRunaway,
        Scenario::CacheWarmup,
        Scenario::TempFiles,
        Scenario::TrafficBurst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::MemoryLeak => "memory_leak",
            Scenario::DiskFill => "disk_fill",
            Scenario::ErrorRamp => "error_rate_ramp",
            Scenario::QueueBacklog => "queue_backlog",
            Scenario::CpuRunaway => "cpu_runaway",
            Scenario::CacheWarmup => "cache_warmup (benign)",
            Scenario::TempFiles => "temp_files (benign)",
            Scenario::TrafficBurst => "traffic_burst (benign)",
            Scenario::SteppedLeak => "stepped_leak",
            Scenario::AcceleratingFill => "accelerating_fill",
            Scenario::QueueRunaway => "queue_runaway",
            Scenario::CpuPegged => "cpu_pegged",
            Scenario::ErrorBursts => "error_bursts",
            Scenario::DeployShift => "deploy_shift (benign)",
            Scenario::NearMiss => "near_miss (benign)",
            Scenario::BusyCycle => "busy_cycle (benign)",
        }
    }

    pub fn fails(self) -> bool {
        !matches!(
            self,
            Scenario::CacheWarmup
                | Scenario::TempFiles
                | Scenario::TrafficBurst
                | Scenario::DeployShift
                | Scenario::NearMiss
                | Scenario::BusyCycle
        )
    }
}

/// The limits that define failure in this replay: the engine's defaults plus a queue and a CPU limit.
pub fn limits() -> Vec<Limit> {
    let mut l = default_limits();
    l.push(Limit {
        prefix: "queue_len".into(),
        value: 1000.0,
        direction: Direction::Above,
    });
    l.push(Limit {
        prefix: "cpu_util".into(),
        value: 0.98,
        direction: Direction::Above,
    });
    l
}

/// [`limits`] without those on metrics starting with `withhold` (the detectors are not told them;
/// the failures are still where the metrics cross them).
pub fn limits_without(withhold: Option<&str>) -> Vec<Limit> {
    limits()
        .into_iter()
        .filter(|l| withhold.is_none_or(|w| !l.prefix.starts_with(w) && !w.starts_with(&*l.prefix)))
        .collect()
}

/// The traces with one failure mode seen once: of the failing traces whose failure is a metric
/// starting with `metric` crossing its limit, only the first is kept.
pub fn first_occurrence_only(traces: Vec<Trace>, metric: &str) -> Vec<Trace> {
    let mode: Vec<Limit> = limits()
        .into_iter()
        .filter(|l| l.prefix.starts_with(metric) || metric.starts_with(&*l.prefix))
        .collect();
    let of_mode = |t: &Trace| {
        t.failure_at.is_some_and(|f| {
            mode.iter().any(|l| {
                t.samples[f]
                    .iter()
                    .any(|(k, v)| k.starts_with(l.prefix.as_str()) && *v >= l.value)
            })
        })
    };
    let mut seen = false;
    traces
        .into_iter()
        .filter(|t| !of_mode(t) || !std::mem::replace(&mut seen, true))
        .collect()
}

/// One synthetic resource: samples one second apart, and the second it failed (if it did).
#[derive(Clone, Debug)]
pub struct Trace {
    pub resource_id: String,
    pub scenario: Scenario,
    pub samples: Vec<BTreeMap<String, f64>>,
    pub failure_at: Option<usize>,
}

pub(super) fn gauss(rng: &mut SplitMix64) -> f64 {
    // Box-Muller.
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub(super) fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// Generates `per_scenario` traces of every classic scenario, about `seconds` long each (failing
/// ones end at the failure). `wild::generate_family` generates either family.
pub fn generate(seed: u64, per_scenario: usize, seconds: usize) -> Vec<Trace> {
    generate_with(Family::Classic, seed, per_scenario, seconds, trace)
}

/// `per_scenario` traces of every scenario of `family`, each made by `make`.
pub(super) fn generate_with(
    family: Family,
    seed: u64,
    per_scenario: usize,
    seconds: usize,
    make: impl Fn(&mut SplitMix64, Scenario, String, usize) -> Trace,
) -> Vec<Trace> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for scenario in family.scenarios() {
        for k in 0..per_scenario {
            let id = format!("{}-{k}", scenario.name().split(' ').next().unwrap_or("x"));
            out.push(make(&mut rng, scenario, id, seconds));
        }
    }
    out
}

pub(super) fn trace(
    rng: &mut SplitMix64,
    scenario: Scenario,
    resource_id: String,
    seconds: usize,
) -> Trace {
    let onset = (uniform(rng, 0.3, 0.6) * seconds as f64) as usize;
    let mem0 = uniform(rng, 0.35, 0.6);
    let disk0 = uniform(rng, 0.4, 0.75);
    let cpu0 = uniform(rng, 0.15, 0.45);
    let err0 = uniform(rng, 0.001, 0.006);
    let q0 = uniform(rng, 5.0, 30.0);
    // Time from onset to the limit, seconds.
    let ramp = uniform(rng, 600.0, 1800.0);
    let fast = uniform(rng, 180.0, 600.0);
    let gc_period = uniform(rng, 60.0, 180.0);
    let mut samples = Vec::with_capacity(seconds);
    let mut failure_at = None;
    for t in 0..seconds {
        let since = t.saturating_sub(onset) as f64;
        let active = t >= onset;
        let gc = 0.01 * ((t as f64 / gc_period).fract() - 0.5);
        let mut mem = mem0 + gc + 0.004 * gauss(rng);
        let mut disk = disk0 + 0.0005 * gauss(rng);
        let mut cpu = cpu0 + 0.05 * gauss(rng);
        let mut err = err0 * (1.0 + 0.3 * gauss(rng));
        let mut queue = q0 * (1.0 + 0.3 * gauss(rng));
        if active {
            match scenario {
                Scenario::MemoryLeak => mem += (0.95 - mem0) * since / ramp,
                Scenario::DiskFill => disk += (0.95 - disk0) * (since / fast).powf(1.2),
                Scenario::ErrorRamp => err *= (since / ramp * (0.05f64 / err0).ln()).exp(),
                Scenario::QueueBacklog => queue += 1000.0 * (since / ramp).powi(2),
                Scenario::CpuRunaway => cpu += (0.98 - cpu0) * since / fast,
                Scenario::CacheWarmup => mem += (0.85 - mem0) * (1.0 - (-since / 300.0).exp()),
                Scenario::TempFiles => {
                    let up = 240.0;
                    let bump = if since < up {
                        since / up
                    } else {
                        (1.0 - (since - up) / 120.0).max(0.0)
                    };
                    disk += (0.9 - disk0) * bump;
                }
                Scenario::TrafficBurst if since < 90.0 => {
                    cpu += (0.9 - cpu0) * (since / 30.0).min(1.0);
                    queue += 200.0 * (since / 90.0);
                }
                // The wild family's are generated by `wild::trace`.
                _ => {}
            }
        }
        let m = sample(mem, disk, cpu, err, queue);
        let failed = crosses_a_limit(&m);
        samples.push(m);
        if failed && scenario.fails() && active {
            failure_at = Some(t);
            break;
        }
    }
    Trace {
        resource_id,
        scenario,
        samples,
        failure_at,
    }
}

/// A sample of the five metrics both families generate, each in its range.
pub(super) fn sample(mem: f64, disk: f64, cpu: f64, err: f64, queue: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("mem_used_ratio".to_owned(), mem.clamp(0.0, 1.0)),
        ("disk_used_ratio:/".to_owned(), disk.clamp(0.0, 1.0)),
        ("cpu_util".to_owned(), cpu.clamp(0.0, 1.0)),
        ("error_rate".to_owned(), err.clamp(0.0, 1.0)),
        ("queue_len".to_owned(), queue.max(0.0)),
    ])
}

/// Whether a metric of `m` is at or past its limit ([`limits`]).
pub(super) fn crosses_a_limit(m: &BTreeMap<String, f64>) -> bool {
    limits().iter().any(|l| {
        m.iter()
            .any(|(k, v)| k.starts_with(l.prefix.as_str()) && *v >= l.value)
    })
}

/// Something that raises alarms from a resource's samples, one second apart.
pub trait Alarmer {
    fn name(&self) -> &'static str;
    /// One bool per sample: whether the alarm is on after that sample.
    fn alarms(&self, samples: &[BTreeMap<String, f64>]) -> Vec<bool>;
}

/// augur's engine with its failure threshold, optionally with its probability calibrated
/// ([`crate::calibration::Platt`]).
#[derive(Debug, Clone)]
pub struct EngineAlarm {
    pub threshold: f64,
    pub horizon_s: f64,
    pub calibration: Option<crate::calibration::Platt>,
    /// Trained models the engine uses (MLP, forest, and their calibration when it helped).
    pub models: Option<std::sync::Arc<crate::trained::TrainedModels>>,
    /// The forecaster's settings (the engine's unless an evaluation sweeps them).
    pub forecaster: Forecaster,
    /// The limits it is told ([`limits`], or [`limits_without`] one).
    pub limits: Vec<Limit>,
}

/// The traces as training history: one resource each, its failure labelled.
pub fn as_history(traces: &[Trace]) -> Vec<crate::training::ResourceHistory> {
    traces
        .iter()
        .map(|tr| {
            let mut h = crate::training::ResourceHistory::default();
            for (t, m) in tr.samples.iter().enumerate() {
                h.push(t as f64, m.clone());
            }
            h.failures = tr.failure_at.map(|f| f as f64).into_iter().collect();
            h
        })
        .collect()
}

/// The forecaster's settings an evaluation may sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Forecaster {
    /// Trend damping per sample ([`crate::engine::HOLT_PHI`]).
    pub damping: f64,
    /// Residual clipping in standard deviations ([`crate::engine::HOLT_CLIP`]).
    pub clip: f64,
    /// Spreads past which a trend is discounted by its credibility
    /// ([`crate::engine::DEFAULT_TREND_CREDIBILITY`]).
    pub credibility: f64,
}

impl Default for Forecaster {
    fn default() -> Self {
        Self {
            damping: crate::engine::HOLT_PHI,
            clip: crate::engine::HOLT_CLIP,
            credibility: crate::engine::DEFAULT_TREND_CREDIBILITY,
        }
    }
}

impl Forecaster {
    /// `config` with these settings.
    pub fn apply(self, config: EngineConfig) -> EngineConfig {
        EngineConfig {
            trend_damping: self.damping,
            forecast_clip: self.clip,
            trend_credibility: self.credibility,
            ..config
        }
    }
}

fn replay_engine(horizon_s: f64, forecaster: Forecaster, limits: &[Limit]) -> ResourceEngine {
    ResourceEngine::new(forecaster.apply(EngineConfig {
        horizon_s,
        limits: limits.to_vec(),
        ..EngineConfig::default()
    }))
}

impl Alarmer for EngineAlarm {
    fn name(&self) -> &'static str {
        match (self.calibration.is_some(), self.threshold >= 0.75) {
            _ if self.models.is_some() => "augur (trained models)",
            (true, _) => "augur (calibrated)",
            (false, true) => "augur",
            (false, false) => "augur (threshold 0.5)",
        }
    }

    fn alarms(&self, samples: &[BTreeMap<String, f64>]) -> Vec<bool> {
        let mut e = replay_engine(self.horizon_s, self.forecaster, &self.limits);
        e.set_models(self.models.clone());
        samples
            .iter()
            .enumerate()
            .map(|(t, m)| {
                let p = e.observe(t as f64, m);
                let probability = match &self.calibration {
                    Some(platt) => platt.apply(p.failure_probability, p.anomaly_score),
                    None => p.failure_probability,
                };
                probability >= self.threshold
            })
            .collect()
    }
}

/// The engine's raw evidence on every `every`-th sample of the traces, labelled by whether the
/// trace failed within the horizon (windows running past a trace's end are left out).
pub fn calibration_examples(
    traces: &[Trace],
    horizon_s: f64,
    every: usize,
    forecaster: Forecaster,
    limits: &[Limit],
) -> Vec<(f64, f64, bool)> {
    let mut out = Vec::new();
    for tr in traces {
        let mut e = replay_engine(horizon_s, forecaster, limits);
        let ts: Vec<f64> = (0..tr.samples.len()).map(|t| t as f64).collect();
        let failures: Vec<f64> = tr.failure_at.map(|f| f as f64).into_iter().collect();
        let labels = crate::calibration::label_windows(&ts, &failures, &[], horizon_s);
        for (t, m) in tr.samples.iter().enumerate() {
            let p = e.observe(t as f64, m);
            if t % every.max(1) == 0
                && let Some(y) = labels[t]
            {
                out.push((p.failure_probability, p.anomaly_score, y));
            }
        }
    }
    out
}

/// A static alert: any limited metric past `fraction` of its limit.
#[derive(Debug, Clone)]
pub struct StaticThreshold {
    pub fraction: f64,
    pub limits: Vec<Limit>,
}

impl Alarmer for StaticThreshold {
    fn name(&self) -> &'static str {
        "static threshold (90% of limit)"
    }

    fn alarms(&self, samples: &[BTreeMap<String, f64>]) -> Vec<bool> {
        samples
            .iter()
            .map(|m| {
                self.limits.iter().any(|l| {
                    m.iter().any(|(k, v)| {
                        k.starts_with(l.prefix.as_str()) && *v >= self.fraction * l.value
                    })
                })
            })
            .collect()
    }
}

/// Prometheus's `predict_linear(metric[window], horizon) >= limit`: a least-squares line over the
/// last `window` samples, extrapolated `horizon` seconds ahead.
#[derive(Debug, Clone)]
pub struct PredictLinear {
    pub window: usize,
    pub horizon_s: f64,
    pub limits: Vec<Limit>,
}

impl Alarmer for PredictLinear {
    fn name(&self) -> &'static str {
        "predict_linear (5m window)"
    }

    fn alarms(&self, samples: &[BTreeMap<String, f64>]) -> Vec<bool> {
        let limits = &self.limits;
        let mut recent: BTreeMap<String, VecDeque<f64>> = BTreeMap::new();
        samples
            .iter()
            .map(|m| {
                let mut on = false;
                for (k, v) in m {
                    let buf = recent.entry(k.clone()).or_default();
                    buf.push_back(*v);
                    if buf.len() > self.window {
                        buf.pop_front();
                    }
                    let Some(l) = limits.iter().find(|l| k.starts_with(l.prefix.as_str())) else {
                        continue;
                    };
                    if buf.len() < 30 {
                        continue;
                    }
                    let n = buf.len() as f64;
                    let mean_x = (n - 1.0) / 2.0;
                    let mean_y = buf.iter().sum::<f64>() / n;
                    let (mut sxy, mut sxx) = (0.0, 0.0);
                    for (i, y) in buf.iter().enumerate() {
                        let dx = i as f64 - mean_x;
                        sxy += dx * (y - mean_y);
                        sxx += dx * dx;
                    }
                    let slope = sxy / sxx;
                    let predicted = mean_y + slope * ((n - 1.0 - mean_x) + self.horizon_s);
                    on |= match l.direction {
                        Direction::Above => predicted >= l.value,
                        Direction::Below => predicted <= l.value,
                    };
                }
                on
            })
            .collect()
    }
}

/// An alarmer's result over all traces.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub detector: String,
    pub failures: usize,
    /// Failures with an alarm raised at least `min_lead_s` before, within the horizon.
    pub caught: usize,
    pub recall: f64,
    pub median_lead_s: Option<f64>,
    /// Each failing trace's lead, in trace order (None when not caught).
    pub leads: Vec<Option<f64>>,
    pub false_alarms: usize,
    pub resource_hours: f64,
    pub false_alarms_per_resource_hour: f64,
    /// Per scenario: (caught, failures, false alarms).
    pub by_scenario: BTreeMap<String, (usize, usize, usize)>,
}

/// Two detectors on the failures both catch: the paired comparison of lead times (the medians of
/// [`Outcome`] are over different sets when recall differs).
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub both: usize,
    pub median_lead_a_s: Option<f64>,
    pub median_lead_b_s: Option<f64>,
    /// Median of (lead of a - lead of b) over the failures both catch.
    pub median_difference_s: Option<f64>,
    pub a_earlier: usize,
    pub b_earlier: usize,
}

pub fn paired(a: &Outcome, b: &Outcome) -> Paired {
    let pairs: Vec<(f64, f64)> = a
        .leads
        .iter()
        .zip(&b.leads)
        .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    Paired {
        both: pairs.len(),
        median_lead_a_s: median(pairs.iter().map(|p| p.0).collect()),
        median_lead_b_s: median(pairs.iter().map(|p| p.1).collect()),
        median_difference_s: median(pairs.iter().map(|p| p.0 - p.1).collect()),
        a_earlier: pairs.iter().filter(|p| p.0 > p.1).count(),
        b_earlier: pairs.iter().filter(|p| p.0 < p.1).count(),
    }
}

/// Scores an alarmer. An alarm episode (a rising edge) on a failing resource counts as a true alarm
/// when it starts within `horizon_s` before the failure, else as a false alarm; every episode on a
/// benign resource is false. A failure is caught when a true alarm starts at least `min_lead_s` ahead.
/// Every alarmer's samples go through the same latch ([`crate::alarm::keep_firing`], `keep_s`).
pub fn score(
    traces: &[Trace],
    alarmer: &dyn Alarmer,
    horizon_s: f64,
    min_lead_s: f64,
    keep_s: f64,
) -> Outcome {
    let mut leads = Vec::new();
    let mut per_failure = Vec::new();
    let (mut failures, mut caught, mut false_alarms) = (0, 0, 0);
    let mut seconds = 0usize;
    let mut by: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for tr in traces {
        let alarms = crate::alarm::keep_firing(&alarmer.alarms(&tr.samples), keep_s);
        seconds += tr.samples.len();
        let entry = by.entry(tr.scenario.name().to_owned()).or_default();
        let mut first_true: Option<usize> = None;
        let mut prev = false;
        for (t, &on) in alarms.iter().enumerate() {
            if on && !prev {
                match tr.failure_at {
                    Some(f) if (f as f64 - t as f64) <= horizon_s => {
                        first_true.get_or_insert(t);
                    }
                    _ => {
                        false_alarms += 1;
                        entry.2 += 1;
                    }
                }
            }
            prev = on;
        }
        if let Some(f) = tr.failure_at {
            failures += 1;
            entry.1 += 1;
            let lead = first_true
                .map(|t| (f - t) as f64)
                .filter(|l| *l >= min_lead_s);
            if let Some(lead) = lead {
                caught += 1;
                entry.0 += 1;
                leads.push(lead);
            }
            per_failure.push(lead);
        }
    }
    leads.sort_by(f64::total_cmp);
    let hours = seconds as f64 / 3600.0;
    Outcome {
        detector: alarmer.name().to_owned(),
        failures,
        caught,
        recall: if failures == 0 {
            0.0
        } else {
            caught as f64 / failures as f64
        },
        median_lead_s: (!leads.is_empty()).then(|| leads[leads.len() / 2]),
        leads: per_failure,
        false_alarms,
        resource_hours: hours,
        false_alarms_per_resource_hour: false_alarms as f64 / hours.max(1e-9),
        by_scenario: by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_seeded_and_failing_traces_end_at_the_limit() {
        let a = generate(3, 2, 3600);
        let b = generate(3, 2, 3600);
        assert_eq!(a.len(), 16);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.samples, y.samples);
        }
        for t in &a {
            assert_eq!(
                t.failure_at.is_some(),
                t.scenario.fails(),
                "{} {:?}",
                t.resource_id,
                t.failure_at
            );
            if let Some(f) = t.failure_at {
                assert_eq!(f + 1, t.samples.len());
            }
        }
    }

    #[test]
    fn scoring_counts_lead_and_false_alarms() {
        struct At(Vec<usize>);
        impl Alarmer for At {
            fn name(&self) -> &'static str {
                "fixed"
            }
            fn alarms(&self, s: &[BTreeMap<String, f64>]) -> Vec<bool> {
                (0..s.len()).map(|t| self.0.contains(&t)).collect()
            }
        }
        let trace = Trace {
            resource_id: "x".into(),
            scenario: Scenario::MemoryLeak,
            samples: vec![BTreeMap::new(); 1000],
            failure_at: Some(999),
        };
        // An alarm 900 s early is false (horizon 300 s); one 100 s early catches the failure.
        let o = score(
            std::slice::from_ref(&trace),
            &At(vec![99, 899]),
            300.0,
            30.0,
            0.0,
        );
        assert_eq!((o.caught, o.false_alarms), (1, 1));
        assert_eq!(o.median_lead_s, Some(100.0));
        // 10 s ahead is too late to count.
        let o = score(
            std::slice::from_ref(&trace),
            &At(vec![989]),
            300.0,
            30.0,
            0.0,
        );
        assert_eq!(o.caught, 0);
        // Through a latch of 60 s, alarms at 99 and 130 are one episode.
        let o = score(&[trace], &At(vec![99, 130]), 300.0, 30.0, 60.0);
        assert_eq!((o.caught, o.false_alarms), (0, 1));
    }

    #[test]
    fn paired_leads_compare_only_the_failures_both_catch() {
        let o = |leads: Vec<Option<f64>>| Outcome {
            detector: "x".into(),
            failures: leads.len(),
            caught: leads.iter().flatten().count(),
            recall: 0.0,
            median_lead_s: None,
            leads,
            false_alarms: 0,
            resource_hours: 1.0,
            false_alarms_per_resource_hour: 0.0,
            by_scenario: BTreeMap::new(),
        };
        let a = o(vec![Some(100.0), Some(50.0), None, Some(200.0)]);
        let b = o(vec![Some(80.0), Some(60.0), Some(300.0), None]);
        let p = paired(&a, &b);
        assert_eq!(p.both, 2);
        assert_eq!((p.a_earlier, p.b_earlier), (1, 1));
        assert_eq!(p.median_difference_s, Some(20.0));
        assert_eq!(p.median_lead_a_s, Some(100.0));
        assert_eq!(p.median_lead_b_s, Some(80.0));
    }
}
