//! Failure patterns learned from labelled failures, for metrics nobody gave a limit.
//!
//! A user cannot list a limit for every metric, but the history has labels (`"event":
//! "failure"`). What preceded a failure is learned per resource type: each metric whose value at a
//! failure lay far outside its usual range (a robust z-score of at least [`MIN_Z`] against the
//! failing resource's own usual values, or the type's where it has too few, and beyond the 99.9th
//! percentile of the type's usual values) gets a *learned limit* at that value (the nearest to
//! usual over the failures it was seen at). The engine then predicts the crossing of a
//! learned limit exactly as it predicts a configured one, from its forecast and the spread the
//! forecast has shown, so a failure mode seen once on any resource of the type is predicted the
//! next time on any resource of the type, with a lead and an ETA.
//!
//! A learned limit enters the failure probability only where it does better than the limits alone
//! on the type's history, replayed through the engine with the type's other trained models: it
//! must catch (at least [`MIN_LEAD_S`] ahead) a labelled failure the limits alone miss, and add no
//! false alarm episode anywhere in the history (the history's other samples were not used to set
//! its value). Where a pattern was seen at two failures or more, each is also predicted by the
//! limit learned from the others alone (leave one failure out), and the count is reported.
//!
//! Why a learned limit rather than a classifier over the engine's features: with one or two labelled
//! failures, a logistic model over forecast slopes, crossing times and anomaly scores separates the
//! few positive samples along exactly one direction (where the forecast says the metric will be at
//! the horizon), which is a limit on the forecast with a fuzzier edge and no ETA. The limit keeps
//! the engine's calibrated crossing probability and its explanation ("queue_len crosses 1012
//! learned from 1 failure, in 140 s").

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Direction, EngineConfig, ResourceEngine};
use crate::history::ResourceHistory;
use crate::trained::TrainedModels;

/// How far outside its usual range (robust z-score: distance from the median in units of
/// 1.4826 MAD) a metric must be at a failure for its value there to become a learned limit.
pub const MIN_Z: f64 = 6.0;

/// An alarm counts as catching a failure when it starts at least this long before it (the
/// failure replay's rule).
pub const MIN_LEAD_S: f64 = 30.0;

/// Samples of a metric's usual range a learned limit needs.
const MIN_USUAL: usize = 100;

pub use crate::trained::{FailurePatterns, LearnedLimit};

/// The value of `col` at the failure at `f`: the last finite one at or before it, within the
/// horizon.
fn value_at(ts: &[f64], col: &[f64], f: f64, horizon_s: f64) -> Option<f64> {
    let end = ts.partition_point(|&t| t <= f);
    (0..end)
        .rev()
        .take_while(|&j| ts[j] >= f - horizon_s)
        .map(|j| col[j])
        .find(|v| v.is_finite())
}

/// Median and spread (1.4826 MAD, floored) of sorted values.
fn robust(sorted: &[f64]) -> (f64, f64) {
    let median = quantile(sorted, 0.5);
    let mut dev: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let spread = (1.4826 * quantile(&dev, 0.5)).max(1e-6 * (median.abs() + 1.0));
    (median, spread)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Samples near a failure (from twice the horizon before it to a horizon after) are not usual.
fn usual(r: &ResourceHistory, j: usize, horizon_s: f64) -> bool {
    let t = r.ts[j];
    !r.failures
        .iter()
        .any(|&f| t >= f - 2.0 * horizon_s && t <= f + horizon_s)
}

/// The learned limits the history's failures suggest, not yet checked (`used` false).
pub fn candidates(data: &[ResourceHistory], engine: &EngineConfig) -> Vec<LearnedLimit> {
    let horizon_s = engine.horizon_s;
    if data.iter().all(|r| r.failures.is_empty()) {
        return Vec::new();
    }
    let names: std::collections::BTreeSet<&String> = data
        .iter()
        .filter(|r| !r.failures.is_empty())
        .flat_map(|r| r.names())
        .collect();
    let mut out = Vec::new();
    for name in names {
        let mut values: Vec<f64> = Vec::new();
        for r in data {
            let Some(col) = r.column(name) else { continue };
            values.extend(
                col.iter()
                    .enumerate()
                    .filter(|(j, v)| v.is_finite() && usual(r, *j, horizon_s))
                    .map(|(_, v)| *v),
            );
        }
        if values.len() < MIN_USUAL {
            continue;
        }
        values.sort_by(f64::total_cmp);
        let (median, spread) = robust(&values);
        let (lo, hi) = (quantile(&values, 0.001), quantile(&values, 0.999));
        // Per direction: the value nearest to usual over the failures, and how many.
        let mut found: BTreeMap<bool, (f64, usize)> = BTreeMap::new();
        for r in data {
            let Some(col) = r.column(name) else { continue };
            // Far out for this resource: its own usual range where it has one (resources of a
            // type sit at different levels; a leak from 0.4 to 0.95 is far out for the
            // resource, not for a fleet whose levels spread from 0.35 to 0.85).
            let mut own: Vec<f64> = col
                .iter()
                .enumerate()
                .filter(|(j, v)| v.is_finite() && usual(r, *j, horizon_s))
                .map(|(_, v)| *v)
                .collect();
            own.sort_by(f64::total_cmp);
            let (centre, scale) = if own.len() >= MIN_USUAL {
                robust(&own)
            } else {
                (median, spread)
            };
            for &f in &r.failures {
                let Some(x) = value_at(&r.ts, col, f, horizon_s) else {
                    continue;
                };
                let z = (x - centre) / scale;
                let above = if z >= MIN_Z && x > hi {
                    true
                } else if z <= -MIN_Z && x < lo {
                    false
                } else {
                    continue;
                };
                let e = found.entry(above).or_insert((x, 0));
                e.0 = if above { e.0.min(x) } else { e.0.max(x) };
                e.1 += 1;
            }
        }
        for (above, (value, failures)) in found {
            let direction = if above {
                Direction::Above
            } else {
                Direction::Below
            };
            // A configured limit at least as strict already covers it.
            let covered = engine.limits.iter().any(|l| {
                name.starts_with(l.prefix.as_str())
                    && l.direction == direction
                    && match direction {
                        Direction::Above => l.value <= value,
                        Direction::Below => l.value >= value,
                    }
            });
            if covered {
                continue;
            }
            out.push(LearnedLimit {
                metric: name.clone(),
                value,
                direction,
                failures,
                usual_median: median,
                usual_spread: spread,
                caught_with: 0,
                caught_without: 0,
                false_alarms_with: 0,
                false_alarms_without: 0,
                held_out: None,
                used: false,
            });
        }
    }
    out
}

/// The type's alarm: its threshold, and how long a raised alarm is kept (`crate::alarm`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alarm {
    pub threshold: f64,
    pub keep_firing_s: f64,
}

/// What the engine's alarm did over one resource's history: failures caught at least
/// [`MIN_LEAD_S`] ahead, and false alarm episodes (a rising edge with no failure within the
/// horizon after it; one reaching a migration is not counted either way).
fn replay_alarms(
    r: &ResourceHistory,
    engine: &EngineConfig,
    models: &Arc<TrainedModels>,
    alarm: &Alarm,
) -> (usize, usize) {
    let h = engine.horizon_s;
    let mut latch = crate::alarm::AlarmLatch::default();
    let mut e = ResourceEngine::new(engine.clone());
    e.set_models(Some(models.clone()));
    let mut first_true: BTreeMap<usize, f64> = BTreeMap::new();
    let mut false_alarms = 0;
    let mut prev = false;
    for (j, &t) in r.ts.iter().enumerate() {
        let p = e.observe_raw(t, &r.row(j)).0;
        let on = latch.update(t, p, alarm.threshold, alarm.keep_firing_s);
        if on && !prev {
            match r.failures.iter().position(|&f| f >= t && f - t <= h) {
                Some(k) => {
                    first_true.entry(k).or_insert(t);
                }
                None if r.migrations.iter().any(|&m| m >= t && m - t <= h) => {}
                None => false_alarms += 1,
            }
        }
        prev = on;
    }
    let caught = first_true
        .iter()
        .filter(|(k, t)| r.failures[**k] - **t >= MIN_LEAD_S)
        .count();
    (caught, false_alarms)
}

fn with_patterns(partial: &Arc<TrainedModels>, limits: Vec<LearnedLimit>) -> Arc<TrainedModels> {
    let mut m = (**partial).clone();
    m.meta.patterns = Some(FailurePatterns { limits });
    Arc::new(m)
}

fn replay_all(
    data: &[ResourceHistory],
    engine: &EngineConfig,
    models: &Arc<TrainedModels>,
    alarm: &Alarm,
) -> (usize, usize) {
    data.iter()
        .map(|r| replay_alarms(r, engine, models, alarm))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Learns the type's failure patterns and checks each against the limits alone on the history,
/// with the type's other trained models (`partial`) in the engine. None when no failure is
/// labelled or none suggests a limit.
pub fn train_patterns(
    data: &[ResourceHistory],
    engine: &EngineConfig,
    partial: &Arc<TrainedModels>,
    alarm: &Alarm,
) -> Option<FailurePatterns> {
    let mut found = candidates(data, engine);
    if found.is_empty() {
        return None;
    }
    let (caught_without, false_without) =
        replay_all(data, engine, &with_patterns(partial, Vec::new()), alarm);
    for c in &mut found {
        let mut on = c.clone();
        on.used = true;
        let (caught, false_alarms) = replay_all(
            data,
            engine,
            &with_patterns(partial, vec![on.clone()]),
            alarm,
        );
        c.caught_with = caught;
        c.caught_without = caught_without;
        c.false_alarms_with = false_alarms;
        c.false_alarms_without = false_without;
        c.used = caught > caught_without && false_alarms <= false_without;
        if c.failures >= 2 {
            c.held_out = Some(leave_one_out(data, engine, partial, alarm, &on));
        }
    }
    Some(FailurePatterns { limits: found })
}

/// What became of the learned limits peers shared (federated models, `crate::federated`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedOutcome {
    /// Distinct (metric, direction) limits offered that this node had not learned itself.
    pub offered: usize,
    /// Of those, the ones this node's history accepted.
    pub adopted: usize,
}

/// This node's learned limits joined by those its peers learned from failures it never saw. A
/// peer's limit is taken only for a (metric, direction) this node has no limit of its own for; the
/// value is the median of the authors' (one liar cannot place it). It is adopted only where this
/// node's history says it does no harm: the metric has at least [`MIN_USUAL`] usual samples
/// here, the value lies beyond their 99.9th percentile (0.1th for a lower limit), and replaying
/// the history with it adds no false alarm episode. What it catches here is counted too (usually
/// nothing: the point is the failures this node has not had yet).
pub fn adopt_shared(
    data: &[ResourceHistory],
    engine: &EngineConfig,
    partial: &Arc<TrainedModels>,
    alarm: &Alarm,
    own: &[LearnedLimit],
    shared: &[LearnedLimit],
) -> (Vec<LearnedLimit>, SharedOutcome) {
    let mut kept: Vec<LearnedLimit> = own.to_vec();
    let mine = |l: &LearnedLimit| {
        own.iter()
            .any(|o| o.used && o.metric == l.metric && o.direction == l.direction)
    };
    let mut groups: BTreeMap<(String, bool), Vec<&LearnedLimit>> = BTreeMap::new();
    for l in shared.iter().filter(|l| l.used && !mine(l)) {
        groups
            .entry((l.metric.clone(), l.direction == Direction::Above))
            .or_default()
            .push(l);
    }
    let mut outcome = SharedOutcome {
        offered: groups.len(),
        adopted: 0,
    };
    let used_own: Vec<LearnedLimit> = kept.iter().filter(|l| l.used).cloned().collect();
    let (caught_without, false_without) = replay_all(
        data,
        engine,
        &with_patterns(partial, used_own.clone()),
        alarm,
    );
    for ((metric, above), ls) in groups {
        let mut values: Vec<f64> = ls.iter().map(|l| l.value).collect();
        values.sort_by(f64::total_cmp);
        let value = values[values.len() / 2];
        let mut usual_values: Vec<f64> = Vec::new();
        for r in data {
            let Some(col) = r.column(&metric) else {
                continue;
            };
            usual_values.extend(
                col.iter()
                    .enumerate()
                    .filter(|(j, v)| v.is_finite() && usual(r, *j, engine.horizon_s))
                    .map(|(_, v)| *v),
            );
        }
        if usual_values.len() < MIN_USUAL || !value.is_finite() {
            continue;
        }
        usual_values.sort_by(f64::total_cmp);
        let beyond = if above {
            value > quantile(&usual_values, 0.999)
        } else {
            value < quantile(&usual_values, 0.001)
        };
        if !beyond {
            continue;
        }
        let (median, spread) = robust(&usual_values);
        let candidate = LearnedLimit {
            metric,
            value,
            direction: if above {
                Direction::Above
            } else {
                Direction::Below
            },
            failures: ls.iter().map(|l| l.failures).sum(),
            usual_median: median,
            usual_spread: spread,
            caught_with: 0,
            caught_without,
            false_alarms_with: 0,
            false_alarms_without: false_without,
            held_out: None,
            used: true,
        };
        let mut with = used_own.clone();
        with.push(candidate.clone());
        let (caught, false_alarms) = replay_all(data, engine, &with_patterns(partial, with), alarm);
        if false_alarms > false_without {
            continue;
        }
        outcome.adopted += 1;
        kept.push(LearnedLimit {
            caught_with: caught,
            false_alarms_with: false_alarms,
            ..candidate
        });
    }
    (kept, outcome)
}

/// Each failure at which `limit`'s metric was far out, predicted by the limit learned from the
/// other failures alone: (caught, tried).
fn leave_one_out(
    data: &[ResourceHistory],
    engine: &EngineConfig,
    partial: &Arc<TrainedModels>,
    alarm: &Alarm,
    limit: &LearnedLimit,
) -> (usize, usize) {
    let (mut caught, mut tried) = (0, 0);
    for (i, r) in data.iter().enumerate() {
        for k in 0..r.failures.len() {
            // The history without this one failure: the resource's samples up to it go with no
            // label; the others keep theirs.
            let mut others: Vec<ResourceHistory> = data.to_vec();
            others[i].failures.remove(k);
            let Some(from_others) = candidates(&others, engine)
                .into_iter()
                .find(|c| c.metric == limit.metric && c.direction == limit.direction)
            else {
                continue;
            };
            if from_others.failures + 1 != limit.failures {
                // This failure was not one of the limit's (its metric was usual there).
                continue;
            }
            tried += 1;
            let mut one = r.clone();
            one.failures = vec![r.failures[k]];
            let models = with_patterns(
                partial,
                vec![LearnedLimit {
                    used: true,
                    ..from_others
                }],
            );
            caught += replay_alarms(&one, engine, &models, alarm).0;
        }
    }
    (caught, tried)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::failures::{Scenario, Trace, as_history, generate, limits};

    const ALARM: Alarm = Alarm {
        threshold: 0.75,
        keep_firing_s: crate::alarm::KEEP_FIRING_S,
    };

    fn partial() -> Arc<TrainedModels> {
        Arc::new(crate::trained::TrainedModels::empty("host"))
    }

    fn queue_limit(p: &FailurePatterns) -> &LearnedLimit {
        p.limits
            .iter()
            .find(|l| l.metric == "queue_len")
            .expect("a learned limit on the queue")
    }

    /// Classic traces with the queue's limit withheld: the engine is blind to a queue backing up,
    /// until one labelled occurrence has been seen.
    fn withheld() -> EngineConfig {
        EngineConfig {
            limits: limits()
                .into_iter()
                .filter(|l| l.prefix != "queue_len")
                .collect(),
            ..EngineConfig::default()
        }
    }

    /// The history of one occurrence of the queue backlog, beside every benign scenario (they
    /// include a traffic burst that raises the queue to 200).
    fn one_occurrence(seed: u64) -> Vec<Trace> {
        let mut seen = false;
        generate(seed, 2, 2400)
            .into_iter()
            .filter(|t| {
                if t.scenario == Scenario::QueueBacklog {
                    !std::mem::replace(&mut seen, true)
                } else {
                    !t.scenario.fails()
                }
            })
            .collect()
    }

    #[test]
    fn a_failure_mode_without_a_limit_is_learned_from_one_occurrence_and_caught_next_time() {
        let engine = withheld();
        let history = as_history(&one_occurrence(11));
        let p = train_patterns(&history, &engine, &partial(), &ALARM).expect("patterns");
        let queue = queue_limit(&p);
        assert!(queue.used, "{queue:?}");
        assert_eq!(queue.direction, Direction::Above);
        assert!(queue.value > 900.0, "{queue:?}");
        assert_eq!(
            (queue.caught_without, queue.caught_with),
            (0, 1),
            "{queue:?}"
        );
        // The next occurrences, on other resources (another seed), are caught ahead; without the
        // pattern, none is.
        let mut models = TrainedModels::empty("host");
        models.meta.patterns = Some(p);
        let models = Arc::new(models);
        let next: Vec<Trace> = generate(12, 3, 2400)
            .into_iter()
            .filter(|t| matches!(t.scenario, Scenario::QueueBacklog | Scenario::TrafficBurst))
            .collect();
        let (mut with, mut without) = ((0, 0), (0, 0));
        for r in as_history(&next) {
            let (c, f) = replay_alarms(&r, &engine, &models, &ALARM);
            with = (with.0 + c, with.1 + f);
            let (c, f) = replay_alarms(&r, &engine, &partial(), &ALARM);
            without = (without.0 + c, without.1 + f);
        }
        // (The traffic bursts' CPU alarms, 3, are the CPU limit's, with or without the pattern.)
        assert_eq!(with.0, 3, "caught with the pattern");
        assert_eq!(without.0, 0, "caught without it");
        assert_eq!(with.1, without.1, "false alarms with and without it");
    }

    #[test]
    fn nothing_is_learned_from_a_failure_at_usual_values_or_where_a_limit_covers_it() {
        // With every limit given, the queue's failure is covered by its configured limit.
        let engine = EngineConfig {
            limits: limits(),
            ..EngineConfig::default()
        };
        let history = as_history(&one_occurrence(11));
        assert_eq!(candidates(&history, &engine), Vec::new());
        // A failure labelled while every metric is usual suggests nothing.
        let mut calm: Vec<ResourceHistory> = as_history(&one_occurrence(11))
            .into_iter()
            .filter(|r| r.failures.is_empty())
            .collect();
        // Long before any scenario's onset (at 30 % to 60 % of the trace).
        let at = calm[0].ts[100];
        calm[0].failures.push(at);
        assert!(
            candidates(&calm, &withheld()).is_empty(),
            "{:?}",
            candidates(&calm, &withheld())
        );
    }

    /// A failure labelled at the top of a traffic burst: the queue's value there becomes a
    /// candidate, but the other bursts (no failure) reach it too, so it would add false alarms
    /// and is not used.
    #[test]
    fn a_pattern_that_would_add_false_alarms_is_not_used() {
        let bursts: Vec<Trace> = generate(21, 4, 2400)
            .into_iter()
            .filter(|t| t.scenario == Scenario::TrafficBurst)
            .collect();
        let mut history = as_history(&bursts);
        let queue = history[0].column("queue_len").expect("a queue").to_vec();
        let top = (0..queue.len())
            .max_by(|a, b| queue[*a].total_cmp(&queue[*b]))
            .expect("samples");
        let at = history[0].ts[top];
        history[0].failures.push(at);
        // Neither the queue's nor the CPU's limit given: the burst raises no alarm of its own.
        let engine = EngineConfig {
            limits: limits()
                .into_iter()
                .filter(|l| l.prefix != "queue_len" && l.prefix != "cpu_util")
                .collect(),
            ..EngineConfig::default()
        };
        let p = train_patterns(&history, &engine, &partial(), &ALARM).expect("a candidate");
        let l = queue_limit(&p);
        assert!(!l.used, "{l:?}");
        assert!(l.false_alarms_with > l.false_alarms_without, "{l:?}");
        assert_eq!(p.used(), 0);
    }

    /// A node that never had a queue backlog takes the limit a peer learned from one, and then
    /// catches the next backlog ahead; a liar's limit inside this node's usual range is refused,
    /// and so is a second copy of a limit the node learned itself.
    #[test]
    fn a_peers_learned_limit_is_adopted_only_where_this_history_allows_it() {
        let engine = withheld();
        let peer = train_patterns(
            &as_history(&one_occurrence(11)),
            &engine,
            &partial(),
            &ALARM,
        )
        .expect("the peer learns");
        let shared: Vec<LearnedLimit> = peer.limits.iter().filter(|l| l.used).cloned().collect();
        assert!(!shared.is_empty());
        // This node's history: only the benign scenarios (a burst raises its queue to 200).
        let mine: Vec<Trace> = generate(21, 2, 2400)
            .into_iter()
            .filter(|t| !t.scenario.fails())
            .collect();
        let history = as_history(&mine);
        let liar = LearnedLimit {
            value: 5.0,
            ..queue_limit(&peer).clone()
        };
        let (limits, o) = adopt_shared(&history, &engine, &partial(), &ALARM, &[], &[liar]);
        assert_eq!((o.offered, o.adopted), (1, 0), "inside the usual range");
        assert!(limits.is_empty());
        let (limits, o) = adopt_shared(&history, &engine, &partial(), &ALARM, &[], &shared);
        assert_eq!(o.adopted, o.offered, "{limits:?}");
        let queue = queue_limit(&FailurePatterns {
            limits: limits.clone(),
        })
        .clone();
        assert!(queue.used && queue.false_alarms_with == queue.false_alarms_without);
        // The next backlogs, on other resources, are caught ahead with the adopted limit.
        let mut models = TrainedModels::empty("host");
        models.meta.patterns = Some(FailurePatterns { limits });
        let models = Arc::new(models);
        let next: Vec<Trace> = generate(12, 3, 2400)
            .into_iter()
            .filter(|t| t.scenario == Scenario::QueueBacklog)
            .collect();
        let caught: usize = as_history(&next)
            .iter()
            .map(|r| replay_alarms(r, &engine, &models, &ALARM).0)
            .sum();
        let blind: usize = as_history(&next)
            .iter()
            .map(|r| replay_alarms(r, &engine, &partial(), &ALARM).0)
            .sum();
        assert_eq!((caught, blind), (3, 0));
        // A limit this node learned itself is not taken again from a peer.
        let (again, o) = adopt_shared(&history, &engine, &partial(), &ALARM, &[queue], &shared);
        assert_eq!(o.offered, shared.len() - 1);
        assert_eq!(again.iter().filter(|l| l.metric == "queue_len").count(), 1);
    }
}
